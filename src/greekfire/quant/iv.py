"""Implied volatility of European quotes, vectorized, in a bounded number of iterations.

Method (our own, in the spirit of Jäckel's "Let's Be Rational"): each quote is normalised to Black space,
``x = ln(F/K)``, ``beta = price / (D * sqrt(F K))``; an in-the-money quote becomes the out-of-the-money
price of the same strike by put-call parity, so every quote is solved on ``b(x, s)``, the normalised
out-of-the-money price as a function of the total volatility ``s = vol * sqrt(ttm)``. Below the inflection
point ``s_c = sqrt(2|x|)`` we solve ``ln b = ln beta`` (b is tiny and nearly log-quadratic there), above it
``ln(b_max - b) = ln(b_max - beta)`` (the price saturates). Each element starts from a guess (below
``s_c``: a few cheap Newton steps on a model of ``ln b``, exact at ``s_c``; above: a normal quantile)
and takes third-order Householder steps inside a shrinking bracket: the first ``SHARED_STEPS`` for every
quote (fused with the set-up into one kernel), then only the quotes not yet converged step on, as a
shrinking active set, so the batch does not pay its worst quote's step count on every element. Prices of out-of-the-money options are evaluated with the scaled
complementary error function (``erfcx``) to keep relative accuracy far in the wings.

Quotes that cannot have an implied vol get NaN and a reason code (:data:`IV_REASONS`); nothing raises.
Units: ``ttm`` years, ``rate`` / ``div_yield`` continuously compounded, result annualised vol.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from greekfire.quant._black import otm_parts, otm_price_at_inflection
from greekfire.quant._fused import DEFAULT_MIN_SIZE, run_kernel
from greekfire.quant._tensors import SQRT_2PI, TensorLike, as_tensors, ndtri_guess

IV_REASONS: dict[int, str] = {
    0: "",
    1: "below_intrinsic",
    2: "above_max",
    3: "no_time_value",
    4: "expired",
    5: "bad_input",
}
OK, BELOW_INTRINSIC, ABOVE_MAX, NO_TIME_VALUE, EXPIRED, BAD_INPUT = range(6)

DEFAULT_ITERATIONS = 6
SHARED_STEPS = 2  # steps every quote takes inside the fused kernel; most have converged after them
TAIL_COMPILE_MIN = 1_024  # active sets smaller than this step eagerly (compiled costs ~20x less per quote)
FREEZE_TOL = 1e-10  # relative Newton step under which a quote has converged and leaves the active set
# relative third-order step under which a quote has converged: the error left is about a small multiple of
# step^3: after any third-order step under 1e-4 the vol was within 6e-15 (rounding) of the converged one,
# on 200k benchmark-grid quotes and the tests' extreme grid; 1e-5 keeps a margin
HOUSEHOLDER_TOL = 1e-5
MODEL_NEWTON = 3  # Newton steps on the lower-region model of ln b for the starting guess (cheap: no erfcx)


class IVResult(NamedTuple):
    """Implied vols (NaN where there is none) and int8 reason codes (keys of :data:`IV_REASONS`)."""

    vol: torch.Tensor
    code: torch.Tensor


def _iv_setup(
    price: torch.Tensor,
    w: torch.Tensor,
    S: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Normalise the quotes, classify them (reason codes) and place each start inside its bracket."""
    # classification by nested blends and arithmetic: inductor vectorises those, while it lowers and/or
    # of masks and boolean or int8 outputs to scalar loops (they were a large part of this kernel)
    nonfinite = price * 0.0 + S * 0.0 + K * 0.0 + T * 0.0 + r * 0.0 + q * 0.0  # NaN unless all finite
    ok = torch.where(torch.minimum(S, K) > 0, torch.where(price >= 0, nonfinite, math.nan), math.nan)
    good = torch.where(w.abs() == 1, ok, math.nan) == 0
    Tp = torch.where(T > 0, T, torch.ones_like(T))
    ln_fk = torch.log(S / K) + (r - q) * Tp
    # the same present values and parity split as bsm_price, so a repriced vol gives back the quote
    fwd_pv = S * torch.exp(-q * Tp)
    strike_pv = K * torch.exp(-r * Tp)
    scale = torch.sqrt(fwd_pv * strike_pv)
    x = -ln_fk.abs()
    intrinsic = torch.where((ln_fk > 0) == (w > 0), w * (fwd_pv - strike_pv), torch.zeros_like(S))
    beta_otm = (price - intrinsic) / scale
    cap = torch.where(w > 0, fwd_pv, strike_pv)
    # a quote within rounding of the intrinsic value has no time value, it is not below intrinsic
    # (the intrinsic value is a difference of present values: its rounding scales with the larger)
    round_off = torch.where(
        intrinsic > 0, 8.0 * torch.finfo(S.dtype).eps * torch.maximum(fwd_pv, strike_pv), torch.zeros_like(S)
    )
    # reason codes in order of precedence: bad input, expired, below intrinsic, above max, no time value
    code = torch.where(
        good,
        torch.where(
            T > 0,
            torch.where(
                price - intrinsic < -round_off,
                float(BELOW_INTRINSIC),
                torch.where(
                    price >= cap,
                    float(ABOVE_MAX),
                    torch.where(price - intrinsic <= round_off, float(NO_TIME_VALUE), torch.zeros_like(S)),
                ),
            ),
            float(EXPIRED),
        ),
        float(BAD_INPUT),
    )
    solve = code == 0

    b_max = torch.exp(0.5 * x)
    target = torch.where(solve, beta_otm, 0.5 * b_max)
    s_c = torch.sqrt(-2.0 * x)
    b_c = otm_price_at_inflection(x)
    lower_target = target < b_c
    tiny = torch.finfo(target.dtype).tiny
    ln_target = torch.log(torch.clamp(target, min=tiny))
    cap_gap = torch.clamp(b_max - target, min=tiny)
    ln_cap_gap = torch.log(cap_gap)

    # starting points: below s_c the price is ~exp(-x^2 / 2 s^2), above it the cap gap is ~2 cosh(x/2) N(-s/2)
    # lower: ln b ~ ln b_c - x^2/2 (1/s^2 - 1/s_c^2) - (s^2 - s_c^2)/8 + k ln(s/s_c), the exponent
    # of the price exact and the slowly varying prefactor a power of s, k matching the slope at s_c
    # (there d ln b / d ln s = s_c b'(s_c) / b_c with b'(s_c) = exp(x/2) / sqrt(2 pi)); solved for
    # u = ln s by MODEL_NEWTON Newton steps (the model rises with u, and is exact at s_c)
    k = s_c * torch.exp(0.5 * x) / (SQRT_2PI * torch.clamp(b_c, min=tiny))
    gap = ln_target - torch.log(torch.clamp(b_c, min=tiny))  # <= 0 in the lower region
    half_x2 = 0.5 * x * x
    u_c = 0.5 * torch.log(-2.0 * x)
    u = -0.5 * torch.log(0.5 / torch.clamp(-x, min=tiny) - gap / torch.clamp(half_x2, min=tiny))
    for _ in range(MODEL_NEWTON):
        e2 = torch.exp(2.0 * u)
        model = half_x2 * (1.0 / (s_c * s_c) - 1.0 / e2) - 0.125 * (e2 + 2.0 * x) + k * (u - u_c) - gap
        u = torch.minimum(u - model / (x * x / e2 - 0.25 * e2 + k), u_c)
    s_model = torch.exp(u)
    # (the model's Newton steps stay finite for every in-domain quote; the fallback only keeps a start)
    s_low = torch.where(torch.isfinite(s_model), s_model, 0.5 * s_c)
    # a vectorisable quantile inside the compiled kernel (the library's ndtri is a scalar call there)
    s_up = -2.0 * ndtri_guess(torch.clamp(cap_gap / (2.0 * torch.cosh(0.5 * x)), max=0.5))
    # b(x, s) <= b(0, s) <= s / sqrt(2 pi): a guaranteed lower bound on the root
    s_floor = torch.where(lower_target, torch.minimum(target * SQRT_2PI, s_c), s_c)
    # solve on ln b while b is at most half its cap (ln of the cap gap cannot resolve a small b), on
    # ln(b_max - b) above that, where b saturates
    log_b_objective = torch.where(lower_target, 1.0, torch.where(target <= 0.5 * b_max, 1.0, -1.0)) > 0
    # ln b is concave in s: Newton from below the root climbs to it monotonically, so an upper-region
    # quote solved on ln b starts from the inflection point, a lower bound
    s_up = torch.where(log_b_objective, torch.maximum(s_c, torch.minimum(s_up, target * SQRT_2PI)), s_up)
    s = torch.where(lower_target, torch.minimum(torch.maximum(s_low, s_floor), s_c), torch.maximum(s_up, s_c))
    lo = s_floor
    hi = torch.where(lower_target, s_c, torch.full_like(s, math.inf))
    s = torch.where(s > 0, s, torch.where(lower_target, 0.5 * s_c, torch.ones_like(s)))
    s = torch.where(torch.isfinite(s), s, 0.5 * (lo + torch.where(torch.isfinite(hi), hi, lo + 2.0)))
    # +1 where the objective is ln b, -1 where it is ln(b_max - b); one target for the chosen objective
    objective = torch.where(log_b_objective, 1.0, -torch.ones_like(s))
    ln_g_target = torch.where(log_b_objective, ln_target, ln_cap_gap)
    return x, s, lo, hi, objective, ln_g_target, Tp, code


def _iv_step(
    x: torch.Tensor,
    s: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    objective: torch.Tensor,
    ln_g_target: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One bracketed third-order Householder step on the chosen objective (``objective`` +1: ``ln b``,
    -1: ``ln(b_max - b)``; same cost for every quote); also says which quotes have converged (1.0 where
    their step was below ``FREEZE_TOL`` relative, else 0.0)."""
    tiny = torch.finfo(x.dtype).tiny
    b, c, db = otm_parts(x, s)
    log_b_objective = objective > 0
    g = torch.where(log_b_objective, b, c)
    rr = torch.where(log_b_objective, db / b, -db / c)
    f = torch.log(torch.clamp(g, min=tiny)) - ln_g_target
    # shrink the bracket with the sign of the objective itself (b rises with s, c falls)
    too_low = objective * f < 0
    lo = torch.where(too_low, torch.maximum(lo, s), lo)
    hi = torch.where(too_low, hi, torch.minimum(hi, s))
    xs = x / s
    A = xs * xs / s - 0.25 * s
    B = A * A - 3.0 * xs * xs / (s * s) - 0.25
    g2 = A - rr
    g3 = B - 3.0 * A * rr + 2.0 * rr * rr
    nu = -f / rr
    householder = nu * (1.0 + 0.5 * g2 * nu) / (1.0 + nu * (g2 + g3 * nu / 6.0))
    s_new = s + householder
    converged = householder.abs() <= 1e-12 * s  # (so finite)
    # inside the bracket (NaN and infinities compare False), or converged
    inside = torch.where(converged, 1.0, torch.minimum(s_new - lo, hi - s_new)) >= 0
    # where the third-order step leaves the bracket, try plain Newton before bisecting; a step that
    # stays third order may be far larger before it counts as converged (its error is about step^3)
    tol = torch.where(inside, HOUSEHOLDER_TOL, FREEZE_TOL) * s
    s_newton = s + nu
    s_new = torch.where(inside, s_new, s_newton)
    inside = torch.where(inside, 1.0, torch.minimum(s_newton - lo, hi - s_newton)) >= 0
    # bisect geometrically: the root can sit orders of magnitude inside the bracket
    mid = torch.where(
        torch.isfinite(hi), torch.where(lo > 0, torch.sqrt(lo * hi), 0.5 * hi), 2.0 * torch.maximum(s, lo)
    )
    # a Householder step under HOUSEHOLDER_TOL or a Newton step under FREEZE_TOL (relative) leaves an error
    # of about step^3 or step^2, far under what a 1e-12 repricing needs
    done = torch.where(inside, tol - (s_new - s).abs(), -1.0) >= 0
    s = torch.where(inside, s_new, mid)
    return s, lo, hi, torch.where(done, 1.0, torch.zeros_like(s))


def _iv_head(
    price: torch.Tensor,
    w: torch.Tensor,
    S: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    r: torch.Tensor,
    q: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, ...]:
    """Set-up plus ``steps`` Householder steps for every quote (one pass over memory when compiled);
    the last tensor is 1.0 where a quote is finished (converged, or with nothing to solve), else 0.0.
    No boolean outputs: inductor stores those with scalar loops."""
    x, s, lo, hi, objective, ln_g_target, Tp, code = _iv_setup(price, w, S, K, T, r, q)
    done = torch.zeros_like(s)
    for _ in range(steps):
        s, lo, hi, done = _iv_step(x, s, lo, hi, objective, ln_g_target)
    return x, s, lo, hi, objective, ln_g_target, Tp, code, torch.where(code == 0, done, 1.0)


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
    float64 whatever the input dtype (the result is cast back to it). ``iterations`` bounds the steps any
    quote takes (the first 2 are taken by all, later ones only by the quotes not converged yet).
    Invalid quotes give NaN with a code: 1 below_intrinsic, 2 above_max, 3 no_time_value, 4 expired,
    5 bad_input (see :data:`IV_REASONS`).
    """
    tensors = as_tensors(price, right, spot, strike, ttm, rate, div_yield)
    out_dtype = tensors[0].dtype
    shape = tensors[0].shape
    args = tuple(t.to(torch.float64).reshape(-1) for t in tensors)
    n = args[0].numel()
    use_compiled = compile if compile is not None else n >= DEFAULT_MIN_SIZE
    shared = min(iterations, SHARED_STEPS)
    x, s, lo, hi, objective, ln_g_target, Tp, code, done = run_kernel(
        _iv_head, args, compile=use_compiled, numel=n, steps=shared
    )
    # the remaining steps run only on the quotes that have not converged yet (a shrinking active set),
    # so the batch no longer pays the worst quote's step count on every element
    active = torch.nonzero(done == 0).squeeze(1)
    state = tuple(t.index_select(0, active) for t in (x, s, lo, hi, objective, ln_g_target))
    for _ in range(iterations - shared):
        if active.numel() == 0:
            break
        xa, sa, loa, hia, oba, lta = state
        # a small remainder runs eager: compiled dynamic shapes would recompile for sizes 0 and 1
        sa, loa, hia, done_a = run_kernel(
            _iv_step, (xa, sa, loa, hia, oba, lta),
            compile=use_compiled and active.numel() >= TAIL_COMPILE_MIN, numel=active.numel(),
        )
        s.index_copy_(0, active, sa)  # in place: a fresh full-size copy costs page faults
        keep = done_a == 0
        active = active[keep]
        state = tuple(t[keep] for t in (xa, sa, loa, hia, oba, lta))
    # in place on the solver's own buffers (fresh full-size outputs cost page faults)
    vol = s.div_(Tp.sqrt_()).masked_fill_(code != 0, math.nan)
    return IVResult(vol.to(out_dtype).reshape(shape), code.to(torch.int8).reshape(shape))
