"""Lightning callbacks of ours: Prometheus training gauges, RNG state in checkpoints, a step-limit interrupt,
training progress (a Rich bar on a terminal, log lines elsewhere)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
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
log = logging.getLogger("greekfire.ml.train")


class PrometheusTrainingMetrics(L.Callback):
    """Sets loss, throughput and GPU memory gauges (label ``run``) every ``every_n_steps`` batches; with
    ``push`` (e.g. :func:`greekfire.ml.tracking.push_live_training_metrics` bound to the settings), rank 0
    also calls ``push(run)`` after such an update at most every ``push_every_s`` seconds, so a pushgateway
    shows the live run."""

    def __init__(self, run: str, every_n_steps: int = 10, push: Callable[[str], Any] | None = None,
                 push_every_s: float = 10.0) -> None:
        self.run = run
        self.every = max(1, every_n_steps)
        self._t0 = time.perf_counter()
        self._rows = 0
        self.push = push
        self.push_every_s = push_every_s
        self._pushed_at: float | None = None

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
        if self.push is not None and trainer.is_global_zero and (
                self._pushed_at is None or now - self._pushed_at >= self.push_every_s):
            self._pushed_at = now
            self.push(self.run)

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


class TrainingProgress(L.Callback):
    """Training progress on rank 0: a Rich progress bar (epoch, batches, loss, val_loss, elapsed and
    remaining time) when ``bar`` is true, else a log line ``epoch E/N step S/T loss L`` at most every
    ``interval_s`` seconds and at each epoch's end (then with ``val_loss``). ``bar=None``: the bar when
    ``console`` (default: stdout) is a terminal, so piped output and CI logs get plain lines."""

    def __init__(self, bar: bool | None = None, *, interval_s: float = 10.0, console: Any = None) -> None:
        from rich.console import Console  # lazy: only a run that reports progress needs it

        self.console = console if console is not None else Console()
        self.bar = self.console.is_terminal if bar is None else bar
        self.interval_s = interval_s
        self._progress: Any = None
        self._task: Any = None
        self._last_line = -math.inf
        self._last_draw = -math.inf
        self._loss: float | None = None
        self._val: float | None = None
        self._batch = 0  # batches done in this epoch

    @staticmethod
    def _epochs(trainer: L.Trainer) -> str:
        total = trainer.max_epochs
        return f"{trainer.current_epoch + 1}/{total}" if total and total > 0 else f"{trainer.current_epoch + 1}"

    @staticmethod
    def _batches(trainer: L.Trainer) -> int | None:
        n = trainer.num_training_batches
        return int(n) if isinstance(n, int | float) and math.isfinite(n) else None

    def _fields(self) -> str:
        loss = f"loss {self._loss:.3g}" if self._loss is not None else "loss -"
        return loss + (f" val_loss {self._val:.3g}" if self._val is not None else "")

    @staticmethod
    def _steps(trainer: L.Trainer) -> str:
        """``step S/T``: optimizer steps taken and planned (from the batches, epochs and max_steps)."""
        n = TrainingProgress._batches(trainer)
        planned = [trainer.max_steps] if trainer.max_steps and trainer.max_steps > 0 else []
        if n and trainer.max_epochs and trainer.max_epochs > 0:
            planned.append(math.ceil(n / max(1, trainer.accumulate_grad_batches)) * trainer.max_epochs)
        return f"step {trainer.global_step}" + (f"/{min(planned)}" if planned else "")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.bar:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]epoch {task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task(self._epochs(trainer), total=self._batches(trainer), metrics="loss -")
        self._progress.start()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batch = 0
        if self._progress is not None:
            self._progress.reset(self._task, total=self._batches(trainer), description=self._epochs(trainer),
                                 metrics=self._fields())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self._batch = batch_idx + 1
        now = time.monotonic()
        if self._progress is not None:
            self._progress.update(self._task, completed=self._batch)
            if now - self._last_draw < 0.1:  # reading the loss syncs the device: a few times a second is enough
                return
            self._last_draw = now
        elif now - self._last_line < self.interval_s:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss = float(loss.detach())
        if self._progress is not None:
            self._progress.update(self._task, metrics=self._fields())
            return
        self._last_line = now
        self._line(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        val = trainer.callback_metrics.get("val_loss")
        if val is not None and not trainer.sanity_checking:
            self._val = float(val)
            if self._progress is not None:
                self._progress.update(self._task, metrics=self._fields())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._progress is not None:
            return
        loss = trainer.callback_metrics.get("train_loss")
        if loss is not None:
            self._loss = float(loss)
        self._last_line = time.monotonic()
        self._line(trainer)

    def _line(self, trainer: L.Trainer) -> None:
        log.info("epoch %s %s %s", self._epochs(trainer), self._steps(trainer), self._fields())

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop()
