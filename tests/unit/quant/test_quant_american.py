"""American engines against QuantLib (CRR, BAW, QdFp) and against each other (BS2002), plus Greeks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import need_module
from greekfire.quant import (
    HIGH_PRECISION,
    QdFpScheme,
    american_greeks,
    baw_price,
    bs2002_price,
    bsm_price,
    crr_price,
    qdfp_price,
)
from greekfire.quant.american import bivariate_norm_cdf
from greekfire.quant.qdfp import DOUBLE_BOUNDARY_STEPS

need_module("QuantLib")
from quant_ql_helpers import american as ql_american  # noqa: E402

from quant_grids import american_grid  # noqa: E402


def _t(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in arrays]


def test_crr_matches_quantlib_tree_same_steps() -> None:
    w, S, K, days, r, q, v = american_grid(150, seed=1)
    ours = crr_price(*_t(w, S, K, days / 365.0, r, q, v), steps=200).numpy()
    ref = np.array([ql_american(*row, engine="crr", steps=200) for row in zip(w, S, K, days.tolist(), r, q, v, strict=True)])
    assert np.allclose(ours, ref, rtol=1e-9, atol=1e-10 * S)


def test_crr_european_tree_converges_to_black_scholes() -> None:
    w, S, K, days, r, q, v = american_grid(150, seed=1)
    args = _t(w, S, K, days / 365.0, r, q, v)
    tree = crr_price(*args, steps=1000, american=False)
    # a 1,000-step tree is within about 1e-4 x spot of the closed form (1.1e-4 seen on this grid)
    assert ((tree - bsm_price(*args)).abs() / args[1]).max().item() < 3e-4
    american = crr_price(*args, steps=200)
    assert bool((american >= crr_price(*args, steps=200, american=False) - 1e-12).all())


def test_crr_with_autograd_prices_as_without_and_gives_a_delta() -> None:
    # with an input that requires grad the tree rolls back out of place (no reused buffers): same arithmetic
    w, S, K, days, r, q, v = _t(*american_grid(150, seed=1))
    plain = crr_price(w, S, K, days / 365.0, r, q, v, steps=50)
    spot = S.clone().requires_grad_(True)
    priced = crr_price(w, spot, K, days / 365.0, r, q, v, steps=50)
    assert torch.equal(priced.detach(), plain)
    priced.sum().backward()
    delta = spot.grad
    assert delta is not None
    calls, puts = delta[w > 0], delta[w < 0]
    assert calls.min().item() >= 0.0 and calls.max().item() <= 1.0 + 1e-12
    assert puts.min().item() >= -1.0 - 1e-12 and puts.max().item() <= 0.0
    assert (delta.abs() > 1e-3).sum().item() > len(delta) // 2  # not a zero gradient


def test_baw_matches_quantlib() -> None:
    w, S, K, days, r, q, v = american_grid(300, seed=2)
    ours = baw_price(*_t(w, S, K, days / 365.0, r, q, v)).numpy()
    ref = np.array([ql_american(*row, engine="baw") for row in zip(w, S, K, days.tolist(), r, q, v, strict=True)])
    # QuantLib stops its critical-price Newton at 1e-6 relative; ours runs to convergence
    assert np.allclose(ours, ref, rtol=2e-5, atol=1e-8 * S)


def test_qdfp_matches_quantlib_high_precision() -> None:
    w, S, K, days, r, q, v = american_grid(40, seed=3)
    ours = qdfp_price(*_t(w, S, K, days / 365.0, r, q, v), scheme=HIGH_PRECISION).numpy()
    ref = np.array([ql_american(*row, engine="qdfp_hp") for row in zip(w, S, K, days.tolist(), r, q, v, strict=True)])
    assert np.allclose(ours, ref, rtol=1e-6, atol=1e-7 * S)
    # the default (accurate) scheme stays within 1e-5 of QuantLib's high precision on this wider grid
    acc = qdfp_price(*_t(w, S, K, days / 365.0, r, q, v)).numpy()
    assert np.allclose(acc, ref, rtol=1e-5, atol=1e-6 * S)


def test_qdfp_accurate_within_1e6_of_high_precision() -> None:
    # the benchmark's grid: rates 0-5%, yields 0-3%, 1 week to 2 years, strikes around the money
    rng = np.random.default_rng(11)
    n = 400
    S = rng.uniform(50.0, 150.0, n)
    T = rng.uniform(7 / 365, 2.0, n)
    K = S * np.exp(0.3 * rng.standard_normal(n) * np.sqrt(T))
    args = _t(rng.choice([1.0, -1.0], n), S, K, T, rng.uniform(0.0, 0.05, n), rng.uniform(0.0, 0.03, n),
              rng.uniform(0.1, 0.6, n))
    hp = qdfp_price(*args, scheme=HIGH_PRECISION)
    acc = qdfp_price(*args)
    rel = ((acc - hp).abs() / torch.maximum(hp, 1e-8 * args[2])).max().item()
    assert rel < 1e-6
    # more nodes and steps change the high-precision values by far less than that (eager: this grid is just
    # past the size that would compile a kernel for its one shape, minutes on a machine with a cold cache)
    finer = qdfp_price(*args, scheme=QdFpScheme(nodes=40, iterations=24, quad=64, price_quad=160), compile=False)
    assert ((hp - finer).abs() / torch.maximum(finer, 1e-8 * args[2])).max().item() < 5e-8


def test_negative_rates_double_boundary_on_a_tree_and_no_early_exercise_otherwise() -> None:
    # (right, spot, strike, days, rate, yield, vol): puts with q < r < 0 and calls with r < q < 0 have two
    # exercise boundaries; puts with r <= 0 and q >= r, and calls with q <= 0 and r >= q, none
    double = [(-1.0, 100.0, 105.0, 365, -0.01, -0.02, 0.2), (-1.0, 100.0, 110.0, 730, -0.005, -0.03, 0.25),
              (1.0, 100.0, 95.0, 365, -0.02, -0.01, 0.3)]
    never = [(-1.0, 100.0, 105.0, 365, -0.01, 0.02, 0.3), (1.0, 100.0, 95.0, 365, 0.01, -0.01, 0.3),
             (-1.0, 100.0, 100.0, 182, 0.0, 0.01, 0.2), (-1.0, 90.0, 100.0, 365, -0.01, -0.01, 0.2)]
    for rows, is_double in ((double, True), (never, False)):
        w, S, K, d, r, q, v = (np.array(c, dtype=np.float64) for c in zip(*rows, strict=True))
        args = _t(w, S, K, d / 365.0, r, q, v)
        euro = bsm_price(*args).numpy()
        ql_fine = np.array([ql_american(*row, engine="crr", steps=2000) for row in rows])
        for fn in (qdfp_price, baw_price, bs2002_price):
            ours = fn(*args).numpy()
            if is_double:
                # the tree of DOUBLE_BOUNDARY_STEPS steps, as QuantLib's with the same steps
                ql_same = np.array([ql_american(*row, engine="crr", steps=DOUBLE_BOUNDARY_STEPS) for row in rows])
                assert np.allclose(ours, ql_same, rtol=1e-9), fn.__name__
                assert (ours > euro + 1e-3).all(), fn.__name__
            else:
                assert np.allclose(ours, euro, rtol=1e-12), fn.__name__
            # and both within the tree's discretisation error of a finer QuantLib tree
            assert np.allclose(ours, ql_fine, rtol=3e-4), fn.__name__


def test_bs2002_close_to_qdfp_reference() -> None:
    # QuantLib implements the 1993 version only, so the 2002 one is checked against our tight engine
    w, S, K, days, r, q, v = american_grid(150, seed=4)
    args = _t(w, S, K, days / 365.0, r, q, v)
    ref = qdfp_price(*args).numpy()
    ours = bs2002_price(*args).numpy()
    rel = np.abs(ours - ref) / np.maximum(ref, 1e-2 * S / 100)
    assert np.median(rel) < 1e-3 and rel.max() < 5e-2  # BS2002's documented approximation error
    assert (ours >= bsm_price(*args).numpy() - 1e-12).all()


def test_american_at_least_european_and_intrinsic() -> None:
    w, S, K, days, r, q, v = american_grid(200, seed=5)
    args = _t(w, S, K, days / 365.0, r, q, v)
    euro = bsm_price(*args)
    intrinsic = torch.clamp(args[0] * (args[1] - args[2]), min=0.0)
    for fn in (qdfp_price, baw_price, bs2002_price):
        p = fn(*args)
        assert (p >= euro - 1e-10).all() and (p >= intrinsic - 1e-10).all(), fn.__name__


def test_american_greeks_against_quantlib_fd_and_a_fine_tree() -> None:
    import QuantLib as ql
    from quant_ql_helpers import bsm_process, option

    w, S, K, days, r, q, v = american_grid(8, seed=6)
    args = _t(w, S, K, days / 365.0, r, q, v)
    g_qd = american_greeks(*args, model="qdfp")
    for i in range(len(w)):
        opt = option(w[i], K[i], int(days[i]), american=True)
        opt.setPricingEngine(ql.FdBlackScholesVanillaEngine(bsm_process(S[i], r[i], q[i], v[i]), 400, 400))
        assert g_qd["delta"][i].item() == pytest.approx(opt.delta(), abs=2e-4)
        assert g_qd["gamma"][i].item() == pytest.approx(opt.gamma(), rel=2e-2, abs=1e-5)
    # vega and rho (which QuantLib's tree and FD engines do not give) against central differences of
    # QuantLib's high-precision QdFp prices, an independent implementation
    for i in range(len(w)):
        row = (w[i], S[i], K[i], int(days[i]))
        h = 1e-4
        vega = (ql_american(*row, r[i], q[i], v[i] + h, engine="qdfp_hp")
                - ql_american(*row, r[i], q[i], v[i] - h, engine="qdfp_hp")) / (2 * h)
        rho = (ql_american(*row, r[i] + h, q[i], v[i], engine="qdfp_hp")
               - ql_american(*row, r[i] - h, q[i], v[i], engine="qdfp_hp")) / (2 * h)
        assert g_qd["vega"][i].item() == pytest.approx(vega, rel=1e-3, abs=1e-3)
        assert g_qd["rho"][i].item() == pytest.approx(rho, rel=1e-3, abs=1e-3)
    assert (g_qd["gamma"] >= -1e-8).all()


def test_bivariate_normal_matches_scipy() -> None:
    from scipy.stats import multivariate_normal

    a = torch.tensor([-1.5, 0.0, 0.7, 2.0], dtype=torch.float64)
    b = torch.tensor([0.3, -0.2, 1.1, -2.5], dtype=torch.float64)
    for rho in (0.786, -0.786, 0.3):
        ours = bivariate_norm_cdf(a, b, rho).numpy()
        ref = [multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([x, y]) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
        assert np.allclose(ours, ref, atol=1e-7)


def test_american_vanna_volga_charm_equal_the_european_ones_where_early_exercise_is_worthless() -> None:
    from greekfire.quant import bsm_greeks

    rng = np.random.default_rng(11)
    n = 400
    S, T = 100.0 * np.exp(rng.normal(0.0, 0.3, n)), rng.uniform(0.05, 2.0, n)
    args = _t(np.ones(n), S, np.full(n, 100.0), T, rng.uniform(0.0, 0.05, n), np.zeros(n), rng.uniform(0.1, 0.6, n))
    want = bsm_greeks(*args, names=("vanna", "volga", "charm"))
    for model in ("qdfp", "baw", "bs2002"):
        got = american_greeks(*args, model=model)
        # calls without yield are never exercised early: bump differences against the closed form (the
        # one-day time bump leaves charm within about 1e-3)
        for name, tol in (("vanna", 2e-3), ("volga", 5e-4), ("charm", 3e-3)):
            err = ((got[name] - want[name]).abs() / (1.0 + want[name].abs())).max().item()
            assert err < tol, (model, name, err)
    assert "vanna" not in american_greeks(*args, model="crr", steps=50)


def test_american_vanna_volga_charm_against_quantlib_differences() -> None:
    w, S, K, days, r, q, v = american_grid(8, seed=9)
    args = _t(w, S, K, days / 365.0, r, q, v)
    g = american_greeks(*args, model="qdfp")
    for i in range(len(w)):
        def p(ds: float = 0.0, dv: float = 0.0, dd: int = 0, i: int = i) -> float:
            return ql_american(w[i], S[i] + ds, K[i], int(days[i]) + dd, r[i], q[i], v[i] + dv, engine="qdfp_hp")

        hs, hv = 1e-2 * S[i], 1e-3
        volga = (p(dv=hv) - 2 * p() + p(dv=-hv)) / hv**2
        vanna = (p(hs, hv) - p(hs, -hv) - p(-hs, hv) + p(-hs, -hv)) / (4 * hs * hv)
        charm = -(p(hs, dd=1) - p(hs, dd=-1) - p(-hs, dd=1) + p(-hs, dd=-1)) / (4 * hs / 365.0)
        assert g["volga"][i].item() == pytest.approx(volga, rel=1e-2, abs=2e-2), i
        assert g["vanna"][i].item() == pytest.approx(vanna, rel=1e-2, abs=2e-3), i
        assert g["charm"][i].item() == pytest.approx(charm, rel=3e-2, abs=2e-2), i


def test_bump_greeks_in_small_calls_equal_one_call() -> None:
    from greekfire.quant.american import bump_greeks

    w, S, K, days, r, q, v = american_grid(50, seed=4)
    args = _t(w, S, K, days / 365.0, r, q, v)
    one = bump_greeks(qdfp_price, *args)
    calls = []

    def counted(*a: torch.Tensor) -> torch.Tensor:
        calls.append(a[0].numel())
        return qdfp_price(*a)

    split = bump_greeks(counted, *args, max_rows=64)
    assert max(calls) <= 64 and sum(calls) == 15 * len(w)
    # a row's price may move by an ulp with the batch beside it (the interpolation's matrix products are
    # blocked by batch size), which the differences amplify: volga divides by the vol bump squared (1e-8)
    for name, val in one.items():
        assert torch.allclose(val, split[name], rtol=1e-9, atol=1e-5), name
        assert torch.allclose(val, split[name], rtol=1e-12, atol=1e-10) or name in ("gamma", "volga", "vanna", "charm")
