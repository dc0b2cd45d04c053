"""The options pricing model: networks, Lightning training, tracking, checkpoints and inference.

Modules: ``models`` (MLPPricer, OptionsPricingLSTM), ``config`` (Hydra-composed, pydantic-validated
experiments), ``data`` (sample sources and splits; batches come from :mod:`greekfire.data.loaders`),
``module`` (the LightningModule and the checkpoint format), ``train`` (the driver), ``tracking``,
``callbacks``, ``evaluate``, ``serving`` (checkpoint loading and micro-batching), ``experiments`` (the
accuracy anchors) and ``demo``. Importing this package imports nothing heavy; see docs/pricing-model.md.
"""
