"""The pricing core on CUDA: every engine agrees with its CPU run (validated against QuantLib in
tests/unit/quant), stays on the inputs' device and dtype, and meets the same accuracy bars."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from cuda_helpers import close_to_cpu, on

from greekfire.data.pricing import price_frame
from greekfire.quant import (
    ACCURATE,
    GREEK_NAMES,
    american_greeks,
    american_implied_vol,
    american_price,
    baw_price,
    black76_greeks,
    bs2002_price,
    bsm_greeks,
    bsm_price,
    crr_price,
    gbm_paths,
    heston_calibrate,
    heston_paths,
    heston_price,
    implied_vol,
    mc_european,
    mc_var,
    parametric_var,
    portfolio_greeks,
    qdfp_price,
    scenario_grid,
)
from quant_grids import american_grid, break_rows, chain, extreme_grid, random_grid


def european_args(n: int, seed: int) -> list[torch.Tensor]:
    g = random_grid(n, seed)
    S = g["spot"]
    return [g["right"], S, S * g["strike_ratio"], g["days"].double() / 365.0, g["rate"], g["div"], g["vol"]]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_european_price_and_every_greek_match_the_cpu(dev: torch.device, compile: bool) -> None:
    args = european_args(20_000, seed=5)
    ref = bsm_greeks(*args, compile=False)
    got = bsm_greeks(*on(dev, *args), compile=compile)
    assert list(got) == list(GREEK_NAMES)
    for name in GREEK_NAMES:
        assert got[name].device.type == dev.type and got[name].dtype == torch.float64
        close_to_cpu(got[name], ref[name], rtol=1e-9, scale_atol=1e-12, what=f"bsm {name}")
    b76_args = [a for i, a in enumerate(args) if i != 5]  # (right, forward, strike, ttm, rate, vol)
    b76 = black76_greeks(*b76_args, compile=False)
    b76_dev = black76_greeks(*on(dev, *b76_args), compile=compile)
    for name in GREEK_NAMES:
        close_to_cpu(b76_dev[name], b76[name], rtol=1e-9, scale_atol=1e-12, what=f"black76 {name}")


def test_float32_on_the_device_within_float32_precision(dev: torch.device) -> None:
    args = european_args(20_000, seed=6)
    ref = bsm_greeks(*args, compile=False)
    for compile in (False, True):
        got = bsm_greeks(*(a.float() for a in on(dev, *args)), compile=compile)
        assert got["value"].dtype == torch.float32 and got["value"].device.type == dev.type
        for name in ("value", "delta", "vega", "theta", "rho"):
            close_to_cpu(got[name], ref[name], rtol=2e-4, scale_atol=2e-5, what=f"f32 {name} compile={compile}")


def test_limits_give_values_not_nan_on_the_device(dev: torch.device) -> None:
    # expiry, zero vol, deep in and out of the money, negative rates
    w = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    S = torch.full((6,), 100.0, dtype=torch.float64)
    K = torch.tensor([90.0, 110.0, 100.0, 1e-6, 1e6, 100.0], dtype=torch.float64)
    T = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1e-9], dtype=torch.float64)
    r = torch.tensor([-0.02, 0.01, -0.05, 0.02, 0.02, 0.0], dtype=torch.float64)
    v = torch.tensor([0.2, 0.2, 0.0, 0.3, 0.3, 0.5], dtype=torch.float64)
    ref = bsm_greeks(w, S, K, T, r, 0.0, v)
    got = bsm_greeks(*on(dev, w, S, K, T, r), 0.0, v.to(dev))
    for name in GREEK_NAMES:
        assert torch.isfinite(got[name]).all(), name
        close_to_cpu(got[name], ref[name], rtol=1e-9, scale_atol=1e-12, what=f"limit {name}")


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_implied_vol_reprices_to_1e12_on_the_extreme_grid(dev: torch.device, compile: bool) -> None:
    w, S, K, t, r, q, v = on(dev, *extreme_grid())
    price = bsm_price(w, S, K, t, r, q, v, compile=False)
    res = implied_vol(price, w, S, K, t, r, q, compile=compile)
    assert res.vol.device.type == dev.type
    ok = res.code == 0
    assert ok.double().mean().item() > 0.98
    assert set(res.code[~ok].tolist()) <= {2, 3}
    rel = ((bsm_price(w, S, K, t, r, q, res.vol, compile=False) - price).abs() / price)[ok]
    assert rel.max().item() <= 1e-12, rel.max().item()
    cpu = implied_vol(*(a.cpu() for a in (price, w, S, K, t, r, q)), compile=False)
    agree = (cpu.code == res.code.cpu()).double().mean().item()
    assert agree > 0.999, agree  # a quote at the float64 cap may fall either side of it


def test_american_engines_match_the_cpu(dev: torch.device) -> None:
    w, S, K, days, r, q, v = american_grid(400, seed=9)
    args = [torch.as_tensor(a, dtype=torch.float64) for a in (w, S, K, days / 365.0, r, q, v)]
    args_dev = on(dev, *args)
    for name, fn in (("baw", baw_price), ("bs2002", bs2002_price)):
        close_to_cpu(fn(*args_dev), fn(*args), rtol=1e-9, scale_atol=1e-12, what=name)
    close_to_cpu(crr_price(*args_dev, steps=200), crr_price(*args, steps=200), rtol=1e-9, scale_atol=1e-12, what="crr")
    for compile in (False, True):
        got = qdfp_price(*args_dev, scheme=ACCURATE, compile=compile)
        assert got.device.type == dev.type
        close_to_cpu(got, qdfp_price(*args, scheme=ACCURATE, compile=False), rtol=1e-9, scale_atol=1e-12,
                     what=f"qdfp compile={compile}")
    greeks = american_greeks(*(a[:60] for a in args_dev))
    ref = american_greeks(*(a[:60] for a in args))
    for name in ref:
        close_to_cpu(greeks[name], ref[name], rtol=1e-6, scale_atol=1e-8, what=f"american {name}")


def test_american_implied_vol_on_the_device(dev: torch.device) -> None:
    w = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    S = torch.full((4,), 100.0, dtype=torch.float64)
    K = torch.tensor([90.0, 110.0, 130.0, 100.0], dtype=torch.float64)
    T = torch.tensor([0.25, 1.0, 2.0, 0.5], dtype=torch.float64)
    r, q, v = torch.full((4,), 0.05, dtype=torch.float64), torch.full((4,), 0.02, dtype=torch.float64), \
        torch.tensor([0.2, 0.3, 0.45, 0.6], dtype=torch.float64)
    args = on(dev, w, S, K, T, r, q)
    price = american_price(*args, v.to(dev))
    res = american_implied_vol(price, *args)
    assert (res.code == 0).all() and res.vol.device.type == dev.type
    torch.testing.assert_close(res.vol.cpu(), v, rtol=1e-7, atol=0.0)


def test_heston_price_and_calibration_on_the_device(dev: torch.device) -> None:
    K = torch.linspace(80.0, 120.0, 9, dtype=torch.float64).repeat(3)
    T = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64).repeat_interleave(9)
    w = torch.where(K >= 100.0, 1.0, -1.0).double()
    truth = (0.05, 2.0, 0.06, 0.6, -0.65)
    ref = heston_price(w, 100.0, K, T, 0.02, 0.0, *truth, nodes=128)
    Kd, Td, wd = on(dev, K, T, w)
    prices = heston_price(wd, 100.0, Kd, Td, 0.02, 0.0, *truth, nodes=128)
    close_to_cpu(prices, ref, rtol=1e-10, scale_atol=1e-13, what="heston")
    fit = heston_calibrate(prices, wd, 100.0, Kd, Td, 0.02, 0.0, max_iter=80)
    assert fit.rmse < 1e-4
    assert fit.v0 == pytest.approx(truth[0], rel=2e-2) and fit.rho == pytest.approx(truth[4], abs=5e-2)


def test_monte_carlo_on_the_device_is_seeded_and_brackets_the_closed_form(dev: torch.device) -> None:
    w, K = on(dev, torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64),
              torch.tensor([100.0, 100.0, 130.0, 70.0], dtype=torch.float64))
    mc = mc_european(w, 100.0, K, 1.0, 0.03, 0.01, 0.25, n_paths=400_000, seed=42)
    assert mc.price.device.type == dev.type
    exact = bsm_price(w, 100.0, K, 1.0, 0.03, 0.01, 0.25)
    assert ((mc.price - exact).abs() <= 4.0 * mc.stderr).all()
    assert torch.equal(mc.price, mc_european(w, 100.0, K, 1.0, 0.03, 0.01, 0.25, n_paths=400_000, seed=42).price)
    p = gbm_paths(100.0, 0.03, 0.01, 0.25, 1.0, 12, 200_000, seed=7, device=dev)
    assert p.device.type == dev.type and p.shape == (200_000, 13)
    assert abs((p[:, -1] * np.exp(-(0.03 - 0.01))).mean().item() - 100.0) < 0.15
    S, var = heston_paths(100.0, 0.03, 0.0, 0.04, 2.0, 0.04, 0.3, -0.7, 1.0, 50, 200_000, seed=3, device=dev)
    assert (var >= 0).all()
    payoff = torch.clamp(S[:, -1] - 100.0, min=0.0) * np.exp(-0.03)
    half = payoff.shape[0] // 2
    pairs = 0.5 * (payoff[:half] + payoff[half:])
    est, se = pairs.mean().item(), pairs.std().item() / half**0.5
    exact_h = heston_price(1.0, 100.0, 100.0, 1.0, 0.03, 0.0, 0.04, 2.0, 0.04, 0.3, -0.7).item()
    assert abs(est - exact_h) < 4.0 * se + 0.02  # full-truncation Euler's small bias on top of 4 s.e.


def test_portfolio_risk_on_the_device_matches_the_cpu(dev: torch.device) -> None:
    args = european_args(300, seed=8)
    qty = torch.as_tensor(np.random.default_rng(1).integers(-20, 20, 300)).double()
    und = torch.arange(300) % 3
    ref = portfolio_greeks(bsm_greeks(*args), qty, 100.0, und, 3)
    got = portfolio_greeks(bsm_greeks(*on(dev, *args)), qty.to(dev), 100.0, und.to(dev), 3)
    for name in ref:
        close_to_cpu(got[name], ref[name], rtol=1e-9, scale_atol=1e-12, what=f"portfolio {name}")
    shocks = torch.linspace(-0.2, 0.2, 9, dtype=torch.float64), torch.linspace(-0.1, 0.1, 5, dtype=torch.float64)
    ref_grid = scenario_grid(*args, qty, 100.0, *shocks)
    got_grid = scenario_grid(*on(dev, *args), qty.to(dev), 100.0, *on(dev, *shocks))
    close_to_cpu(got_grid, ref_grid, rtol=1e-9, scale_atol=1e-12, what="scenario grid")
    var_ref, es_ref = parametric_var(got["delta"].cpu() * 100.0, got["gamma"].cpu() * 1e4, 100.0, 0.015)
    var_d, es_d = parametric_var(got["delta"] * 100.0, got["gamma"] * 1e4, 100.0, 0.015)
    close_to_cpu(var_d, var_ref, rtol=1e-9, scale_atol=1e-12, what="parametric VaR")
    close_to_cpu(es_d, es_ref, rtol=1e-9, scale_atol=1e-12, what="parametric ES")

    def book(spots: torch.Tensor) -> torch.Tensor:
        calls = bsm_greeks(1.0, spots[:, 0], 100.0, 0.25 - 1 / 365, 0.02, 0.0, 0.3)["value"]
        return -10 * 100 * calls + 500 * spots[:, 0]

    var_mc, es_mc = mc_var(book, torch.tensor([100.0], dtype=torch.float64, device=dev), 0.015, n_paths=200_000, seed=1)
    assert var_mc.device.type == dev.type and es_mc >= var_mc > 0


def test_price_frame_on_the_device_flags_the_same_rows_and_prices_the_rest_alike(dev: torch.device) -> None:
    df = chain(5000, seed=3)
    bad = break_rows(df, share=0.02, seed=4)
    ref = price_frame(df.copy(), device="cpu")
    got = price_frame(df.copy(), device=str(dev))
    assert len(got) == len(df) and (got["error"] != "").sum() >= len(bad)
    pd.testing.assert_series_equal(got["error"], ref["error"])
    for col in ("value", "delta", "gamma", "vega", "theta", "rho", "iv"):
        a, b = torch.as_tensor(got[col].to_numpy()), torch.as_tensor(ref[col].to_numpy())
        close_to_cpu(a, b, rtol=1e-9, scale_atol=1e-12, what=f"price_frame {col}")
