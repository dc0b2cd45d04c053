"""Engine order handling on an in-process simulated venue: amend (and its denial), cancel, stop orders,
GTD expiry, IOC remainders, post-only rejects."""

from __future__ import annotations

import pytest
from one_venue import T0, one_venue_engine, step

from greekfire.core.clock import ManualClock
from greekfire.core.settings import load_settings
from greekfire.trading import OrderStatus, OrderType, Side, TimeInForce, build_engine
from greekfire.trading.build import default_instruments
from greekfire.trading.denials import Reason
from greekfire.trading.simvenue import SimulatedVenue

setup = one_venue_engine




def test_amend_then_cancel_walk_the_state_machine() -> None:
    eng, venue, clock = setup()
    (o,) = eng.submit(eng.new_order(2, Side.BUY, 5, 245, post_only=True))
    step(eng, clock)
    assert o.status == OrderStatus.ACCEPTED and venue.books[2].best_bid() == (245, 5)
    assert eng.amend(o.client_id, 7, 246) is None
    assert o.status == OrderStatus.PENDING_REPLACE
    step(eng, clock)
    assert o.status == OrderStatus.ACCEPTED and (o.qty, o.price_ticks) == (7, 246)
    assert venue.books[2].best_bid() == (246, 7)
    denial = eng.amend(o.client_id, 5000, 246)
    assert denial is not None and denial.reason == Reason.MAX_QTY and o.status == OrderStatus.ACCEPTED
    assert eng.cancel(o.client_id) and o.status == OrderStatus.PENDING_CANCEL
    step(eng, clock)
    assert o.status == OrderStatus.CANCELED and eng.oms.open_orders() == []
    trail = [e[4]["new"] for e in eng.audit.entries(kind="order", ref=o.client_id)]
    assert trail == ["SUBMITTED", "ACCEPTED", "PENDING_REPLACE", "ACCEPTED", "PENDING_CANCEL", "CANCELED"]


def test_ioc_remainder_is_canceled_and_post_only_cross_is_rejected() -> None:
    eng, _venue, clock = setup()
    (ioc,) = eng.submit(eng.new_order(2, Side.BUY, 15, 260, tif=TimeInForce.IOC))
    (po,) = eng.submit(eng.new_order(2, Side.SELL, 1, 240, post_only=True))
    step(eng, clock)
    assert ioc.status == OrderStatus.CANCELED and ioc.filled_qty == 10
    assert eng.portfolio.positions[2].qty == 10
    assert po.status == OrderStatus.REJECTED and po.reason == "post_only_would_cross"
    assert eng.summary()["venue_rejections"] == {"post_only_would_cross": 1}


def test_stop_order_is_held_then_triggered_by_the_reference_price() -> None:
    eng, venue, clock = setup()
    (stop,) = eng.submit(eng.new_order(1, Side.BUY, 10, None, OrderType.STOP, stop_ticks=10050))
    assert stop.status == OrderStatus.ACCEPTED and stop.venue == "engine"
    step(eng, clock)
    assert stop.filled_qty == 0
    assert eng.latency_us()["count"] == 0  # the stop was submitted outside any market event: not timed
    venue.add_liquidity(1, Side.SELL, 100, 100.70, clock.now_ns())
    venue.add_liquidity(1, Side.BUY, 150, 100.60, clock.now_ns())  # takes the 100.01 ask, 50 rest: mid 100.65
    step(eng, clock, 3)
    assert stop.status == OrderStatus.FILLED and stop.avg_px == pytest.approx(100.70)
    assert eng.portfolio.positions[1].qty == 10
    # the quote that triggered it timed the stop's send like any order caused by a market event
    assert eng.latency_us()["count"] == 1 and eng.latency_us(first_only=True)["count"] == 1


def test_gtd_order_is_canceled_at_its_expiry_and_held_stop_cancels_at_once() -> None:
    eng, _venue, clock = setup()
    (gtd,) = eng.submit(eng.new_order(2, Side.BUY, 1, 241, tif=TimeInForce.GTD, expire_ns=clock.now_ns() + 5_000_000))
    step(eng, clock)
    eng.on_timer(clock.now_ns())
    assert gtd.status == OrderStatus.ACCEPTED
    step(eng, clock, 5)
    eng.on_timer(clock.now_ns())
    step(eng, clock)
    assert gtd.status == OrderStatus.CANCELED
    (stop,) = eng.submit(eng.new_order(1, Side.SELL, 1, None, OrderType.STOP, stop_ticks=9000))
    assert eng.cancel(stop.client_id) and stop.status == OrderStatus.CANCELED


def test_day_orders_expire_at_the_end_of_the_day_and_books_are_published() -> None:
    eng, venue, clock = setup()
    books = []
    eng.bus.subscribe("books.*", books.append)
    venue.book_levels = 3
    (day,) = eng.submit(eng.new_order(2, Side.BUY, 2, 242, tif=TimeInForce.DAY))
    (gtc,) = eng.submit(eng.new_order(2, Side.BUY, 2, 241))
    step(eng, clock)
    assert books and books[-1].bids[:2] == ((2.42, 2), (2.41, 2))
    eng.end_of_day()
    step(eng, clock)
    assert day.status == OrderStatus.EXPIRED and gtc.status == OrderStatus.ACCEPTED
    assert eng.portfolio.day_start_equity == pytest.approx(eng.portfolio.equity())


def test_a_cancel_that_overtakes_its_order_is_sent_again_on_the_ack() -> None:
    """A kill (or any cancel) right after a submit: the cancel reaches the venue first, which rejects it as
    unknown_order; the engine cancels again when the venue acknowledges the order, so nothing stays live."""
    eng, venue, clock = setup()
    (o,) = eng.submit(eng.new_order(2, Side.BUY, 5, 245, post_only=True))
    venue.latency_ns = 10_000  # the next request (the cancel) travels faster than the submit (100 us)
    eng.kill("test")
    assert o.status == OrderStatus.PENDING_CANCEL
    clock.advance(50_000)  # 50 us: the cancel has been rejected at the venue, the order is not there yet
    eng.poll_once(clock.now_ns())
    clock.advance(50_000)
    eng.poll_once(clock.now_ns())
    step(eng, clock)
    trail = [e[4]["new"] for e in eng.audit.entries(kind="order", ref=o.client_id)]
    assert trail[:3] == ["SUBMITTED", "PENDING_CANCEL", "ACCEPTED"]  # the cancel came back unknown_order
    assert o.status == OrderStatus.CANCELED and eng.oms.open_orders() == []
    assert venue.books[2].best_bid() == (240, 10)  # our 2.45 bid is gone from the venue's book


def test_an_overtaken_cancel_whose_order_was_acked_first_is_sent_again_at_once() -> None:
    """The same race with the replies the other way round: the order's ack comes back before the cancel's
    unknown_order reject; the engine cancels again as soon as the reject arrives."""
    eng, venue, clock = setup()
    venue.ordered_reports = False  # replies that cross on the way back (a FIX session would keep their order)
    (o,) = eng.submit(eng.new_order(2, Side.BUY, 5, 245, post_only=True))  # arrives at 100 us
    venue.latency_ns = 10_000
    eng.kill("test")  # the cancel arrives at 10 us
    venue.latency_ns = 1_000_000  # ... and its reject takes 1 ms back
    clock.advance(10_000)
    eng.poll_once(clock.now_ns())
    venue.latency_ns = 10_000  # the ack of the order (at 100 us) comes back in 10 us
    for _ in range(30):
        clock.advance(50_000)
        eng.poll_once(clock.now_ns())
    trail = [e[4] for e in eng.audit.entries(kind="order", ref=o.client_id)]
    assert [e["new"] for e in trail][:3] == ["SUBMITTED", "PENDING_CANCEL", "ACCEPTED"]
    assert trail[2].get("reason") == "unknown_order"
    assert o.status == OrderStatus.CANCELED and eng.oms.open_orders() == []
    assert venue.books[2].best_bid() == (240, 10)


def test_amend_many_checks_each_amend_and_sends_the_passing_ones_as_one_mass_quote() -> None:
    eng, venue, clock = setup()
    orders = [eng.submit(eng.new_order(2, Side.BUY, 5, p, post_only=True))[0] for p in (241, 242, 243)]
    step(eng, clock)
    assert [o.status for o in orders] == [OrderStatus.ACCEPTED] * 3
    assert eng.cancel(orders[1].client_id)
    step(eng, clock)
    batches: list[list[tuple[str, int, int]]] = []
    real = venue.amend_many
    venue.amend_many = lambda amends, now: (  # type: ignore[method-assign]
        batches.append([(o.client_id, q, p) for o, q, p in amends]), real(amends, now))
    out = eng.amend_many([(orders[0], 6, 244), (orders[1], 6, 245), (orders[2], 5000, 246)])
    assert out[0] is None and out[1] is None  # sent; and the canceled order can no longer be amended
    assert out[2] is not None and out[2].reason == Reason.MAX_QTY
    assert batches == [[(orders[0].client_id, 6, 244)]]
    assert orders[0].status == OrderStatus.PENDING_REPLACE and orders[2].status == OrderStatus.ACCEPTED
    assert eng.audit.entries(kind="order", ref=orders[0].client_id)[-1][4] == {
        "old": "ACCEPTED", "new": "PENDING_REPLACE", "new_qty": 6, "new_price_ticks": 244}
    assert "amend_denied" in eng.audit.entries(kind="risk", ref=orders[2].client_id)[-1][4]
    step(eng, clock)
    assert (orders[0].status, orders[0].qty, orders[0].price_ticks) == (OrderStatus.ACCEPTED, 6, 244)
    assert venue.books[2].best_bid() == (244, 6)


def test_a_mass_quote_the_venue_refuses_to_take_leaves_its_orders_as_they_were() -> None:
    eng, venue, clock = setup()
    (o,) = eng.submit(eng.new_order(2, Side.BUY, 5, 241, post_only=True))
    step(eng, clock)
    seq = eng.audit.seq

    def down(amends: object, now: int) -> None:
        raise ConnectionError("venue session is down")

    venue.amend_many = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        eng.amend_many([(o, 5, 242)])
    assert o.status == OrderStatus.ACCEPTED and o.price_ticks == 241 and eng.audit.seq == seq  # nothing was sent


def test_a_mass_quote_over_two_venues_sends_both_before_booking_and_stops_at_a_venue_that_fails() -> None:
    clock = ManualClock(T0)
    insts = default_instruments(T0)
    venues = [SimulatedVenue(n, insts, {i.instrument_id: 2.5 for i in insts}.get, latency_us=100, jitter_us=0,
                             flow_rate_hz=0) for n in ("A", "B")]
    eng = build_engine(load_settings(), instruments=insts, venues=venues, store=False, clock_ns=clock.now_ns)
    eng.router.venues["B"].maker_fee = 1.0  # posts go to A
    (a,) = eng.submit(eng.new_order(2, Side.BUY, 5, 241, post_only=True))
    eng.router.venues["B"].maker_fee, eng.router.venues["A"].maker_fee = -1.0, 1.0  # ... now to B
    (b,) = eng.submit(eng.new_order(2, Side.BUY, 5, 242, post_only=True))
    step(eng, clock)
    assert (a.venue, b.venue) == ("A", "B") and a.status == b.status == OrderStatus.ACCEPTED
    calls: list[tuple[str, str]] = []  # (venue, status of a when that venue was handed its amends)
    for v in venues:
        real = v.amend_many
        v.amend_many = lambda amends, now, v=v, real=real: (  # type: ignore[method-assign]
            calls.append((v.name, a.status.value)), real(amends, now))
    assert eng.amend_many([(a, 5, 243), (b, 5, 244)]) == [None, None]
    assert calls == [("A", "ACCEPTED"), ("B", "ACCEPTED")]  # both sent before either is booked
    assert a.status == b.status == OrderStatus.PENDING_REPLACE
    step(eng, clock)

    def down(amends: object, now: int) -> None:
        raise ConnectionError("B is down")

    venues[1].amend_many = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        eng.amend_many([(a, 5, 245), (b, 5, 246)])
    assert a.status == OrderStatus.PENDING_REPLACE and b.status == OrderStatus.ACCEPTED  # A took it, B did not
    step(eng, clock)
    assert (a.price_ticks, b.price_ticks) == (245, 244)


def test_venue_latency_is_kept_in_wall_clock_microseconds_on_a_faster_market_clock() -> None:
    """A paper run on a market clock N times faster than the wall clock sets ``latency_scale`` N: the same
    ack, seen after the same engine-clock time, is recorded N times shorter (what the router routes on and
    ``greekfire_trading_venue_latency_us`` shows)."""
    acks = []
    for scale in (1.0, 1000.0):
        eng, _, clock = setup()
        eng.executions.latency_scale = scale
        eng.submit(eng.new_order(2, Side.BUY, 1, 240, post_only=True))
        step(eng, clock)
        acks.append(eng.router.venues["A"].ack_ewma_us)
    assert acks[0] >= 200.0  # 100 us each way on the venue, seen at the next 1 ms poll
    assert acks[1] == pytest.approx(acks[0] / 1000.0)
