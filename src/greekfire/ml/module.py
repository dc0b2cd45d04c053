"""The LightningModule (loss, AdamW, schedules, metrics) and the LightningDataModule around our tensors.

The module knows nothing of devices or loops; :mod:`greekfire.ml.train` builds the Trainer.

Checkpoints carry their format in ``greekfire_checkpoint_format`` (:data:`CHECKPOINT_FORMAT`); every
earlier format still loads, for inference and for resuming:

- format 1 (no format key): the network's input statistics were ``net.contract_scaler.{mean,std}`` and
  ``net.seq_scaler.{mean,std}`` (LSTM), the feature names only in the hyper-parameters;
- format 2: one :class:`~greekfire.data.features.Normalizer` at ``net.normalizer``
  (``contract_mean``, ``contract_std``, ``seq_mean``, ``seq_std`` and the names as ``_extra_state``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from greekfire.core.errors import ConfigError
from greekfire.data.features import Normalizer
from greekfire.data.loaders import make_loader, make_stream_loader
from greekfire.ml.config import DataConfig, ExperimentConfig, ModelConfig, OptimConfig
from greekfire.ml.data import Batch, PricingData
from greekfire.ml.models import MLPPricer, OptionsPricingLSTM

CHECKPOINT_FORMAT = 2
FORMAT_KEY = "greekfire_checkpoint_format"
# format 1 name -> format 2 name of the input statistics
_FORMAT_1_KEYS = {
    "net.contract_scaler.mean": "net.normalizer.contract_mean",
    "net.contract_scaler.std": "net.normalizer.contract_std",
    "net.seq_scaler.mean": "net.normalizer.seq_mean",
    "net.seq_scaler.std": "net.normalizer.seq_std",
}


def upgrade_checkpoint(checkpoint: dict[str, Any], normalizer: Normalizer) -> None:
    """Bring a loaded checkpoint's ``state_dict`` to :data:`CHECKPOINT_FORMAT` in place.

    ``normalizer`` is the freshly built network's (from the checkpoint's hyper-parameters): a format 1
    checkpoint takes its feature names and, for an MLP, its empty sequence statistics. Raises ConfigError
    for a format newer than this code reads.
    """
    fmt = int(checkpoint.get(FORMAT_KEY, 1))
    if fmt > CHECKPOINT_FORMAT or fmt < 1:
        raise ConfigError(f"checkpoint.{FORMAT_KEY}", fmt,
                          f"this greekfire reads checkpoint formats 1 to {CHECKPOINT_FORMAT} (a newer one wrote it?)")
    if fmt == 1:
        old = checkpoint["state_dict"]
        state = {_FORMAT_1_KEYS.get(k, k): v for k, v in old.items()}
        # an MLP had no sequence statistics, and no format-1 checkpoint kept the names with the weights
        state.setdefault("net.normalizer.seq_mean", normalizer.seq_mean.detach().clone())
        state.setdefault("net.normalizer.seq_std", normalizer.seq_std.detach().clone())
        state.setdefault("net.normalizer._extra_state", normalizer.get_extra_state())
        checkpoint["state_dict"] = state
    checkpoint[FORMAT_KEY] = CHECKPOINT_FORMAT


def build_model(cfg: ModelConfig, n_contract: int, n_seq: int = 0,
                contract_names: list[str] | None = None, seq_names: list[str] | None = None) -> nn.Module:
    """The network ``cfg.kind`` sized for ``n_contract`` contract and ``n_seq`` per-step features
    (named ``contract_names`` and ``seq_names``: the normaliser leaves unit-scale features alone)."""
    baseline_index = None
    if cfg.residual_on is not None:
        names = contract_names or []
        if cfg.residual_on not in names:
            raise ValueError(f"model.residual_on={cfg.residual_on!r} is not a contract feature {names}")
        baseline_index = names.index(cfg.residual_on)
    if cfg.kind == "mlp":
        return MLPPricer(n_contract, cfg.hidden, cfg.layers, cfg.activation, cfg.dropout, cfg.positive_output,
                         contract_names=contract_names)
    if n_seq <= 0:
        raise ValueError("model.kind='lstm' needs sequence features (data.source heston, spx or random)")
    return OptionsPricingLSTM(
        n_seq, n_contract, cfg.proj_dim, cfg.lstm_hidden, cfg.lstm_layers, cfg.attn_heads,
        tuple(cfg.head_hidden), cfg.activation, cfg.dropout, cfg.positive_output, baseline_index,
        contract_names=contract_names, seq_names=seq_names or None,
    )


class PricingModule(L.LightningModule):
    """Trains a pricing network on ``target`` = price / strike; logs train/val/test loss, RMSE and MAE."""

    def __init__(self, model_cfg: dict[str, Any], optim_cfg: dict[str, Any], n_contract: int, n_seq: int = 0,
                 contract_names: list[str] | None = None, seq_names: list[str] | None = None,
                 window: int = 0) -> None:
        super().__init__()
        # plain dicts in hparams so a checkpoint loads without our config classes on the path
        self.save_hyperparameters()
        self.model_cfg = ModelConfig.model_validate(model_cfg)
        self.optim_cfg = OptimConfig.model_validate(optim_cfg)
        self.net = build_model(self.model_cfg, n_contract, n_seq, contract_names, seq_names)
        self.time_budget_s: float | None = None  # set by the driver from trainer.max_time_s

    @property
    def normalizer(self) -> Normalizer:
        """The network's input scaler (fitted on the training rows, saved with the weights)."""
        norm = self.net.normalizer
        assert isinstance(norm, Normalizer)
        return norm

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[FORMAT_KEY] = CHECKPOINT_FORMAT

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # called before the weights are loaded, for load_from_checkpoint and for a resumed fit alike
        upgrade_checkpoint(checkpoint, self.normalizer)

    @property
    def uses_sequence(self) -> bool:
        """True for the LSTM (needs ``seq``), False for the MLP."""
        return bool(getattr(self.net, "uses_sequence", False))

    def forward(self, contract: Tensor, seq: Tensor | None = None) -> Tensor:
        """Price / strike [N] for raw contract features [N, F_c] (and history [N, window, F_seq])."""
        return self.net(contract, seq)

    def _loss(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = pred.float(), target.float()
        if self.optim_cfg.loss == "huber":
            return nn.functional.huber_loss(pred, target, delta=self.optim_cfg.huber_delta)
        return nn.functional.mse_loss(pred, target)

    def _step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        pred = self(batch["contract"], batch.get("seq"))
        return pred, self._loss(pred, batch["target"])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        _, loss = self._step(batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        pred, loss = self._step(batch)
        n = len(batch["target"])
        err = pred.float() - batch["target"].float()
        self.log("val_loss", loss, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("val_mse", (err**2).mean(), sync_dist=True, batch_size=n)
        self.log("val_mae", err.abs().mean(), sync_dist=True, batch_size=n)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        pred, loss = self._step(batch)
        n = len(batch["target"])
        err = pred.float() - batch["target"].float()
        self.log("test_loss", loss, sync_dist=True, batch_size=n)
        self.log("test_mse", (err**2).mean(), sync_dist=True, batch_size=n)

    def _total_steps(self) -> int:
        # counted from the data sizes, not trainer.estimated_stepping_batches: that property builds the
        # train loader before a checkpoint is restored, which would lose the resumed data position
        t = self.trainer
        if t.max_steps and t.max_steps > 0:
            return int(t.max_steps)
        dm: Any = getattr(t, "datamodule", None)
        batches = dm.train_batches(max(1, t.world_size), max(0, t.global_rank))
        per_epoch = -(-batches // t.accumulate_grad_batches)
        return max(1, per_epoch * int(t.max_epochs or 1))

    def _time_cosine(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        # a time-boxed run (trainer.max_time_s) cannot know its step count in advance: decay over wall time
        budget = float(self.time_budget_s or 0)
        if budget <= 0:
            raise ValueError("optim.scheduler=cosine_time needs trainer.max_time_s")
        floor, start = self.optim_cfg.min_lr_ratio, time.monotonic()

        def by_time(_: int) -> float:
            t = min(1.0, (time.monotonic() - start) / budget)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

        return torch.optim.lr_scheduler.LambdaLR(opt, by_time)

    def configure_optimizers(self) -> Any:
        o = self.optim_cfg
        sched: Any
        opt = torch.optim.AdamW(self.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=o.betas)
        if o.scheduler == "none":
            return opt
        if o.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=o.plateau_factor, patience=o.plateau_patience
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch"}}
        if o.scheduler == "cosine_time":
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self._time_cosine(opt), "interval": "step"}}
        total = self._total_steps()
        if o.scheduler == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=total, pct_start=o.pct_start)
        else:
            floor = o.min_lr_ratio

            def cosine(step: int) -> float:
                t = min(step, total) / total
                return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class PricingDataModule(L.LightningDataModule):
    """Loaders over :class:`PricingData`: resumable shuffled training batches, split across DDP ranks."""

    def __init__(self, data: PricingData, cfg: DataConfig, seed: int) -> None:
        super().__init__()
        self.data, self.cfg, self.seed = data, cfg, seed
        self.batch_size = cfg.batch_size

    def _position(self) -> tuple[int, int]:
        # on resume, Lightning has restored its loop counters: the epoch being trained and the batches of
        # it already consumed (processed) are exactly where the interrupted run stood
        trainer: Any = self.trainer
        loop = trainer.fit_loop
        return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.processed

    def _ranks(self) -> tuple[int, int]:
        t = self.trainer
        return (t.world_size, t.global_rank) if t is not None else (1, 0)

    def train_batches(self, replicas: int = 1, rank: int = 0) -> int:
        """Training batches per epoch on one of ``replicas`` ranks (every rank gets as many)."""
        if self.data.streamed:
            return len(self._stream_loader(replicas, rank))
        return -(-(self.data.train_rows // replicas) // self.batch_size)

    def _stream_loader(self, replicas: int, rank: int) -> Any:
        assert self.data.train_url is not None
        return make_stream_loader(self.data.train_url, self.data.storage, self.batch_size, seed=self.seed,
                                  num_workers=self.cfg.num_workers, num_replicas=replicas, rank=rank,
                                  position=self._position)

    def train_dataloader(self) -> Any:
        replicas, rank = self._ranks()
        if self.data.streamed:
            return self._stream_loader(replicas, rank)
        return make_loader(self.data.train, self.batch_size, seed=self.seed, shuffle=True,
                           num_workers=self.cfg.num_workers, num_replicas=replicas, rank=rank,
                           position=self._position)

    def val_dataloader(self) -> Any:
        replicas, rank = self._ranks()
        return make_loader(self.data.val, self.cfg.eval_batch_size, seed=self.seed, shuffle=False,
                           num_replicas=replicas, rank=rank)

    def test_dataloader(self) -> Any:
        return make_loader(self.data.test, self.cfg.eval_batch_size, seed=self.seed, shuffle=False)


def module_for(cfg: ExperimentConfig, data: PricingData) -> PricingModule:
    """A fresh :class:`PricingModule` sized for ``data``, its normaliser fitted on the training rows."""
    seq = data.train.get("seq")
    module = PricingModule(
        cfg.model.model_dump(mode="json"), cfg.optim.model_dump(mode="json"),
        n_contract=int(data.train["contract"].shape[1]), n_seq=0 if seq is None else int(seq.shape[2]),
        contract_names=data.contract_names, seq_names=data.seq_names, window=data.window,
    )
    if data.streamed:
        # one pass over the streamed split: the same statistics as the in-memory fit, without holding it
        stream = data.train_stream(max(cfg.data.eval_batch_size, cfg.data.batch_size), shuffle=False)
        module.normalizer.fit_batches(stream)
    else:
        module.normalizer.fit_tensors(data.train["contract"], seq if module.uses_sequence else None)
    return module
