"""Implied volatility of European quotes, vectorized, in a fixed number of iterations.

Method (our own, in the spirit of Jäckel's "Let's Be Rational"): each quote is normalised to Black space,
``x = ln(F/K)``, ``beta = price / (D * sqrt(F K))``; an in-the-money quote becomes the out-of-the-money
price of the same strike by put-call parity, so every quote is solved on ``b(x, s)``, the normalised
out-of-the-money price as a function of the total volatility ``s = vol * sqrt(ttm)``. Below the inflection
point ``s_c = sqrt(2|x|)`` we solve ``ln b = ln beta`` (b is tiny and nearly log-quadratic there), above it
``ln(b_max - b) = ln(b_max - beta)`` (the price saturates). Each element starts from an asymptotic guess
and takes the same fixed number of third-order Householder steps inside a shrinking bracket, so a batch
never waits on its worst element. Prices of out-of-the-money options are evaluated with the scaled
complementary error function (``erfcx``) to keep relative accuracy far in the wings.

Quotes that cannot have an implied vol get NaN and a reason code (:data:`IV_REASONS`); nothing raises.
Units: ``ttm`` years, ``rate`` / ``div_yield`` continuously compounded, result annualised vol.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from greekfire.quant._black import otm_parts
from greekfire.quant._fused import run_kernel
from greekfire.quant._tensors import TensorLike, as_tensors

IV_REASONS: dict[int, str] = {
    0: "",
    1: "below_intrinsic",
    2: "above_max",
    3: "no_time_value",
    4: "expired",
    5: "bad_input",
}
OK, BELOW_INTRINSIC, ABOVE_MAX, NO_TIME_VALUE, EXPIRED, BAD_INPUT = range(6)

DEFAULT_ITERATIONS = 5


class IVResult(NamedTuple):
    """Implied vols (NaN where there is none) and int8 reason codes (keys of :data:`IV_REASONS`)."""

    vol: torch.Tensor
    code: torch.Tensor


def _iv_kernel(
    price: torch.Tensor,
    w: torch.Tensor,
    S: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    iterations: int = DEFAULT_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    finite = (
        torch.isfinite(price) & torch.isfinite(S) & torch.isfinite(K) & torch.isfinite(T)
        & torch.isfinite(r) & torch.isfinite(q)
    )
    bad = ~finite | (S <= 0) | (K <= 0) | (w.abs() != 1) | (price < 0)
    expired = ~bad & (T <= 0)
    Tp = torch.where(T > 0, T, torch.ones_like(T))
    ln_fk = torch.log(S / K) + (r - q) * Tp
    disc_sqrt_fk = torch.exp(-r * Tp) * torch.sqrt(S * K) * torch.exp(0.5 * (r - q) * Tp - 0.0 * r)
    # D*sqrt(FK) = exp(-rT) * sqrt(S K) * exp((r-q)T/2)
    beta = price / disc_sqrt_fk
    x = -ln_fk.abs()
    half = 0.5 * ln_fk
    intrinsic = torch.clamp(w * (torch.exp(half) - torch.exp(-half)), min=0.0)
    b_max_w = torch.exp(w * half)
    beta_otm = beta - intrinsic
    below = ~bad & ~expired & (beta_otm < 0)
    above = ~bad & ~expired & ~below & (beta >= b_max_w)
    no_tv = ~bad & ~expired & ~below & ~above & (beta_otm <= 0)
    solve = ~(bad | expired | below | above | no_tv)

    b_max = torch.exp(0.5 * x)
    target = torch.where(solve, beta_otm, 0.5 * b_max)
    s_c = torch.sqrt(-2.0 * x)
    b_c, _, _ = otm_parts(x, torch.where(s_c > 0, s_c, torch.ones_like(s_c)))
    b_c = torch.where(s_c > 0, b_c, torch.zeros_like(b_c))
    lower_target = target < b_c
    tiny = torch.finfo(target.dtype).tiny
    ln_target = torch.log(torch.clamp(target, min=tiny))
    cap_gap = torch.clamp(b_max - target, min=tiny)
    ln_cap_gap = torch.log(cap_gap)

    # starting points: below s_c the price is ~exp(-x^2 / 2 s^2), above it the cap gap is ~2 cosh(x/2) N(-s/2)
    s_low = -x / torch.sqrt(torch.clamp(-2.0 * ln_target, min=1e-300))
    s_up = -2.0 * torch.special.ndtri(torch.clamp(cap_gap / (2.0 * torch.cosh(0.5 * x)), max=0.5))
    s = torch.where(lower_target, torch.minimum(s_low, s_c), torch.maximum(s_up, s_c))
    lo = torch.where(lower_target, torch.zeros_like(s), s_c)
    hi = torch.where(lower_target, s_c, torch.full_like(s, math.inf))
    s = torch.where(s > 0, s, torch.where(lower_target, 0.5 * s_c, torch.ones_like(s)))
    s = torch.where(torch.isfinite(s), s, 0.5 * (lo + torch.where(torch.isfinite(hi), hi, lo + 2.0)))
    for _ in range(iterations):
        b, c, db = otm_parts(x, s)
        # bracket: b increases with s
        too_low = b < target
        lo = torch.where(too_low, torch.maximum(lo, s), lo)
        hi = torch.where(too_low, hi, torch.minimum(hi, s))
        g = torch.where(lower_target, b, c)
        ln_g_target = torch.where(lower_target, ln_target, ln_cap_gap)
        rr = torch.where(lower_target, db / b, -db / c)
        f = torch.log(torch.clamp(g, min=tiny)) - ln_g_target
        xs = x / s
        A = xs * xs / s - 0.25 * s
        B = A * A - 3.0 * xs * xs / (s * s) - 0.25
        g2 = A - rr
        g3 = B - 3.0 * A * rr + 2.0 * rr * rr
        nu = -f / rr
        step = nu * (1.0 + 0.5 * g2 * nu) / (1.0 + nu * (g2 + g3 * nu / 6.0))
        s_new = s + step
        inside = (s_new >= lo) & (s_new <= hi) & torch.isfinite(s_new)
        mid = torch.where(torch.isfinite(hi), 0.5 * (lo + hi), 2.0 * torch.maximum(s, lo))
        s = torch.where(inside, s_new, mid)

    vol = torch.where(solve, s / torch.sqrt(Tp), torch.full_like(s, math.nan))
    code = torch.zeros_like(s, dtype=torch.int8)
    code = torch.where(below, torch.full_like(code, BELOW_INTRINSIC), code)
    code = torch.where(above, torch.full_like(code, ABOVE_MAX), code)
    code = torch.where(no_tv, torch.full_like(code, NO_TIME_VALUE), code)
    code = torch.where(expired, torch.full_like(code, EXPIRED), code)
    code = torch.where(bad, torch.full_like(code, BAD_INPUT), code)
    return vol, code


def implied_vol(
    price: TensorLike,
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    *,
    iterations: int = DEFAULT_ITERATIONS,
    compile: bool | None = None,
) -> IVResult:
    """Black-Scholes-Merton implied vol (annualised) of European option prices (currency per unit).

    ``ttm`` in years, ``rate`` / ``div_yield`` continuously compounded; inputs broadcast. Solved in
    float64 whatever the input dtype (the result is cast back to it). Invalid quotes give NaN with a code:
    1 below_intrinsic, 2 above_max, 3 no_time_value, 4 expired, 5 bad_input (see :data:`IV_REASONS`).
    """
    tensors = as_tensors(price, right, spot, strike, ttm, rate, div_yield)
    out_dtype = tensors[0].dtype
    args = tuple(t.to(torch.float64) for t in tensors)
    vol, code = run_kernel(_iv_kernel, args, compile=compile, numel=args[0].numel(), iterations=iterations)
    return IVResult(vol.to(out_dtype), code)
