"""American implied vol: round trips through our engines, QuantLib's high-precision prices and its own
``impliedVolatility``, and reason codes for quotes outside the American no-arbitrage bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import need_module
from greekfire.core.errors import DataError
from greekfire.quant import IV_REASONS, american_implied_vol, american_price, bsm_price

REASON = {v: k for k, v in IV_REASONS.items()}


def _grid(n: int, seed: int) -> list[torch.Tensor]:
    """The benchmark's grid (with deep in- and out-of-the-money strikes) and a vol per option."""
    rng = np.random.default_rng(seed)
    S = rng.uniform(50.0, 150.0, n)
    T = rng.uniform(7 / 365, 2.0, n)
    K = S * np.exp(0.4 * rng.standard_normal(n) * np.sqrt(T))
    cols = (rng.choice([1.0, -1.0], n), S, K, T, rng.uniform(0.0, 0.06, n), rng.uniform(0.0, 0.04, n),
            rng.uniform(0.1, 0.6, n))
    return [torch.as_tensor(c) for c in cols]


@pytest.mark.parametrize("model", ["qdfp", "baw"])
def test_round_trip_reprices_every_quote_to_1e10(model: str) -> None:
    w, S, K, T, r, q, v = _grid(600, seed=21)
    p = american_price(w, S, K, T, r, q, v, model=model)
    res = american_implied_vol(p, w, S, K, T, r, q, model=model)
    intrinsic = torch.clamp(w * (S - K), min=0.0)
    at_exercise = p - intrinsic <= 8 * torch.finfo(p.dtype).eps * torch.maximum(S, K)
    # a quote at its exercise value (deep in the money, inside the exercise region) has no vol to find
    assert (res.code[at_exercise] == REASON["no_time_value"]).all()
    assert (res.code[~at_exercise] == 0).all()
    ok = res.code == 0
    again = american_price(w[ok], S[ok], K[ok], T[ok], r[ok], q[ok], res.vol[ok], model=model)
    assert ((again - p[ok]).abs() <= 1e-10 * p[ok]).all()
    # where the price moves with vol, the vol itself comes back
    vega = (american_price(w, S, K, T, r, q, v + 1e-5, model=model) - p) / 1e-5
    sensitive = ok & (vega > 1e-3 * p)
    assert sensitive.sum() > 400
    assert torch.allclose(res.vol[sensitive], v[sensitive], rtol=1e-7, atol=0)


def test_tiny_and_deep_in_the_money_quotes_converge() -> None:
    # far out-of-the-money puts (prices down to 1e-20) and deep in-the-money puts whose time value is a
    # millionth of the price (just outside the exercise region: the price leaves its floor there)
    w = torch.tensor([-1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    S = torch.tensor([100.0, 80.0, 100.0, 101.63400201113484, 109.96421700341656], dtype=torch.float64)
    K = torch.tensor([40.0, 38.0, 290.0, 319.3529216438971, 75.67566670187617], dtype=torch.float64)
    T = torch.tensor([0.7, 1.66, 1.68, 1.9145379785992132, 1.7720294249722555], dtype=torch.float64)
    r = torch.tensor([0.04, 0.04, 0.013, 0.04180569545430776, 0.02099261449326861], dtype=torch.float64)
    q = torch.tensor([0.003, 0.022, 0.022, 0.023766151213113672, 0.029918423396167498], dtype=torch.float64)
    v = torch.tensor([0.105, 0.121, 0.102, 0.5721280046929552, 0.18949273364472644], dtype=torch.float64)
    p = american_price(w, S, K, T, r, q, v)
    time_value = p - torch.clamp(w * (S - K), min=0.0)
    assert p[:3].max() < 1e-6 and p.min() < 1e-20
    assert (time_value[3:] / p[3:]).max() < 1e-7  # about 1e-5 and 1e-6 of time value
    res = american_implied_vol(p, w, S, K, T, r, q)
    assert (res.code == 0).all()
    again = american_price(w, S, K, T, r, q, res.vol)
    assert ((again - p).abs() <= 1e-10 * p).all()


def test_reason_codes_outside_the_american_bounds_never_raise() -> None:
    # (quote, right, spot, strike, ttm, rate, yield) and the code expected
    cases = [
        (4.0, -1.0, 90.0, 100.0, 1.0, 0.05, 0.0, "below_intrinsic"),  # under the exercise value 10
        (10.0, -1.0, 90.0, 100.0, 1.0, 0.05, 0.0, "no_time_value"),  # at it
        (100.0, -1.0, 90.0, 100.0, 1.0, 0.05, 0.0, "above_max"),  # a put is worth less than its strike
        (120.0, 1.0, 120.0, 100.0, 1.0, 0.05, 0.0, "above_max"),  # a call is worth less than the spot
        (119.99997, 1.0, 120.0, 100.0, 1.0, 0.05, 0.0, "above_max"),  # more than vol 10 gives (119.99994)
        # a call without yield is never exercised: its price is at least S - K exp(-rT) = 24.88 at any vol
        # above its exercise value 20, so it has time value: under the model's floor, not at intrinsic
        (20.5, 1.0, 120.0, 100.0, 1.0, 0.05, 0.0, "below_model_floor"),
        (5.0, 1.0, 100.0, 100.0, 0.0, 0.05, 0.0, "expired"),
        (5.0, 1.0, -100.0, 100.0, 1.0, 0.05, 0.0, "bad_input"),
        (math.nan, 1.0, 100.0, 100.0, 1.0, 0.05, 0.0, "bad_input"),
        (5.0, 0.5, 100.0, 100.0, 1.0, 0.05, 0.0, "bad_input"),
        (-1.0, 1.0, 100.0, 100.0, 1.0, 0.05, 0.0, "bad_input"),
    ]
    cols = [torch.tensor(c, dtype=torch.float64) for c in zip(*(row[:7] for row in cases), strict=True)]
    for model in ("qdfp", "baw", "bs2002"):
        res = american_implied_vol(*cols, model=model)
        assert [IV_REASONS[int(c)] for c in res.code] == [row[7] for row in cases], model
        assert torch.isnan(res.vol).all()


def test_negative_rate_rows_and_no_early_exercise_rows() -> None:
    # a put with q < r < 0 (two boundaries, priced on a tree) and a call without yield (European)
    w = torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)
    K = torch.tensor([105.0, 95.0, 100.0], dtype=torch.float64)
    r = torch.tensor([-0.01, 0.03, 0.02], dtype=torch.float64)
    q = torch.tensor([-0.02, 0.0, 0.05], dtype=torch.float64)
    v = torch.tensor([0.25, 0.3, 0.2], dtype=torch.float64)
    p = american_price(w, 100.0, K, 1.0, r, q, v)
    res = american_implied_vol(p, w, 100.0, K, 1.0, r, q)
    assert (res.code == 0).all()
    assert torch.allclose(res.vol, v, rtol=1e-8)
    # the call is European: the European implied vol is the answer
    euro = bsm_price(w[1], 100.0, K[1], 1.0, r[1], q[1], v[1])
    assert euro.item() == pytest.approx(p[1].item(), rel=1e-14)


def test_dtype_shape_and_arguments() -> None:
    p = american_price(-1.0, 100.0, torch.tensor([[90.0, 110.0]]), 0.5, 0.03, 0.01, 0.25)
    res = american_implied_vol(p.float(), -1.0, 100.0, torch.tensor([[90.0, 110.0]]), 0.5, 0.03, 0.01)
    assert res.vol.dtype == torch.float32 and res.vol.shape == (1, 2) and res.code.shape == (1, 2)
    assert torch.allclose(res.vol.double(), torch.full((1, 2), 0.25, dtype=torch.float64), rtol=1e-6)
    with pytest.raises(DataError, match="model"):
        american_implied_vol(p, -1.0, 100.0, 100.0, 0.5, 0.03, 0.01, model="tree")
    with pytest.raises(DataError, match="evaluations"):
        american_implied_vol(p, -1.0, 100.0, 100.0, 0.5, 0.03, 0.01, iterations=0)


def test_against_quantlib_high_precision_prices_and_implied_volatility() -> None:
    need_module("QuantLib")
    import QuantLib as ql
    from quant_ql_helpers import american as ql_american
    from quant_ql_helpers import bsm_process, option

    rng = np.random.default_rng(5)
    n = 20
    w = rng.choice([1.0, -1.0], n)
    S = rng.uniform(60.0, 140.0, n)
    K = S * rng.uniform(0.8, 1.25, n)
    days = rng.choice([30, 91, 182, 365, 730], n)
    r = rng.uniform(0.01, 0.06, n)
    q = rng.uniform(0.0, 0.05, n)
    v = rng.uniform(0.12, 0.5, n)
    rows = list(zip(w, S, K, days.tolist(), r, q, strict=True))
    # quotes from QuantLib's high-precision QdFp engine, an independent implementation
    quotes = np.array([ql_american(*row, vol, engine="qdfp_hp") for row, vol in zip(rows, v, strict=True)])
    ours = american_implied_vol(quotes, w, S, K, days / 365.0, r, q)
    assert (ours.code == 0).all()
    # our accurate scheme is within about 1e-7 of QuantLib's high precision in price
    assert np.allclose(ours.vol.numpy(), v, rtol=0, atol=2e-6)

    # QuantLib's impliedVolatility solves on its finite-difference engine (100 x 100 grid), whose price
    # error (1e-4 to 1e-3 relative here) moves its vol off ours. Check that this explains the whole gap:
    # QuantLib's engine prices our vol off the quote by an amount that, over the gap, is a slope within a
    # factor 2 of the vega at the middle (mean value theorem; QuantLib's vol prices to the quote there)
    def fd_price(row: tuple[float, ...], vol: float) -> float:
        opt = option(row[0], row[2], row[3], american=True)
        opt.setPricingEngine(ql.FdBlackScholesVanillaEngine(bsm_process(row[1], row[4], row[5], vol), 100, 100))
        return opt.NPV()

    gaps = []
    for i, row in enumerate(rows):
        opt = option(row[0], row[2], row[3], american=True)
        ql_vol = opt.impliedVolatility(quotes[i], bsm_process(row[1], row[4], row[5], 0.3), 1e-12, 500, 1e-4, 4.0)
        assert fd_price(row, ql_vol) == pytest.approx(quotes[i], rel=1e-10)
        ov = ours.vol[i].item()
        slope = (fd_price(row, ov) - quotes[i]) / (ov - ql_vol)
        mid = 0.5 * (ov + ql_vol)
        args = (row[0], row[1], row[2], row[3] / 365.0, row[4], row[5])
        vega = ((american_price(*args, mid + 1e-4) - american_price(*args, mid - 1e-4)) / 2e-4).item()
        assert 0.5 < slope / vega < 2.0, i
        gaps.append(abs(ov - ql_vol))
    assert np.median(gaps) < 2e-4 and max(gaps) < 0.1


def test_real_chain_quotes_under_the_model_floor_are_not_called_no_time_value(shared_data) -> None:
    # a real American equity chain (Agilent, 2016-01-05), mid quotes: rows at their exercise value are
    # no_time_value; rows above it but under the engine's price at the lowest vol get their own code
    import numpy as np
    import pandas as pd

    from greekfire.data.pricing import price_frame
    from greekfire.quant._american_iv import VOL_MIN

    raw = pd.read_csv(shared_data / "options" / "A_2016-01-05.csv")
    frame = pd.DataFrame({
        "right": raw["Type"], "spot": raw["UnderlyingPrice"], "strike": raw["Strike"],
        "expiry": raw["Expiration"], "quote_date": raw["DataDate"], "rate": 0.01, "div_yield": 0.0,
        "market_price": 0.5 * (raw["Bid"] + raw["Ask"]),
    })
    out = price_frame(frame, style="american", device="cpu")
    w = np.where(out["right"] == "call", 1.0, -1.0)
    time_value = out["market_price"] - np.maximum(w * (out["spot"] - out["strike"]), 0.0)
    at = (out["error"] == "no_time_value").to_numpy()
    floor = (out["error"] == "below_model_floor").to_numpy()
    assert at.any() and floor.any()
    assert (time_value[at].abs() < 1e-9).all()
    assert (time_value[floor] > 0.02).all()
    ttm = (pd.to_datetime(frame["expiry"]) - pd.to_datetime(frame["quote_date"])).dt.days.to_numpy() / 365.0
    cols = [torch.as_tensor(c[floor], dtype=torch.float64) for c in
            (w, out["spot"].to_numpy(), out["strike"].to_numpy(), ttm, np.full(len(w), 0.01), np.zeros(len(w)))]
    model_floor = american_price(*cols, torch.full_like(cols[0], VOL_MIN)).numpy()
    assert (out["market_price"].to_numpy()[floor] < model_floor).all()
    assert out["iv"][at | floor].isna().all()
