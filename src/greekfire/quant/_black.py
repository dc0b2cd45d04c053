"""The normalised Black price of an out-of-the-money option, accurate far in the wings.

With ``x = ln(F/K) <= 0`` and total vol ``s = vol * sqrt(ttm)``, the undiscounted out-of-the-money price
divided by ``sqrt(F K)`` is ``b(x, s) = exp(x/2) N(x/s + s/2) - exp(-x/2) N(x/s - s/2)``. Written that way
its two terms cancel when the option is far out of the money; below the inflection point ``s^2 < 2|x|``
we use the scaled complementary error function instead, which keeps full relative accuracy:
``b = 1/2 exp(-(h^2 + t^2)/2) (erfcx(-(h+t)/sqrt2) - erfcx(-(h-t)/sqrt2))`` with ``h = x/s``, ``t = s/2``.
Above it, ``b = b_max - c`` where the gap to the cap ``c`` is a sum of two positive tails.
"""

from __future__ import annotations

import torch

from greekfire.quant._tensors import INV_SQRT_2PI, SQRT_2


def otm_parts(x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``x <= 0`` and ``s > 0``: the normalised OTM price ``b``, its gap to the cap
    ``c = exp(x/2) - b`` and ``db/ds`` (the normalised vega)."""
    h = x / s
    t = 0.5 * s
    lower = h + t < 0
    scale = torch.exp(-0.5 * (h * h + t * t))
    a1 = torch.clamp(-(h + t) / SQRT_2, min=0.0)
    a2 = -(h - t) / SQRT_2
    b_low = 0.5 * scale * (torch.special.erfcx(a1) - torch.special.erfcx(a2))
    c_up = torch.exp(0.5 * x) * torch.special.ndtr(-(h + t)) + torch.exp(-0.5 * x) * torch.special.ndtr(h - t)
    b_max = torch.exp(0.5 * x)
    b = torch.where(lower, b_low, b_max - c_up)
    c = torch.where(lower, b_max - b_low, c_up)
    return b, c, scale * INV_SQRT_2PI


def otm_price_low(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Only the erfcx branch of :func:`otm_parts` (valid where ``x/s + s/2 < 0``; garbage elsewhere)."""
    h = x / s
    t = 0.5 * s
    scale = torch.exp(-0.5 * (h * h + t * t))
    a1 = torch.clamp(-(h + t) / SQRT_2, min=0.0)
    a2 = -(h - t) / SQRT_2
    return 0.5 * scale * (torch.special.erfcx(a1) - torch.special.erfcx(a2))
