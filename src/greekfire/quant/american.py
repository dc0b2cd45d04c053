"""American options: CRR binomial tree, Barone-Adesi-Whaley, Bjerksund-Stensland 2002, and Greeks.

Units as everywhere in :mod:`greekfire.quant`: ``ttm`` years, ``rate``/``div_yield`` continuously
compounded, ``vol`` annualised, ``right`` +1 call / -1 put. Each engine prices a whole batch at once
on tensors (any device). Greeks of any engine are taken by batched central bump-and-reprice
(:func:`bump_greeks`), which also gives vega, rho, vanna, volga and charm (a tree gives only delta,
gamma, theta).

:func:`american_price`, :func:`american_greeks` and :func:`american_implied_vol` take the engine by name
from the registry of pricing engines (:mod:`greekfire.quant.registry`; the built-in ones, ``qdfp`` included,
are registered in :mod:`greekfire.quant.engines`), so this module needs none of the engines built on it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from greekfire.core.errors import DataError
from greekfire.quant._american_iv import american_iv
from greekfire.quant._tensors import TensorLike, as_tensors, norm_cdf
from greekfire.quant.european import bsm_price
from greekfire.quant.iv import IVResult
from greekfire.quant.registry import MarketInputs, OptionBatch, get_engine

DOUBLE_BOUNDARY_STEPS = 1000
"""CRR steps for the double-boundary rows (negative rates), about 1e-4 relative to the limit."""


# ---------------------------------------------------------------------------------------------------
# CRR binomial tree
def crr_price(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    steps: int = 200,
    american: bool = True,
) -> torch.Tensor:
    """Cox-Ross-Rubinstein binomial tree, batched: every option rolls back together, ``steps`` levels.

    The up-probability is QuantLib's choice for its ``crr`` tree (``1/2 + 1/2 (r - q - vol^2/2) dt / dx``
    on the log-price lattice ``dx = vol sqrt(dt)``), so results agree with ``BinomialVanillaEngine('crr',
    steps)`` to round-off. ``american=False`` gives the European tree price.
    """
    w, S, K, T, r, q, v = as_tensors(right, spot, strike, ttm, rate, div_yield, vol)
    shape = w.shape
    w, S, K, T, r, q, v = (t.reshape(-1, 1) for t in (w, S, K, T, r, q, v))
    n = steps
    dt = T / n
    dx = v * torch.sqrt(dt)
    pu = 0.5 + 0.5 * (r - q - 0.5 * v * v) * dt / dx
    disc = torch.exp(-r * dt)
    pu_d, pd_d = disc * pu, disc * (1.0 - pu)  # discounted branch weights
    # node j of level i sits at log-price log S + (2j - i) dx: every level's nodes are among the 2n + 1
    # lattice points k dx, k = -n..n, so the exercise values are computed once (one exp per lattice point,
    # not one per node and level) and level i reads its own: every second point from n - i, kept as the
    # even and the odd points apart so that a level's slice is contiguous
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (S, K, T, r, q, v))
    k = torch.arange(-n, n + 1, device=S.device, dtype=S.dtype).reshape(1, -1)
    if grad:
        payoff = torch.clamp(w * (torch.exp(torch.log(S) + k * dx) - K), min=0.0)
    else:
        payoff = k * dx
        payoff.add_(torch.log(S)).exp_().sub_(K).mul_(w).clamp_(min=0.0)
    parity = (payoff[:, 0::2].contiguous(), payoff[:, 1::2].contiguous()) if american else None
    values = payoff[:, 0::2].contiguous()  # level n: points -n, -n + 2, ..., n
    del payoff
    # without autograd the roll-back runs in two buffers: no allocation per level, so its time does not
    # depend on whether the allocator hands freed memory back to the system between levels (ADR 0006)
    spare = None if grad else torch.empty_like(values)
    for i in range(n - 1, -1, -1):
        if spare is None:
            nxt = torch.addcmul(pd_d * values[:, : i + 1], values[:, 1 : i + 2], pu_d)
        else:
            nxt = spare[:, : i + 1]
            torch.mul(values[:, : i + 1], pd_d, out=nxt)
            nxt.addcmul_(values[:, 1 : i + 2], pu_d)
        if parity is not None:
            start = (n - i) // 2
            exercise = parity[(n - i) % 2][:, start : start + i + 1]
            nxt = torch.maximum(nxt, exercise) if spare is None else torch.maximum(nxt, exercise, out=nxt)
        if spare is not None:
            spare, values = values, spare
        else:
            values = nxt
    return values[:, :1].reshape(shape)


# ---------------------------------------------------------------------------------------------------
# rate regimes
def early_exercise_regime(right: torch.Tensor, rate: torch.Tensor, div_yield: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(single, double)`` masks: one early-exercise boundary (a put with ``rate > 0``, a call with
    ``div_yield > 0``) or two (a put with ``div_yield < rate < 0``, a call with ``rate < div_yield < 0``).
    Elsewhere early exercise is never optimal and the American price is the European one."""
    pr = torch.where(right > 0, div_yield, rate)
    pq = torch.where(right > 0, rate, div_yield)
    return pr > 0, (pq < pr) & (pr < 0)


def _with_double_boundary_tree(
    out: torch.Tensor, w: torch.Tensor, S: torch.Tensor, K: torch.Tensor, T: torch.Tensor, r: torch.Tensor,
    q: torch.Tensor, v: torch.Tensor,
) -> torch.Tensor:
    """``out`` with the double-boundary rows (negative rates) replaced by a CRR tree of
    :data:`DOUBLE_BOUNDARY_STEPS` steps: the closed-form approximations assume one boundary."""
    shape = out.shape
    w, S, K, T, r, q, v, out = (t.reshape(-1) for t in torch.broadcast_tensors(w, S, K, T, r, q, v, out))
    _, double = early_exercise_regime(w, r, q)
    idx = torch.nonzero(double & (T > 0) & (v > 0)).flatten()
    if idx.numel():
        tree = crr_price(w[idx], S[idx], K[idx], T[idx], r[idx], q[idx], v[idx], steps=DOUBLE_BOUNDARY_STEPS)
        out = out.index_put((idx,), tree)
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------------
# Barone-Adesi-Whaley (1987) quadratic approximation
def _bsm_d1(S: torch.Tensor, K: torch.Tensor, T: torch.Tensor, r: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (torch.log(S / K) + (r - q + 0.5 * v * v) * T) / (v * torch.sqrt(T))


def baw_price(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    iterations: int = 40,
) -> torch.Tensor:
    """Barone-Adesi-Whaley American price; the critical price solved by a fixed number of Newton steps.

    As in QuantLib, a call with a non-positive dividend yield is priced as European (never exercised),
    and so is a put with a non-positive rate unless it has two boundaries (``div_yield < rate < 0``):
    those rows are priced on a CRR tree (see :func:`early_exercise_regime`).
    """
    w, S, K, T, r, q, v = as_tensors(right, spot, strike, ttm, rate, div_yield, vol)
    euro = bsm_price(w, S, K, T, r, q, v)
    var_t = v * v * T
    sqrt_vt = torch.sqrt(var_t)
    dr = torch.exp(-r * T)
    dq = torch.exp(-q * T)
    n_ = 2.0 * (r - q) / (v * v)
    m_ = 2.0 * r / (v * v)
    k_ = 1.0 - dr
    k_safe = torch.where(k_.abs() > 1e-300, k_, torch.full_like(k_, 1e-300))
    disc_root = torch.sqrt((n_ - 1.0) ** 2 + 4.0 * m_ / k_safe)
    qq = torch.where(w > 0, 0.5 * (-(n_ - 1.0) + disc_root), 0.5 * (-(n_ - 1.0) - disc_root))
    # seed of the critical price (Barone-Adesi and Whaley's own), then Newton on
    # w (S* - K) = euro(S*) + w (1 - dq N(w d1(S*))) S* / q
    q_inf = torch.where(w > 0, 0.5 * (-(n_ - 1.0) + torch.sqrt((n_ - 1.0) ** 2 + 4.0 * m_)),
                        0.5 * (-(n_ - 1.0) - torch.sqrt((n_ - 1.0) ** 2 + 4.0 * m_)))
    s_inf = K / (1.0 - 1.0 / q_inf)
    h = torch.where(w > 0, -((r - q) * T + 2.0 * sqrt_vt) * K / (s_inf - K), ((r - q) * T - 2.0 * sqrt_vt) * K / (K - s_inf))
    si = torch.where(w > 0, K + (s_inf - K) * (1.0 - torch.exp(h)), s_inf + (K - s_inf) * torch.exp(h))
    si = torch.where(torch.isfinite(si) & (si > 0), si, K)
    for _ in range(iterations):
        d1 = _bsm_d1(si, K, T, r, q, v)
        nd = norm_cdf(w * d1)
        pdf = torch.exp(-0.5 * d1 * d1) / math.sqrt(2.0 * math.pi)
        e = bsm_price(w, si, K, T, r, q, v)
        rhs = e + w * (1.0 - dq * nd) * si / qq
        # d(rhs)/dS = w dq N(w d1) + w (1 - dq N(w d1)) / q - dq pdf / (q sqrt_vt)
        slope = w * dq * nd * (1.0 - 1.0 / qq) + w / qq - dq * pdf / (qq * sqrt_vt)
        si_new = (w * K + rhs - slope * si) / (w - slope)
        si = torch.where(torch.isfinite(si_new) & (si_new > 0), si_new, si)
    d1 = _bsm_d1(si, K, T, r, q, v)
    a = w * (si / qq) * (1.0 - dq * norm_cdf(w * d1))
    exercise_now = torch.where(w > 0, si <= S, si >= S)
    american = torch.where(exercise_now, w * (S - K), euro + a * (S / si) ** qq)
    single, _ = early_exercise_regime(w, r, q)
    live = (T > 0) & (v > 0)
    return _with_double_boundary_tree(torch.where(single & live, american, euro), w, S, K, T, r, q, v)


# ---------------------------------------------------------------------------------------------------
# Bjerksund-Stensland (2002)
_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


def bivariate_norm_cdf(a: torch.Tensor, b: torch.Tensor, rho: float) -> torch.Tensor:
    """P(X <= a, Y <= b) for standard normals with correlation ``rho`` (|rho| < 1), to ~1e-14.

    Uses M = N(a) N(b) + 1/(2 pi) * integral_0^{asin rho} exp(-(a^2 + b^2 - 2ab sin t) / (2 cos^2 t)) dt
    with 24 Gauss-Legendre nodes (smooth integrand for the fixed |rho| < 0.8 of BS2002).
    """
    theta_max = math.asin(rho)
    x = torch.as_tensor(_GL_X, device=a.device, dtype=a.dtype)
    wt = torch.as_tensor(_GL_W, device=a.device, dtype=a.dtype)
    t = 0.5 * theta_max * (x + 1.0)
    st = torch.sin(t)
    ct2 = torch.cos(t) ** 2
    a_ = a.unsqueeze(-1)
    b_ = b.unsqueeze(-1)
    f = torch.exp(-(a_ * a_ + b_ * b_ - 2.0 * a_ * b_ * st) / (2.0 * ct2))
    integral = 0.5 * theta_max * (f * wt).sum(dim=-1)
    return norm_cdf(a) * norm_cdf(b) + integral / (2.0 * math.pi)


def _bs2002_call(S, K, T, r, b, v):  # type: ignore[no-untyped-def]
    v2 = v * v
    t1 = 0.5 * (math.sqrt(5.0) - 1.0) * T
    beta = (0.5 - b / v2) + torch.sqrt((b / v2 - 0.5) ** 2 + 2.0 * r / v2)
    b_inf = beta / (beta - 1.0) * K
    b0 = torch.maximum(K, r / torch.clamp(r - b, min=1e-300) * K)
    b0 = torch.where(r - b > 0, b0, K)
    h1 = -(b * t1 + 2.0 * v * torch.sqrt(t1)) * K * K / ((b_inf - b0) * b0)
    h2 = -(b * T + 2.0 * v * torch.sqrt(T)) * K * K / ((b_inf - b0) * b0)
    i1 = b0 + (b_inf - b0) * (1.0 - torch.exp(h1))
    i2 = b0 + (b_inf - b0) * (1.0 - torch.exp(h2))
    a1 = (i1 - K) * i1 ** (-beta)
    a2 = (i2 - K) * i2 ** (-beta)

    def phi(s, tt, gamma, hh, ii):  # type: ignore[no-untyped-def]
        lam = (-r + gamma * b + 0.5 * gamma * (gamma - 1.0) * v2) * tt
        sd = v * torch.sqrt(tt)
        d = -(torch.log(s / hh) + (b + (gamma - 0.5) * v2) * tt) / sd
        kappa = 2.0 * b / v2 + 2.0 * gamma - 1.0
        return torch.exp(lam) * s ** gamma * (
            norm_cdf(d) - (ii / s) ** kappa * norm_cdf(d - 2.0 * torch.log(ii / s) / sd)
        )

    rho = math.sqrt(t1 / T) if isinstance(T, float) else None
    rho_v = math.sqrt(0.5 * (math.sqrt(5.0) - 1.0)) if rho is None else rho

    def psi(s, tt, gamma, hh, i2_, i1_, tt1):  # type: ignore[no-untyped-def]
        lam = (-r + gamma * b + 0.5 * gamma * (gamma - 1.0) * v2) * tt
        kappa = 2.0 * b / v2 + 2.0 * gamma - 1.0
        m1 = (b + (gamma - 0.5) * v2)
        sd1 = v * torch.sqrt(tt1)
        sd = v * torch.sqrt(tt)
        e1 = (torch.log(s / i1_) + m1 * tt1) / sd1
        e2 = (torch.log(i2_ * i2_ / (s * i1_)) + m1 * tt1) / sd1
        e3 = (torch.log(s / i1_) - m1 * tt1) / sd1
        e4 = (torch.log(i2_ * i2_ / (s * i1_)) - m1 * tt1) / sd1
        f1 = (torch.log(s / hh) + m1 * tt) / sd
        f2 = (torch.log(i2_ * i2_ / (s * hh)) + m1 * tt) / sd
        f3 = (torch.log(i1_ * i1_ / (s * hh)) + m1 * tt) / sd
        f4 = (torch.log(s * i1_ * i1_ / (hh * i2_ * i2_)) + m1 * tt) / sd
        return torch.exp(lam) * s ** gamma * (
            bivariate_norm_cdf(-e1, -f1, rho_v)
            - (i2_ / s) ** kappa * bivariate_norm_cdf(-e2, -f2, rho_v)
            - (i1_ / s) ** kappa * bivariate_norm_cdf(-e3, -f3, -rho_v)
            + (i1_ / i2_) ** kappa * bivariate_norm_cdf(-e4, -f4, -rho_v)
        )

    one = torch.ones_like(S)
    zero = torch.zeros_like(S)
    val = (
        a2 * S ** beta
        - a2 * phi(S, t1, beta, i2, i2)
        + phi(S, t1, one, i2, i2)
        - phi(S, t1, one, i1, i2)
        - K * phi(S, t1, zero, i2, i2)
        + K * phi(S, t1, zero, i1, i2)
        + a1 * phi(S, t1, beta, i1, i2)
        - a1 * psi(S, T, beta, i1, i2, i1, t1)
        + psi(S, T, one, i1, i2, i1, t1)
        - psi(S, T, one, K, i2, i1, t1)
        - K * psi(S, T, zero, i1, i2, i1, t1)
        + K * psi(S, T, zero, K, i2, i1, t1)
    )
    return torch.where(i2 <= S, S - K, val)


def bs2002_price(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
) -> torch.Tensor:
    """Bjerksund-Stensland (2002) American price (two-step flat exercise boundary; puts through the
    put-call transformation P(S, K, r, q) = C(K, S, q, r)). Never below the European price.
    Double-boundary rows (negative rates, :func:`early_exercise_regime`) are priced on a CRR tree."""
    w, S, K, T, r, q, v = as_tensors(right, spot, strike, ttm, rate, div_yield, vol)
    euro = bsm_price(w, S, K, T, r, q, v)
    # call on (S, K, r, b = r - q); put as a call on (K, S, q, b = q - r)
    cs = torch.where(w > 0, S, K)
    ck = torch.where(w > 0, K, S)
    cr = torch.where(w > 0, r, q)
    cb = torch.where(w > 0, r - q, q - r)
    live = (T > 0) & (v > 0)
    Ts = torch.where(live, T, torch.ones_like(T))
    vs = torch.where(live, v, torch.full_like(v, 0.2))
    amer = _bs2002_call(cs, ck, Ts, cr, cb, vs)
    # early exercise of the (transformed) call is never optimal when its carry b >= its rate
    never = cb >= cr
    out = torch.where(never | ~live, euro, torch.maximum(amer, euro))
    out = _with_double_boundary_tree(out, w, S, K, T, r, q, v)
    # an approximation may dip below exercise value deep in the money; an American never does
    return torch.maximum(out, torch.clamp(w * (S - K), min=0.0))


# ---------------------------------------------------------------------------------------------------
# Greeks by bump-and-reprice, and the American entry points (engines looked up in the registry)
BUMP_GREEKS = ("value", "delta", "gamma", "vega", "theta", "theta_per_day", "rho", "epsilon", "vanna", "volga", "charm")
"""The outputs of :func:`bump_greeks` (and of every American engine)."""
BUMP_CHUNK_ROWS = 16_384
"""Most bumped copies priced in one engine call by :func:`bump_greeks` (the copies of a batch are split
into equal calls of at most this many): an engine's working memory grows with its batch (the qd+ fixed
point holds every node and quadrature point of every option), and the 15 copies of a 65,536-row chunk
priced in one call peaked at 10.6 GB with qdfp on the CPU; in calls of this size the chunk peaks at 0.7 GB
(the process included) and prices no slower per row (benchmarks/bench_quant.py american-memory)."""

ValueFn = Callable[..., torch.Tensor]


def bump_greeks(
    value_fn: ValueFn,
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    spot_bump: float = 1e-3,
    vol_bump: float = 1e-4,
    rate_bump: float = 1e-5,
    names: tuple[str, ...] = BUMP_GREEKS,
    max_rows: int = BUMP_CHUNK_ROWS,
) -> dict[str, torch.Tensor]:
    """Value, delta, gamma, vega (per 1.00 vol), theta (per year, -dV/dttm), theta_per_day, rho (per 1.00
    rate), epsilon (per 1.00 yield), vanna (d delta / d vol), volga (d vega / d vol) and charm (-d delta /
    d ttm, per year) of ``value_fn(right, spot, strike, ttm, rate, div_yield, vol)`` by batched central
    bump-and-reprice. Bumps: ``spot_bump`` x spot, ``vol_bump`` and ``rate_bump`` absolute (rate and yield),
    one day (at most half the ttm) in time. Vanna and charm are the second-order mixed differences that
    reuse the one-way bumps and add the two diagonal points (spot and vol, or spot and time, both up and
    both down); they are priced only when ``names`` asks for them. Returns the outputs in ``names``.

    All bumped copies go to ``value_fn`` flattened, in equal calls of at most ``max_rows`` rows
    (:data:`BUMP_CHUNK_ROWS`), which bounds the engine's working memory; each row's price does not depend
    on the rows priced beside it."""
    unknown = [n for n in names if n not in BUMP_GREEKS]
    if unknown:
        raise DataError("names", unknown[0], f"must be among {', '.join(BUMP_GREEKS)}")
    if max_rows < 1:
        raise DataError("max_rows", max_rows, "must be at least 1")
    w, S, K, T, r, q, v = as_tensors(right, spot, strike, ttm, rate, div_yield, vol)
    hs = spot_bump * S
    hv = torch.full_like(v, vol_bump)
    hr = torch.full_like(r, rate_bump)
    ht = torch.minimum(torch.full_like(T, 1.0 / 365.0), 0.5 * T)
    bumps = [
        (S, v, r, q, T),
        (S + hs, v, r, q, T), (S - hs, v, r, q, T),
        (S, v + hv, r, q, T), (S, v - hv, r, q, T),
        (S, v, r + hr, q, T), (S, v, r - hr, q, T),
        (S, v, r, q + hr, T), (S, v, r, q - hr, T),
        (S, v, r, q, T + ht), (S, v, r, q, T - ht),
    ]
    if "vanna" in names:
        bumps += [(S + hs, v + hv, r, q, T), (S - hs, v - hv, r, q, T)]
    if "charm" in names:
        bumps += [(S + hs, v, r, q, T + ht), (S - hs, v, r, q, T - ht)]
    vals = _price_copies(value_fn, w, K, bumps, max_rows)
    v0, sp, sm, vp, vm, rp, rm, qp, qm, tp, tm = vals[:11]
    theta = -(tp - tm) / (2.0 * ht)
    out = {
        "value": v0,
        "delta": (sp - sm) / (2.0 * hs),
        "gamma": (sp - 2.0 * v0 + sm) / (hs * hs),
        "vega": (vp - vm) / (2.0 * hv),
        "theta": theta,
        "theta_per_day": theta / 365.0,
        "rho": (rp - rm) / (2.0 * hr),
        "epsilon": (qp - qm) / (2.0 * hr),
        "volga": (vp - 2.0 * v0 + vm) / (hv * hv),
    }
    extra = iter(vals[11:])
    if "vanna" in names:
        pp, mm = next(extra), next(extra)
        out["vanna"] = (pp - sp - vp + 2.0 * v0 - sm - vm + mm) / (2.0 * hs * hv)
    if "charm" in names:
        pp, mm = next(extra), next(extra)
        # d2V/dS dttm; charm is minus it (as theta is -dV/dttm)
        out["charm"] = -(pp - sp - tp + 2.0 * v0 - sm - tm + mm) / (2.0 * hs * ht)
    return {k: out[k] for k in names}


def _price_copies(
    value_fn: ValueFn, w: torch.Tensor, K: torch.Tensor,
    bumps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]], max_rows: int,
) -> torch.Tensor:
    """``value_fn`` on every bumped copy ``(S, v, r, q, T)`` of the batch: ``[copies, *batch shape]``,
    priced flattened in equal calls of at most ``max_rows`` rows."""
    S = bumps[0][0]
    shape = (len(bumps), *S.shape)
    S_, v_, r_, q_, T_ = (torch.stack(z).reshape(-1) for z in zip(*bumps, strict=True))
    w_ = w.expand_as(S).unsqueeze(0).expand(shape).reshape(-1)
    K_ = K.expand_as(S).unsqueeze(0).expand(shape).reshape(-1)
    total = S_.numel()
    parts = max(1, -(-total // max_rows))
    if parts == 1:
        return value_fn(w_, S_, K_, T_, r_, q_, v_).reshape(shape)
    pieces = [value_fn(*a) for a in zip(*(t.tensor_split(parts) for t in (w_, S_, K_, T_, r_, q_, v_)), strict=True)]
    return torch.cat(pieces).reshape(shape)


def american_price(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    model: str = "qdfp",
    steps: int = 200,
) -> torch.Tensor:
    """American price with the registered engine ``model`` that prices American options: ``qdfp``
    (default), ``crr`` (``steps``), ``baw``, ``bs2002`` or a plugin's (see :mod:`greekfire.quant.registry`)."""
    engine = get_engine(model, style="american")
    batch = OptionBatch(right, strike, ttm, "american")
    return engine(batch, MarketInputs(spot, rate, div_yield, vol), steps=steps)["value"]


def american_greeks(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    model: str = "qdfp",
    steps: int = 200,
) -> dict[str, torch.Tensor]:
    """Value, delta, gamma, vega (per 1.00 vol), theta (per year, -dV/dttm), theta_per_day, rho (per
    1.00 rate), epsilon (per 1.00 yield), vanna (d delta / d vol), volga (d vega / d vol) and charm
    (-d delta / d ttm, per year) of American options by the engine ``model``: batched central
    bump-and-reprice (:func:`bump_greeks`, bumps wider than the node spacing for a tree; a tree, ``crr``,
    gives no vanna, volga or charm: its price is not smooth enough at that spacing)."""
    engine = get_engine(model, style="american")
    batch = OptionBatch(right, strike, ttm, "american")
    # a tree gives no second differences in vol and time (see greekfire.quant.engines)
    outputs = tuple(n for n in BUMP_GREEKS if n in engine.capabilities.outputs)
    return engine(batch, MarketInputs(spot, rate, div_yield, vol), outputs=outputs, steps=steps)


def american_implied_vol(
    price: TensorLike,
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    *,
    model: str = "qdfp",
    steps: int = 200,
    iterations: int = 24,
    rtol: float = 1e-10,
) -> IVResult:
    """Implied vols (annualised) of American prices (currency per unit) through the named American engine
    (``model``, ``steps`` as :func:`american_price`), for the whole batch at once.

    Starts from the European implied vol of each quote (an upper bound) and takes bracketed secant steps,
    each engine call pricing only the quotes not yet solved; a quote is solved when its repriced value is
    within ``rtol`` (relative) of it. ``iterations`` bounds the engine calls per quote.
    Returns an :class:`IVResult` with the codes of :func:`implied_vol`: ``below_intrinsic`` under the
    exercise value, ``above_max`` at or above the spot (call) / strike (put) or above the engine's price at
    vol 10, ``no_time_value`` at the exercise value, ``below_model_floor`` above it but under the engine's
    price at vol 1e-4 (the model's lower bound, e.g. ``S - K exp(-rT)`` for a call without yield). Never raises
    on bad rows (they get NaN and a code)."""
    engine = get_engine(model, style="american")
    batch = OptionBatch(right, strike, ttm, "american")
    out = engine(batch, MarketInputs(spot, rate, div_yield, price=price), outputs="iv", steps=steps,
                 iv_evaluations=iterations, iv_rtol=rtol)
    return IVResult(out["iv"], out["iv_code"])


def american_inversion(value_fn: ValueFn) -> Callable[..., IVResult]:
    """The implied-vol function of an American engine pricing with ``value_fn(w, S, K, T, r, q, vol,
    **options)``: :func:`greekfire.quant._american_iv.american_iv` on it (options ``iv_evaluations``,
    ``iv_rtol``; the others go to the engine)."""

    def invert(batch: OptionBatch, market: MarketInputs, options: Mapping[str, Any]) -> IVResult:
        opts = {k: v for k, v in options.items() if not k.startswith("iv_")}

        def pricer(*args: torch.Tensor) -> torch.Tensor:
            return value_fn(*args, **opts)

        kw = {"evaluations": options["iv_evaluations"]} if "iv_evaluations" in options else {}
        if "iv_rtol" in options:
            kw["rtol"] = options["iv_rtol"]
        return american_iv(pricer, market.require_price(), batch.right, market.spot, batch.strike, batch.ttm, market.rate,
                           market.div_yield, **kw)

    return invert
