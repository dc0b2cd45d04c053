"""Tensor plumbing shared by the pricing modules: coercion, broadcasting, the normal distribution.

Conventions used everywhere in :mod:`greekfire.quant`: ``ttm`` in years (ACT/365), ``rate`` and
``div_yield`` continuously compounded, ``vol`` annualised, ``right`` +1.0 for a call and -1.0 for a put.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from greekfire.core.errors import DataError

TensorLike = torch.Tensor | float | int | np.ndarray | Sequence[float]

SQRT_2PI = math.sqrt(2.0 * math.pi)
INV_SQRT_2PI = 1.0 / SQRT_2PI
SQRT_2 = math.sqrt(2.0)
INV_SQRT_2 = 1.0 / SQRT_2
DAYS_PER_YEAR = 365.0


def _pick(values: Iterable[Any]) -> tuple[torch.device, torch.dtype]:
    """The device of the first tensor among ``values`` and the widest floating dtype of the floating
    tensors (CPU and float64 where there are none)."""
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    for v in values:
        if isinstance(v, torch.Tensor):
            device = device or v.device
            if v.is_floating_point():
                dtype = v.dtype if dtype is None else torch.promote_types(dtype, v.dtype)
    return device or torch.device("cpu"), dtype or torch.float64


def as_tensors(
    *values: TensorLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    """Coerce ``values`` to tensors on one device and dtype and broadcast them to one shape.

    The device and dtype follow the first floating tensor argument (float64 on CPU when there is none),
    unless given explicitly.
    """
    dev, dt = _pick(values)
    dev = torch.device(device) if device is not None else dev
    dt = dtype or dt
    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v.to(device=dev, dtype=dt))
        else:
            out.append(torch.as_tensor(np.asarray(v, dtype=np.float64), device=dev).to(dt))
    return list(torch.broadcast_tensors(*out))


def norm_cdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF with full relative accuracy in the left tail.

    ``torch.special.ndtr`` loses relative accuracy below about -5 (and returns 0 long before underflow),
    which ruins far out-of-the-money prices and implied vols; ``erfc`` of the reflected argument keeps
    it (about 2e-13 relative at -37, the limit the rounding of the argument allows).
    """
    return 0.5 * torch.special.erfc(-x * INV_SQRT_2)


def norm_pdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal density."""
    return torch.exp(-0.5 * x * x) * INV_SQRT_2PI


# Acklam's rational approximations of the normal quantile (relative error under 1.2e-9): the central
# region p in [0.02425, 0.5] in (p - 1/2)^2, the lower tail in sqrt(-2 ln p)
_NDTRI_LOW = 0.02425
_NDTRI_A = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
            -3.066479806614716e01, 2.506628277459239e00)
_NDTRI_B = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
            -1.328068155288572e01)
_NDTRI_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
            4.374664141464968e00, 2.938163982698783e00)
_NDTRI_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)


def _horner(coefs: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    acc = x * 0.0 + coefs[0]
    for c in coefs[1:]:
        acc = acc * x + c
    return acc


def ndtri_lower(p: torch.Tensor) -> torch.Tensor:
    """Normal quantile ``N^-1(p)`` for ``0 < p <= 1/2`` to 1.2e-9 relative (0 for ``p >= 1/2``; a finite
    value near -38.5 for ``p <= 0``), from arithmetic, one ``log`` and one ``sqrt``.

    For starting guesses inside compiled kernels: ``torch.special.ndtri`` is a scalar call there (about
    14 ns an element on one core), while this vectorises. Not a replacement where full accuracy matters.
    """
    tiny = torch.finfo(p.dtype).tiny
    pc = torch.clamp(p, min=_NDTRI_LOW, max=0.5) - 0.5
    r = pc * pc
    central = _horner(_NDTRI_A, r) * pc / (_horner(_NDTRI_B, r) * r + 1.0)
    t = torch.sqrt(-2.0 * torch.log(torch.clamp(p, min=tiny, max=_NDTRI_LOW)))
    tail = _horner(_NDTRI_C, t) / (_horner(_NDTRI_D, t) * t + 1.0)
    return torch.where(p < _NDTRI_LOW, tail, central)


def ndtri_guess(p: torch.Tensor) -> torch.Tensor:
    """:func:`ndtri_lower` when traced by torch.compile (it vectorises), ``torch.special.ndtri`` eager
    (one library pass is cheaper there than the approximation's elementwise passes), for ``p <= 1/2``."""
    if torch.compiler.is_compiling():
        return ndtri_lower(p)
    return torch.special.ndtri(torch.clamp(p, max=0.5))


_RIGHT_WORDS = {"c": 1.0, "call": 1.0, "p": -1.0, "put": -1.0, "1": 1.0, "-1": -1.0, "1.0": 1.0, "-1.0": -1.0}


def parse_right(
    values: Any, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float64, strict: bool = True
) -> torch.Tensor:
    """Map 'C'/'P'/'call'/'put'/1/-1 (any case; a scalar or a sequence) to a tensor of +1.0 / -1.0.

    With ``strict`` an unknown value raises :class:`DataError` naming it and its position; without it the
    unknown entries become NaN (a batch flags them and goes on).
    """
    if isinstance(values, torch.Tensor):
        t = values.to(device=device or values.device, dtype=dtype)
        bad = ~((t == 1.0) | (t == -1.0))
        if strict and bool(bad.any()):
            pos = int(torch.nonzero(bad.flatten())[0])
            raise DataError("right", t.flatten()[pos].item(), "must be +1 (call) or -1 (put)", pos)
        return torch.where(bad, torch.full_like(t, float("nan")), t)
    scalar = isinstance(values, str | int | float | np.generic) and not isinstance(values, bool)
    seq = [values] if scalar else list(np.asarray(values, dtype=object).ravel())
    out = np.empty(len(seq), dtype=np.float64)
    for i, v in enumerate(seq):
        key = str(v).strip().lower() if v is not None else ""
        r = _RIGHT_WORDS.get(key)
        if r is None:
            if strict:
                raise DataError("right", v, "must be C/P/call/put/1/-1", i)
            r = float("nan")
        out[i] = r
    t = torch.as_tensor(out, device=device).to(dtype)
    if scalar:
        return t[0]
    if not isinstance(values, list | tuple):
        t = t.reshape(np.shape(values))
    return t
