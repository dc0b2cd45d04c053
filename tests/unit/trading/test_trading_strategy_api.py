"""The strategy API: a strategy acts only through its context — commands carry it as the owner, denials
come back with their reason code, views are live and read-only, timers fire, a declared volatility is
what the book is valued with."""

from __future__ import annotations

from typing import Any

import pytest
from one_venue import one_venue_engine, step

from greekfire.core.clock import ManualClock
from greekfire.core.errors import DataError
from greekfire.trading.engine import TradingEngine
from greekfire.trading.entry import NotOwner
from greekfire.trading.simvenue import SimulatedVenue
from greekfire.trading.strategy import OrderStatus, Quote, Reason, Side, Strategy


def setup(*strategies: Strategy) -> tuple[TradingEngine, SimulatedVenue, ManualClock]:
    return one_venue_engine(*strategies, start=True)


class Recorder(Strategy):
    """Does nothing by itself; the test drives its context."""

    name = "rec"

    def __init__(self, name: str | None = None, **params: Any) -> None:
        super().__init__(name, **params)
        self.quotes: list[Quote] = []
        self.ticks: list[int] = []

    def on_quote(self, quote: Quote) -> None:
        self.quotes.append(quote)




def test_commands_go_through_the_context_and_denials_carry_their_reason() -> None:
    s = Recorder()
    eng, venue, clock = setup(s)
    (o,) = s.ctx.submit(2, Side.BUY, 5, s.ctx.ticks(2, 2.45), post_only=True)
    step(eng, clock)
    assert o.price_ticks == 245 and o.status == OrderStatus.ACCEPTED and o.strategy_id == "rec" and s.ctx.open_orders() == [o]
    assert s.ctx.order(o.client_id) is o and s.ctx.open_orders(instrument_id=3) == []
    assert s.ctx.amend(o, 6, 246) is None
    step(eng, clock)
    assert (o.qty, o.price_ticks) == (6, 246) and venue.books[2].best_bid() == (246, 6)
    assert s.ctx.price(2, o.price_ticks) == 2.46
    denial = s.ctx.amend(o, 5000, 246)
    assert denial is not None and denial.reason == Reason.MAX_QTY and denial.values["qty"] == 5000
    with pytest.raises(DataError, match=r"bid=2\.455 at GFX .*: is not on the tick grid of 0\.01"):
        s.ctx.ticks(2, 2.455, "bid")  # off the 0.01 tick: the helper names the field and the value
    (bad,) = s.ctx.submit(2, Side.BUY, 1, 2.45)  # type: ignore[arg-type]  # currency where ticks are due
    assert bad.status == OrderStatus.DENIED and bad.reason == Reason.BAD_TICK.value
    assert s.ctx.cancel_all() == 1
    step(eng, clock)
    assert o.status == OrderStatus.CANCELED and s.ctx.open_orders() == []


def test_a_strategy_cannot_touch_another_strategys_orders() -> None:
    a, b = Recorder("a"), Recorder("b")
    eng, _venue, clock = setup(a, b)
    (o,) = a.ctx.submit(2, Side.BUY, 5, 245, post_only=True)
    step(eng, clock)
    assert b.ctx.order(o.client_id) is None and b.ctx.open_orders() == []
    assert b.ctx.cancel(o) is False and b.ctx.cancel_all() == 0
    with pytest.raises(NotOwner, match="belongs to strategy 'a'"):
        b.ctx.amend_many([(o, 5, 246)])
    with pytest.raises(NotOwner):
        b.ctx.amend(o.client_id, 5, 246)
    assert o.status == OrderStatus.ACCEPTED and o.price_ticks == 245  # untouched
    assert a.ctx.amend_many([(o, 5, 246)]) == [None]


def test_views_are_live_and_read_only() -> None:
    s = Recorder()
    eng, venue, clock = setup(s)
    ctx = s.ctx
    assert ctx.spots["GFX"] == pytest.approx(100.0) and ctx.marks[2] == pytest.approx(2.50)
    assert ctx.quotes[2].bid == 2.40 and ctx.instruments[2].is_option and ctx.by_symbol["GFX"].instrument_id == 1
    assert ctx.positions.get(2, 0) == 0 and ctx.greeks["GFX"] == (0.0, 0.0, 0.0, 0.0)
    s.ctx.submit(2, Side.BUY, 4, 260)  # takes 4 of the 2.60 ask
    step(eng, clock, 3)
    assert ctx.positions[2] == 4 and ctx.greeks["GFX"][0] > 0  # the same view, now showing the fill
    pos = ctx.position(2)
    assert (pos.qty, pos.avg_cost) == (4, pytest.approx(2.60)) and ctx.pnl()["fees"] == pytest.approx(pos.fees)
    for view in (ctx.positions, ctx.greeks, ctx.unit_greeks, ctx.spots, ctx.marks, ctx.quotes, ctx.instruments):
        with pytest.raises(TypeError):
            view[2] = 0  # type: ignore[index]
    with pytest.raises(TypeError):
        ctx.greeks["GFX"][0] = 0.0  # type: ignore[index]
    assert eng.portfolio.positions[2].qty == 4


def test_venue_quotes_show_each_routed_venues_last_quote_read_only() -> None:
    s = Recorder()
    eng, _venue, clock = setup(s)
    vq = s.ctx.venue_quotes
    assert list(vq) == ["A"] and vq["A"][2].bid == 2.40 and vq["A"][2].venue == "A"
    eng.process([Quote(2, 2.45, 2.55, 3, 4, clock.now_ns(), "A"), Quote(2, 2.30, 2.70, 1, 1, clock.now_ns(), "X")])
    # the engine's last quote is X's; the router's view of A (where orders can go) keeps A's own quote
    assert s.ctx.quotes[2].venue == "X" and (vq["A"][2].bid, vq["A"][2].ask_size) == (2.45, 4) and "X" not in vq
    with pytest.raises(TypeError):
        vq["A"][2] = vq["A"][2]  # type: ignore[index]
    with pytest.raises(TypeError):
        vq["X"] = {}  # type: ignore[index]


def test_timers_fire_on_the_loop_and_can_be_canceled() -> None:
    s = Recorder()
    eng, _venue, clock = setup(s)
    once = s.ctx.set_timer(0.005, s.ticks.append)
    every = s.ctx.set_timer(0.002, lambda now: s.ticks.append(-now), repeat=True)
    step(eng, clock, 10)
    assert once not in (every,) and sum(1 for t in s.ticks if t > 0) == 1
    repeats = sum(1 for t in s.ticks if t < 0)
    assert 4 <= repeats <= 5
    assert s.ctx.cancel_timer(every) and not s.ctx.cancel_timer(once)
    step(eng, clock, 10)
    assert sum(1 for t in s.ticks if t < 0) == repeats


def test_a_failing_timer_is_isolated_and_counted() -> None:
    s = Recorder()
    eng, _venue, clock = setup(s)

    def boom(now: int) -> None:
        raise ValueError("strategy bug")

    s.ctx.set_timer(0.001, boom)
    step(eng, clock, 3)
    assert eng.bus.errors["strategy:rec"] == 1


def test_declared_vol_values_the_book_and_the_var() -> None:
    s = Recorder()
    eng, _venue, clock = setup(s)
    s.ctx.submit(2, Side.BUY, 4, 260)
    step(eng, clock, 3)
    vega_before = eng.portfolio.unit[2][2]
    s.ctx.declare_vol("GFX", 0.35)
    step(eng, clock, 1)
    eng.process([Quote(1, 99.99, 100.01, 100, 100, clock.now_ns(), "A")])  # the underlying moves: revalued
    assert s.ctx.vol(2) == 0.35 and eng.pricing.underlying_vol("GFX") == 0.35
    assert eng.risk.var_model.vol_of("GFX") == 0.35 and eng.pricing.declared == {"GFX": "rec"}
    assert eng.portfolio.unit[2][2] != pytest.approx(vega_before)
    assert eng.audit.entries(kind="pricing", ref="GFX")[-1][4] == {"vol": 0.35, "declared_by": "rec"}
    with pytest.raises(DataError, match="vol"):
        s.ctx.declare_vol("GFX", -1.0)
    with pytest.raises(DataError, match="underlying"):
        s.ctx.declare_vol("NOPE", 0.2)


def test_a_strategy_without_an_engine_says_so() -> None:
    with pytest.raises(RuntimeError, match="not attached to an engine"):
        Recorder().submit(2, Side.BUY, 1, 245)


def test_a_repeating_timer_polled_late_fires_once_then_keeps_its_interval() -> None:
    from greekfire.trading.timers import Timers

    fired: list[tuple[str, int]] = []
    timers = Timers(lambda owner, fn, now: fired.append((owner, now)))
    tid = timers.add("s", 1_000, lambda now: None, interval_ns=1_000)
    assert timers.fire_due(999) == 0
    assert timers.fire_due(5_500) == 1  # four intervals missed: one call, not a burst
    assert timers.heap[0][0] == 6_500 and fired == [("s", 5_500)]
    assert timers.cancel(tid) and timers.fire_due(10_000) == 0 and not timers.cancel(tid)


def test_a_stopped_engine_refuses_new_orders_and_amends_but_lets_cancels_through() -> None:
    s = Recorder()
    eng, venue, clock = setup(s)
    (o,) = s.ctx.submit(2, Side.BUY, 5, s.ctx.ticks(2, 2.45), post_only=True)
    step(eng, clock)
    assert o.status == OrderStatus.ACCEPTED
    eng.stop()  # winding down: what a strategy does in reaction to the last events must not reach the venue
    (late,) = s.ctx.submit(2, Side.BUY, 1, 244)
    assert late.status == OrderStatus.DENIED and late.reason == Reason.STOPPED.value
    denial = s.ctx.amend(o, 6, 246)
    assert denial is not None and denial.reason == Reason.STOPPED
    assert s.ctx.cancel(o)
    step(eng, clock)
    assert o.status == OrderStatus.CANCELED and venue.books[2].best_bid() != (245, 5)  # other participants remain
    eng.start()
    (again,) = s.ctx.submit(2, Side.BUY, 1, 244)
    step(eng, clock)
    assert again.status == OrderStatus.ACCEPTED
