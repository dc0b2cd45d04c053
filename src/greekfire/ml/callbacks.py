"""Lightning callbacks of ours: Prometheus training gauges, RNG state in checkpoints, a step-limit interrupt."""

from __future__ import annotations

import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch

from greekfire.core.metrics import counter, gauge
from greekfire.gpu.device import cuda_usable

TRAIN_LOSS = gauge("greekfire_training_loss", "latest training loss (target units squared)", ["run"])
VAL_LOSS = gauge("greekfire_training_val_loss", "latest validation loss", ["run"])
THROUGHPUT = gauge("greekfire_training_samples_per_second", "training rows per second (last interval)", ["run"])
GPU_MEMORY = gauge("greekfire_training_gpu_memory_bytes", "device memory allocated by torch, bytes", ["run"])
STEPS = counter("greekfire_training_steps", "optimizer steps taken", ["run"])


class PrometheusTrainingMetrics(L.Callback):
    """Sets loss, throughput and GPU memory gauges (label ``run``) every ``every_n_steps`` batches."""

    def __init__(self, run: str, every_n_steps: int = 10) -> None:
        self.run = run
        self.every = max(1, every_n_steps)
        self._t0 = time.perf_counter()
        self._rows = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._rows += len(batch["target"]) if isinstance(batch, dict) else 0
        STEPS.labels(self.run).inc()
        if (batch_idx + 1) % self.every:
            return
        now = time.perf_counter()
        if now > self._t0:
            THROUGHPUT.labels(self.run).set(self._rows * trainer.world_size / (now - self._t0))
        self._t0, self._rows = now, 0
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            TRAIN_LOSS.labels(self.run).set(float(loss.detach()))
        if pl_module.device.type == "cuda":
            GPU_MEMORY.labels(self.run).set(torch.cuda.memory_allocated(pl_module.device))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        val = trainer.callback_metrics.get("val_loss")
        if val is not None:
            VAL_LOSS.labels(self.run).set(float(val))


class RngState(L.Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) generators in each checkpoint and restores them.

    Lightning restores weights, optimizer, scheduler, AMP scaler and loop counters; with these generators
    and the resumable sampler a resumed run draws the same dropout masks and batches as one that never
    stopped.
    """

    def state_dict(self) -> dict[str, Any]:
        # plain tensors and ints only, so checkpoints load with torch.load(weights_only=True)
        np_state: Any = np.random.get_state()
        kind, keys, pos, has_gauss, cached = np_state
        version, py_state, gauss = random.getstate()
        state: dict[str, Any] = {
            "python": [version, torch.tensor(py_state, dtype=torch.int64), gauss],
            "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
        }
        if cuda_usable() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, py_state, gauss = state_dict["python"]
        random.setstate((version, tuple(int(v) for v in py_state.tolist()), gauss))
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and cuda_usable():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class TrainingInterrupted(RuntimeError):
    """Raised by :class:`InterruptAtStep` to stop a run the way a crash or a pre-emption would."""


class InterruptAtStep(L.Callback):
    """Raises :class:`TrainingInterrupted` before optimizer step ``step`` (after its checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            raise TrainingInterrupted(f"interrupted at step {trainer.global_step}")
