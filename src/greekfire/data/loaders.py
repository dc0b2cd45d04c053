"""Training loaders over the datasets of :mod:`greekfire.data.dataset`: the one way the pricing trainer
(:mod:`greekfire.ml`) reads its batches, from memory or streamed from storage (local or S3).

:func:`make_loader` serves in-memory samples in shuffled, resumable batches
(:class:`ResumableBatchSampler`: the order depends only on the seed and the epoch, split over DDP ranks,
and a checkpoint taken mid-epoch resumes at its batch). :func:`make_stream_loader` does the same for
sample files streamed one row group at a time (:class:`StreamLoader`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from greekfire.data.dataset import Batch, OptionsDataset, StreamingOptionsDataset
from greekfire.data.features import Samples


def batch_collate(batch: Any) -> Any:
    """Collation for a ``batched`` :class:`OptionsDataset`: the dataset already returns a stacked batch."""
    return batch


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled batches from ``(seed, epoch)``, split over ``num_replicas`` ranks, resumable mid-epoch.

    The permutation depends only on the seed and the epoch, so a resumed run sees exactly the batches the
    uninterrupted run would have. After :meth:`arm_resume`, the next iterator asks ``position()`` for
    (epoch, batches already consumed) and skips those batches.
    """

    def __init__(
        self, n: int, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = False,
        num_replicas: int = 1, rank: int = 0,
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        # Lightning calls set_epoch on ``batch_sampler.sampler``; point it at ourselves
        self.sampler = self
        self.position: Callable[[], tuple[int, int]] | None = None
        self._resume_armed = False

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at each epoch start."""
        self.epoch = epoch

    def arm_resume(self) -> None:
        """Skip the already-consumed batches on the next iterator (after loading a checkpoint)."""
        self._resume_armed = True

    def _rank_indices(self) -> Tensor:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.num_replicas  # equal shares keep DDP ranks in step
        return order[self.rank * per_rank : (self.rank + 1) * per_rank] if self.num_replicas > 1 else order

    def __len__(self) -> int:
        per_rank = self.n // self.num_replicas
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self._resume_armed and self.position is not None:
            self.epoch, skip = self.position()
            self._resume_armed = False
        idx = self._rank_indices().tolist()
        for b in range(skip, len(self)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


class ResumableDataLoader(DataLoader[Batch]):
    """A DataLoader that Lightning treats as stateful, so a mid-epoch checkpoint resumes at its batch."""

    def state_dict(self) -> dict[str, Any]:
        """The epoch of the batch sampler (the batch position comes from the trainer's loop counters)."""
        sampler = self.batch_sampler
        return {"epoch": getattr(sampler, "epoch", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set the epoch and skip the consumed batches on the next iterator."""
        sampler = self.batch_sampler
        if isinstance(sampler, ResumableBatchSampler):
            sampler.set_epoch(int(state.get("epoch", 0)))
            sampler.arm_resume()


def make_loader(
    tensors: Samples | Mapping[str, Tensor], batch_size: int, *, seed: int, shuffle: bool, num_workers: int = 0,
    num_replicas: int = 1, rank: int = 0, position: Callable[[], tuple[int, int]] | None = None,
) -> DataLoader[Batch]:
    """Batches of ``batch_size`` rows of in-memory samples or tensors; shuffled loaders are resumable
    (see :class:`ResumableBatchSampler`), and every rank of ``num_replicas`` gets an equal share."""
    ds = OptionsDataset(tensors, batched=True)
    sampler = ResumableBatchSampler(
        len(ds), batch_size, seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank,
    )
    sampler.position = position
    # a private generator: DataLoader draws a base seed per iterator, and drawing it from the global RNG
    # would shift dropout masks between an interrupted and an uninterrupted run
    return ResumableDataLoader(
        ds, batch_sampler=sampler, collate_fn=batch_collate, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0,
    )


class StreamLoader(DataLoader[Batch]):
    """A DataLoader over a batched :class:`StreamingOptionsDataset` that follows the trainer.

    Each pass asks ``position()`` for (epoch, batches consumed): the epoch sets the shuffle order (so
    every epoch sees a new order, the same on every rank), and after :meth:`load_state_dict` the consumed
    batches are skipped, so a run resumed mid-epoch continues where it stopped. ``len()`` is the number of
    batches of this rank's pass.
    """

    def __init__(self, dataset: StreamingOptionsDataset, *, num_workers: int = 0,
                 position: Callable[[], tuple[int, int]] | None = None) -> None:
        # a private generator, as in make_loader: a base seed drawn from the global RNG per pass would
        # shift dropout masks between an interrupted and an uninterrupted run
        super().__init__(dataset, batch_size=None, num_workers=num_workers,
                         generator=torch.Generator().manual_seed(dataset.seed))
        self.stream = dataset
        self.position = position
        self._resume_armed = False

    def __len__(self) -> int:
        return self.stream.num_batches(max(1, self.num_workers))

    def __iter__(self) -> Any:
        if self.position is not None:
            epoch, consumed = self.position()
            self.stream.set_epoch(epoch)
            if self._resume_armed:
                self.stream.skip_batches(consumed)
        self._resume_armed = False
        # workers get a copy of the dataset as it is now (epoch and skip included): not persistent on purpose
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """The epoch of the stream (the batch position comes from the trainer's loop counters)."""
        return {"epoch": self.stream.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next pass skips the batches the trainer had consumed."""
        self.stream.set_epoch(int(state.get("epoch", 0)))
        self._resume_armed = True


def make_stream_loader(
    url: str, storage: Any, batch_size: int, *, seed: int, shuffle: bool = True, num_workers: int = 0,
    num_replicas: int = 1, rank: int = 0, position: Callable[[], tuple[int, int]] | None = None,
) -> StreamLoader:
    """Training batches of ``batch_size`` rows streamed from the sample files under ``url`` (local or any
    fsspec URL, read with ``storage``), shuffled by epoch, dealt over ``num_replicas`` ranks with the same
    number of batches on each, resumable mid-epoch (see :class:`StreamLoader`)."""
    ds = StreamingOptionsDataset(url, storage, shuffle=shuffle, seed=seed, rank=rank, world_size=num_replicas,
                                 batch_size=batch_size, equal_shards=True)
    return StreamLoader(ds, num_workers=num_workers, position=position)
