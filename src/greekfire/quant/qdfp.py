"""American options by the fixed-point method of Andersen, Lake and Offengenden (2016).

The early-exercise boundary ``B(tau)`` of a put (calls through the put-call symmetry
``C(S, K, r, q) = P(K, S, q, r)``) is the fixed point of an integral equation. We solve the authors'
"FP-B" form (densities in the kernels) on Chebyshev-Lobatto nodes in ``sqrt(tau)``, interpolating
``sqrt(H) = -ln(B / X)`` squared (``H``; ``X = K min(1, r/q)``, the boundary at expiry):

- start from Barone-Adesi-Whaley's critical price at each node;
- one Jacobi-Newton step (the derivative of the non-integral terms only, the step length kept in
  [0.2, 2] times the plain step, which keeps nodes next to expiry from overshooting when ``q > r``);
- then plain fixed-point steps, each extrapolated by Anderson mixing of depth one over the nodes of the
  option (a few slowly converging options, e.g. low vol with a high rate, need 16+ plain steps for
  1e-6 and 3-6 mixed ones);
- the boundary integrals in ``z = sqrt(tau - u) = sqrt(tau) sin(theta)`` with Gauss-Legendre in
  ``theta``: the kernels' ``1/sqrt(tau - u)`` cancels and the interpolant is evaluated at
  ``sqrt(u) = sqrt(tau) cos(theta)``, smooth in ``theta``, so the rule converges spectrally;
- the price: the European price plus the early-exercise premium over ``s = T sin(theta)^2``.

Everything is batched: options x nodes x quadrature points in one tensor expression per step (fused by
``torch.compile`` for large batches), layouts built once per scheme, device and dtype.

Rates: a put with ``r > 0`` has one boundary. A put with ``r <= 0`` and ``q >= r`` is never exercised
early (the European price is the American price). A put with ``q < r < 0`` has two boundaries
(Battauz, De Donno and Sbuelz; Andersen and Lake, "Fast American option pricing: the double-boundary
case"), which this method does not model: those rows are priced on a CRR tree of
:data:`DOUBLE_BOUNDARY_STEPS` steps instead. Calls by the symmetry (double boundary when ``r < q < 0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from greekfire.core.errors import DataError
from greekfire.quant._black import erfcx_nonneg
from greekfire.quant._fused import run_kernel
from greekfire.quant._tensors import INV_SQRT_2, INV_SQRT_2PI, SQRT_2PI, TensorLike, as_tensors
from greekfire.quant.american import DOUBLE_BOUNDARY_STEPS, crr_price
from greekfire.quant.european import bsm_price

__all__ = ["ACCURATE", "DOUBLE_BOUNDARY_STEPS", "FAST", "HIGH_PRECISION", "QdFpScheme", "qdfp_price"]


@dataclass(frozen=True, slots=True)
class QdFpScheme:
    """Discretisation: ``nodes`` Chebyshev intervals for the boundary (``nodes + 1`` points),
    ``iterations`` fixed-point steps after ``newton`` Jacobi-Newton steps, ``quad`` Gauss-Legendre
    points for each boundary integral, ``price_quad`` for the premium, ``anderson``: mix each step
    with the previous one (Anderson acceleration of depth one)."""

    nodes: int = 12
    iterations: int = 3
    quad: int = 8
    price_quad: int = 32
    newton: int = 1
    anderson: bool = True

    def __post_init__(self) -> None:
        for name in ("nodes", "quad", "price_quad"):
            if getattr(self, name) < 2:
                raise DataError(name, getattr(self, name), "must be at least 2")
        for name in ("iterations", "newton"):
            if getattr(self, name) < 0:
                raise DataError(name, getattr(self, name), "must be >= 0")


FAST = QdFpScheme(nodes=8, iterations=2, quad=6, price_quad=24)
ACCURATE = QdFpScheme()
HIGH_PRECISION = QdFpScheme(nodes=32, iterations=16, quad=48, price_quad=128)


def _cheb_values_to(y: np.ndarray, n: int) -> np.ndarray:
    """Matrix mapping values at the n+1 Chebyshev-Lobatto points to the interpolant at points ``y``."""
    i = np.arange(n + 1)
    to_coef = (2.0 / n) * np.cos(np.pi * np.outer(i, i) / n)
    to_coef[:, 0] *= 0.5
    to_coef[:, -1] *= 0.5
    to_coef[0] *= 0.5
    to_coef[-1] *= 0.5
    vander = np.polynomial.chebyshev.chebvander(y, n)  # [points, n+1]
    return (vander @ to_coef).T  # [n+1, points]


@lru_cache(maxsize=16)
def _np_layout(n: int, n_quad: int, n_price: int) -> tuple[np.ndarray, ...]:
    """The quadrature layout of a scheme in units of the maturity T (shared by every option).

    Node i: ``sqrt(tau_i) = sqrt(T) xi_i``. Its boundary integrals run over ``theta`` in [0, pi/2] with
    ``z = sqrt(tau_i) sin(theta)`` (c_z, times sqrt(T)), weight ``dz`` (c_zw, times sqrt(T)) and
    ``u = tau_i cos(theta)^2`` (c_u, times T); ``interp`` ([node x point, node]) maps node values to the
    interpolant at every u. The premium runs over ``s = T sin(theta)^2`` (c_s, c_ds times T; interp_p,
    [point, node], at ``T - s``).
    """
    xi = (1.0 + np.cos(np.pi * np.arange(n + 1) / n)) / 2.0  # 1 ... 0
    g, gw = np.polynomial.legendre.leggauss(n_quad)
    th, thw = np.pi / 4.0 * (1.0 + g), np.pi / 4.0 * gw
    c_z = xi[:, None] * np.sin(th)[None, :]
    c_zw = xi[:, None] * (np.cos(th) * thw)[None, :]
    xi_u = xi[:, None] * np.cos(th)[None, :]
    interp = _cheb_values_to((2.0 * xi_u - 1.0).reshape(-1), n)
    pg, pw = np.polynomial.legendre.leggauss(n_price)
    pth = np.pi / 4.0 * (1.0 + pg)
    c_s = np.sin(pth) ** 2
    c_ds = np.sin(2.0 * pth) * np.pi / 4.0 * pw
    interp_p = _cheb_values_to(2.0 * np.cos(pth) - 1.0, n)
    # options run along the last (contiguous) axis everywhere, so compiled loops vectorise over options
    # rather than over a handful of quadrature points
    return xi, np.ascontiguousarray(interp.T), c_z, c_zw, xi_u * xi_u, np.ascontiguousarray(interp_p.T), c_s, c_ds


_layouts: dict[tuple[int, int, int, torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}


def _layout(n: int, n_quad: int, n_price: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    key = (n, n_quad, n_price, dtype, device)
    if key not in _layouts:
        _layouts[key] = tuple(torch.as_tensor(m, dtype=dtype, device=device) for m in _np_layout(n, n_quad, n_price))
    return _layouts[key]


def _ncdf(d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF at ``d`` given ``e = exp(-d^2/2)``: compiled, from the vectorisable
    ``erfcx`` sum (inductor cannot vectorise ``erfc``); eager, the library ``erfc``."""
    if torch.compiler.is_compiling():
        tail = 0.5 * erfcx_nonneg(d.abs() * INV_SQRT_2) * e
        return torch.where(d < 0, tail, 1.0 - tail)
    return 0.5 * torch.special.erfc(-d * INV_SQRT_2)


def _baw_start(
    K: torch.Tensor, tau: torch.Tensor, r: torch.Tensor, q: torch.Tensor, v: torch.Tensor, X: torch.Tensor,
    live: torch.Tensor,
) -> torch.Tensor:
    """``-ln(B0 / X)`` with ``B0`` Barone-Adesi-Whaley's critical price of a put with ``tau`` to expiry
    (a starting guess: a few Newton steps on the textbook put price, the fixed point does the rest)."""
    vt = v * torch.sqrt(tau)
    n_ = 2.0 * (r - q) / (v * v)
    m_ = 2.0 * r / (v * v)
    q1 = 0.5 * (-(n_ - 1.0) - torch.sqrt((n_ - 1.0) ** 2 - 4.0 * m_ / torch.expm1(-r * tau)))
    q_inf = 0.5 * (-(n_ - 1.0) - torch.sqrt((n_ - 1.0) ** 2 + 4.0 * m_))
    s_inf = K / (1.0 - 1.0 / q_inf)
    s = s_inf + (K - s_inf) * torch.exp(((r - q) * tau - 2.0 * vt) * K / (K - s_inf))
    dq, dr = torch.exp(-q * tau), torch.exp(-r * tau)
    for _ in range(6):
        d1 = (torch.log(s / K) + (r - q + 0.5 * v * v) * tau) / vt
        e1 = torch.exp(-0.5 * d1 * d1)
        e2 = torch.exp(-0.5 * (d1 - vt) * (d1 - vt))
        nd = _ncdf(-d1, e1)
        put = K * dr * _ncdf(vt - d1, e2) - s * dq * nd
        rhs = put - (1.0 - dq * nd) * s / q1
        slope = -dq * nd * (1.0 - 1.0 / q1) - 1.0 / q1 - dq * e1 * INV_SQRT_2PI / (q1 * vt)
        s_new = (-K + rhs - slope * s) / (-1.0 - slope)
        s = torch.where(torch.isfinite(s_new) & (s_new > 0), s_new, s)
    out = torch.clamp(-torch.log(s / X), min=0.0)
    return torch.where(live & torch.isfinite(out), out, torch.zeros_like(out))


def _fp_update(
    sqH: torch.Tensor,
    interp_u: torch.Tensor,
    drift: torch.Tensor,
    inv_vz: torch.Tensor,
    vz: torch.Tensor,
    zw_n: torch.Tensor,
    zw_d: torch.Tensor,
    vz_root2pi: torch.Tensor,
    lnKX: torch.Tensor,
    mu: torch.Tensor,
    sd0: torch.Tensor,
    disc: torch.Tensor,
    r2: torch.Tensor,
    q2: torch.Tensor,
    X2: torch.Tensor,
    live_node: torch.Tensor,
    newton: bool,
) -> torch.Tensor:
    """One FP-B step (Jacobi-Newton when ``newton``) of ``sqrt(H) = -ln(B / X)`` at every node
    (``sqH``: [node, option]; quadrature tensors [node, point, option]).

    In the integrals ``ln(b / B(u)) = sqrt(H(u)) - sqrt(H_i)``: no logarithm per quadrature point.
    """
    n1, nb = sqH.shape
    sHu = torch.sqrt(torch.clamp(interp_u @ (sqH * sqH), min=0.0)).reshape(n1, -1, nb)
    dm = (sHu - sqH.unsqueeze(1) + drift) * inv_vz
    dp = dm + vz
    n_int = (zw_n * torch.exp(-0.5 * dm * dm)).sum(1)
    ep = torch.exp(-0.5 * dp * dp)
    d_int = (zw_d * (_ncdf(dp, ep) * vz_root2pi + ep)).sum(1)
    d0m = (-sqH - lnKX + mu) / sd0
    d0p = d0m + sd0
    pm = torch.exp(-0.5 * d0m * d0m) * INV_SQRT_2PI
    pp = torch.exp(-0.5 * d0p * d0p) * INV_SQRT_2PI
    num = pm / sd0 + r2 * n_int
    den = _ncdf(d0p, pp * SQRT_2PI) + pp / sd0 + q2 * d_int
    fv = disc * num / den
    if newton:
        b = X2 * torch.exp(-sqH)
        dnum = -pm * d0m / (b * sd0 * sd0)
        dden = pp * (1.0 - d0p / sd0) / (b * sd0)
        fd = disc * (dnum / den - dden * num / (den * den))
        lam = torch.clamp(1.0 / (1.0 - fd), min=0.2, max=2.0)
        lam = torch.where(torch.isfinite(lam), lam, torch.ones_like(lam))
        fv = b + lam * (fv - b)
    out = torch.clamp(-torch.log(fv / X2), min=0.0)
    return torch.where(live_node & torch.isfinite(out), out, torch.zeros_like(out))


def _setup(
    K: torch.Tensor, T: torch.Tensor, r: torch.Tensor, q: torch.Tensor, v: torch.Tensor, X: torch.Tensor,
    xi: torch.Tensor, c_z: torch.Tensor, c_zw: torch.Tensor, c_u: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The starting boundary and the per-step constants of :func:`_fp_update` (one fused kernel when
    compiled). Layout: [node, option] and [node, point, option]; options last, where loops vectorise."""
    c1 = lambda t: t.unsqueeze(0)  # noqa: E731
    c3 = lambda m: m.unsqueeze(-1)  # noqa: E731
    K2, r2, q2, v2, X2 = c1(K), c1(r), c1(q), c1(v), c1(X)
    tau = c3(xi * xi) * c1(T)  # [n+1, b]: T ... 0
    live_node = tau > 0
    tau_s = torch.where(live_node, tau, torch.ones_like(tau))
    sqH = _baw_start(K2, tau_s, r2, q2, v2, X2, live_node)
    sqrtT = torch.sqrt(T)
    vz = c3(c_z) * (v * sqrtT)  # vol * z
    vz_safe = torch.where(vz > 0, vz, torch.ones_like(vz))
    drift = c3(c_z * c_z) * ((r - q - 0.5 * v * v) * T)
    u = c3(c_u) * T
    zw = c3(c_zw) * (sqrtT * (2.0 * INV_SQRT_2PI) / v)
    sd0 = v2 * torch.sqrt(tau_s)
    return (
        sqH, drift, 1.0 / vz_safe, vz, zw * torch.exp(r * u), zw * torch.exp(q * u),
        vz * math.sqrt(2.0 * math.pi), torch.log(K2 / X2), (r2 - q2 - 0.5 * v2 * v2) * tau_s, sd0,
        K2 * torch.exp(-(r2 - q2) * tau_s), r2, q2, X2, live_node,
    )


def _premium(
    sqH: torch.Tensor, interp_p: torch.Tensor, S: torch.Tensor, K: torch.Tensor, T: torch.Tensor, r: torch.Tensor,
    q: torch.Tensor, v: torch.Tensor, X: torch.Tensor, c_s: torch.Tensor, c_ds: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The early-exercise premium, the integral over ``s`` (time from now) in [0, T] of
    ``rK e^{-rs} N(-d-(s, S/B(T-s))) - qS e^{-qs} N(-d+)``, and whether ``S`` is already at or below the
    boundary (exercise now)."""
    sHs = torch.sqrt(torch.clamp(interp_p @ (sqH * sqH), min=0.0))  # [point, b]
    s_ = c_s.unsqueeze(-1) * T
    sd = v * torch.sqrt(s_)
    dm = (torch.log(S / X) + sHs + (r - q - 0.5 * v * v) * s_) / sd
    dp = dm + sd
    integrand = (r * K * torch.exp(-r * s_) * _ncdf(-dm, torch.exp(-0.5 * dm * dm))
                 - q * S * torch.exp(-q * s_) * _ncdf(-dp, torch.exp(-0.5 * dp * dp)))
    premium = (integrand * c_ds.unsqueeze(-1)).sum(0) * T
    return premium, X * torch.exp(-sqH[0]) >= S


def _single_boundary_put(
    S: torch.Tensor, K: torch.Tensor, T: torch.Tensor, r: torch.Tensor, q: torch.Tensor, v: torch.Tensor,
    scheme: QdFpScheme, compile: bool | None,
) -> torch.Tensor:
    """American puts with ``r > 0``, ``T > 0``, ``v > 0`` (1-d tensors)."""
    dt, dev = S.dtype, S.device
    xi, interp_u, c_z, c_zw, c_u, interp_p, c_s, c_ds = _layout(scheme.nodes, scheme.quad, scheme.price_quad, dt, dev)
    X = K * torch.where(q > r, r / torch.where(q > r, q, torch.ones_like(q)), torch.ones_like(q))
    numel = S.numel() * c_z.numel()
    sqH, *consts = run_kernel(_setup, (K, T, r, q, v, X, xi, c_z, c_zw, c_u), compile=compile, numel=numel)
    args = (interp_u, *consts)
    for _ in range(scheme.newton):
        sqH = run_kernel(_fp_update, (sqH, *args), compile=compile, numel=numel, newton=True)
    x_prev = g_prev = None
    for _ in range(scheme.iterations):
        g = run_kernel(_fp_update, (sqH, *args), compile=compile, numel=numel, newton=False)
        if scheme.anderson and x_prev is not None and g_prev is not None:
            # depth-one Anderson mixing over the nodes of each option
            f = g - sqH
            df = f - (g_prev - x_prev)
            gam = (f * df).sum(0, keepdim=True) / (df * df).sum(0, keepdim=True)
            gam = torch.where(torch.isfinite(gam), gam, torch.zeros_like(gam))
            mixed = torch.clamp(g - gam * (g - g_prev), min=0.0)
            x_prev, g_prev, sqH = sqH, g, mixed
        else:
            x_prev, g_prev, sqH = sqH, g, g
    premium, exercise = run_kernel(_premium, (sqH, interp_p, S, K, T, r, q, v, X, c_s, c_ds), compile=compile,
                                   numel=numel)
    amer = torch.where(exercise, K - S, bsm_price(-1.0, S, K, T, r, q, v) + premium)
    return torch.maximum(amer, torch.clamp(K - S, min=0.0))


def qdfp_price(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    scheme: QdFpScheme = ACCURATE,
    compile: bool | None = None,
) -> torch.Tensor:
    """American option prices by the Andersen-Lake-Offengenden fixed-point method (units as
    :func:`bsm_price`). ``scheme``: :data:`FAST`, :data:`ACCURATE` (default, within 1e-6 relative of
    :data:`HIGH_PRECISION` on the benchmark grid) or your own :class:`QdFpScheme`. ``compile``: fuse the
    fixed-point step with torch.compile (None: only for large batches). Double-boundary rows (a put with
    ``q < r < 0``, a call with ``r < q < 0``) are priced on a CRR tree (see the module notes)."""
    w, S, K, T, r, q, v = as_tensors(right, spot, strike, ttm, rate, div_yield, vol)
    shape = w.shape
    w, S, K, T, r, q, v = (t.reshape(-1) for t in (w, S, K, T, r, q, v))
    out = bsm_price(w, S, K, T, r, q, v)
    # a call is the put with spot and strike, rate and yield swapped
    pS, pK = torch.where(w > 0, K, S), torch.where(w > 0, S, K)
    pr, pq = torch.where(w > 0, q, r), torch.where(w > 0, r, q)
    ok = (T > 0) & (v > 0) & (S > 0) & (K > 0)
    single = ok & (pr > 0)
    double = ok & (pq < pr) & (pr < 0)
    idx = torch.nonzero(single).flatten()
    if idx.numel():
        amer = _single_boundary_put(pS[idx], pK[idx], T[idx], pr[idx], pq[idx], v[idx], scheme, compile)
        out = out.index_put((idx,), torch.maximum(amer, out[idx]))
    idx = torch.nonzero(double).flatten()
    if idx.numel():
        tree = crr_price(w[idx], S[idx], K[idx], T[idx], r[idx], q[idx], v[idx], steps=DOUBLE_BOUNDARY_STEPS)
        out = out.index_put((idx,), torch.maximum(tree, out[idx]))
    return out.reshape(shape)
