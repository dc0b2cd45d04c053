"""Comparison helpers for tests/cuda."""

from __future__ import annotations

import torch


def on(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors copied to ``device``."""
    return [t.to(device) for t in tensors]


def close_to_cpu(got: torch.Tensor, ref: torch.Tensor, *, rtol: float, scale_atol: float, what: str) -> None:
    """``got`` (any device) equals the CPU ``ref`` within ``rtol``, with an absolute floor of ``scale_atol``
    times the largest finite |ref| (values that are tiny next to the rest of the grid); NaN where ref is."""
    g = got.detach().cpu().to(ref.dtype)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(g), finite), f"{what}: finite on one device, not the other"
    floor = scale_atol * float(ref[finite].abs().max()) if finite.any() else 0.0
    torch.testing.assert_close(g[finite], ref[finite], rtol=rtol, atol=floor, msg=lambda m: f"{what}: {m}")
