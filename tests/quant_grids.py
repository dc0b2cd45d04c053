"""Seeded option grids and chains shared by the pricing tests (CPU suite and tests/cuda)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from greekfire.quant import bsm_price


def random_grid(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Random European contracts: spot 5-500, ln(K/S) ~ N(0, 0.3), 1 day to 10 years (``days``),
    rates -2% to 10%, yields -1% to 6%, vols 3% to 150% (float64, CPU)."""
    rng = np.random.default_rng(seed)
    days = rng.integers(1, 3650, n)
    return {
        "right": torch.as_tensor(rng.choice([1.0, -1.0], n)),
        "spot": torch.as_tensor(rng.uniform(5.0, 500.0, n)),
        "strike_ratio": torch.as_tensor(np.exp(rng.normal(0.0, 0.3, n))),
        "days": torch.as_tensor(days),
        "rate": torch.as_tensor(rng.uniform(-0.02, 0.10, n)),
        "div": torch.as_tensor(rng.uniform(-0.01, 0.06, n)),
        "vol": torch.as_tensor(rng.uniform(0.03, 1.5, n)),
    }


def extreme_grid() -> tuple[torch.Tensor, ...]:
    """|ln(K/F)| up to 5 standard deviations, ttm 1 day to 10 years, vol 1% to 500%, both rights:
    ``(right, spot, strike, ttm, rate, div_yield, vol)``, float64 on the CPU."""
    T = torch.tensor([1 / 365, 7 / 365, 30 / 365, 0.25, 1.0, 3.0, 10.0], dtype=torch.float64)
    V = torch.tensor([0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0], dtype=torch.float64)
    Z = torch.linspace(-5.0, 5.0, 41, dtype=torch.float64)
    W = torch.tensor([1.0, -1.0], dtype=torch.float64)
    w, t, v, z = (a.reshape(-1) for a in torch.meshgrid(W, T, V, Z, indexing="ij"))
    S = torch.full_like(t, 100.0)
    r = torch.full_like(t, -0.01)  # a negative rate on purpose
    q = torch.full_like(t, 0.02)
    K = S * torch.exp((r - q) * t) * torch.exp(z * v * torch.sqrt(t))
    return w, S, K, t, r, q, v


def american_grid(n: int, seed: int) -> tuple[np.ndarray, ...]:
    """Random American contracts as numpy arrays ``(right, spot, strike, days, rate, div_yield, vol)``:
    spot 20-200, strike 0.7-1.3 x spot, 10 days to 5 years (``days``), rates 0.5-8%, yields 0-6%, vols 10-60%."""
    rng = np.random.default_rng(seed)
    w = rng.choice([1.0, -1.0], n)
    S = rng.uniform(20.0, 200.0, n)
    K = S * rng.uniform(0.7, 1.3, n)
    days = rng.choice([10, 30, 91, 182, 365, 730, 1825], n)
    r = rng.uniform(0.005, 0.08, n)
    q = rng.uniform(0.0, 0.06, n)
    v = rng.uniform(0.1, 0.6, n)
    return w, S, K, days, r, q, v


def chain(n: int, seed: int = 0) -> pd.DataFrame:
    """A priced chain as `greekfire price` reads it: right C/P, spot, strike, ttm (years), rate,
    div_yield, market_price (BSM at ``true_vol``) and true_vol."""
    rng = np.random.default_rng(seed)
    right = rng.choice(["C", "P"], n)
    spot = rng.uniform(50, 150, n)
    strike = spot * rng.uniform(0.8, 1.2, n)
    ttm = rng.uniform(0.02, 2.0, n)
    rate = rng.uniform(0.0, 0.05, n)
    div = rng.uniform(0.0, 0.03, n)
    vol = rng.uniform(0.1, 0.6, n)
    w = np.where(right == "C", 1.0, -1.0)
    price = bsm_price(torch.as_tensor(w), torch.as_tensor(spot), torch.as_tensor(strike), torch.as_tensor(ttm),
                      torch.as_tensor(rate), torch.as_tensor(div), torch.as_tensor(vol)).numpy()
    return pd.DataFrame({"right": right, "spot": spot, "strike": strike, "ttm": ttm, "rate": rate,
                         "div_yield": div, "market_price": price, "true_vol": vol})


def break_rows(df: pd.DataFrame, share: float = 0.01, seed: int = 1) -> np.ndarray:
    """Break ``share`` of the rows in place, four kinds in turn; returns their positions."""
    rng = np.random.default_rng(seed)
    bad = rng.choice(len(df), int(len(df) * share), replace=False)
    kinds = np.arange(len(bad)) % 4
    df.loc[bad[kinds == 0], "spot"] = -5.0
    df.loc[bad[kinds == 1], "right"] = "X"
    df.loc[bad[kinds == 2], "market_price"] = 0.0  # below intrinsic for ITM, no time value for OTM
    df.loc[bad[kinds == 3], "ttm"] = np.nan
    return bad
