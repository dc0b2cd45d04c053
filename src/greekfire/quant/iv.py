"""Implied volatility of European quotes, vectorized, in a bounded number of iterations.

Method (our own, in the spirit of Jäckel's "Let's Be Rational"): each quote is normalised to Black space,
``x = ln(F/K)``, ``beta = price / (D * sqrt(F K))``; an in-the-money quote becomes the out-of-the-money
price of the same strike by put-call parity, so every quote is solved on ``b(x, s)``, the normalised
out-of-the-money price as a function of the total volatility ``s = vol * sqrt(ttm)``. The objective is
``ln b = ln beta`` while the target is at most half the cap ``b_max = exp(x/2)``, and
``ln(b_max - b) = ln(b_max - beta)`` above that, where the price saturates. Both are evaluated in log
space with the scaled complementary error function (``erfcx``), so nothing underflows far in the wings.

The start is computed in float32, which costs about half as much an element: the side of the inflection
point ``s_c = sqrt(2|x|)`` the root lies on, a guess (below ``s_c`` a Newton step on a model of ``ln b``
exact at ``s_c``, above it a normal quantile), then ``POLISH_STEPS`` third-order Householder steps. That
start is within float32 rounding of the root, so a single float64 Householder step (``SHARED_STEPS``,
fused with the set-up into one kernel when compiled) finishes almost every quote; the few that it does
not (a step above ``HOUSEHOLDER_TOL``) step on in float64 as a shrinking active set inside a bracket that
every step narrows, so the batch does not pay its worst quote's step count on every element.

Quotes that cannot have an implied vol get NaN and a reason code (:data:`IV_REASONS`); nothing raises.
Units: ``ttm`` years, ``rate`` / ``div_yield`` continuously compounded, result annualised vol.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from greekfire.quant._black import log_otm_price_at_inflection, otm_log_objective
from greekfire.quant._fused import run_kernel, wants_compile
from greekfire.quant._tensors import SQRT_2PI, TensorLike, as_tensors, ndtri_guess

IV_REASONS: dict[int, str] = {
    0: "",
    1: "below_intrinsic",
    2: "above_max",
    3: "no_time_value",
    4: "expired",
    5: "bad_input",
    6: "below_model_floor",
}
OK, BELOW_INTRINSIC, ABOVE_MAX, NO_TIME_VALUE, EXPIRED, BAD_INPUT, BELOW_MODEL_FLOOR = range(7)
"""``below_model_floor`` (American engines only): a quote above its exercise value but below the engine's
price at the lowest vol searched, e.g. a call without yield under ``S - K exp(-rT)``, or a put under the
engine's early-exercise floor: a model's bound, not an arbitrage bound, so kept apart from ``no_time_value``."""

DEFAULT_ITERATIONS = 6
SHARED_STEPS = 1  # float64 steps every quote takes inside the fused kernel; most have converged after it
TAIL_COMPILE_MIN = 1_024  # active sets smaller than this step eagerly (compiled costs ~20x less per quote)
FREEZE_TOL = 1e-10  # relative Newton step under which a quote has converged and leaves the active set
# relative third-order step under which a quote has converged: the error left is about a small multiple of
# step^3: after any third-order step under 1e-4 the vol was within 6e-15 (rounding) of the converged one,
# on 200k benchmark-grid quotes and the tests' extreme grid; 1e-5 keeps a margin
HOUSEHOLDER_TOL = 1e-5
MODEL_NEWTON = 1  # Newton steps on the lower-region model of ln b for the starting guess (cheap: no erfcx)
POLISH_STEPS = 2  # float32 Householder steps that polish the start before the float64 steps
# eager (small batches), every operation is a pass over memory: a better model guess and one float32 step,
# leaving the unfinished few (about 13% on the benchmark grid) to the active set, cost less there
EAGER_MODEL_NEWTON = 3
EAGER_POLISH_STEPS = 1
BRACKET_MARGIN = 1e-4  # relative widening of the bracket's edge at s_c (the float32 region test's rounding)
_TINY_F32 = float(torch.finfo(torch.float32).tiny)


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
    tiny = torch.finfo(target.dtype).tiny
    cap_gap = torch.clamp(b_max - target, min=tiny)
    # solve on ln b while b is at most half its cap (ln of the cap gap cannot resolve a small b), on
    # ln(b_max - b) above that, where b saturates (b at the inflection point is under half the cap)
    objective = torch.where(target <= 0.5 * b_max, 1.0, -torch.ones_like(target))
    ln_g_target = torch.log(torch.where(objective > 0, torch.clamp(target, min=tiny), cap_gap))
    # b(x, s) <= b(0, s) <= s / sqrt(2 pi): a guaranteed lower bound on the root
    s_floor = target * SQRT_2PI

    # the starting point, in float32: it only has to land close enough for one float64 step to finish
    compiling = torch.compiler.is_compiling()
    model_newton, polish_steps = (MODEL_NEWTON, POLISH_STEPS) if compiling else (EAGER_MODEL_NEWTON, EAGER_POLISH_STEPS)
    x32, s_c32, ln_t32 = x.float(), s_c.float(), ln_g_target.float()
    ln_b_c = log_otm_price_at_inflection(x32)
    # the root is below the inflection point s_c where the target is below b there (the ln b objective)
    lower = torch.where(torch.where(objective > 0, ln_g_target - ln_b_c.double(), 1.0) < 0, 1.0, -1.0)
    # lower: ln b ~ ln b_c - x^2/2 (1/s^2 - 1/s_c^2) - (s^2 - s_c^2)/8 + k ln(s/s_c), the exponent
    # of the price exact and the slowly varying prefactor a power of s, k matching the slope at s_c
    # (there d ln b / d ln s = s_c b'(s_c) / b_c with b'(s_c) = exp(x/2) / sqrt(2 pi)); solved for
    # v = ln(s/s_c) by MODEL_NEWTON Newton steps (the model rises with v, and is exact at v = 0)
    k = s_c32 * torch.exp(0.5 * x32 - ln_b_c) / SQRT_2PI
    gap = ln_t32 - ln_b_c  # ln(beta / b_c) <= 0 in the lower region (garbage above it)
    half_x2 = 0.5 * x32 * x32
    # the model without its prefactor terms, solved exactly: v = -ln(1 + 4 gap / x) / 2
    v = -0.5 * torch.log(1.0 + 4.0 * gap / x32)
    for _ in range(model_newton):
        e2 = -2.0 * x32 * torch.exp(2.0 * v)  # s^2
        model = half_x2 * (-1.0 / e2 - 0.5 / x32) - 0.125 * (e2 + 2.0 * x32) + k * v - gap
        v = torch.clamp(v - model / (x32 * x32 / e2 - 0.25 * e2 + k), max=0.0)
    s_low = s_c32 * torch.exp(v)
    # above s_c the cap gap is ~2 cosh(x/2) N(-s/2); a vectorisable quantile inside the compiled kernel
    # (the library's ndtri is a scalar call there)
    s_up = -2.0 * ndtri_guess(torch.clamp(cap_gap / (b_max + 1.0 / b_max), min=_TINY_F32, max=0.5).float())
    floor32 = s_floor.float()
    # ln b is concave in s: Newton from below the root climbs to it monotonically, so an upper-region
    # quote solved on ln b starts from a lower bound
    s_up = torch.where(objective > 0, torch.minimum(s_up, floor32), s_up)
    s32 = torch.where(lower > 0, torch.minimum(torch.maximum(s_low, floor32), s_c32), torch.maximum(s_up, s_c32))
    # the bracket, in float64; float32 may misplace a root within its rounding of s_c, so the bracket's
    # edge at s_c is widened by BRACKET_MARGIN
    lo = torch.where(lower > 0, torch.minimum(s_floor, s_c), s_c * (1.0 - BRACKET_MARGIN))
    hi = torch.where(lower > 0, s_c * (1.0 + BRACKET_MARGIN), torch.full_like(s_c, math.inf))
    lo32, hi32, b_max32, obj32 = lo.float(), hi.float(), b_max.float(), objective.float()
    s32 = torch.where(s32 > 0, s32, torch.where(lower > 0, 0.5 * s_c32, 1.0))
    for _ in range(polish_steps):
        s32 = _iv_polish(x32, s32, lo32, hi32, b_max32, obj32, ln_t32)
    s = s32.double()
    # the float64 steps start inside the bracket
    fallback = 0.5 * (lo + torch.where(torch.isfinite(hi), hi, lo + 2.0))
    s = torch.where(torch.minimum(s - lo, hi - s) > 0, s, fallback)
    return x, s, lo, hi, objective, ln_g_target, Tp, code


def _householder(
    x: torch.Tensor, s: torch.Tensor, f: torch.Tensor, rr: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The third-order Householder step and the Newton step on an objective ``f`` (``ln b`` or ``ln c``
    minus its target) with ``rr = df/ds``. The higher derivatives follow from those of the normalised
    vega: its log-derivative is ``A = x^2/s^3 - s/4`` and its second derivative over itself
    ``A^2 - 3 x^2/s^4 - 1/4``."""
    xs = x / s
    A = xs * xs / s - 0.25 * s
    B = A * A - 3.0 * xs * xs / (s * s) - 0.25
    g2 = A - rr
    g3 = B - 3.0 * A * rr + 2.0 * rr * rr
    nu = -f / rr
    return nu * (1.0 + 0.5 * g2 * nu) / (1.0 + nu * (g2 + g3 * nu / 6.0)), nu


def _iv_polish(
    x: torch.Tensor,
    s: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    b_max: torch.Tensor,
    objective: torch.Tensor,
    ln_g_target: torch.Tensor,
) -> torch.Tensor:
    """One Householder step (Newton where it leaves the bracket, no step where that does too) in the
    precision of its inputs: float32 for the start. The bracket is not narrowed (float32 signs near the
    root cannot be trusted)."""
    ln_g, rr = otm_log_objective(x, s, b_max, objective)
    step, nu = _householder(x, s, ln_g - ln_g_target, rr)
    s_new = s + step
    s_new = torch.where(torch.minimum(s_new - lo, hi - s_new) > 0, s_new, s + nu)
    return torch.where(torch.minimum(s_new - lo, hi - s_new) > 0, s_new, s)


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
    ln_g, rr = otm_log_objective(x, s, torch.exp(0.5 * x), objective)
    f = ln_g - ln_g_target
    # shrink the bracket with the sign of the objective itself (b rises with s, c falls)
    too_low = objective * f < 0
    lo = torch.where(too_low, torch.maximum(lo, s), lo)
    hi = torch.where(too_low, hi, torch.minimum(hi, s))
    householder, nu = _householder(x, s, f, rr)
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
    quote takes in float64 after the float32 start (the first is taken by all, later ones only by the quotes
    not converged yet).
    Invalid quotes give NaN with a code: 1 below_intrinsic, 2 above_max, 3 no_time_value, 4 expired,
    5 bad_input (see :data:`IV_REASONS`).
    """
    tensors = as_tensors(price, right, spot, strike, ttm, rate, div_yield)
    out_dtype = tensors[0].dtype
    shape = tensors[0].shape
    args = tuple(t.to(torch.float64).reshape(-1) for t in tensors)
    n = args[0].numel()
    use_compiled = wants_compile(compile, n, "_iv_head")
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
