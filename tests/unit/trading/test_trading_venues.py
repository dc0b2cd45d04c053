"""The simulated venue: requests are worked when they arrive, before that poll's background flow, and
its reports come back in the order it sent them (one session), unless told to let them cross."""

from __future__ import annotations

import dataclasses

from greekfire.trading.build import default_instruments
from greekfire.trading.model import Side, VenueEvent
from greekfire.trading.orders import Order
from greekfire.trading.simvenue import SimulatedVenue

T0 = 1_800_000_000 * 10**9


def venue(**kw: object) -> SimulatedVenue:
    insts = default_instruments(T0)
    v = SimulatedVenue("S", insts, {i.instrument_id: 2.5 for i in insts}.get, latency_us=200, jitter_us=100, **kw)  # type: ignore[arg-type]
    v.seed_books(now_ns=T0)
    return v


def test_a_cancel_that_arrived_is_worked_before_the_takers_of_the_same_poll() -> None:
    v = venue(flow_rate_hz=0.0, taker_share=1.0, seed=3)
    ours = Order("c1", 2, Side.BUY, 5, 249)  # the best bid: the first seller hits it
    v.poll(T0)
    v.submit(ours, T0)
    v.poll(T0 + 400_000)
    assert v.books[2].best_bid() == (249, 5)  # rested
    v.cancel(ours, T0 + 400_000)  # arrives by T0 + 700 us
    v.flow_rate_hz = 200_000.0  # a flood of market orders from now on
    events = v.poll(T0 + 2_000_000) + v.poll(T0 + 3_000_000)  # hundreds of takers, after the cancel arrived
    mine = [e.kind for e in events if isinstance(e, VenueEvent) and e.client_id == "c1"]
    assert "canceled" in mine and "fill" not in mine
    assert [f for f in v.report()[1] if f.client_id == "c1"] == []


def test_reports_come_back_in_the_order_sent_unless_allowed_to_cross() -> None:
    for ordered in (True, False):
        v = venue(flow_rate_hz=0.0, seed=1, ordered_reports=ordered)
        v.poll(T0)
        now = T0
        for k in range(300):  # orders and cancels 10 us apart: each reply's jitter (100 us) spans many of them
            o = Order(f"c{k}", 2 + k % 10, Side.BUY, 1, 100)
            v.submit(o, now)
            v.cancel(o, now + 5_000)
            now += 10_000
        got: list[VenueEvent] = []
        for t in range(now, now + 2_000_000, 50_000):
            got += [e for e in v.poll(t) if isinstance(e, VenueEvent)]
        assert len(got) == 600
        sent = [e.ts_ns for e in got]  # the venue's time of each report, in the order they arrived
        assert (sent == sorted(sent)) is ordered


def test_one_set_of_order_type_and_time_in_force_enums_serves_books_and_trading() -> None:
    from greekfire.market import matching
    from greekfire.trading import model

    assert model.OrderType is matching.OrderType and model.TimeInForce is matching.TimeInForce
    book = matching.MatchingEngine(1)
    (rep,) = book.submit(1, 1, Side.BUY, 5, 100, model.OrderType.STOP)
    assert rep.kind == matching.ExecKind.REJECTED and rep.reason == "unsupported_ord_type"
    reports = book.submit(2, 1, Side.BUY, 5, 100, tif=model.TimeInForce.GTD)  # rests as GTC
    assert [r.kind for r in reports] == [matching.ExecKind.ACCEPTED] and book.best_bid() == (100, 5)
    book.expire_day_orders(0)
    assert book.best_bid() == (100, 5)


def test_synthetic_flow_stops_at_an_instruments_expiry_and_reaches_one_listed_later() -> None:
    """default_instruments expire 30 days after T0: past that, the flow trades only the underlying; an option
    listed then (add_instrument) is quoted at once and traded by the flow; listing it twice does nothing."""
    insts = default_instruments(T0)
    v = SimulatedVenue("S", insts, lambda _iid: 2.5, flow_rate_hz=2_000.0, seed=5)
    v.seed_books(now_ns=T0)
    expiry = next(i.expiry_ns for i in insts if i.is_option)

    def traded(t0: int) -> set[int]:
        """The instruments whose books the flow touched over 0.4 s from ``t0``."""
        seen: set[int] = set()
        v.poll(t0)
        for k in range(1, 40):
            seen |= {u.instrument_id for u in v.poll(t0 + k * 10_000_000) if hasattr(u, "instrument_id")}
        return seen

    before = traded(expiry - 10**9)
    assert 1 in before and any(v.instruments[i].is_option for i in before)
    assert traded(expiry + 10**9) == {1}
    listed = dataclasses.replace(default_instruments(expiry, strikes=(100,))[1], instrument_id=99)
    assert v.add_instrument(listed, expiry + 2 * 10**9)
    assert v.books[99].best_bid() is not None and v.books[99].best_ask() is not None
    assert not v.add_instrument(listed, expiry + 2 * 10**9)
    assert 99 in traded(expiry + 3 * 10**9)
