"""The wheel strategy through the backtest context, on hand-made days: each test states what the market did
and checks the state machine, the positions, the cash and the journal."""

from __future__ import annotations

from typing import Any

import pytest
from wheel_days import SPY, Listed, ListMarket, day, make_day, opt

from greekfire.strategies.wheel.backtest import BacktestContext, BacktestResult, run_backtest
from greekfire.strategies.wheel.config import WheelConfig
from greekfire.strategies.wheel.journal import MemoryJournal
from greekfire.strategies.wheel.state import WheelState
from greekfire.strategies.wheel.strategy import WheelStrategy

CASH = 100_000.0
E1, E2, E3 = day(35), day(50), day(70)
P95 = opt(E1, 95.0, "P")


def cfg(**kw: Any) -> WheelConfig:
    base = {"symbols": {"SPY": 1.0}, "exercise": "european", "dte": 20, "max_dte": 60, "roll_dte": 0,
            "min_open_interest": 0, "put_itm": "hold", "call_itm": "hold"}
    return WheelConfig(**(base | kw))


def run(days: list, config: WheelConfig) -> tuple[BacktestResult, MemoryJournal]:
    j = MemoryJournal()
    return run_backtest(config, ListMarket(days), journal=j, starting_cash=CASH), j


def events(r: BacktestResult) -> list[str]:
    return [t.event for t in r.transitions]


def sold_put_day() -> Any:
    return make_day(day(0), 100.0, [Listed(P95, 1.00, 1.10)])  # 10 puts sold at 1.05


def test_put_expires_worthless_back_to_cash() -> None:
    r, j = run([sold_put_day(), make_day(day(10), 102.0, [Listed(P95, 0.50, 0.60)]), make_day(E1, 101.0)], cfg())
    assert events(r) == ["put_sold", "put_expired"]
    assert r.transitions[-1].new == WheelState.CASH and "out of the money" in r.transitions[-1].reason
    assert r.cash.iloc[-1] == pytest.approx(CASH + 10 * 100 * 1.05)
    assert j.premium("SPY") == pytest.approx(1050.0) and j.lots("SPY") == [] and j.open_legs("SPY") == []
    assert r.positions.iloc[0][["short_puts", "shares"]].tolist() == [10, 0]
    assert r.positions.iloc[-1][["short_puts", "shares"]].tolist() == [0, 0]


def test_put_assigned_gives_shares_with_the_lot_at_the_strike() -> None:
    r, j = run([sold_put_day(), make_day(E1, 90.0)], cfg())
    assert events(r) == ["put_sold", "put_assigned"]
    assert r.transitions[-1].new == WheelState.SHARES
    assert j.lots("SPY") == [(1000, 95.0)]
    assert r.cash.iloc[-1] == pytest.approx(CASH + 1050.0 - 95_000.0)
    assert r.equity.iloc[-1] == pytest.approx(CASH + 1050.0 - 95_000.0 + 1000 * 90.0)
    assert r.positions.iloc[-1]["shares"] == 1000


def calls_day(spot: float) -> Any:
    """After assignment at 95: calls of the next expiry; the 92 call is nearest a 0.30 delta."""
    return make_day(day(36), spot, [Listed(opt(E3, 92.0, "C"), 0.95, 1.05), Listed(opt(E3, 95.0, "C"), 0.40, 0.45),
                                    Listed(opt(E3, 98.0, "C"), 0.15, 0.20)])


def test_call_never_below_the_cost_basis_unless_allowed() -> None:
    days = [sold_put_day(), make_day(E1, 90.0), calls_day(88.0)]
    r, _ = run(days, cfg())
    assert events(r) == ["put_sold", "put_assigned", "call_sold"]
    assert r.transitions[-1].data["strike"] >= 95.0
    r2, _ = run(days, cfg(call_below_cost_basis=True))
    assert r2.transitions[-1].data["strike"] == 92.0
    assert r2.trades.iloc[-1]["qty"] == 10


def test_roll_at_90_percent_of_the_premium() -> None:
    new = opt(E2, 105.0, "P")
    days = [sold_put_day(), make_day(day(10), 110.0, [Listed(P95, 0.05, 0.10), Listed(new, 1.20, 1.30)])]
    r, j = run(days, cfg())
    assert events(r) == ["put_sold", "put_rolled"]
    t = r.transitions[-1]
    assert t.old == t.new == WheelState.SHORT_PUT and "P&L" in t.reason and t.data["new_strike"] == 105.0
    assert t.data["pnl"] >= 0.9
    # the new strike's collateral fits the account once the old leg's is free: value before the buy-back
    qty = int((CASH + 1050.0 - 10 * 100 * 0.075) // (105.0 * 100))
    legs = j.open_legs("SPY")
    assert [(leg["strike"], leg["qty"], leg["premium"]) for leg in legs] == [(105.0, -qty, 1.25)]
    assert r.positions.iloc[-1]["short_puts"] == qty
    # bought back 10 at 0.10, sold the new leg at 1.25
    assert j.premium("SPY") == pytest.approx(1050.0 - 100.0 - legs[0]["qty"] * 125.0)


def test_no_roll_below_the_profit_target() -> None:
    new = opt(E2, 105.0, "P")
    r, _ = run([sold_put_day(), make_day(day(10), 101.0, [Listed(P95, 0.30, 0.40), Listed(new, 1.2, 1.3)])], cfg())
    assert events(r) == ["put_sold"]


def test_option_loss_stop() -> None:
    r, _ = run([sold_put_day(), make_day(day(5), 92.0, [Listed(P95, 2.40, 2.50)])], cfg(stop_option_loss=1.0))
    assert events(r) == ["put_sold", "put_stopped"]
    assert r.transitions[-1].new == WheelState.CASH and "option loss stop" in r.transitions[-1].reason
    assert r.cash.iloc[-1] == pytest.approx(CASH + 1050.0 - 2450.0)
    r2, _ = run([sold_put_day(), make_day(day(5), 92.0, [Listed(P95, 2.40, 2.50)])], cfg(stop_option_loss=2.0))
    assert events(r2) == ["put_sold"]  # a loss of 1.33x premium is under a 2x stop


def test_underlying_drawdown_stop() -> None:
    r, _ = run([sold_put_day(), make_day(day(5), 94.0, [Listed(P95, 1.90, 2.00)])], cfg(stop_underlying_drawdown=0.05))
    assert events(r) == ["put_sold", "put_stopped"] and "drawdown" in r.transitions[-1].reason


def test_early_assignment_of_a_deep_itm_call_before_ex_dividend() -> None:
    c95 = opt(E3, 95.0, "C")
    days = [sold_put_day(), make_day(E1, 90.0, [Listed(c95, 0.50, 0.60)]),
            make_day(day(40), 104.0, [Listed(c95, 9.00, 9.20)]),  # time value 0.10
            make_day(day(41), 103.0, [Listed(c95, 7.00, 7.20)], dividend=1.00)]
    r, j = run(days, cfg(exercise="american", american_engine="bs2002"))
    assert events(r) == ["put_sold", "put_assigned", "call_sold", "called_away"]
    t = r.transitions[-1]
    assert t.new == WheelState.CASH and t.data["early"] and "ex-dividend" in t.reason
    assert j.lots("SPY") == [] and r.positions.iloc[-1]["shares"] == 0
    early = r.trades[r.trades["kind"] == "assigned_early"]
    assert len(early) == 1 and early.iloc[0]["date"] == day(40)
    # the same market with European exercise: no early assignment, the shares earn the dividend
    r2, _ = run(days, cfg())
    assert events(r2) == ["put_sold", "put_assigned", "call_sold"]
    assert r2.cash.iloc[-1] - r2.cash.iloc[-2] == pytest.approx(1000 * 1.00)


def test_early_assignment_of_a_deep_itm_put_without_time_value() -> None:
    days = [sold_put_day(), make_day(day(5), 80.0, [Listed(P95, 14.95, 15.05)])]
    r, j = run(days, cfg(exercise="american", american_engine="bs2002"))
    assert events(r) == ["put_sold", "put_assigned"] and r.transitions[-1].data["early"]
    assert j.lots("SPY") == [(1000, 95.0)]
    r2, _ = run([sold_put_day(), make_day(day(5), 80.0, [Listed(P95, 15.40, 15.60)])],
                cfg(exercise="american", american_engine="bs2002"))
    assert events(r2) == ["put_sold"]  # 0.50 of time value left: nobody exercises


def test_a_denied_order_is_logged_and_retried_next_cycle() -> None:
    ctx = BacktestContext(starting_cash=1_000.0)  # far less cash than the strategy believes it has
    s = WheelStrategy(cfg(), capital=CASH)
    s.ctx = ctx
    for n, d in enumerate([sold_put_day(), make_day(day(1), 100.0, [Listed(P95, 1.00, 1.10)])], start=1):
        ctx.set_day(d)
        s.cycle(d.now_ns)
        ctx.deliver(s)
        assert len(s.denials) == n and s.denials[-1]["reason"] == "INSUFFICIENT_MARGIN"
        assert s.state["SPY"] == WheelState.CASH and not ctx.positions


def test_reconcile_repairs_state_and_lots_from_positions() -> None:
    ctx = BacktestContext(starting_cash=CASH)
    j = MemoryJournal()
    s = WheelStrategy(cfg(), j, capital=CASH)
    s.ctx = ctx
    ctx.set_day(sold_put_day())
    assert s.reconcile() == []
    ctx.positions[P95.instrument_id] = -3
    fixed = s.reconcile()
    assert len(fixed) == 1 and "CASH -> SHORT_PUT" in fixed[0] and s.state["SPY"] == WheelState.SHORT_PUT
    del ctx.positions[P95.instrument_id]
    ctx.positions[SPY.instrument_id] = 200
    fixed = s.reconcile()
    assert len(fixed) == 2 and s.state["SPY"] == WheelState.SHARES and sum(q for q, _ in j.lots("SPY")) == 200
    assert [t.event for t in j.transitions] == ["reconciled", "reconciled"]
    assert s.reconcile() == []


def test_restart_resumes_state_and_premium_from_the_journal() -> None:
    j = MemoryJournal()
    run_backtest(cfg(), ListMarket([sold_put_day()]), journal=j, starting_cash=CASH)
    ctx = BacktestContext(starting_cash=CASH)
    ctx.set_day(make_day(day(10), 110.0, [Listed(P95, 0.05, 0.10), Listed(opt(E2, 105.0, "P"), 1.2, 1.3)]))
    ctx.positions[P95.instrument_id] = -10
    s = WheelStrategy(cfg(), j, capital=CASH)
    s.ctx = ctx
    s.on_start()
    assert s.state["SPY"] == WheelState.SHORT_PUT and s.premium_of[P95.instrument_id] == pytest.approx(1.05)
    s.cycle(ctx.now_ns())
    ctx.deliver(s)
    assert s.transitions[-1].event == "put_rolled" and s.transitions[-1].data["premium"] == pytest.approx(1.05)


def put_days(closes: list[float]) -> list:
    """Days with the same put listed and the given closes (the put's quote unchanged)."""
    return [make_day(day(i), c, [Listed(P95, 1.00, 1.10)]) for i, c in enumerate(closes)]


def test_puts_only_on_red_days() -> None:
    r, _ = run(put_days([100.0, 101.0, 102.0, 101.5]), cfg(put_write_when="red"))
    assert events(r) == ["put_sold"] and r.transitions[0].ts_ns == make_day(day(3), 1.0).now_ns
    r2, _ = run(put_days([100.0, 101.0, 102.0, 101.5]), cfg(put_write_when="green"))
    assert r2.transitions[0].ts_ns == make_day(day(1), 1.0).now_ns  # day 0 has no previous close: it waits


def test_move_threshold() -> None:
    closes = [100.0, 100.2, 100.1, 99.0, 98.0, 97.0]
    r, _ = run(put_days(closes), cfg(write_threshold=0.005, put_write_when="red"))
    assert r.transitions[0].ts_ns == make_day(day(3), 1.0).now_ns  # -1.1%: the first red day past 0.5%
    r2, _ = run(put_days(closes), cfg(write_threshold_sigma=1.5))
    assert r2.transitions[0].ts_ns == make_day(day(1), 1.0).now_ns  # one return: no sigma yet, so no sigma rule


def filters_after(closes: list[float], config: WheelConfig) -> dict[tuple[str, float], str]:
    """The entry filters once the strategy has seen ``closes`` (no options listed: nothing is written)."""
    ctx = BacktestContext(starting_cash=CASH)
    s = WheelStrategy(config, capital=CASH)
    s.ctx = ctx
    for i, c in enumerate(closes):
        d = make_day(day(i), c)
        ctx.set_day(d)
        s.cycle(d.now_ns)
    assert not ctx.orders
    return s.entry_filters()


def test_sma_and_rsi_filters_on_tensors() -> None:
    rising, falling = [100.0 + i for i in range(12)], [100.0 - i for i in range(12)]
    assert filters_after(falling[:2], cfg(sma_days=5))[("SPY", -1.0)] == ""  # no SMA yet: allowed
    assert "below its 5-day SMA" in filters_after(falling, cfg(sma_days=5))[("SPY", -1.0)]
    assert filters_after(rising, cfg(sma_days=5))[("SPY", -1.0)] == ""
    hot = filters_after(rising, cfg(put_rsi_max=70.0, call_rsi_min=30.0, rsi_days=5))
    assert "RSI 100.0 above 70" in hot[("SPY", -1.0)] and hot[("SPY", 1.0)] == ""
    cold = filters_after(falling, cfg(put_rsi_max=70.0, call_rsi_min=30.0, rsi_days=5))
    assert cold[("SPY", -1.0)] == "" and "RSI 0.0 below 30" in cold[("SPY", 1.0)]
    green = filters_after(rising[:3], cfg(put_write_when="red", call_write_when="green"))
    assert "red days only" in green[("SPY", -1.0)] and green[("SPY", 1.0)] == ""


def test_an_unfilled_order_is_dropped_at_the_close_and_sent_again_next_cycle() -> None:
    ctx = BacktestContext(starting_cash=CASH, fill_fraction=0.0)  # a sell fills only at the bid
    s = WheelStrategy(cfg(), capital=CASH)
    s.ctx = ctx
    for i in range(2):
        d = make_day(day(i), 100.0, [Listed(P95, 1.00, 1.10)])
        ctx.set_day(d)
        s.cycle(d.now_ns)
        ctx.deliver(s)
        ctx.end_day()
    sent = list(ctx.orders.values())
    assert [(o.price_ticks, o.status.value) for o in sent] == [(21, "CANCELED"), (21, "CANCELED")]
    assert s.state["SPY"] == WheelState.CASH and list(s._orders) == [sent[-1].client_id]  # day 0 record dropped
    s.config = cfg(limit_fraction=0.0)  # at the bid: fills
    d = make_day(day(2), 100.0, [Listed(P95, 1.00, 1.10)])
    ctx.set_day(d)
    s.cycle(d.now_ns)
    ctx.deliver(s)
    assert s.state["SPY"] == WheelState.SHORT_PUT and ctx.positions[P95.instrument_id] == -10
