"""Whole backtests: a short synthetic one (always) and one on real history (the S&P 500 and the VIX,
where those files are present)."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from wheel_days import gbm_prices

from greekfire.core.settings import is_ci
from greekfire.strategies.wheel.backtest import run_backtest
from greekfire.strategies.wheel.config import WheelConfig
from greekfire.strategies.wheel.journal import MemoryJournal
from greekfire.strategies.wheel.market import ChainModel, DailyMarket, load_prices, load_vol
from greekfire.strategies.wheel.state import TRANSITIONS, WheelEvent, WheelState

ROOT = Path(__file__).resolve().parents[4]
VIX = ROOT.parent / "shared" / "data" / "vix" / "vix-daily.csv"


def check_consistent(result, journal: MemoryJournal, days: int) -> None:
    """The shared invariants of any run."""
    assert len(result.equity) == days and not result.equity.isna().any() and not result.cash.isna().any()
    state: dict[str, WheelState] = {}
    for t in result.transitions:  # each transition starts where the last one of its symbol ended
        assert t.old == state.get(t.symbol, WheelState.CASH), t
        if t.event != WheelEvent.RECONCILED:
            assert TRANSITIONS[(t.old, WheelEvent(t.event))] == t.new
        state[t.symbol] = t.new
    assert not [t for t in result.transitions if t.event == "reconciled"]  # nothing drifted in a clean run
    fills = result.trades[(result.trades["kind"] == "fill") & result.trades["instrument"].str.contains(" ")]
    assert journal.premium() == pytest.approx(result.premium.sum() - fills["fee"].sum())
    assert len(journal.snapshots) == days
    # the positions table matches the state machine each day's end
    last = result.positions.groupby("symbol").tail(1).set_index("symbol")
    for sym, st in state.items():
        row = last.loc[sym]
        want = (WheelState.SHORT_CALL if row.short_calls else WheelState.SHORT_PUT if row.short_puts
                else WheelState.SHARES if row.shares else WheelState.CASH)
        assert want == st


def test_short_synthetic_backtest_two_symbols() -> None:
    prices = {"AAA": gbm_prices(160, seed=11, sigma=0.3), "BBB": gbm_prices(160, seed=12, spot=50.0)}
    vol = pd.Series(25.0, index=prices["AAA"]["date"])
    market = DailyMarket(prices, vol, 0.02, ChainModel())
    cfg = WheelConfig(symbols={"AAA": 1.0, "BBB": 1.0}, exercise="european", dte=30, max_dte=90)
    seen: list[tuple[int, int]] = []
    j = MemoryJournal()
    r = run_backtest(cfg, market, journal=j, progress=lambda i, n: seen.append((i, n)), starting_cash=500_000)
    check_consistent(r, j, 160)
    assert seen[-1] == (160, 160) and len(seen) == 160
    assert {t.symbol for t in r.transitions if t.event == "put_sold"} == {"AAA", "BBB"}
    assert r.premium.sum() > 0 and r.config is cfg
    # neither symbol ever commits more than its half of the account in put collateral
    for t in r.transitions:
        if t.event == "put_sold":
            assert t.data["qty"] * t.data["strike"] * 100 <= 0.5 * r.equity.loc[:date.fromtimestamp(t.ts_ns / 1e9)].iloc[-1] * 1.01


@pytest.mark.slow
def test_real_history_sp500_and_vix() -> None:
    if not VIX.exists():
        if is_ci():
            pytest.fail(f"{VIX} is missing")
        pytest.skip(f"{VIX} is missing")
    pytest.importorskip("arch")
    prices = load_prices()
    prices = prices[(prices["date"] >= date(2008, 6, 1)) & (prices["date"] <= date(2009, 3, 31))]
    market = DailyMarket({"SPX": prices}, load_vol(), 0.02, ChainModel())
    cfg = WheelConfig(symbols={"SPX": 1.0}, exercise="european")
    j = MemoryJournal()
    r = run_backtest(cfg, market, journal=j, starting_cash=1_000_000)
    check_consistent(r, j, len(market.dates))
    ev = [t.event for t in r.transitions]
    assert "put_sold" in ev and "put_assigned" in ev  # the autumn 2008 fall assigns the puts written in summer
    assert r.equity.min() < 1_000_000 and math.isfinite(r.equity.iloc[-1])
