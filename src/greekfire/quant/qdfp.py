"""American options by the fixed-point method of Andersen, Lake and Offengenden (2016).

The early-exercise boundary ``B(tau)`` of a put (calls through the put-call symmetry
``C(S, K, r, q) = P(K, S, q, r)``) is the fixed point of an integral equation; we iterate the authors'
"FP-B" form a fixed number of times on Chebyshev nodes in ``sqrt(tau)``, interpolating
``H = ln(B / X)^2`` (``X = K min(1, r/q)``, the boundary at expiry), with Gauss-Legendre quadrature after
the substitution ``u = tau - z^2`` that removes the ``1/sqrt(tau - u)`` singularity. The price is the
European price plus the early-exercise premium integrated against the boundary. Everything is batched:
options x nodes x quadrature points in one tensor expression per iteration, on any device.

The starting boundary is Barone-Adesi-Whaley's critical price at each node. Limitation: for a put with
``r <= 0`` (or a call with ``q <= 0``) early exercise is treated as never optimal and the European price is
returned; the double-boundary regime of negative rates is not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from greekfire.quant._fused import run_kernel
from greekfire.quant._tensors import INV_SQRT_2PI, TensorLike, as_tensors, norm_cdf
from greekfire.quant.european import bsm_price


@dataclass(frozen=True, slots=True)
class QdFpScheme:
    """Discretisation: ``nodes`` Chebyshev intervals for the boundary, ``iterations`` fixed-point steps,
    ``quad`` Gauss-Legendre points for the boundary integrals, ``price_quad`` for the premium."""

    nodes: int = 16
    iterations: int = 8
    quad: int = 32
    price_quad: int = 64


FAST = QdFpScheme(nodes=8, iterations=4, quad=16, price_quad=32)
ACCURATE = QdFpScheme()
HIGH_PRECISION = QdFpScheme(nodes=32, iterations=12, quad=64, price_quad=128)


def _dpm(tau: torch.Tensor, z: torch.Tensor, r: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sd = v * torch.sqrt(tau)
    dp = (torch.log(z) + (r - q) * tau + 0.5 * sd * sd) / sd
    return dp, dp - sd


def _pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) * INV_SQRT_2PI


def _baw_put_boundary(K: torch.Tensor, tau: torch.Tensor, r: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Barone-Adesi-Whaley critical price of a put with ``tau`` to expiry (the starting boundary)."""
    vt = v * torch.sqrt(tau)
    n_ = 2.0 * (r - q) / (v * v)
    m_ = 2.0 * r / (v * v)
    kk = -torch.expm1(-r * tau)
    q1 = 0.5 * (-(n_ - 1.0) - torch.sqrt((n_ - 1.0) ** 2 + 4.0 * m_ / kk))
    q_inf = 0.5 * (-(n_ - 1.0) - torch.sqrt((n_ - 1.0) ** 2 + 4.0 * m_))
    s_inf = K / (1.0 - 1.0 / q_inf)
    h = ((r - q) * tau - 2.0 * vt) * K / (K - s_inf)
    s = s_inf + (K - s_inf) * torch.exp(h)
    dq = torch.exp(-q * tau)
    for _ in range(8):  # a starting guess: the fixed point does the rest
        d1 = (torch.log(s / K) + (r - q + 0.5 * v * v) * tau) / vt
        nd = norm_cdf(-d1)
        e = bsm_price(-1.0, s, K, tau, r, q, v)
        rhs = e - (1.0 - dq * nd) * s / q1
        slope = -dq * nd * (1.0 - 1.0 / q1) - 1.0 / q1 - dq * _pdf(d1) / (q1 * vt)
        s_new = (-K + rhs - slope * s) / (-1.0 - slope)
        s = torch.where(torch.isfinite(s_new) & (s_new > 0), s_new, s)
    return s


def _layout(n: int, n_quad: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Fixed quadrature layout of the boundary integrals in units of the maturity T.

    Node i sits at tau_i = T c_i (c_i = (1 + x_i)^2 / 4); quadrature point j of node i at z = sqrt(T) a_ij,
    u = T (c_i - a_ij^2). Returns the interpolation matrix (node values -> values at every u), and the
    scaled z, weights and u.
    """
    x = np.cos(np.pi * np.arange(n + 1) / n)
    gx, gw = np.polynomial.legendre.leggauss(n_quad)
    c = (1.0 + x) ** 2 / 4.0
    a = 0.5 * np.sqrt(c)[:, None] * (gx + 1.0)[None, :]
    aw = 0.5 * np.sqrt(c)[:, None] * gw[None, :]
    e = np.clip(c[:, None] - a * a, 0.0, None)
    y = 2.0 * np.sqrt(e) - 1.0
    interp = _cheb_values_to(y.reshape(-1), n)
    t = lambda m: torch.as_tensor(m, dtype=dtype, device=device)  # noqa: E731
    return t(interp), t(a), t(aw), t(e)


def _price_layout(n: int, n_quad: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Premium integral over s = T y^2 (dense near s = 0, where the integrand moves fastest)."""
    px, pw = np.polynomial.legendre.leggauss(n_quad)
    yy = 0.5 * (px + 1.0)
    y_b = 2.0 * np.sqrt(np.clip(1.0 - yy * yy, 0.0, None)) - 1.0
    t = lambda m: torch.as_tensor(m, dtype=dtype, device=device)  # noqa: E731
    return t(_cheb_values_to(y_b, n)), t(yy * yy), t(2.0 * yy * 0.5 * pw)


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


def _fp_step(
    B: torch.Tensor,
    interp_u: torch.Tensor,
    z: torch.Tensor,
    zs: torch.Tensor,
    n_weight: torch.Tensor,
    d_weight: torch.Tensor,
    r3: torch.Tensor,
    q3: torch.Tensor,
    v3: torch.Tensor,
    X3: torch.Tensor,
    K2: torch.Tensor,
    r2: torch.Tensor,
    q2: torch.Tensor,
    v2: torch.Tensor,
    X2: torch.Tensor,
    tau: torch.Tensor,
    tau_safe: torch.Tensor,
    sd0: torch.Tensor,
) -> torch.Tensor:
    """One FP-B iteration of the boundary at every node of every option."""
    H = torch.log(torch.clamp(B / X2, max=1.0)) ** 2
    B_u = X3 * torch.exp(-torch.sqrt(torch.clamp((H @ interp_u).reshape(z.shape), min=0.0)))
    dp, dm = _dpm(z * z, B.unsqueeze(2) / B_u, r3, q3, v3)
    dp = torch.where(z > 0, dp, torch.zeros_like(dp))
    dm = torch.where(z > 0, dm, torch.zeros_like(dm))
    n_int = (n_weight * _pdf(dm)).sum(-1)
    d_int = (d_weight * (zs * norm_cdf(dp) + _pdf(dp) / v3)).sum(-1)
    dp0, dm0 = _dpm(tau_safe, B / K2, r2, q2, v2)
    num = _pdf(dm0) / sd0 + r2 * n_int
    den = _pdf(dp0) / sd0 + norm_cdf(dp0) + q2 * d_int
    B_new = K2 * torch.exp(-(r2 - q2) * tau_safe) * num / den
    B = torch.where(tau > 0, torch.clamp(B_new, max=X2), X2)
    return torch.where(torch.isfinite(B) & (B > 0), B, X2)


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
    :func:`bsm_price`). ``scheme``: :data:`FAST`, :data:`ACCURATE` (default, ~1e-6 relative to
    :data:`HIGH_PRECISION`) or your own :class:`QdFpScheme`. ``compile``: fuse the fixed-point step with
    torch.compile (None: only for large batches)."""
    w, S, K, T, r, q, v = as_tensors(right, spot, strike, ttm, rate, div_yield, vol)
    shape = w.shape
    w, S, K, T, r, q, v = (t.reshape(-1) for t in (w, S, K, T, r, q, v))
    euro = bsm_price(w, S, K, T, r, q, v)
    # a call is the put with spot and strike, rate and yield swapped
    pS, pK = torch.where(w > 0, K, S), torch.where(w > 0, S, K)
    pr, pq = torch.where(w > 0, q, r), torch.where(w > 0, r, q)
    live = (T > 0) & (v > 0) & (pr > 0) & (S > 0) & (K > 0)
    Tl = torch.where(live, T, torch.ones_like(T))
    vl = torch.where(live, v, torch.full_like(v, 0.2))
    rl = torch.where(live, pr, torch.full_like(pr, 0.05))
    Sl, Kl, ql_ = pS, pK, pq
    dt, dev = S.dtype, S.device
    n = scheme.nodes
    X = Kl * torch.where(ql_ > 0, torch.clamp(rl / torch.where(ql_ > 0, ql_, torch.ones_like(ql_)), max=1.0), 1.0)
    x_nodes = torch.cos(math.pi * torch.arange(n + 1, device=dev, dtype=dt) / n)  # 1 ... -1
    sqrt_tau = 0.5 * torch.sqrt(Tl).unsqueeze(1) * (1.0 + x_nodes)  # [b, n+1], tau_0 = T ... tau_n = 0
    tau = sqrt_tau * sqrt_tau
    b_ = lambda t: t.unsqueeze(1)  # noqa: E731
    K2, r2, q2, v2, X2 = b_(Kl), b_(rl), b_(ql_), b_(vl), b_(X)
    tau_safe = torch.where(tau > 0, tau, torch.ones_like(tau))
    B = torch.where(tau > 0, torch.minimum(_baw_put_boundary(K2, tau_safe, r2, q2, v2), X2), X2)
    B = torch.where(torch.isfinite(B) & (B > 0), B, X2)
    # every option shares the same node layout in units of its own maturity, so interpolating the
    # boundary at all quadrature points is one matrix product with a fixed matrix
    interp_u, c_z, c_zw, c_u = _layout(n, scheme.quad, dt, dev)
    interp_p, c_s, c_ds = _price_layout(n, scheme.price_quad, dt, dev)
    sqrtT = torch.sqrt(Tl).reshape(-1, 1, 1)
    z = sqrtT * c_z  # [b, n+1, l]
    zw = sqrtT * c_zw
    u = Tl.reshape(-1, 1, 1) * c_u
    K3, r3, q3, v3, X3 = (t.unsqueeze(2) for t in (K2, r2, q2, v2, X2))
    zs = torch.where(z > 0, z, torch.ones_like(z))
    # with u = tau - z^2 the kernels' 1/sqrt(tau - u) = 1/z cancels against du = 2 z dz
    n_weight = zw * 2.0 * torch.exp(r3 * u) / v3
    d_weight = zw * 2.0 * torch.exp(q3 * u)
    sd0 = v2 * torch.sqrt(tau_safe)
    step_args = (interp_u, z, zs, n_weight, d_weight, r3, q3, v3, X3, K2, r2, q2, v2, X2, tau, tau_safe, sd0)
    for _ in range(scheme.iterations):
        B = run_kernel(_fp_step, (B, *step_args), compile=compile, numel=z.numel())
    # premium: integral over s (time from now) in [0, T] of rK e^{-rs} N(-d-(s, S/B(T-s))) - qS e^{-qs} N(-d+)
    H = torch.log(torch.clamp(B / X2, max=1.0)) ** 2
    B_s = X2 * torch.exp(-torch.sqrt(torch.clamp(H @ interp_p, min=0.0)))
    s_ = Tl.unsqueeze(1) * c_s
    ds = Tl.unsqueeze(1) * c_ds
    dp, dm = _dpm(s_, Sl.unsqueeze(1) / B_s, r2, q2, v2)
    integrand = r2 * K2 * torch.exp(-r2 * s_) * norm_cdf(-dm) - q2 * Sl.unsqueeze(1) * torch.exp(-q2 * s_) * norm_cdf(-dp)
    premium = (integrand * ds).sum(-1)
    put_euro = bsm_price(-1.0, Sl, Kl, Tl, rl, ql_, vl)
    amer = torch.where(Sl <= B[:, 0], Kl - Sl, put_euro + premium)
    amer = torch.maximum(amer, torch.clamp(Kl - Sl, min=0.0))
    out = torch.where(live, torch.maximum(amer, euro), euro)
    return out.reshape(shape)
