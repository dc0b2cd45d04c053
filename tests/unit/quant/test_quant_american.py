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
    # more nodes and steps change the high-precision values by far less than that
    finer = qdfp_price(*args, scheme=QdFpScheme(nodes=40, iterations=24, quad=64, price_quad=160))
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
