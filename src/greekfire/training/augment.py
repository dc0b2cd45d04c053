"""Augmentation and prefetching for pricing data.

- :func:`add_input_noise`: multiplicative Gaussian noise on chosen inputs (``x * (1 + std * N(0, 1))``),
  the target untouched: a regulariser against over-fitting to quoted inputs that are themselves noisy
  (history of the underlying, implied vols). ``std`` is a fraction (0.01: 1 % of each value).
- :func:`resample_chains`: a bootstrap copy of prepared samples in which every chain (the contracts of one
  quote date) is redrawn with replacement from its own rows, so each chain keeps its size and its
  market state while the mix of strikes and expiries changes.
- :class:`Augment`: a Lightning callback applying the noise to each training batch in place, seeded by
  (seed, global step): a resumed run draws the same noise as one that never stopped.
- :func:`prefetch`: a background thread that keeps ``depth`` batches ready (storage reads release the
  GIL, so reading the next row group overlaps the training step).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import lightning as L
import numpy as np
import torch
from torch import Tensor

from greekfire.core.errors import DataError
from greekfire.data.features import Samples

T = TypeVar("T")
Batch = dict[str, Tensor]


def add_input_noise(
    batch: Batch, std: float, *, keys: Sequence[str] = ("seq",), columns: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> Batch:
    """A copy of ``batch`` with ``batch[k] * (1 + std * N(0, 1))`` for each of ``keys`` (only feature
    ``columns`` of the last axis when given); ``target`` and other keys unchanged. ``std`` >= 0, a fraction."""
    if std < 0:
        raise DataError("std", std, "a fraction >= 0 (0.01: 1 % multiplicative noise)")
    out = dict(batch)
    for key in keys:
        if key not in batch:
            raise DataError("keys", key, f"one of the batch's tensors {sorted(batch)}")
        x = batch[key]
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
        if columns is not None:
            mask = torch.zeros(x.shape[-1], dtype=x.dtype, device=x.device)
            mask[list(columns)] = 1
            noise = noise * mask
        out[key] = x * (1 + std * noise)
    return out


def resample_chains(samples: Samples, seed: int = 0) -> Samples:
    """A bootstrap copy of ``samples``: each quote date's rows redrawn with replacement from that date's
    rows (chains keep their sizes; the order of dates is kept)."""
    rng = np.random.default_rng(seed)
    dates = samples.quote_date
    if len(dates) == 0:
        return samples
    _, inverse = np.unique(dates, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    picked = [group[rng.integers(0, len(group), len(group))] for group in np.split(order, bounds)]
    index = np.sort(np.concatenate(picked))  # keep rows of one date together, dates in their order
    return samples.take(index)


class Augment(L.Callback):
    """Noise on each training batch (before the step), seeded by ``seed`` and the global step.

    ``keys``: which inputs (``seq``: the history, ``contract``: the contract features; default: ``seq``
    where the batch has it, else ``contract``); ``columns``: only these features of the last axis.
    Resumable: step ``k`` draws the same noise in any run.
    """

    def __init__(self, std: float, *, keys: Sequence[str] | None = None, columns: Sequence[int] | None = None,
                 seed: int = 0) -> None:
        if std < 0:
            raise DataError("std", std, "a fraction >= 0")
        self.std, self.keys, self.columns, self.seed = float(std), keys, columns, int(seed)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.std or not isinstance(batch, dict):
            return
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(trainer.global_step) * 7919
                                            + int(trainer.global_rank))
        wanted = self.keys if self.keys is not None else (("seq",) if "seq" in batch else ("contract",))
        keys = [k for k in wanted if k in batch]
        batch.update(add_input_noise(batch, self.std, keys=keys, columns=self.columns, generator=gen))


_END = object()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` with up to ``depth`` of them read ahead in a background thread (in order).

    An exception in the reader is raised in the consumer; closing the iterator early stops the reader.
    """
    if depth < 1:
        raise DataError("depth", depth, ">= 1 batch read ahead")
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=read, name="greekfire-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
