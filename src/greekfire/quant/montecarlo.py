"""Monte Carlo paths (GBM, Heston) and a European Monte Carlo pricer with error bars.

Reproducible: every function takes a ``seed`` and draws from its own ``torch.Generator`` on the target
device (the same seed gives the same paths on the same device and dtype). Antithetic variates pair each
normal draw with its negative. Units: ``ttm`` years, ``rate``/``div_yield`` continuously compounded,
``vol`` annualised, ``v0``/``theta`` variances.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from greekfire.quant._tensors import TensorLike, as_tensors


def _normals(
    shape: tuple[int, ...], *, seed: int, antithetic: bool, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normals of ``shape`` (paths first); with ``antithetic`` the second half mirrors the first."""
    gen = torch.Generator(device=device).manual_seed(int(seed))
    n = shape[0]
    if not antithetic:
        return torch.randn(shape, generator=gen, device=device, dtype=dtype)
    half = torch.randn(((n + 1) // 2, *shape[1:]), generator=gen, device=device, dtype=dtype)
    return torch.cat([half, -half], dim=0)[:n]


def _resolve(device: torch.device | str | None, *values: TensorLike) -> torch.device:
    if device is not None:
        return torch.device(device)
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def gbm_paths(
    spot: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    ttm: float,
    steps: int,
    n_paths: int,
    *,
    seed: int,
    antithetic: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Geometric Brownian motion paths, exact log-normal steps: a tensor ``[n_paths, steps + 1]`` whose
    first column is ``spot`` (scalars for the market inputs; ``ttm`` years split into equal steps)."""
    dev = _resolve(device, spot, rate, div_yield, vol)
    S, r, q, v = (t.reshape(()) for t in as_tensors(spot, rate, div_yield, vol, device=dev, dtype=dtype))
    dt = ttm / steps
    z = _normals((n_paths, steps), seed=seed, antithetic=antithetic, device=dev, dtype=dtype)
    increments = (r - q - 0.5 * v * v) * dt + v * math.sqrt(dt) * z
    log_path = torch.cumsum(increments, dim=1)
    zero = torch.zeros((n_paths, 1), device=dev, dtype=dtype)
    return S * torch.exp(torch.cat([zero, log_path], dim=1))


def heston_paths(
    spot: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    v0: TensorLike,
    kappa: TensorLike,
    theta: TensorLike,
    sigma: TensorLike,
    rho: TensorLike,
    ttm: float,
    steps: int,
    n_paths: int,
    *,
    seed: int,
    antithetic: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heston paths by full-truncation Euler (variance floored at 0 inside drift and diffusion) with a
    log-Euler spot step: returns (spot paths, variance paths), each ``[n_paths, steps + 1]``."""
    dev = _resolve(device, spot, v0)
    S0, r, q, v_0, ka, th, sg, rh = (
        t.reshape(()) for t in as_tensors(spot, rate, div_yield, v0, kappa, theta, sigma, rho, device=dev, dtype=dtype)
    )
    dt = ttm / steps
    sq = math.sqrt(dt)
    z = _normals((n_paths, steps, 2), seed=seed, antithetic=antithetic, device=dev, dtype=dtype)
    z_v = z[..., 0]
    z_s = rh * z_v + torch.sqrt(1.0 - rh * rh) * z[..., 1]
    log_s = torch.full((n_paths,), 0.0, device=dev, dtype=dtype) + torch.log(S0)
    var = torch.full((n_paths,), 0.0, device=dev, dtype=dtype) + v_0
    spots = [torch.exp(log_s)]
    variances = [var]
    for i in range(steps):
        vp = torch.clamp(var, min=0.0)
        log_s = log_s + (r - q - 0.5 * vp) * dt + torch.sqrt(vp) * sq * z_s[:, i]
        var = var + ka * (th - vp) * dt + sg * torch.sqrt(vp) * sq * z_v[:, i]
        spots.append(torch.exp(log_s))
        variances.append(var)
    return torch.stack(spots, dim=1), torch.clamp(torch.stack(variances, dim=1), min=0.0)


class MCResult(NamedTuple):
    """Monte Carlo estimate and its standard error (same units as the price)."""

    price: torch.Tensor
    stderr: torch.Tensor


def mc_european(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    *,
    n_paths: int = 100_000,
    seed: int = 0,
    antithetic: bool = True,
) -> MCResult:
    """European prices by Monte Carlo on the exact terminal log-normal law, with standard errors.

    Inputs broadcast to a batch of options, each priced on the same ``n_paths`` normals; antithetic
    pairs are averaged before the standard error is taken (so the error bar is honest).
    """
    w, S, K, T, r, q, v = as_tensors(right, spot, strike, ttm, rate, div_yield, vol)
    shape = w.shape
    w, S, K, T, r, q, v = (t.reshape(-1, 1) for t in (w, S, K, T, r, q, v))
    n = n_paths + (n_paths % 2 if antithetic else 0)
    z = _normals((n,), seed=seed, antithetic=antithetic, device=S.device, dtype=S.dtype).reshape(1, -1)
    ST = S * torch.exp((r - q - 0.5 * v * v) * T + v * torch.sqrt(T) * z)
    payoff = torch.exp(-r * T) * torch.clamp(w * (ST - K), min=0.0)
    if antithetic:
        half = n // 2
        payoff = 0.5 * (payoff[:, :half] + payoff[:, half:])
    m = payoff.shape[1]
    price = payoff.mean(dim=1)
    stderr = payoff.std(dim=1) / math.sqrt(m)
    return MCResult(price.reshape(shape), stderr.reshape(shape))
