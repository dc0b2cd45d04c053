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

The kernels are written for torch.compile's CPU code generator as much as for eager torch: conditions
are combined with nested ``where`` and arithmetic rather than ``&``/``|`` on masks, and no output is
boolean, because inductor vectorises blends but lowers mask logic and boolean stores to scalar loops.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from greekfire.core.errors import DataError
from greekfire.quant._black import norm_cdf_given_density, otm_price
from greekfire.quant._fused import run_kernel, wants_compile
from greekfire.quant._tensors import DAYS_PER_YEAR, INV_SQRT_2PI, TensorLike, as_tensors, parse_right

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
# the value and the Greeks QuantLib's analytic European engine reports (NPV, delta, gamma, vega, theta, rho,
# dividendRho); py_vollib_vectorized's get_all_greeks gives the same less epsilon
STANDARD_GREEKS = ("value", "delta", "gamma", "vega", "theta", "rho", "epsilon")

_D_CLAMP = 1e8  # |d1| beyond this changes no CDF or density; keeps 0 * d products finite
# the textbook value is kept where its two terms sum to less than this times it (it loses < 3 digits);
# elsewhere (far out of the money at small total vol) the accurate form reprices it
CANCELLATION_LIMIT = 1e3
# a value the kernel marks for repricing by the accurate path (no real value is -inf; NaN stays NaN)
_REFINE_MARK = float("-inf")


def _check_names(names: str | Iterable[str] | None) -> tuple[str, ...]:
    """The requested outputs as a tuple in the caller's order (all of :data:`GREEK_NAMES` for None)."""
    if names is None:
        return GREEK_NAMES
    picked = (names,) if isinstance(names, str) else tuple(names)
    if not picked:
        raise DataError("names", names, f"name at least one of {', '.join(GREEK_NAMES)}")
    for n in picked:
        if n not in GREEK_NAMES:
            raise DataError("names", n, f"must be one of {', '.join(GREEK_NAMES)}")
    return tuple(dict.fromkeys(picked))


def _poison(w: torch.Tensor, S: torch.Tensor, K: torch.Tensor, T: torch.Tensor, v: torch.Tensor,
            *finite: torch.Tensor) -> torch.Tensor:
    """0 where the inputs are in the domain, NaN elsewhere (spot or strike <= 0, ttm or vol < 0,
    right not +-1, a NaN, or a non-finite rate / yield in ``finite``); one nested blend, no mask logic."""
    ok = torch.where(torch.minimum(S, K) > 0, torch.minimum(T, v), -1.0)  # NaN compares False: poisoned
    ok = torch.where(w.abs() == 1, ok, -1.0)
    poison = torch.where(ok >= 0, torch.zeros_like(S), float("nan"))
    for x in finite:
        poison = poison + x * 0.0  # inf * 0 and NaN * 0 are NaN
    return poison


def _parity_intrinsic(w: torch.Tensor, ln_fk: torch.Tensor, fwd_pv: torch.Tensor, strike_pv: torch.Tensor) -> torch.Tensor:
    """Discounted intrinsic value of the forward on the in-the-money side (``ln(F/K) > 0`` for calls,
    ``<= 0`` for puts, so at the money it falls on one side); zero on the other side."""
    itm = torch.where(ln_fk > 0, w, -w) > 0
    return torch.where(itm, w * (fwd_pv - strike_pv), 0.0)


def _accurate_value(
    w: torch.Tensor,
    ln_fk: torch.Tensor,
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
    otm = otm_price(torch.where(ln_fk > 0, -ln_fk, ln_fk), s_safe) * torch.sqrt(fwd_pv * strike_pv)
    intrinsic = _parity_intrinsic(w, ln_fk, fwd_pv, strike_pv)
    return torch.where(live, intrinsic + otm, w * (fwd_pv * n1 - strike_pv * n2))


def _marked_textbook_value(
    w: torch.Tensor,
    live: torch.Tensor,
    fwd_pv: torch.Tensor,
    strike_pv: torch.Tensor,
    n1: torch.Tensor,
    n2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``w (F N(w d1) - K N(w d2))`` discounted, and the same with :data:`_REFINE_MARK` where the two
    terms cancel by more than :data:`CANCELLATION_LIMIT` (those rows are repriced accurately later)."""
    value = w * (fwd_pv * n1 - strike_pv * n2)
    # rounding leaves an error of a few eps times the sum of the terms, so the relative error of the
    # value kept is below ~1e-12; a value <= 0 that should be positive is marked too
    cancel = fwd_pv * n1 + strike_pv * n2 - CANCELLATION_LIMIT * value
    return value, torch.where(live, torch.where(cancel >= 0, _REFINE_MARK, value), value)


def _refine_values(
    out: dict[str, torch.Tensor], price_fn: Any, args: tuple[torch.Tensor, ...], compile: bool | None
) -> dict[str, torch.Tensor]:
    """Replace the values the kernel marked by the accurate ones (only those rows are recomputed)."""
    if "value" not in out:
        return out
    value = out["value"]
    refine = value == _REFINE_MARK
    if any(a.requires_grad for a in args):
        out["value"] = torch.where(refine, price_fn(*args, compile=False), value)
        return out
    # one index list and index_select: a boolean mask per argument would rescan the whole batch each time
    rows = torch.nonzero(refine.reshape(-1)).squeeze(1)
    if rows.numel():
        sub = tuple(a.reshape(-1).index_select(0, rows) for a in args)
        # a large batch that took the fused path fuses its refinement too
        fused = wants_compile(compile, refine.numel(), "refine")
        refined = price_fn(*sub, compile=fused)
        if value.is_contiguous():  # the kernel's own fresh output: overwrite the rows in place
            value.view(-1).index_copy_(0, rows, refined)
        else:
            out["value"] = value.reshape(-1).index_copy(0, rows, refined).reshape(refine.shape)
    return out


def _exercise_step(w: torch.Tensor, ln_fk: torch.Tensor) -> torch.Tensor:
    """Both exercise probabilities at zero total vol: 1 in the money, 0 out of it, 1/2 at the money."""
    return torch.where(w * ln_fk > 0, 1.0, torch.where(ln_fk == 0, torch.full_like(ln_fk, 0.5), 0.0))


def _probabilities(
    w: torch.Tensor, ln_fk: torch.Tensor, live: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``N(w d1)``, ``N(w d2)`` and the density ``phi(d1)`` (the exercise step and 0 at zero total vol)."""
    step = _exercise_step(w, ln_fk)
    e1 = torch.exp(-0.5 * d1 * d1)
    n1 = torch.where(live, norm_cdf_given_density(w * d1, e1), step)
    n2 = torch.where(live, norm_cdf_given_density(w * d2), step)
    pdf = torch.where(live, e1 * INV_SQRT_2PI, 0.0)
    return n1, n2, pdf


def _bsm_kernel(
    w: torch.Tensor,
    S: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    v: torch.Tensor,
    names: tuple[str, ...] = GREEK_NAMES,
    greeks: bool = True,
) -> dict[str, torch.Tensor]:
    poison = _poison(w, S, K, T, v, r, q)
    Tc = torch.clamp(T, min=0.0)
    sqrtT = torch.sqrt(Tc)
    s = v * sqrtT
    live = s > 0
    s_safe = torch.where(live, s, 1.0)
    Dr = torch.exp(-r * Tc)
    Dq = torch.exp(-q * Tc)
    ln_fk = torch.log(S / K) + (r - q) * Tc
    d1 = torch.clamp(ln_fk / s_safe + 0.5 * s_safe, -_D_CLAMP, _D_CLAMP)
    d2 = d1 - s_safe
    SDq = S * Dq
    KDr = K * Dr
    if not greeks:
        # the accurate value needs the probabilities only where the total vol is zero
        step = _exercise_step(w, ln_fk)
        return {"value": _accurate_value(w, ln_fk, s_safe, live, SDq, KDr, step, step) + poison}
    # with the Greeks, the textbook value; the few far out-of-the-money rows where it cancels are marked
    # and repriced by the accurate path outside this kernel (see _refine_values)
    n1, n2, pdf = _probabilities(w, ln_fk, live, d1, d2)
    out: dict[str, torch.Tensor] = {}
    want = set(names)
    if "value" in want:
        out["value"] = _marked_textbook_value(w, live, SDq, KDr, n1, n2)[1] + poison
    if "delta" in want:
        out["delta"] = w * Dq * n1 + poison
    if "gamma" in want:
        out["gamma"] = Dq * pdf / (S * s_safe) + poison
    if want & {"vega", "volga"}:
        vega = SDq * pdf * sqrtT
        out["vega"] = vega + poison
    if want & {"theta", "theta_per_day"}:
        sqrtT_safe = torch.where(sqrtT > 0, sqrtT, 1.0)
        theta = -SDq * pdf * v / (2.0 * sqrtT_safe) - w * r * KDr * n2 + w * q * SDq * n1
        out["theta"] = theta + poison
        out["theta_per_day"] = theta / DAYS_PER_YEAR + poison
    if "rho" in want:
        out["rho"] = w * KDr * Tc * n2 + poison
    if "epsilon" in want:
        out["epsilon"] = -w * SDq * Tc * n1 + poison
    v_safe = torch.where(v > 0, v, 1.0)
    if "vanna" in want:
        out["vanna"] = -Dq * pdf * d2 / v_safe + poison
    if "volga" in want:
        out["volga"] = vega * d1 * d2 / v_safe + poison
    if "charm" in want:
        T_safe = torch.where(Tc > 0, Tc, 1.0)
        out["charm"] = w * q * Dq * n1 - Dq * pdf * (2.0 * (r - q) * Tc - d2 * s) / (2.0 * T_safe * s_safe) + poison
    return {k: out[k] for k in names}


def _black76_kernel(
    w: torch.Tensor,
    F: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    r: torch.Tensor,
    v: torch.Tensor,
    names: tuple[str, ...] = GREEK_NAMES,
    greeks: bool = True,
) -> dict[str, torch.Tensor]:
    poison = _poison(w, F, K, T, v, r)
    Tc = torch.clamp(T, min=0.0)
    sqrtT = torch.sqrt(Tc)
    s = v * sqrtT
    live = s > 0
    s_safe = torch.where(live, s, 1.0)
    Dr = torch.exp(-r * Tc)
    ln_fk = torch.log(F / K)
    d1 = torch.clamp(ln_fk / s_safe + 0.5 * s_safe, -_D_CLAMP, _D_CLAMP)
    d2 = d1 - s_safe
    FD = Dr * F
    KD = Dr * K
    if not greeks:
        step = _exercise_step(w, ln_fk)
        return {"value": _accurate_value(w, ln_fk, s_safe, live, FD, KD, step, step) + poison}
    n1, n2, pdf = _probabilities(w, ln_fk, live, d1, d2)
    value, marked = _marked_textbook_value(w, live, FD, KD, n1, n2)
    out: dict[str, torch.Tensor] = {}
    want = set(names)
    if "value" in want:
        out["value"] = marked + poison
    if "delta" in want:
        out["delta"] = w * Dr * n1 + poison
    if "gamma" in want:
        out["gamma"] = Dr * pdf / (F * s_safe) + poison
    if want & {"vega", "volga"}:
        vega = FD * pdf * sqrtT
        out["vega"] = vega + poison
    if want & {"theta", "theta_per_day"}:
        sqrtT_safe = torch.where(sqrtT > 0, sqrtT, 1.0)
        theta = r * value - FD * pdf * v / (2.0 * sqrtT_safe)
        out["theta"] = theta + poison
        out["theta_per_day"] = theta / DAYS_PER_YEAR + poison
    if "rho" in want:
        out["rho"] = -Tc * value + poison
    if "epsilon" in want:
        out["epsilon"] = torch.zeros_like(F) + poison
    v_safe = torch.where(v > 0, v, 1.0)
    if "vanna" in want:
        out["vanna"] = -Dr * pdf * d2 / v_safe + poison
    if "volga" in want:
        out["volga"] = vega * d1 * d2 / v_safe + poison
    if "charm" in want:
        T_safe = torch.where(Tc > 0, Tc, 1.0)
        out["charm"] = w * r * Dr * n1 + Dr * pdf * d2 / (2.0 * T_safe) * live.to(F.dtype) + poison
    return {k: out[k] for k in names}


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
    names: str | Iterable[str] | None = None,
    compile: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Price and Greeks of European options under Black-Scholes-Merton (units in the module doc).

    Returns a dict keyed by ``names`` (in that order), by default all of :data:`GREEK_NAMES`: value,
    delta, gamma, vega (per 1.00 vol), theta (per year), theta_per_day, rho (per 1.00 rate), epsilon
    (per 1.00 dividend yield), vanna, volga, charm. Only the outputs asked for are computed, so
    ``names=STANDARD_GREEKS`` (value, delta, gamma, vega, theta, rho, epsilon) is cheaper than all.
    An unknown name raises :class:`DataError`.
    """
    picked = _check_names(names)
    args = tuple(as_tensors(right, spot, strike, ttm, rate, div_yield, vol))
    out = run_kernel(_bsm_kernel, args, compile=compile, numel=args[0].numel(), names=picked, greeks=True)
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
    names: str | Iterable[str] | None = None,
    compile: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Price and Greeks under Black-76; delta/gamma are with respect to the forward, rho holds the
    forward fixed (``-ttm * value``), theta is ``-dV/dttm`` with the forward fixed, epsilon is zero.
    ``names`` selects the outputs as in :func:`bsm_greeks`."""
    picked = _check_names(names)
    args = tuple(as_tensors(right, forward, strike, ttm, rate, vol))
    out = run_kernel(_black76_kernel, args, compile=compile, numel=args[0].numel(), names=picked, greeks=True)
    return _refine_values(dict(out), black76_price, args, compile)


def bsm_greeks_numpy(
    right: Any,
    spot: Any,
    strike: Any,
    ttm: Any,
    rate: Any,
    div_yield: Any,
    vol: Any,
    *,
    names: str | Iterable[str] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`bsm_greeks` for numpy arrays or pandas columns (``right`` may be 'C'/'P' strings)."""
    w = parse_right(np.asarray(right), strict=False)
    cols = [np.asarray(x, dtype=np.float64) for x in (spot, strike, ttm, rate, div_yield, vol)]
    out = bsm_greeks(w, *(torch.from_numpy(np.ascontiguousarray(c)) for c in cols), names=names)
    return {k: v.numpy() for k, v in out.items()}
