"""The options pricing model: networks, Lightning training, tracking, checkpoints and inference.

Modules: ``models`` (MLPPricer, OptionsPricingLSTM), ``config`` (Hydra-composed, pydantic-validated
experiments), ``data`` (sample sources and splits; batches come from :mod:`greekfire.data.loaders`),
``module`` (the LightningModule and the checkpoint format), ``train`` (the driver), ``tracking``,
``callbacks``, ``evaluate``, ``serving`` (checkpoint loading and micro-batching), ``experiments`` (the
accuracy anchors) and ``demo``. Importing this package imports nothing heavy; see docs/pricing-model.md.
It needs the ``train`` extra (Lightning, TensorBoard, MLflow, Hydra): without it, importing it says so.
"""

from greekfire.core.extras import require_extra

require_extra("train", "greekfire.ml (training and pricing models)")
