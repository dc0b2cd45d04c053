"""Heston stochastic volatility: European prices by Fourier integration, and calibration to a chain.

Model: ``dS = (r - q) S dt + sqrt(v) S dW1``, ``dv = kappa (theta - v) dt + sigma sqrt(v) dW2``,
``d<W1, W2> = rho dt``; ``v0`` and ``theta`` are variances (vol squared), ``kappa`` per year, ``sigma`` the
vol of variance. Prices use Lewis' single-integral formula on the characteristic function of
``ln(S_T / F)`` in the "little Heston trap" form (no branch-cut jumps), integrated with Gauss-Legendre
nodes on a mapped half-line; every option in a batch shares the nodes, so the whole batch is one
``[options, nodes]`` complex tensor expression. Puts by put-call parity.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from greekfire.quant._tensors import TensorLike, as_tensors

DEFAULT_NODES = 384


def _legendre(n: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.as_tensor(x, device=device, dtype=dtype), torch.as_tensor(w, device=device, dtype=dtype)


def heston_cf(
    u: torch.Tensor, ttm: torch.Tensor, v0: torch.Tensor, kappa: torch.Tensor, theta: torch.Tensor,
    sigma: torch.Tensor, rho: torch.Tensor,
) -> torch.Tensor:
    """Characteristic function ``E[exp(i u ln(S_T/F))]`` (complex ``u`` allowed), little-trap form."""
    iu = 1j * u
    b = kappa - rho * sigma * iu
    d = torch.sqrt(b * b + sigma * sigma * (iu + u * u))
    g = (b - d) / (b + d)
    e = torch.exp(-d * ttm)
    big_c = (kappa * theta / (sigma * sigma)) * ((b - d) * ttm - 2.0 * torch.log((1.0 - g * e) / (1.0 - g)))
    big_d = ((b - d) / (sigma * sigma)) * (1.0 - e) / (1.0 - g * e)
    return torch.exp(big_c + big_d * v0)


def heston_price(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    v0: TensorLike,
    kappa: TensorLike,
    theta: TensorLike,
    sigma: TensorLike,
    rho: TensorLike,
    *,
    nodes: int = DEFAULT_NODES,
) -> torch.Tensor:
    """European option prices under Heston (currency per unit of underlying).

    ``ttm`` years; ``rate``/``div_yield`` continuously compounded; ``v0``/``theta`` variances; inputs
    broadcast; differentiable with autograd in every argument (used by :func:`heston_calibrate`).
    """
    w, S, K, T, r, q, v0_, ka, th, sg, rh = as_tensors(
        right, spot, strike, ttm, rate, div_yield, v0, kappa, theta, sigma, rho
    )
    shape = w.shape
    flat = [t.reshape(-1, 1) for t in (w, S, K, T, r, q, v0_, ka, th, sg, rh)]
    w, S, K, T, r, q, v0_, ka, th, sg, rh = flat
    F = S * torch.exp((r - q) * T)
    k = torch.log(K / F)
    # Gauss-Legendre nodes on (-1, 1) mapped to u in (0, inf): u = L (1 + x) / (1 - x), with the scale
    # L following the total vol so that the integrand's decay sits inside the mapped range
    x, wts = _legendre(nodes, S.device, S.dtype)
    avg_var = torch.clamp(0.5 * (v0_ + th), min=1e-4)
    total_sd = torch.sqrt(avg_var * torch.clamp(T, min=1e-6))
    L = 2.0 / total_sd
    u = L * (1.0 + x) / (1.0 - x)
    du = L * 2.0 / (1.0 - x) ** 2 * wts
    cplx = torch.complex128 if S.dtype == torch.float64 else torch.complex64
    uc = u.to(cplx)
    disc = torch.exp(-r * T)
    # Lewis: call = F - sqrt(F K) / pi * integral on the contour Im = -1/2 (robust: needs no moment
    # beyond the first). It subtracts two numbers of the size of F, so far out of the money the error
    # is absolute, about 1e-12 of the forward (see docs/quant.md)
    phi_l = heston_cf(uc - 0.5j, T, v0_, ka, th, sg, rh)
    lewis = (torch.exp(-1j * uc * k) * phi_l).real / (u * u + 0.25)
    call_lewis = disc * (F - torch.sqrt(F * K) / math.pi * (lewis * du).sum(dim=-1, keepdim=True))
    call = call_lewis
    put = call - disc * (F - K)
    value = torch.where(w > 0, call, put)
    return value.reshape(shape)


class HestonParams(NamedTuple):
    """Calibrated Heston parameters (variances for ``v0``/``theta``) and the final RMSE in price units."""

    v0: float
    kappa: float
    theta: float
    sigma: float
    rho: float
    rmse: float


def heston_calibrate(
    price: TensorLike,
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    *,
    initial: tuple[float, float, float, float, float] = (0.04, 1.5, 0.04, 0.5, -0.5),
    weights: TensorLike | None = None,
    max_iter: int = 200,
    nodes: int = 128,
) -> HestonParams:
    """Fit (v0, kappa, theta, sigma, rho) to option prices by weighted least squares (L-BFGS, autograd).

    Parameters are optimised through smooth maps onto their domains (softplus for the positive ones,
    tanh for rho), so the optimiser never leaves the model's domain. Prices in currency per unit;
    ``nodes`` quadrature points per price (128 suffices for chains of ordinary strikes and maturities).
    """
    p, w, S, K, T, r, q = as_tensors(price, right, spot, strike, ttm, rate, div_yield)
    wt = torch.ones_like(p) if weights is None else as_tensors(weights, p)[0]

    def inv_softplus(y: float) -> float:
        return math.log(math.expm1(y))

    v0, ka, th, sg, rh = initial
    raw = torch.tensor(
        [inv_softplus(v0), inv_softplus(ka), inv_softplus(th), inv_softplus(sg), math.atanh(rh)],
        dtype=p.dtype, device=p.device, requires_grad=True,
    )
    opt = torch.optim.LBFGS([raw], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                            tolerance_change=1e-14)

    def unpack(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sp = torch.nn.functional.softplus
        return sp(z[0]), sp(z[1]), sp(z[2]), sp(z[3]), torch.tanh(z[4])

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        model = heston_price(w, S, K, T, r, q, *unpack(raw), nodes=nodes)
        loss = (wt * (model - p) ** 2).mean()
        loss.backward()
        return loss

    opt.step(loss_fn)
    with torch.no_grad():
        v0_, ka_, th_, sg_, rh_ = (float(t) for t in unpack(raw))
        model = heston_price(w, S, K, T, r, q, v0_, ka_, th_, sg_, rh_, nodes=nodes)
        rmse = float(torch.sqrt(((model - p) ** 2).mean()))
    return HestonParams(v0_, ka_, th_, sg_, rh_, rmse)
