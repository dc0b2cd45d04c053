"""Portfolio Greeks, scenario grid, parametric and Monte Carlo VaR / ES."""

from __future__ import annotations

import math

import torch

from greekfire.quant import bsm_greeks, mc_var, parametric_var, portfolio_greeks, scenario_grid


def test_portfolio_greeks_sum_by_underlying() -> None:
    w = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    g = bsm_greeks(w, torch.tensor([100.0, 100.0, 50.0]).double(), 100.0, 0.5, 0.02, 0.0, 0.3)
    qty = torch.tensor([10.0, -5.0, 3.0], dtype=torch.float64)
    out = portfolio_greeks(g, qty, 100.0, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(out["delta"][0], 100.0 * (10 * g["delta"][0] - 5 * g["delta"][1]))
    assert torch.allclose(out["vega"][1], 100.0 * 3 * g["vega"][2])


def test_scenario_grid_zero_at_no_shock_and_convex_for_long_options() -> None:
    pnl = scenario_grid(torch.tensor([1.0, -1.0]).double(), 100.0, 100.0, 0.5, 0.02, 0.0, 0.25, 1.0, 100.0,
                        torch.tensor([-0.1, 0.0, 0.1]), torch.tensor([-0.05, 0.0, 0.05]))
    assert pnl.shape == (3, 3)
    assert abs(pnl[1, 1].item()) < 1e-9
    assert pnl[0, 1] > 0 and pnl[2, 1] > 0  # a long straddle gains on either move
    assert pnl[1, 2] > 0 > pnl[1, 0]  # and on vol


def test_parametric_var_delta_only_is_normal_quantile() -> None:
    var, es = parametric_var(1000.0, 0.0, 100.0, 0.01, confidence=0.99)
    z = 2.3263478740408408
    assert math.isclose(var.item(), 1000 * 0.01 * z, rel_tol=1e-9)
    assert math.isclose(es.item(), 1000 * 0.01 * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) / 0.01, rel_tol=1e-4)


def test_parametric_var_short_gamma_is_chi_square() -> None:
    var, es = parametric_var(0.0, -2e5, 100.0, 0.01, confidence=0.99)
    assert math.isclose(var.item(), 1e5 * 1e-4 * 6.634896601021214, rel_tol=1e-7)
    assert es.item() > var.item()


def test_mc_var_close_to_parametric_for_stock_and_option_book() -> None:
    g = bsm_greeks(1.0, 100.0, 100.0, 0.25, 0.02, 0.0, 0.3)

    def book(spots: torch.Tensor) -> torch.Tensor:
        calls = bsm_greeks(1.0, spots[:, 0], 100.0, 0.25 - 1 / 365, 0.02, 0.0, 0.3)["value"]
        return -10 * 100 * calls + 500 * spots[:, 0]

    var_mc, es_mc = mc_var(book, torch.tensor([100.0]).double(), 0.015, n_paths=200_000, seed=1)
    delta_cash = (-1000 * g["delta"] + 500) * 100.0
    gamma_cash = -1000 * g["gamma"] * 100.0**2
    var_p, es_p = parametric_var(delta_cash, gamma_cash, 100.0, 0.015)
    # the base value is revalued a day later too, so both views leave theta out
    assert abs(var_mc.item() - var_p.item()) / var_p.item() < 0.05
    assert es_mc >= var_mc
