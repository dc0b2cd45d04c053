"""European BSM / Black-76: QuantLib as reference, identities, limits, dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import need_module
from greekfire.core.errors import DataError
from greekfire.quant import (
    GREEK_NAMES,
    STANDARD_GREEKS,
    black76_greeks,
    black76_price,
    bsm_greeks,
    bsm_greeks_numpy,
    bsm_price,
    parse_right,
)

ql = need_module("QuantLib")
from quant_ql_helpers import european as ql_european  # noqa: E402

from quant_grids import random_grid  # noqa: E402


def test_bsm_matches_quantlib_on_random_grid() -> None:
    g = random_grid(2000, seed=11)
    K = g["spot"] * g["strike_ratio"]
    T = g["days"].double() / 365.0
    ours = bsm_greeks(g["right"], g["spot"], K, T, g["rate"], g["div"], g["vol"])
    keys = ("value", "delta", "gamma", "vega", "theta", "theta_per_day", "rho", "epsilon")
    ref = {k: np.empty(len(K)) for k in keys}
    for i in range(len(K)):
        r = ql_european(g["right"][i].item(), g["spot"][i].item(), K[i].item(), int(g["days"][i]),
                        g["rate"][i].item(), g["div"][i].item(), g["vol"][i].item())
        for k in keys:
            ref[k][i] = r[k]
    spot = g["spot"].numpy()
    # an absolute floor scaled to the spot for values near zero (Greeks carry their own scale)
    floors = {"value": 1e-12 * spot, "delta": 1e-12, "gamma": 1e-12 / spot, "vega": 1e-11 * spot,
              "theta": 1e-11 * spot, "theta_per_day": 1e-13 * spot, "rho": 1e-11 * spot, "epsilon": 1e-11 * spot}
    for k in keys:
        err = np.abs(ours[k].numpy() - ref[k])
        tol = 1e-9 * np.abs(ref[k]) + floors[k]
        assert (err <= tol).all(), f"{k}: worst {np.max(err / tol):.3g}x the tolerance"


def test_black76_matches_quantlib_black_formula() -> None:
    rng = np.random.default_rng(3)
    n = 500
    w = rng.choice([1.0, -1.0], n)
    F = rng.uniform(10, 200, n)
    K = F * np.exp(rng.normal(0, 0.3, n))
    T = rng.uniform(0.01, 5, n)
    r = rng.uniform(-0.01, 0.08, n)
    v = rng.uniform(0.05, 1.0, n)
    ours = black76_price(torch.as_tensor(w), torch.as_tensor(F), torch.as_tensor(K), torch.as_tensor(T),
                         torch.as_tensor(r), torch.as_tensor(v)).numpy()
    ref = np.array([
        ql.blackFormula(ql.Option.Call if w[i] > 0 else ql.Option.Put, K[i], F[i], v[i] * math.sqrt(T[i]),
                        math.exp(-r[i] * T[i]))
        for i in range(n)
    ])
    assert np.allclose(ours, ref, rtol=1e-9, atol=1e-12 * F.max())


def test_put_call_parity() -> None:
    g = random_grid(5000, seed=5)
    K = g["spot"] * g["strike_ratio"]
    T = g["days"].double() / 365.0
    c = bsm_price(1.0, g["spot"], K, T, g["rate"], g["div"], g["vol"])
    p = bsm_price(-1.0, g["spot"], K, T, g["rate"], g["div"], g["vol"])
    fwd = g["spot"] * torch.exp(-g["div"] * T) - K * torch.exp(-g["rate"] * T)
    assert torch.allclose(c - p, fwd, rtol=1e-12, atol=1e-10 * float(g["spot"].max()))


def test_greeks_match_autograd_and_finite_differences() -> None:
    g = random_grid(300, seed=8)
    S = g["spot"].clone().requires_grad_(True)
    K = (g["spot"] * g["strike_ratio"]).detach()
    T = (g["days"].double() / 365.0).clamp(min=0.05).requires_grad_(True)
    r = g["rate"].clone().requires_grad_(True)
    q = g["div"].clone().requires_grad_(True)
    v = g["vol"].clone().requires_grad_(True)
    out = bsm_greeks(g["right"], S, K, T, r, q, v)
    dS, dT, dr, dq, dv = torch.autograd.grad(out["value"].sum(), (S, T, r, q, v), create_graph=True)
    assert torch.allclose(out["delta"], dS, rtol=1e-9, atol=1e-12)
    assert torch.allclose(out["vega"], dv, rtol=1e-9, atol=1e-9)
    assert torch.allclose(out["theta"], -dT, rtol=1e-9, atol=1e-9)
    assert torch.allclose(out["rho"], dr, rtol=1e-9, atol=1e-9)
    assert torch.allclose(out["epsilon"], dq, rtol=1e-9, atol=1e-9)
    (gamma,) = torch.autograd.grad(dS.sum(), (S,), retain_graph=True)
    assert torch.allclose(out["gamma"], gamma, rtol=1e-8, atol=1e-12)
    (vanna,) = torch.autograd.grad(dS.sum(), (v,), retain_graph=True)
    assert torch.allclose(out["vanna"], vanna, rtol=1e-8, atol=1e-10)
    (volga,) = torch.autograd.grad(dv.sum(), (v,), retain_graph=True)
    assert torch.allclose(out["volga"], volga, rtol=1e-8, atol=1e-8)
    (ddelta_dT,) = torch.autograd.grad(out["delta"].sum(), (T,), retain_graph=True)
    assert torch.allclose(out["charm"], -ddelta_dT, rtol=1e-8, atol=1e-10)
    # and a plain central difference for delta and vega, independent of autograd
    with torch.no_grad():
        h = 1e-4 * S
        fd = (bsm_price(g["right"], S + h, K, T, r, q, v) - bsm_price(g["right"], S - h, K, T, r, q, v)) / (2 * h)
        assert torch.allclose(out["delta"], fd, rtol=1e-6, atol=1e-8)
        fdv = (bsm_price(g["right"], S, K, T, r, q, v + 1e-5) - bsm_price(g["right"], S, K, T, r, q, v - 1e-5)) / 2e-5
        assert torch.allclose(out["vega"], fdv, rtol=1e-5, atol=1e-6)


def test_black76_greeks_match_autograd() -> None:
    F = torch.tensor([80.0, 100.0, 130.0], dtype=torch.float64, requires_grad=True)
    T = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([0.01, -0.005, 0.05], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([0.2, 0.35, 0.5], dtype=torch.float64, requires_grad=True)
    # the middle option sits exactly at the money: autograd must see one smooth branch there
    out = black76_greeks(torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64), F, 100.0, T, r, v)
    dF, dT, dr, dv = torch.autograd.grad(out["value"].sum(), (F, T, r, v))
    assert torch.allclose(out["delta"], dF, rtol=1e-10)
    assert torch.allclose(out["theta"], -dT, rtol=1e-10)
    assert torch.allclose(out["rho"], dr, rtol=1e-10)
    assert torch.allclose(out["vega"], dv, rtol=1e-10)


def test_limits_are_values_not_nan() -> None:
    right = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    K = torch.tensor([90.0, 110.0, 110.0, 90.0, 100.0, 100.0], dtype=torch.float64)
    for T, v in ((0.0, 0.2), (1.0, 0.0), (1e-12, 0.2), (1.0, 1e-12)):
        out = bsm_greeks(right, 100.0, K, T, -0.01, 0.0, v)
        for name in GREEK_NAMES:
            assert torch.isfinite(out[name]).all(), (T, v, name)
        fwd = 100.0 * math.exp(-0.01 * T)
        intrinsic = torch.clamp(right * (fwd - K), min=0.0) * math.exp(0.01 * T)
        # within one total-vol standard deviation's worth of time value of the intrinsic value
        assert torch.allclose(out["value"], intrinsic, atol=100.0 * v * math.sqrt(T) + 1e-12)
    # deep in and out of the money, long and short dated, negative rates
    deep = bsm_greeks(torch.tensor([1.0, 1.0, -1.0]), 100.0, torch.tensor([1.0, 1e5, 1e5]), 30.0, -0.03, 0.01, 0.2)
    assert all(torch.isfinite(deep[k]).all() for k in GREEK_NAMES)
    assert deep["value"][1] >= 0


def test_invalid_inputs_give_nan_not_exceptions() -> None:
    out = bsm_greeks(torch.tensor([1.0, 1.0, 1.0, 0.5]), torch.tensor([-1.0, 100.0, 100.0, 100.0]), 100.0,
                     torch.tensor([1.0, -1.0, 1.0, 1.0]), 0.0, 0.0, torch.tensor([0.2, 0.2, -0.1, 0.2]))
    assert torch.isnan(out["value"]).all()


def test_far_otm_value_keeps_relative_accuracy() -> None:
    mp = need_module("mpmath")
    mp.mp.dps = 40
    S, K, T, v = 100.0, 250.0, 0.05, 0.2
    ref = mp.mpf(S) * mp.ncdf((mp.log(mp.mpf(S) / K) + 0.5 * v * v * T) / (v * mp.sqrt(T))) - K * mp.ncdf(
        (mp.log(mp.mpf(S) / K) - 0.5 * v * v * T) / (v * mp.sqrt(T)))
    ours = bsm_price(1.0, S, K, T, 0.0, 0.0, v).item()
    assert float(ref) > 0 and abs(ours - float(ref)) / float(ref) < 1e-10


def test_float32_agrees_with_float64() -> None:
    g = random_grid(2000, seed=21)
    K = g["spot"] * g["strike_ratio"]
    T = g["days"].double() / 365.0
    args64 = (g["right"], g["spot"], K, T, g["rate"], g["div"], g["vol"])
    out64 = bsm_greeks(*args64)
    out32 = bsm_greeks(*(a.float() for a in args64))
    assert out32["value"].dtype == torch.float32
    for name in ("value", "delta", "vega"):
        scale = {"value": g["spot"], "delta": torch.ones_like(g["spot"]), "vega": g["spot"]}[name]
        err = (out32[name].double() - out64[name]).abs()
        assert (err <= 1e-4 * out64[name].abs() + 1e-5 * scale).all(), name


def test_parse_right_and_numpy_wrapper() -> None:
    assert parse_right(["C", "p", "Call", "PUT", 1, -1]).tolist() == [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    with pytest.raises(DataError, match="right"):
        parse_right(["C", "X"])
    assert math.isnan(parse_right(["X"], strict=False)[0].item())
    out = bsm_greeks_numpy(np.array(["C", "P"]), [100.0, 100.0], [100.0, 100.0], [1.0, 1.0], 0.05, 0.0, 0.2)
    assert isinstance(out["value"], np.ndarray) and out["value"][0] == pytest.approx(10.450583572185565, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    spot=st.floats(1.0, 1000.0),
    moneyness=st.floats(-2.0, 2.0),
    ttm=st.floats(1.0 / 365.0, 10.0),
    rate=st.floats(-0.05, 0.2),
    div=st.floats(-0.02, 0.1),
    vol=st.floats(0.01, 3.0),
)
def test_property_bounds_and_monotonicity(spot: float, moneyness: float, ttm: float, rate: float, div: float,
                                          vol: float) -> None:
    K = spot * math.exp(moneyness)
    out = bsm_greeks(torch.tensor([1.0, -1.0], dtype=torch.float64), spot, K, ttm, rate, div, vol)
    c, p = out["value"].tolist()
    dq, dr = math.exp(-div * ttm), math.exp(-rate * ttm)
    assert max(spot * dq - K * dr, 0.0) - 1e-9 * spot <= c <= spot * dq * (1 + 1e-12)
    assert max(K * dr - spot * dq, 0.0) - 1e-9 * spot <= p <= K * dr * (1 + 1e-12)
    assert (out["gamma"] >= 0).all() and (out["vega"] >= 0).all()
    assert 0.0 <= out["delta"][0].item() <= dq + 1e-12 and -dq - 1e-12 <= out["delta"][1].item() <= 0.0


def test_names_select_outputs_and_match_the_full_set() -> None:
    g = random_grid(500, seed=31)
    K = g["spot"] * g["strike_ratio"]
    T = g["days"].double() / 365.0
    args = (g["right"], g["spot"], K, T, g["rate"], g["div"], g["vol"])
    full = bsm_greeks(*args)
    some = bsm_greeks(*args, names=STANDARD_GREEKS)
    assert tuple(some) == STANDARD_GREEKS
    for k in STANDARD_GREEKS:
        assert torch.equal(some[k], full[k]), k
    # order as asked, duplicates dropped, a single name as a string
    assert tuple(bsm_greeks(*args, names=["vega", "delta", "vega"])) == ("vega", "delta")
    assert torch.equal(bsm_greeks(*args, names="charm")["charm"], full["charm"])
    b76 = black76_greeks(g["right"], g["spot"], K, T, g["rate"], g["vol"], names=("rho", "theta"))
    b76_full = black76_greeks(g["right"], g["spot"], K, T, g["rate"], g["vol"])
    assert torch.equal(b76["rho"], b76_full["rho"]) and torch.equal(b76["theta"], b76_full["theta"])
    with pytest.raises(DataError, match="names='speed'"):
        bsm_greeks(*args, names=("value", "speed"))
    with pytest.raises(DataError, match="names"):
        bsm_greeks(*args, names=())


def test_greeks_value_agrees_with_accurate_price_far_out_of_the_money() -> None:
    # the Greeks kernel keeps the textbook value where it cancels by < 3 digits and reprices the rest
    n = 4000
    gen = torch.Generator().manual_seed(41)
    ttm = torch.empty(n, dtype=torch.float64).uniform_(1 / 365, 10.0, generator=gen)
    vol = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-4.6, 1.6, generator=gen))
    z = torch.empty(n, dtype=torch.float64).uniform_(-8.0, 8.0, generator=gen)
    strike = 100.0 * torch.exp(z * vol * torch.sqrt(ttm))
    right = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, -1.0).double()
    for black76 in (False, True):
        if black76:
            value = black76_greeks(right, 100.0, strike, ttm, 0.03, vol, names="value")["value"]
            ref = black76_price(right, 100.0, strike, ttm, 0.03, vol)
        else:
            value = bsm_greeks(right, 100.0, strike, ttm, 0.03, 0.01, vol, names=("value",))["value"]
            ref = bsm_price(right, 100.0, strike, ttm, 0.03, 0.01, vol)
        assert (ref > 0).all()
        rel = (value - ref).abs() / ref
        # the gap left is the conditioning of the deep tails (values down to 1e-300), not cancellation
        assert rel.max() < 2e-11, (black76, rel.max().item())
