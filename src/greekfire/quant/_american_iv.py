"""Implied volatility of American quotes: a few bracketed secant steps on the whole batch.

The American price rises with vol, and it is never below the European price of the same option, so the
European implied vol of an American quote (one fast call of :func:`greekfire.quant.iv.implied_vol`) is an
upper bound on the American one and a close start: the gap is the early-exercise premium's share of the
price. From there each quote takes secant steps (the first one with the European vega as the slope) on
its time value (engine price less exercise value) against the quote's: on its logarithm out of the money,
where it is tiny and near log-quadratic in vol, on its square root in the money, where a deep quote's
price leaves its exercise value about quadratically in vol. Steps stay inside a bracket ``[lo, hi]``
that every evaluation narrows (a step that would leave it bisects instead). A quote leaves the batch once
its repriced value is within ``rtol`` of the quote or its step falls below rounding, so each engine call
prices only the quotes still open: 3-5 calls for most quotes.

Quotes without an American vol get NaN and the reason codes of :data:`greekfire.quant.iv.IV_REASONS`:
below the exercise value (``below_intrinsic``), at or above the spot (call) / strike (put)
(``above_max``), at the exercise value (``no_time_value``), above it but below the engine's price at
:data:`VOL_MIN` (``below_model_floor``: under the model's lower bound, not an arbitrage bound; real puts
quoted up to several dollars above intrinsic land here), above the engine's price at :data:`VOL_MAX`
(``above_max``); ``bad_input`` also where the engine gave no
finite price. Nothing raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from greekfire.core.errors import DataError
from greekfire.quant._tensors import TensorLike, as_tensors
from greekfire.quant.european import bsm_greeks
from greekfire.quant.iv import (
    ABOVE_MAX,
    BAD_INPUT,
    BELOW_INTRINSIC,
    BELOW_MODEL_FLOOR,
    EXPIRED,
    NO_TIME_VALUE,
    IVResult,
    implied_vol,
)

VOL_MIN = 1e-4
"""Lowest vol searched (annualised); a quote below the engine's price there has no time value to solve."""
VOL_MAX = 10.0
"""Highest vol searched (annualised); a quote above the engine's price there is coded ``above_max``."""
DEFAULT_RTOL = 1e-10
"""Repricing tolerance relative to the quote (a quote is solved when ``|price(vol) - quote|`` is below it)."""
DEFAULT_EVALUATIONS = 24
"""Most engine evaluations any quote takes (the batch's later calls price only the open quotes)."""

Pricer = Callable[..., torch.Tensor]


def american_iv(
    pricer: Pricer,
    price: TensorLike,
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    *,
    evaluations: int = DEFAULT_EVALUATIONS,
    rtol: float = DEFAULT_RTOL,
) -> IVResult:
    """Implied vols (annualised) of American prices under ``pricer(w, S, K, T, r, q, vol)`` (an American
    engine on 1-d tensors; units as :func:`greekfire.quant.european.bsm_price`).

    ``evaluations`` bounds the engine calls a quote takes; ``rtol`` is the repricing tolerance relative to
    the quote. Solved in float64 whatever the input dtype (cast back). Returns an :class:`IVResult`; see the
    module notes for the reason codes.
    """
    if evaluations < 1:
        raise DataError("evaluations", evaluations, "must be at least 1")
    if not rtol > 0:
        raise DataError("rtol", rtol, "must be > 0")
    tensors = as_tensors(price, right, spot, strike, ttm, rate, div_yield)
    out_dtype, shape = tensors[0].dtype, tensors[0].shape
    p, w, S, K, T, r, q = (t.to(torch.float64).reshape(-1) for t in tensors)
    finite = (torch.isfinite(p) & torch.isfinite(S) & torch.isfinite(K) & torch.isfinite(T) & torch.isfinite(r)
              & torch.isfinite(q))
    bad = ~finite | (S <= 0) | (K <= 0) | (w.abs() != 1) | (p < 0)
    expired = ~bad & (T <= 0)
    intrinsic = torch.clamp(w * (S - K), min=0.0)
    round_off = torch.where(intrinsic > 0, 8.0 * torch.finfo(p.dtype).eps * torch.maximum(S, K), torch.zeros_like(p))
    below = ~bad & ~expired & (p - intrinsic < -round_off)
    above = ~bad & ~expired & ~below & (p >= torch.where(w > 0, S, K))
    no_tv = ~bad & ~expired & ~below & ~above & (p - intrinsic <= round_off)
    solve = ~(bad | expired | below | above | no_tv)

    idx = torch.nonzero(solve).flatten()
    vol = torch.full_like(p, math.nan)
    floor = torch.zeros_like(no_tv)
    if idx.numel():
        sw, sS, sK, sT, sr, sq, sp = (t[idx] for t in (w, S, K, T, r, q, p))
        solved, floor_s, above_s = _solve(pricer, sp, sw, sS, sK, sT, sr, sq, evaluations, rtol)
        vol = vol.index_put((idx,), solved)
        floor = floor.index_put((idx,), floor_s)
        above = above.index_put((idx,), above_s)
        # the engine gave no finite price for the quote at any vol tried
        bad = bad | (solve & torch.isnan(vol) & ~floor & ~above)
    code = (below.to(torch.int8) * BELOW_INTRINSIC + above.to(torch.int8) * ABOVE_MAX
            + no_tv.to(torch.int8) * NO_TIME_VALUE + expired.to(torch.int8) * EXPIRED + bad.to(torch.int8) * BAD_INPUT
            + floor.to(torch.int8) * BELOW_MODEL_FLOOR)
    vol = torch.where(code == 0, vol, torch.full_like(vol, math.nan))
    return IVResult(vol.to(out_dtype).reshape(shape), code.reshape(shape))


def _solve(
    pricer: Pricer, p: torch.Tensor, w: torch.Tensor, S: torch.Tensor, K: torch.Tensor, T: torch.Tensor,
    r: torch.Tensor, q: torch.Tensor, evaluations: int, rtol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vols of the quotes to solve (all valid and strictly between the exercise value and the cap) and
    the masks of those found below the price at :data:`VOL_MIN` (``below_model_floor``) or above the price
    at :data:`VOL_MAX`."""
    n = p.numel()
    tol = rtol * p
    # the steps solve g(time value) = g(quote - exercise value) with g = sqrt in the money, ln out of it
    # (see the module notes): secant steps on the price itself creep to such roots one side at a time
    intrinsic = torch.clamp(w * (S - K), min=0.0)
    tiny = torch.finfo(p.dtype).tiny
    itm = intrinsic > 0
    g_target = torch.where(itm, torch.sqrt(p - intrinsic), torch.log(p - intrinsic))
    flat_tol = 8.0 * torch.finfo(p.dtype).eps * torch.maximum(S, K)
    # start: the European implied vol, an upper bound (the American price is at least the European one);
    # a quote above the European cap starts high, one below the European floor at the bottom
    euro = implied_vol(p, w, S, K, T, r, q)
    ok_e = euro.code == 0
    v = torch.where(ok_e, euro.vol, torch.where(euro.code == ABOVE_MAX, torch.ones_like(p), torch.full_like(p, VOL_MIN)))
    v = torch.clamp(torch.nan_to_num(v, nan=0.3), min=VOL_MIN, max=VOL_MAX)
    lo = torch.full_like(p, VOL_MIN)
    hi = torch.full_like(p, VOL_MAX)
    # sides of the bracket proved by an evaluation (f(lo) < 0 < f(hi)); until then its ends are the limits
    lo_seen = torch.zeros_like(p, dtype=torch.bool)
    hi_seen = torch.zeros_like(p, dtype=torch.bool)
    best_v, best_f = v.clone(), torch.full_like(p, math.inf)
    v_prev = torch.full_like(p, math.nan)
    g_prev = torch.full_like(p, math.nan)
    no_tv = torch.zeros_like(p, dtype=torch.bool)
    above = torch.zeros_like(p, dtype=torch.bool)
    active = torch.arange(n, device=p.device)
    for k in range(evaluations):
        a = active
        va = v[a]
        pa = pricer(w[a], S[a], K[a], T[a], r[a], q[a], va)
        pa = torch.where(torch.isfinite(pa), pa, torch.full_like(pa, math.nan))
        fa = pa - p[a]
        tv_a = torch.clamp(pa - intrinsic[a], min=tiny)
        ga = torch.where(itm[a], torch.sqrt(tv_a), torch.log(tv_a)) - g_target[a]
        # priced at its exercise value (inside the exercise region at this vol): no slope to take there,
        # so this point only narrows the bracket
        flat = itm[a] & (tv_a <= flat_tol[a])
        better = fa.abs() < best_f[a]
        best_v[a] = torch.where(better, va, best_v[a])
        best_f[a] = torch.where(better, fa.abs(), best_f[a])
        # narrow the bracket (the price rises with vol)
        up = fa < 0
        down = fa > 0
        lo_a = torch.where(up, torch.maximum(lo[a], va), lo[a])
        hi_a = torch.where(down, torch.minimum(hi[a], va), hi[a])
        lo[a], hi[a] = lo_a, hi_a
        lo_seen[a] = lo_seen[a] | up
        hi_seen[a] = hi_seen[a] | down
        done = fa.abs() <= tol[a]
        # a quote priced above the quote at the lowest vol, or below it at the highest, has no solution
        nt = down & (va <= VOL_MIN)
        ab = up & (va >= VOL_MAX)
        no_tv[a] = nt
        above[a] = ab
        # next point: a secant step through the last point with time value (the European vega as slope at
        # first); where it leaves the bracket, or from a point without time value, bisect when the end it
        # heads for is proved (geometrically; arithmetically off a flat point), else try that end (the
        # search limit)
        if k == 0:
            dg_dtv = torch.where(itm[a], 0.5 / torch.sqrt(tv_a), 1.0 / tv_a)
            vega = bsm_greeks(w[a], S[a], K[a], T[a], r[a], q[a], va, names="vega", compile=False)["vega"]
            slope = vega * dg_dtv
        else:
            slope = (ga - g_prev[a]) / (va - v_prev[a])
        step = va - ga / slope
        inside = ~flat & torch.isfinite(step) & (step > lo_a) & (step < hi_a)
        end_seen = torch.where(up, hi_seen[a], lo_seen[a])
        mid = torch.where(flat, 0.5 * (lo_a + hi_a), torch.sqrt(lo_a * hi_a))
        fallback = torch.where(end_seen, mid, torch.where(up, hi_a, lo_a))
        nxt = torch.where(inside, step, fallback)
        # no progress left: the step is below rounding of the vol
        stalled = (nxt - va).abs() <= 4.0 * torch.finfo(p.dtype).eps * va
        v_prev[a] = torch.where(flat, v_prev[a], va)
        g_prev[a] = torch.where(flat, g_prev[a], ga)
        v[a] = nxt
        keep = ~(done | nt | ab | stalled | torch.isnan(fa))
        active = a[keep]
        if active.numel() == 0:
            break
    # an engine that gave no finite price at any point leaves the quote unsolved
    return torch.where(torch.isfinite(best_f), best_v, torch.full_like(best_v, math.nan)), no_tv, above
