"""European options in closed form: Black-Scholes-Merton (spot) and Black-76 (forward).

Units: ``ttm`` in years (ACT/365); ``rate`` and ``div_yield`` continuously compounded; ``vol`` annualised;
``right`` +1.0 call / -1.0 put (see :func:`parse_right`). Greeks: ``delta`` per unit of spot (forward for
Black-76), ``gamma`` per unit squared, ``vega`` per 1.00 of vol, ``theta`` per year of calendar time
(``-dV/dttm``) and ``theta_per_day`` = theta / 365, ``rho`` per 1.00 of rate, ``epsilon`` per 1.00 of
dividend yield, ``vanna`` = d delta / d vol, ``volga`` = d vega / d vol, ``charm`` = -d delta / d ttm
(per year).

Limits are values, not NaN: at ``ttm == 0`` or ``vol == 0`` the price is the discounted intrinsic value
of the forward and gamma, vega, vanna and volga are zero. Inputs outside the domain (spot or strike
<= 0, ttm < 0, vol < 0, right not +-1, NaN) give NaN in every output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from greekfire.quant._black import otm_price
from greekfire.quant._fused import DEFAULT_MIN_SIZE, run_kernel
from greekfire.quant._tensors import DAYS_PER_YEAR, INV_SQRT_2PI, TensorLike, as_tensors, norm_cdf

GREEK_NAMES = (
    "value",
    "delta",
    "gamma",
    "vega",
    "theta",
    "theta_per_day",
    "rho",
    "epsilon",
    "vanna",
    "volga",
    "charm",
)

_D_CLAMP = 1e8  # |d1| beyond this changes no CDF or density; keeps 0 * d products finite


def _accurate_value(
    w: torch.Tensor,
    ln_fk: torch.Tensor,
    s: torch.Tensor,
    s_safe: torch.Tensor,
    live: torch.Tensor,
    fwd_pv: torch.Tensor,
    strike_pv: torch.Tensor,
    n1: torch.Tensor,
    n2: torch.Tensor,
) -> torch.Tensor:
    """Option value with full relative accuracy far out of the money.

    The textbook difference ``F N(d1) - K N(d2)`` cancels when both terms are much larger than the
    value; we price the out-of-the-money side in normalised form (:mod:`greekfire.quant._black`) and
    add the intrinsic value (put-call parity), which keeps every digit the inputs determine.
    """
    # fold onto x <= 0 with the tie at the money kept on one side, so autograd sees one smooth branch
    upper = ln_fk > 0
    otm = otm_price(torch.where(upper, -ln_fk, ln_fk), s_safe) * torch.sqrt(fwd_pv * strike_pv)
    intrinsic = torch.where(upper == (w > 0), w * (fwd_pv - strike_pv), torch.zeros_like(fwd_pv))
    return torch.where(live, intrinsic + otm, w * (fwd_pv * n1 - strike_pv * n2))


REFINE_BELOW = 1e-4  # normalised out-of-the-money value below which the textbook form loses > 4 digits


def _textbook_value(
    w: torch.Tensor,
    ln_fk: torch.Tensor,
    live: torch.Tensor,
    fwd_pv: torch.Tensor,
    strike_pv: torch.Tensor,
    n1: torch.Tensor,
    n2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``w (F N(w d1) - K N(w d2))`` discounted, and where it should be replaced by the accurate value."""
    value = w * (fwd_pv * n1 - strike_pv * n2)
    upper = ln_fk > 0
    intrinsic = torch.where(upper == (w > 0), w * (fwd_pv - strike_pv), torch.zeros_like(fwd_pv))
    refine = live & (value - intrinsic < REFINE_BELOW * torch.sqrt(fwd_pv * strike_pv))
    return value, refine


def _refine_values(
    out: dict[str, torch.Tensor], price_fn: Any, args: tuple[torch.Tensor, ...], compile: bool | None
) -> dict[str, torch.Tensor]:
    """Replace the flagged textbook values by the accurate ones (only those rows are recomputed)."""
    refine = out.pop("_refine")
    if any(a.requires_grad for a in args):
        out["value"] = torch.where(refine, price_fn(*args, compile=False), out["value"])
    else:
        # one index list and index_select: a boolean mask per argument rescans the whole batch each time
        # (it cost a third of the fused Greeks on 1M options, for the ~4% of rows refined)
        rows = torch.nonzero(refine.reshape(-1)).squeeze(1)
        if rows.numel():
            sub = tuple(a.reshape(-1).index_select(0, rows) for a in args)
            # a large batch that took the fused path fuses its refinement too
            fused = compile if compile is not None else refine.numel() >= DEFAULT_MIN_SIZE
            refined = price_fn(*sub, compile=fused)
            value = out["value"]
            if value.is_contiguous():  # the kernel's own fresh output: overwrite the rows in place
                value.view(-1).index_copy_(0, rows, refined)
            else:
                out["value"] = value.reshape(-1).index_copy(0, rows, refined).reshape(refine.shape)
    return out


def _bsm_kernel(
    w: torch.Tensor,
    S: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    v: torch.Tensor,
    greeks: bool = True,
) -> dict[str, torch.Tensor]:
    valid = (S > 0) & (K > 0) & (T >= 0) & (v >= 0) & (w.abs() == 1) & torch.isfinite(r) & torch.isfinite(q)
    poison = torch.where(valid, torch.zeros_like(S), torch.full_like(S, float("nan")))
    Tc = torch.clamp(T, min=0.0)
    sqrtT = torch.sqrt(Tc)
    s = v * sqrtT
    live = s > 0
    s_safe = torch.where(live, s, torch.ones_like(s))
    Dr = torch.exp(-r * Tc)
    Dq = torch.exp(-q * Tc)
    ln_fk = torch.log(S / K) + (r - q) * Tc
    d1 = torch.clamp(ln_fk / s_safe + 0.5 * s_safe, -_D_CLAMP, _D_CLAMP)
    d2 = d1 - s_safe
    # at zero total vol both probabilities are the exercise indicator of the forward (1/2 at the money)
    step = torch.where(w * ln_fk > 0, 1.0, torch.where(ln_fk == 0, 0.5, 0.0)).to(S.dtype)
    n1 = torch.where(live, norm_cdf(w * d1), step)
    n2 = torch.where(live, norm_cdf(w * d2), step)
    SDq = S * Dq
    KDr = K * Dr
    if not greeks:
        return {"value": _accurate_value(w, ln_fk, s, s_safe, live, SDq, KDr, n1, n2) + poison}
    # with the Greeks, the textbook value; the few far out-of-the-money rows where it cancels are flagged
    # and repriced by the accurate path outside this kernel (see _refine_values)
    value, refine = _textbook_value(w, ln_fk, live, SDq, KDr, n1, n2)
    out = {"value": value + poison, "_refine": refine}
    pdf = torch.where(live, torch.exp(-0.5 * d1 * d1) * INV_SQRT_2PI, torch.zeros_like(d1))
    v_safe = torch.where(v > 0, v, torch.ones_like(v))
    sqrtT_safe = torch.where(sqrtT > 0, sqrtT, torch.ones_like(sqrtT))
    T_safe = torch.where(Tc > 0, Tc, torch.ones_like(Tc))
    delta = w * Dq * n1
    vega = SDq * pdf * sqrtT
    theta = -SDq * pdf * v / (2.0 * sqrtT_safe) - w * r * KDr * n2 + w * q * SDq * n1
    out["delta"] = delta + poison
    out["gamma"] = Dq * pdf / (S * s_safe) + poison
    out["vega"] = vega + poison
    out["theta"] = theta + poison
    out["theta_per_day"] = theta / DAYS_PER_YEAR + poison
    out["rho"] = w * KDr * Tc * n2 + poison
    out["epsilon"] = -w * SDq * Tc * n1 + poison
    out["vanna"] = -Dq * pdf * d2 / v_safe + poison
    out["volga"] = vega * d1 * d2 / v_safe + poison
    out["charm"] = w * q * Dq * n1 - Dq * pdf * (2.0 * (r - q) * Tc - d2 * s) / (2.0 * T_safe * s_safe) + poison
    return out


def _black76_kernel(
    w: torch.Tensor,
    F: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    r: torch.Tensor,
    v: torch.Tensor,
    greeks: bool = True,
) -> dict[str, torch.Tensor]:
    valid = (F > 0) & (K > 0) & (T >= 0) & (v >= 0) & (w.abs() == 1) & torch.isfinite(r)
    poison = torch.where(valid, torch.zeros_like(F), torch.full_like(F, float("nan")))
    Tc = torch.clamp(T, min=0.0)
    sqrtT = torch.sqrt(Tc)
    s = v * sqrtT
    live = s > 0
    s_safe = torch.where(live, s, torch.ones_like(s))
    Dr = torch.exp(-r * Tc)
    ln_fk = torch.log(F / K)
    d1 = torch.clamp(ln_fk / s_safe + 0.5 * s_safe, -_D_CLAMP, _D_CLAMP)
    d2 = d1 - s_safe
    step = torch.where(w * ln_fk > 0, 1.0, torch.where(ln_fk == 0, 0.5, 0.0)).to(F.dtype)
    n1 = torch.where(live, norm_cdf(w * d1), step)
    n2 = torch.where(live, norm_cdf(w * d2), step)
    if not greeks:
        return {"value": _accurate_value(w, ln_fk, s, s_safe, live, Dr * F, Dr * K, n1, n2) + poison}
    value, refine = _textbook_value(w, ln_fk, live, Dr * F, Dr * K, n1, n2)
    out = {"value": value + poison, "_refine": refine}
    pdf = torch.where(live, torch.exp(-0.5 * d1 * d1) * INV_SQRT_2PI, torch.zeros_like(d1))
    v_safe = torch.where(v > 0, v, torch.ones_like(v))
    sqrtT_safe = torch.where(sqrtT > 0, sqrtT, torch.ones_like(sqrtT))
    T_safe = torch.where(Tc > 0, Tc, torch.ones_like(Tc))
    vega = Dr * F * pdf * sqrtT
    theta = r * value - Dr * F * pdf * v / (2.0 * sqrtT_safe)
    out["delta"] = w * Dr * n1 + poison
    out["gamma"] = Dr * pdf / (F * s_safe) + poison
    out["vega"] = vega + poison
    out["theta"] = theta + poison
    out["theta_per_day"] = theta / DAYS_PER_YEAR + poison
    out["rho"] = -Tc * value + poison
    out["epsilon"] = torch.zeros_like(F) + poison
    out["vanna"] = -Dr * pdf * d2 / v_safe + poison
    out["volga"] = vega * d1 * d2 / v_safe + poison
    out["charm"] = w * r * Dr * n1 + Dr * pdf * d2 / (2.0 * T_safe) * live.to(F.dtype) + poison
    return out


def bsm_price(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    compile: bool | None = None,
) -> torch.Tensor:
    """Black-Scholes-Merton price of European options (currency per unit of underlying).

    ``ttm`` years, ``rate``/``div_yield`` continuously compounded, ``vol`` annualised; inputs broadcast;
    the result is on the inputs' device and dtype. ``compile``: None fuses large batches with
    torch.compile, True/False force it on/off.
    """
    args = tuple(as_tensors(right, spot, strike, ttm, rate, div_yield, vol))
    return run_kernel(_bsm_kernel, args, compile=compile, numel=args[0].numel(), greeks=False)["value"]


def bsm_greeks(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    compile: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Price and all Greeks of European options under Black-Scholes-Merton (units in the module doc).

    Returns a dict with keys :data:`GREEK_NAMES`: value, delta, gamma, vega (per 1.00 vol), theta (per
    year), theta_per_day, rho (per 1.00 rate), epsilon (per 1.00 dividend yield), vanna, volga, charm.
    """
    args = tuple(as_tensors(right, spot, strike, ttm, rate, div_yield, vol))
    out = run_kernel(_bsm_kernel, args, compile=compile, numel=args[0].numel(), greeks=True)
    return _refine_values(dict(out), bsm_price, args, compile)


def black76_price(
    right: TensorLike,
    forward: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    vol: TensorLike,
    *,
    compile: bool | None = None,
) -> torch.Tensor:
    """Black-76 price of European options on a forward (discounted at ``rate`` over ``ttm`` years)."""
    args = tuple(as_tensors(right, forward, strike, ttm, rate, vol))
    return run_kernel(_black76_kernel, args, compile=compile, numel=args[0].numel(), greeks=False)["value"]


def black76_greeks(
    right: TensorLike,
    forward: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    vol: TensorLike,
    *,
    compile: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Price and Greeks under Black-76; delta/gamma are with respect to the forward, rho holds the
    forward fixed (``-ttm * value``), theta is ``-dV/dttm`` with the forward fixed, epsilon is zero."""
    args = tuple(as_tensors(right, forward, strike, ttm, rate, vol))
    out = run_kernel(_black76_kernel, args, compile=compile, numel=args[0].numel(), greeks=True)
    return _refine_values(dict(out), black76_price, args, compile)


def bsm_greeks_numpy(
    right: Any, spot: Any, strike: Any, ttm: Any, rate: Any, div_yield: Any, vol: Any
) -> dict[str, np.ndarray]:
    """:func:`bsm_greeks` for numpy arrays or pandas columns (``right`` may be 'C'/'P' strings)."""
    from greekfire.quant._tensors import parse_right

    w = parse_right(np.asarray(right), strict=False)
    cols = [np.asarray(x, dtype=np.float64) for x in (spot, strike, ttm, rate, div_yield, vol)]
    out = bsm_greeks(w, *(torch.from_numpy(np.ascontiguousarray(c)) for c in cols))
    return {k: v.numpy() for k, v in out.items()}
