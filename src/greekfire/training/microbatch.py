"""Out-of-memory inside a training step: smaller micro-batches, more accumulation, the same effective batch.

:func:`backoff_step` runs one optimizer step over a batch through the GPU manager's batch back-off
(:func:`greekfire.gpu.memory.run_with_oom_backoff`): on OOM the rows are split into halves (again and
again down to ``min_micro_batch``), each micro-batch's gradient is weighted by its share of the rows and
accumulated, and the optimizer steps once. For a loss that is a mean over rows, the accumulated gradient
equals the full batch's (up to float rounding), so the step is the same. Gradients of a micro-batch that
fails half-way are never added (``torch.autograd.grad``, added only on success).

:func:`~greekfire.ml.train.micro_batches` is the same rule for the Lightning loop (``trainer.find_batch_size``): a batch size that does not fit becomes a
micro-batch and ``accumulate_grad_batches`` grows by the same factor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from greekfire.gpu.memory import run_with_oom_backoff
from greekfire.ml.train import micro_batches

__all__ = ["StepReport", "backoff_step", "micro_batches"]

Batch = dict[str, Tensor]


@dataclass
class StepReport:
    """One step: its loss (mean over the batch's rows) and the micro-batch sizes it ran."""

    loss: float
    rows: int
    micro_batches: list[int] = field(default_factory=list)

    @property
    def micro_batch(self) -> int:
        """The smallest micro-batch used (the full batch when nothing ran out of memory)."""
        return min(self.micro_batches) if self.micro_batches else self.rows


def backoff_step(
    model: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    *,
    micro_batch: int | None = None,
    min_micro_batch: int = 1,
    device: str | None = None,
) -> StepReport:
    """One optimizer step of ``model`` on ``batch`` (a dict of aligned tensors), halving the micro-batch on OOM.

    ``loss_fn(model, part)`` returns the mean loss over ``part``'s rows. ``micro_batch``: rows to try first
    (default: the whole batch). Raises :class:`~greekfire.gpu.memory.GpuOutOfMemoryError` when even
    ``min_micro_batch`` rows do not fit.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    n = len(next(iter(batch.values())))
    grads = [torch.zeros_like(p) for p in params]
    report = StepReport(loss=0.0, rows=n)
    total = 0.0

    def run(rows: Tensor) -> Tensor:
        part = {k: v[rows] for k, v in batch.items()}
        loss = loss_fn(model, part)
        got = torch.autograd.grad(loss * (len(rows) / n), params)
        for acc, g in zip(grads, got, strict=True):
            acc.add_(g)
        nonlocal total
        total += float(loss.detach()) * len(rows) / n
        report.micro_batches.append(len(rows))
        return rows

    first = next(iter(batch.values()))
    run_with_oom_backoff(run, torch.arange(n, device=first.device), micro_batch or n,
                         min_batch_size=min_micro_batch, device=device or str(first.device))
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    report.loss = float(total)
    return report
