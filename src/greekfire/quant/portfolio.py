"""Portfolio risk on tensors: aggregate Greeks, scenario grids, parametric and Monte Carlo VaR / ES.

Units: quantities in contracts (or shares), ``multiplier`` units of underlying per contract, Greeks as
in :mod:`greekfire.quant.european` (per unit of underlying). VaR and ES are positive loss amounts in
currency over ``horizon_days`` trading days at ``confidence``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from greekfire.quant._tensors import TensorLike, as_tensors
from greekfire.quant.european import bsm_greeks


def portfolio_greeks(
    greeks: dict[str, torch.Tensor],
    quantity: TensorLike,
    multiplier: TensorLike,
    underlying_index: torch.Tensor,
    n_underlyings: int,
) -> dict[str, torch.Tensor]:
    """Per underlying, the sum over positions of quantity x multiplier x greek, for every key given.

    ``underlying_index`` (int64, one per position) says which underlying each position is on; the
    result tensors have length ``n_underlyings``. NaN Greeks (a bad row) propagate to their underlying.
    """
    first = next(iter(greeks.values()))
    qty, mult = as_tensors(quantity, multiplier, device=first.device, dtype=first.dtype)
    qty, mult = (torch.broadcast_to(t, first.shape) for t in (qty, mult))
    idx = torch.as_tensor(underlying_index, device=first.device, dtype=torch.long).reshape(-1)
    weight = (qty * mult).reshape(-1)
    out = {}
    for name, g in greeks.items():
        acc = torch.zeros(n_underlyings, device=first.device, dtype=first.dtype)
        out[name] = acc.index_add_(0, idx, weight * g.reshape(-1))
    return out


def scenario_grid(
    right: TensorLike,
    spot: TensorLike,
    strike: TensorLike,
    ttm: TensorLike,
    rate: TensorLike,
    div_yield: TensorLike,
    vol: TensorLike,
    quantity: TensorLike,
    multiplier: TensorLike,
    spot_shocks: TensorLike,
    vol_shocks: TensorLike,
) -> torch.Tensor:
    """Full revaluation P&L of a book of European options over a grid of shocks.

    ``spot_shocks`` are relative moves (0.05 = +5%), ``vol_shocks`` absolute vol points (0.02 = +2 vol);
    returns ``[len(spot_shocks), len(vol_shocks)]`` P&L in currency (all positions on one underlying or
    on several with the same relative shock).
    """
    w, S, K, T, r, q, v, qty, mult = as_tensors(right, spot, strike, ttm, rate, div_yield, vol, quantity, multiplier)
    ds = as_tensors(spot_shocks, device=S.device, dtype=S.dtype)[0].reshape(-1, 1, 1)
    dv = as_tensors(vol_shocks, device=S.device, dtype=S.dtype)[0].reshape(1, -1, 1)
    base = (bsm_greeks(w, S, K, T, r, q, v)["value"] * qty * mult).sum()
    shocked = bsm_greeks(w, S * (1.0 + ds), K, T, r, q, torch.clamp(v + dv, min=0.0))["value"]
    return (shocked * qty * mult).sum(dim=-1) - base


def _cornish_fisher_quantile(p: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor, skew: torch.Tensor) -> torch.Tensor:
    z = torch.special.ndtri(p)
    return mean + sd * (z + (z * z - 1.0) * skew / 6.0)


def parametric_var(
    delta_cash: TensorLike,
    gamma_cash: TensorLike,
    spot: TensorLike,
    vol_daily: TensorLike,
    confidence: float = 0.99,
    horizon_days: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Delta-gamma VaR and ES (positive loss amounts) per underlying.

    P&L ~ delta_cash * R + 0.5 * gamma_cash * R^2 with the return R ~ N(0, vol_daily^2 * horizon_days):
    ``delta_cash`` = delta x spot (currency per 100% move), ``gamma_cash`` = gamma x spot^2. The quantile
    is the Cornish-Fisher expansion with the exact mean, variance and skew of that quadratic; ES averages
    the quantile over the tail with 32 Gauss-Legendre nodes. ``spot`` is accepted for the shape of the
    result and validation (must be > 0).
    """
    dc, gc, S, sdv = as_tensors(delta_cash, gamma_cash, spot, vol_daily)
    s2 = sdv * sdv * horizon_days
    a, b = dc, 0.5 * gc
    mean = b * s2
    var = a * a * s2 + 2.0 * b * b * s2 * s2
    third = 6.0 * a * a * b * s2 * s2 + 8.0 * b ** 3 * s2 ** 3
    sd = torch.sqrt(var)
    skew = torch.where(sd > 0, third / torch.clamp(sd, min=1e-300) ** 3, torch.zeros_like(sd))
    skew = torch.where(S > 0, skew, torch.full_like(skew, math.nan))
    tail = 1.0 - confidence
    q = _cornish_fisher_quantile(torch.full_like(mean, tail), mean, sd, skew)
    x, wts = np.polynomial.legendre.leggauss(32)
    ps = torch.as_tensor(0.5 * tail * (x + 1.0), device=mean.device, dtype=mean.dtype)
    ws = torch.as_tensor(0.5 * wts, device=mean.device, dtype=mean.dtype)
    qs = _cornish_fisher_quantile(ps.reshape(-1, *([1] * mean.dim())), mean, sd, skew)
    es = (ws.reshape(-1, *([1] * mean.dim())) * qs).sum(dim=0)
    return -q, -es


def mc_var(
    revalue_fn: Callable[[torch.Tensor], torch.Tensor],
    spot: TensorLike,
    vol_daily: TensorLike,
    *,
    correlation: TensorLike | None = None,
    confidence: float = 0.99,
    horizon_days: int = 1,
    n_paths: int = 100_000,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo VaR and ES (positive loss amounts, scalars) of a portfolio, revalued in full.

    ``revalue_fn(spots)`` maps a ``[n, n_underlyings]`` tensor of spots to ``[n]`` portfolio values (for
    example :func:`bsm_greeks` values times quantities plus stock). Spots move log-normally over
    ``horizon_days`` with daily vols ``vol_daily`` and the given correlation matrix (identity if None).
    """
    S, sdv = as_tensors(spot, vol_daily)
    S, sdv = S.reshape(-1), sdv.reshape(-1)
    m = S.numel()
    corr = torch.eye(m, dtype=S.dtype, device=S.device) if correlation is None else as_tensors(
        correlation, device=S.device, dtype=S.dtype
    )[0]
    chol = torch.linalg.cholesky(corr)
    gen = torch.Generator(device=S.device).manual_seed(int(seed))
    z = torch.randn((n_paths, m), generator=gen, device=S.device, dtype=S.dtype) @ chol.T
    h = float(horizon_days)
    shocked = S * torch.exp(-0.5 * sdv * sdv * h + sdv * math.sqrt(h) * z)
    base = revalue_fn(S.reshape(1, -1)).reshape(())
    pnl = revalue_fn(shocked).reshape(-1) - base
    var = -torch.quantile(pnl, 1.0 - confidence)
    tail = pnl[pnl <= -var]
    es = -tail.mean() if tail.numel() else var
    return var, es
