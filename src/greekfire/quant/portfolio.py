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

from greekfire.quant._tensors import TensorLike, as_tensors, norm_cdf
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


def _quadratic_cdf(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """P(a R + b R^2 <= x) for R ~ N(0, sd^2), exactly (roots of the quadratic)."""
    linear = torch.where(a > 0, norm_cdf(x / (a * sd)), norm_cdf(-x / (a * sd)))
    linear = torch.where(a == 0, (x >= 0).to(x.dtype), linear)
    b_safe = torch.where(b == 0, torch.ones_like(b), b)
    disc = a * a + 4.0 * b_safe * x
    root = torch.sqrt(torch.clamp(disc, min=0.0))
    r1 = (-a - root) / (2.0 * b_safe)
    r2 = (-a + root) / (2.0 * b_safe)
    lo, hi = torch.minimum(r1, r2), torch.maximum(r1, r2)
    inside = norm_cdf(hi / sd) - norm_cdf(lo / sd)
    quad = torch.where(b > 0, torch.where(disc >= 0, inside, torch.zeros_like(x)),
                       torch.where(disc >= 0, 1.0 - inside, torch.ones_like(x)))
    return torch.where(b == 0, linear, quad)


def _quadratic_quantile(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """The p-quantile of a R + b R^2 by bisection (100 fixed steps; monotone CDF, exact bracket)."""
    span = 40.0 * (a.abs() * sd + b.abs() * sd * sd) + 1e-300
    lo, hi = -span.expand_as(p).clone(), span.expand_as(p).clone()
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        below = _quadratic_cdf(mid, a, b, sd) < p
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def parametric_var(
    delta_cash: TensorLike,
    gamma_cash: TensorLike,
    spot: TensorLike,
    vol_daily: TensorLike,
    confidence: float = 0.99,
    horizon_days: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Delta-gamma VaR and ES (positive loss amounts, currency) per underlying.

    P&L = delta_cash * R + 0.5 * gamma_cash * R^2 with the return R ~ N(0, vol_daily^2 * horizon_days);
    ``delta_cash`` = delta x spot, ``gamma_cash`` = gamma x spot^2 (portfolio sums). The quantile of this
    quadratic is computed exactly (not by a Cornish-Fisher expansion, which breaks down for large
    gamma); ES averages the quantile over the tail with 32 Gauss-Legendre levels. ``spot`` must be > 0
    (NaN results otherwise).
    """
    dc, gc, S, sdv = as_tensors(delta_cash, gamma_cash, spot, vol_daily)
    sd = sdv * math.sqrt(horizon_days)
    a, b = dc, 0.5 * gc
    tail = 1.0 - confidence
    q = _quadratic_quantile(torch.full_like(a, tail), a, b, sd)
    x, wts = np.polynomial.legendre.leggauss(32)
    extra = [1] * a.dim()
    ps = torch.as_tensor(0.5 * tail * (x + 1.0), device=a.device, dtype=a.dtype).reshape(-1, *extra)
    ws = torch.as_tensor(0.5 * wts, device=a.device, dtype=a.dtype).reshape(-1, *extra)
    es = (ws * _quadratic_quantile(ps.expand(-1, *a.shape), a, b, sd)).sum(dim=0)
    bad = torch.where(S > 0, torch.zeros_like(a), torch.full_like(a, math.nan))
    return -q + bad, -es + bad


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
