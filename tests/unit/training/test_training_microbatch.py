"""OOM inside a training step: micro-batches with accumulation give the full batch's step (simulated OOM)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from greekfire.gpu.memory import GpuOutOfMemoryError
from greekfire.ml.train import micro_batches
from greekfire.training.microbatch import backoff_step


class TightMemory(nn.Module):
    """A network that 'runs out of memory' on more than ``limit`` rows, as a GPU would (same message)."""

    def __init__(self, net: nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit = net, limit
        self.seen: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(len(x))
        if len(x) > self.limit:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate {len(x)} rows (simulated)")
        out: Tensor = self.net(x)
        return out


def mse(model: nn.Module, part: dict[str, Tensor]) -> Tensor:
    return nn.functional.mse_loss(model(part["x"]).squeeze(-1), part["y"])


def _setup(seed: int = 3) -> tuple[nn.Module, dict[str, Tensor]]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 32), nn.SiLU(), nn.Linear(32, 1))
    x = torch.randn(256, 6)
    return net, {"x": x, "y": x.sum(1).sin()}


def test_simulated_oom_step_equals_full_batch_step() -> None:
    """Tolerance 1e-6: the accumulated gradient sums four 64-row means weighted 1/4 where the full step
    takes one 256-row mean; float32 rounding of the reordered sums differs by a few ulps (~1e-7 of the
    gradient), and AdamW's first step moves each weight by ~lr = 1e-2 times a ratio near +-1."""
    net, batch = _setup()
    full, tight = copy.deepcopy(net), TightMemory(copy.deepcopy(net), limit=64)
    opt_full = torch.optim.AdamW(full.parameters(), lr=1e-2)
    opt_tight = torch.optim.AdamW(tight.parameters(), lr=1e-2)
    for _ in range(3):
        a = backoff_step(full, batch, opt_full, mse)
        b = backoff_step(tight, batch, opt_tight, mse)
        assert a.micro_batch == 256 and b.micro_batch == 64
        assert b.loss == pytest.approx(a.loss, rel=1e-5)
    assert tight.seen[:4] == [256, 128, 64, 64]  # halved twice, then the rest at 64
    for (name, p), q in zip(full.named_parameters(), tight.net.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
    # the step really moved the weights (the comparison is not between two untouched copies)
    assert not torch.allclose(next(full.parameters()), next(net.parameters()), atol=1e-4)


def test_nothing_fits_names_the_sizes_tried() -> None:
    net, batch = _setup()
    tight = TightMemory(net, limit=0)
    with pytest.raises(GpuOutOfMemoryError, match="batch sizes tried: 256, 128"):
        backoff_step(tight, batch, torch.optim.SGD(tight.parameters(), lr=0.1), mse, min_micro_batch=16)


@pytest.mark.parametrize(("batch", "fits", "plan"), [(256, 256, (256, 1)), (256, 100, (64, 4)),
                                                     (96, 40, (32, 3)), (7, 3, (1, 7))])
def test_micro_batches_keep_the_effective_batch(batch: int, fits: int, plan: tuple[int, int]) -> None:
    micro, factor = micro_batches(batch, fits)
    assert (micro, factor) == plan and micro * factor == batch and micro <= fits
