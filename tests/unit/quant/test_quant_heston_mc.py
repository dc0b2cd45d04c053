"""Heston prices against QuantLib, calibration, and Monte Carlo error bars containing closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import need_module
from greekfire.quant import (
    bsm_price,
    gbm_paths,
    heston_calibrate,
    heston_paths,
    heston_price,
    mc_european,
)

need_module("QuantLib")
from quant_ql_helpers import heston as ql_heston  # noqa: E402


def test_heston_matches_quantlib_analytic() -> None:
    rng = np.random.default_rng(9)
    rows = []
    for _ in range(120):
        days = int(rng.choice([7, 30, 91, 365, 730, 1825]))
        row = (float(rng.choice([1.0, -1.0])), 100.0, 100.0 * rng.uniform(0.6, 1.5), days, rng.uniform(-0.01, 0.06),
               rng.uniform(0.0, 0.04), rng.uniform(0.01, 0.2), rng.uniform(0.3, 5.0), rng.uniform(0.01, 0.2),
               rng.uniform(0.1, 1.0), rng.uniform(-0.9, 0.5))
        rows.append((*row, ql_heston(*row)))
    t = torch.tensor(rows, dtype=torch.float64)
    t[:, 3] = t[:, 3] / 365.0
    ours = heston_price(*t[:, :11].T)
    ref = t[:, 11]
    # 1e-7 relative, with an absolute floor of 1e-11 of the spot for the far out-of-the-money values
    assert ((ours - ref).abs() <= 1e-7 * ref.abs() + 1e-11 * t[:, 1]).all()


def test_heston_reduces_to_black_scholes_without_vol_of_vol() -> None:
    K = torch.tensor([80.0, 100.0, 125.0], dtype=torch.float64)
    h = heston_price(1.0, 100.0, K, 1.0, 0.03, 0.01, 0.04, 2.0, 0.04, 1e-4, 0.0)
    b = bsm_price(1.0, 100.0, K, 1.0, 0.03, 0.01, 0.2)
    assert torch.allclose(h, b, rtol=1e-5)


def test_heston_calibration_recovers_parameters() -> None:
    K = torch.linspace(80.0, 120.0, 9, dtype=torch.float64).repeat(3)
    T = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64).repeat_interleave(9)
    w = torch.where(K >= 100.0, 1.0, -1.0).double()
    truth = (0.05, 2.0, 0.06, 0.6, -0.65)
    prices = heston_price(w, 100.0, K, T, 0.02, 0.0, *truth, nodes=128)
    fit = heston_calibrate(prices, w, 100.0, K, T, 0.02, 0.0, max_iter=80)
    assert fit.rmse < 1e-4
    assert fit.v0 == pytest.approx(truth[0], rel=2e-2)
    assert fit.rho == pytest.approx(truth[4], abs=5e-2)


def test_mc_european_error_bars_contain_closed_form() -> None:
    w = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    K = torch.tensor([100.0, 100.0, 130.0, 70.0], dtype=torch.float64)
    mc = mc_european(w, 100.0, K, 1.0, 0.03, 0.01, 0.25, n_paths=200_000, seed=42)
    exact = bsm_price(w, 100.0, K, 1.0, 0.03, 0.01, 0.25)
    assert ((mc.price - exact).abs() <= 4.0 * mc.stderr).all()
    again = mc_european(w, 100.0, K, 1.0, 0.03, 0.01, 0.25, n_paths=200_000, seed=42)
    assert torch.equal(mc.price, again.price)  # reproducible seeds


def test_gbm_paths_shape_antithetic_and_martingale() -> None:
    p = gbm_paths(100.0, 0.03, 0.01, 0.25, 1.0, 12, 50_000, seed=7)
    assert p.shape == (50_000, 13) and torch.all(p[:, 0] == 100.0)
    disc_mean = (p[:, -1] * np.exp(-(0.03 - 0.01))).mean()
    assert abs(disc_mean.item() - 100.0) < 0.3
    z = gbm_paths(100.0, 0.0, 0.0, 0.25, 1.0, 1, 4, seed=1)
    # antithetic: log-returns of the second half mirror the first around the drift
    lr = torch.log(z[:, 1] / 100.0) + 0.5 * 0.25**2
    assert torch.allclose(lr[:2], -lr[2:])


def test_heston_mc_within_error_bars_of_fourier_price() -> None:
    S, v = heston_paths(100.0, 0.03, 0.0, 0.04, 2.0, 0.04, 0.3, -0.7, 1.0, 50, 60_000, seed=3)
    assert S.shape == v.shape == (60_000, 51) and (v >= 0).all()
    payoff = torch.clamp(S[:, -1] - 100.0, min=0.0) * np.exp(-0.03)
    half = payoff.shape[0] // 2
    pairs = 0.5 * (payoff[:half] + payoff[half:])
    est, se = pairs.mean().item(), pairs.std().item() / half**0.5
    exact = heston_price(1.0, 100.0, 100.0, 1.0, 0.03, 0.0, 0.04, 2.0, 0.04, 0.3, -0.7).item()
    # full-truncation Euler with 50 steps has a small bias: allow it on top of 4 standard errors
    assert abs(est - exact) < 4.0 * se + 0.02
