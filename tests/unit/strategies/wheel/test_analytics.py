"""Analytics against hand-computed series."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from greekfire.core.errors import DataError
from greekfire.strategies.wheel.analytics import buy_and_hold, max_drawdown, rf_returns, summary, win_rate
from greekfire.strategies.wheel.market import DailyMarket

DAYS = pd.DatetimeIndex(["2020-01-06", "2020-01-07", "2020-01-08", "2020-01-09"])
EQUITY = pd.Series([100.0, 110.0, 99.0, 108.9], index=DAYS)  # +10%, -10%, +10%


def test_summary_by_hand() -> None:
    s = summary(EQUITY)
    # returns 0.1, -0.1, 0.1: mean 1/30, sample std sqrt(((1/15)^2 * 2 + (2/15)^2) / 2) = sqrt(0.0133333)
    sd = math.sqrt(0.04 / 3)
    assert s["vol"] == pytest.approx(sd * math.sqrt(252))
    assert s["sharpe"] == pytest.approx((1 / 30) / sd * math.sqrt(252))
    # downside deviation: sqrt(mean(0, 0.01, 0)) = sqrt(1/300)
    assert s["sortino"] == pytest.approx((1 / 30) / math.sqrt(1 / 300) * math.sqrt(252))
    assert s["cagr"] == pytest.approx(1.089 ** (365.25 / 3) - 1)
    assert s["max_drawdown"] == pytest.approx(-0.1)  # 110 -> 99
    assert s["max_dd_days"] == 2  # peak 2020-01-07, not recovered by 2020-01-09
    assert s["calmar"] == pytest.approx(s["cagr"] / 0.1)
    assert math.isnan(s["win_rate"]) and math.isnan(s["premium_per_year"])


def test_drawdown_recovery_length() -> None:
    e = pd.Series([100.0, 120.0, 90.0, 100.0, 121.0, 130.0], index=pd.bdate_range("2021-03-01", periods=6))
    depth, days = max_drawdown(e)
    assert depth == pytest.approx(-0.25)
    assert days == (e.index[4] - e.index[1]).days  # peak 120 on day 1, back above it on day 4


def test_excess_over_rf_and_premium_and_trades() -> None:
    rf = 0.05
    r = rf_returns(DAYS, rf)
    assert r == pytest.approx(np.full(3, math.expm1(0.05 / 365)))
    s = summary(EQUITY, rf=rf)
    excess = np.array([0.1, -0.1, 0.1]) - math.expm1(0.05 / 365)
    assert s["sharpe"] == pytest.approx(excess.mean() / excess.std(ddof=1) * math.sqrt(252))
    premium = pd.Series([5.0, 0.0, 0.0, 1.0], index=DAYS)
    trades = pd.DataFrame([
        {"instrument": "A 20200117 10P", "side": -1, "qty": 1, "price": 2.0, "fee": 0.5},   # sold 200, bought back 100: win
        {"instrument": "A 20200117 10P", "side": 1, "qty": 1, "price": 1.0, "fee": 0.5},
        {"instrument": "B 20200117 10P", "side": -1, "qty": 2, "price": 1.0, "fee": 0.0},   # sold 200, bought back 600: loss
        {"instrument": "B 20200117 10P", "side": 1, "qty": 2, "price": 3.0, "fee": 0.0},
        {"instrument": "C 20200117 10P", "side": -1, "qty": 1, "price": 4.0, "fee": 0.0},   # still open: not counted
    ])
    assert win_rate(trades) == pytest.approx(0.5)
    # settlements: an expiry closes at 0 whatever price it carries; an assignment without the intrinsic value
    # is a loss, with it the premium decides; share rows (no space in the symbol) are not option positions
    settled = pd.DataFrame([
        {"instrument": "X 20200117 100P", "side": -1, "qty": 1, "price": 2.0, "fee": 0.0, "kind": "fill"},
        {"instrument": "X 20200117 100P", "side": 1, "qty": 1, "price": 100.0, "fee": 0.0, "kind": "expired"},
        {"instrument": "X 20200221 100P", "side": -1, "qty": 1, "price": 2.0, "fee": 0.0, "kind": "fill"},
        {"instrument": "X 20200221 100P", "side": 1, "qty": 1, "price": 100.0, "fee": 0.0, "kind": "assigned"},
        {"instrument": "X", "side": 1, "qty": 100, "price": 100.0, "fee": 0.0, "kind": "assigned"},
    ])
    assert win_rate(settled) == pytest.approx(0.5)
    with_value = settled.assign(intrinsic=[0.0, 0.0, 0.0, 1.5, 0.0])  # assigned 1.5 in the money: 2.0 - 1.5 > 0
    assert win_rate(with_value) == pytest.approx(1.0)
    # turnover: the expiry trades nothing; the assignment delivers 100 shares at 100 (twice: the option's row
    # at the strike x 100, and the share row)
    s = summary(EQUITY, trades=settled)
    assert s["turnover"] == pytest.approx((200 + 200 + 10_000 + 10_000) / (3 / 365.25) / EQUITY.mean())
    s = summary(EQUITY, premium, trades)
    years = 3 / 365.25
    assert s["premium_per_year"] == pytest.approx(6.0 / years)
    assert s["premium_yield"] == pytest.approx(6.0 / years / EQUITY.mean())
    traded = (2.0 + 1.0 + 2 * 1.0 + 2 * 3.0 + 4.0) * 100
    assert s["turnover"] == pytest.approx(traded / years / EQUITY.mean())


def test_bad_equity_is_named() -> None:
    with pytest.raises(DataError, match="finite"):
        summary(pd.Series([100.0, float("nan"), 101.0], index=DAYS[:3]))
    with pytest.raises(DataError, match="> 0"):
        summary(pd.Series([100.0, 0.0, 101.0], index=DAYS[:3]))
    with pytest.raises(DataError):
        summary(pd.Series([100.0], index=DAYS[:1]))


def test_buy_and_hold_reinvests_the_yield_or_the_dividends() -> None:
    days = pd.bdate_range("2020-01-06", periods=4)
    prices = pd.DataFrame({"date": days, "close": [100.0, 100.0, 110.0, 110.0], "open": 100.0, "high": 100.0,
                           "low": 100.0, "dividend": 0.0})
    vol = pd.Series(20.0, index=days)
    m = DailyMarket({"SPX": prices}, vol, 0.0, div_yield=0.0365)
    bh = buy_and_hold(m, starting_value=1000.0)
    # one day's yield: 0.0365 / 365 = 0.0001 of the day's close; day 2: (110 + 0.011) / 100 = 1.10011
    assert bh.tolist() == pytest.approx([1000.0, 1000.0 * 1.0001, 1000.0 * 1.0001 * 1.10011,
                                         1000.0 * 1.0001 * 1.10011 * 1.0001])
    prices.attrs["has_dividends"] = True
    prices["dividend"] = [0.0, 0.0, 0.0, 2.2]
    m = DailyMarket({"XYZ": prices}, vol, 0.0)
    bh = buy_and_hold(m, starting_value=1000.0)
    assert bh.iloc[-1] == pytest.approx(1000.0 * 1.1 * 1.02)


def test_a_series_indexed_by_plain_dates_gives_the_same_figures() -> None:
    plain = pd.Series(EQUITY.to_numpy(), index=[d.date() for d in DAYS])
    a, b = summary(plain), summary(EQUITY)
    assert a.keys() == b.keys()
    assert all(a[k] == pytest.approx(b[k], nan_ok=True) for k in a)
