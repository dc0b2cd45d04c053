"""The FIX exchange simulator and the FIX venue, over real sockets on loopback: orders, fills with fees,
amends, cancels, rejects, market data, and an exchange restart that the venue rides through."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greekfire.core.errors import ConfigError, UnavailableError
from greekfire.core.settings import Settings, load_settings
from greekfire.fix.message import parse
from greekfire.fix.transport import FixThread
from greekfire.trading.build import default_instruments
from greekfire.trading.fixexchange import FixExchange
from greekfire.trading.fixvenue import FixVenue
from greekfire.trading.model import (
    Instrument,
    OrderType,
    Quote,
    Side,
    TimeInForce,
    VenueEvent,
    VenueEventKind,
)
from greekfire.trading.orders import Order

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
K = VenueEventKind


def make_settings(tmp_path: Path, shared_data: Path, **extra: Any) -> Settings:
    dd = shared_data / "fix44" / "FIX44.xml"
    over = {
        "home": str(tmp_path),
        "fix.data_dictionary": str(dd),
        "fix.store_url": "sqlite:///fix.db",
        "fix.port": 0,
        "fix.quote_interval_ms": 50.0,
        "fix.reconnect_s": 0.2,
        "fix.max_reconnect_s": 0.5,
        "fix.heartbeat_s": 5,
    }
    over.update(extra)
    return load_settings(overrides=over)


class Collector:
    """Polls a venue and keeps what it gave."""

    def __init__(self, venue: FixVenue) -> None:
        self.venue = venue
        self.events: list[VenueEvent] = []
        self.quotes: list[Quote] = []

    def pump(self) -> None:
        for x in self.venue.poll(time.time_ns()):
            (self.events if isinstance(x, VenueEvent) else self.quotes).append(x)

    def wait(self, cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            self.pump()
            if cond():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out; events so far: {self.events[-10:]}")

    def of(self, cid: str, kind: VenueEventKind | None = None) -> list[VenueEvent]:
        return [e for e in self.events if e.client_id == cid and (kind is None or e.kind == kind)]


@contextlib.contextmanager
def exchange_and_venue(settings: Settings, insts: list[Instrument]) -> Iterator[
        tuple[FixThread, FixExchange, FixVenue]]:  # fmt: skip
    """The FIX exchange simulator on its own thread and one FixVenue logged on to it; all stopped after."""
    thread = FixThread("test-exchange")
    ex = FixExchange(settings, insts)
    port = thread.run(ex.start())
    venue = FixVenue(settings, insts, port=port)
    try:
        venue.start(timeout_s=10)
        yield thread, ex, venue
    finally:
        venue.stop()
        thread.run(ex.stop())
        thread.stop()


@pytest.fixture()
def rig(
    tmp_path: Path, shared_data: Path
) -> Iterator[tuple[Settings, FixThread, FixExchange, FixVenue, list[Instrument]]]:
    settings = make_settings(tmp_path, shared_data)
    insts = default_instruments()
    with exchange_and_venue(settings, insts) as (thread, ex, venue):
        yield settings, thread, ex, venue, insts


def best(ex: FixExchange, thread: FixThread, iid: int) -> tuple[int, int]:
    """(best bid, best ask) in ticks, read in the exchange's loop."""
    book = ex.venue.books[iid]
    bb, ba = thread.call_wait(lambda: (book.best_bid(), book.best_ask()))
    assert bb and ba
    return bb[0], ba[0]


def sent_reports(ex: FixExchange) -> list[Any]:
    store = next(iter(ex.clients.values())).session.store
    return [parse(raw) for _, raw in store.sent(1, store.next_sender_seq()) if b"\x0135=8\x01" in raw]


def test_orders_fills_amend_cancel_rejects_quotes(rig: Any) -> None:
    settings, thread, ex, venue, insts = rig
    col = Collector(venue)
    und = insts[0]
    assert und.instrument_id == 1
    # quotes arrive as Quote objects, two-sided
    col.wait(lambda: any(q.instrument_id == 1 and q.bid > 0 and q.ask > q.bid for q in col.quotes))
    assert all(q.venue == "FIX" for q in col.quotes)

    # a marketable limit buy fills, the fill carries price in ticks and the taker fee
    _bid, ask = best(ex, thread, 1)
    buy = Order("t.1", 1, Side.BUY, 2, ask + 50, OrderType.LIMIT, TimeInForce.IOC)
    venue.submit(buy, time.time_ns())
    col.wait(lambda: sum(e.qty for e in col.of("t.1", K.FILL)) == 2 or bool(col.of("t.1", K.CANCELED)))
    fills = col.of("t.1", K.FILL)
    assert col.of("t.1", K.ACCEPTED)
    assert fills, col.of("t.1")
    for f in fills:
        assert isinstance(f.price_ticks, int) and 0 < f.price_ticks <= ask + 50
        assert f.liquidity == "T"
        assert f.fee == pytest.approx(settings.trading.taker_fee * f.qty)
        assert f.fill_id and f.instrument_id == 1 and f.side == 1

    # the same ExecutionReport sent again (PossResend) does not fill twice: fills are deduplicated by ExecID
    dup = next(m for m in thread.call_wait(sent_reports, ex) if m.get(150) == "F")
    dup.set(97, "Y")
    thread.call_wait(next(iter(ex.clients.values())).session.send, dup)
    n_fills = len([e for e in col.events if e.kind == K.FILL])
    col.wait(lambda: venue.counters()["duplicate_reports"] == 1)
    assert len([e for e in col.events if e.kind == K.FILL]) == n_fills

    # a resting order far from the market is amended (REPLACED) then canceled
    bid, _ask = best(ex, thread, 1)
    rest = Order("t.2", 1, Side.BUY, 3, bid - 200)
    venue.submit(rest, time.time_ns())
    col.wait(lambda: bool(col.of("t.2", K.ACCEPTED)))
    venue.amend(rest, 5, bid - 190, time.time_ns())
    col.wait(lambda: bool(col.of("t.2", K.REPLACED)))
    rep = col.of("t.2", K.REPLACED)[0]
    assert (rep.qty, rep.price_ticks, rep.leaves_qty) == (5, bid - 190, 5)
    states, _ = venue.report()
    assert [(s.client_id, s.qty, s.price_ticks) for s in states] == [("t.2", 5, bid - 190)]
    venue.cancel(rest, time.time_ns())
    col.wait(lambda: bool(col.of("t.2", K.CANCELED)))
    assert venue.report()[0] == []

    # an off-tick price and a fractional quantity are refused with our reason codes
    venue.submit(Order("t.3", 1, Side.BUY, 1, bid - 100.5), time.time_ns())  # type: ignore[arg-type]
    venue.submit(Order("t.4", 1, Side.BUY, 1.5, bid - 100), time.time_ns())  # type: ignore[arg-type]
    col.wait(lambda: bool(col.of("t.3", K.REJECTED)) and bool(col.of("t.4", K.REJECTED)))
    assert col.of("t.3", K.REJECTED)[0].reason == "off_tick"
    assert col.of("t.4", K.REJECTED)[0].reason == "fractional_qty"
    # a quantity of 0 and an instrument the exchange does not list are refused too
    venue.instruments[999] = Instrument(999, "NOPE")
    venue.submit(Order("t.8", 1, Side.BUY, 0, bid - 100), time.time_ns())
    venue.submit(Order("t.9", 999, Side.BUY, 1, 100), time.time_ns())
    col.wait(lambda: bool(col.of("t.8", K.REJECTED)) and bool(col.of("t.9", K.REJECTED)))
    assert col.of("t.8", K.REJECTED)[0].reason == "bad_qty"
    assert col.of("t.9", K.REJECTED)[0].reason == "unknown_instrument"
    # cancel of an order the exchange does not have: a cancel reject under our client id
    venue.cancel(Order("t.6", 1, Side.BUY, 1, bid - 100), time.time_ns())
    col.wait(lambda: bool(col.of("t.6", K.CANCEL_REJECT)))

    # a market order: its reports never carry a Price (44)
    venue.submit(Order("t.7", 1, Side.SELL, 1, None, OrderType.MARKET, TimeInForce.IOC), time.time_ns())
    col.wait(lambda: bool(col.of("t.7", K.FILL)) or bool(col.of("t.7", K.CANCELED)))
    col.wait(lambda: any(e.leaves_qty == 0 for e in col.of("t.7") if e.kind != K.ACCEPTED))
    mkt = [m for m in thread.call_wait(sent_reports, ex) if (m.get(11) or "").startswith("t.7")]
    assert mkt and all(44 not in m for m in mkt)
    assert any(m.get(150) == "F" and m.get(31) for m in mkt)
    assert all(
        m.get(44) for m in thread.call_wait(sent_reports, ex) if m.get(11) == "t.2" and m.get(150) == "0"
    )

    assert ex.stats()["sessions_logged_on"] == 1
    assert ex.counters["fills"] >= 2 and ex.counters["rejects"] >= 3
    assert venue.counters()["received"] > 0


def test_venue_unavailable_names_the_address(tmp_path: Path, shared_data: Path) -> None:
    settings = make_settings(tmp_path, shared_data)
    venue = FixVenue(settings, default_instruments(), port=1)  # nothing listens on port 1
    with pytest.raises(UnavailableError, match="127.0.0.1:1"):
        venue.start(timeout_s=1.0)


def test_restart_cancels_open_orders_and_loses_no_fill(tmp_path: Path, shared_data: Path) -> None:
    # lively background flow, so resting orders near the touch get filled by synthetic takers
    settings = make_settings(tmp_path, shared_data, **{"trading.background_rate_hz": 2000.0})
    insts = default_instruments()
    thread = FixThread("test-exchange")
    ex = FixExchange(settings, insts)
    port = thread.run(ex.start())
    venue = FixVenue(settings, insts, port=port)
    venue.start(timeout_s=10)
    col = Collector(venue)
    try:
        bid, ask = best(ex, thread, 1)
        far = Order("r.far", 1, Side.BUY, 4, bid - 300)
        venue.submit(far, time.time_ns())
        venue.submit(Order("r.cross", 1, Side.BUY, 1, ask + 20, tif=TimeInForce.IOC), time.time_ns())
        for k in range(6):  # orders at the touch, some of which fill
            o = Order(f"r.{k}", 1, Side.BUY if k % 2 else Side.SELL, 2, bid if k % 2 else ask)
            venue.submit(o, time.time_ns())
        col.wait(lambda: bool(col.of("r.far", K.ACCEPTED)) and all(col.of(f"r.{k}") for k in range(6)))
        time.sleep(0.5)
        col.pump()

        # crash: no logout, the connection just drops; a new exchange on the same stores and port
        thread.run(ex.stop(logout=False))
        ex2 = FixExchange(settings, insts, port=port)
        assert any(c.recovered for c in ex2.clients.values())
        thread.run(ex2.start())
        assert venue.wait_logon(10)
        col.wait(lambda: bool(col.of("r.far", K.CANCELED)))
        assert col.of("r.far", K.CANCELED)[-1].reason == "exchange restarted"
        col.wait(lambda: venue.report()[0] == [], timeout_s=5)
        time.sleep(0.3)
        col.pump()

        exchange_fills = {m.get(17) for m in thread.call_wait(sent_reports, ex2) if m.get(150) == "F"}
        venue_fills = [e.fill_id for e in col.events if e.kind == K.FILL]
        assert exchange_fills and col.of("r.cross", K.FILL)
        assert len(venue_fills) == len(set(venue_fills))
        assert set(venue_fills) == exchange_fills
        assert {f.fill_id for f in venue.report()[1]} == exchange_fills
        assert ex2.counters["restart_cancels"] >= 1
        thread.run(ex2.stop())
    finally:
        venue.stop()
        thread.stop()


def test_paper_run_over_fix(tmp_path: Path, shared_data: Path) -> None:
    from greekfire.strategies.paper import run_paper

    settings = make_settings(tmp_path, shared_data)
    thread = FixThread("test-exchange")
    ex = FixExchange(settings, default_instruments())
    port = thread.run(ex.start())
    try:
        trader = make_settings(tmp_path, shared_data, **{"fix.port": port})
        out = run_paper(trader, duration_s=3.0, venues="fix")
        fix = out["fix"]
        assert fix["sent"] > 0 and fix["received"] > 0 and fix["logons"] == 1
        # quotes went in and the strategy's orders came out
        assert ex.counters["snapshots"] > 0 and ex.counters["orders"] > 0
        assert "underlying_spot" not in out  # no synthetic market in the trader
        with pytest.raises(ConfigError, match="venues"):
            run_paper(trader, duration_s=1.0, venues="nyse")
    finally:
        thread.run(ex.stop())
        thread.stop()


@contextlib.contextmanager
def two_clients(tmp_path: Path, shared_data: Path, **extra: Any) -> Iterator[tuple[
        FixThread, FixExchange, FixVenue, FixVenue, Collector, Collector]]:  # fmt: skip
    """The exchange with clients GREEKFIRE and DESK2, each a logged-on FixVenue with its collector."""
    settings = make_settings(tmp_path, shared_data, **{"fix.clients": ["GREEKFIRE", "DESK2"], **extra})
    insts = default_instruments()
    thread = FixThread("test-exchange")
    ex = FixExchange(settings, insts)
    port = thread.run(ex.start())
    a = FixVenue(settings, insts, port=port)
    b = FixVenue(make_settings(tmp_path, shared_data, **{"fix.sender_comp_id": "DESK2"}), insts, port=port)
    try:
        a.start(timeout_s=10)
        b.start(timeout_s=10)
        ca, cb = Collector(a), Collector(b)
        ca.wait(lambda: ex.sessions_logged_on == 2)
        yield thread, ex, a, b, ca, cb
    finally:
        a.stop()
        b.stop()
        thread.run(ex.stop())
        thread.stop()


def test_two_clients_get_only_their_own_reports(tmp_path: Path, shared_data: Path) -> None:
    with two_clients(tmp_path, shared_data) as (thread, ex, a, b, ca, cb):
        bid, _ask = best(ex, thread, 1)
        # the same ClOrdID from both clients: two different orders on the exchange
        oa, ob = Order("x.1", 1, Side.BUY, 1, bid - 300), Order("x.1", 1, Side.BUY, 2, bid - 301)
        a.submit(oa, time.time_ns())
        b.submit(ob, time.time_ns())
        ca.wait(lambda: bool(ca.of("x.1", K.ACCEPTED)))
        cb.wait(lambda: bool(cb.of("x.1", K.ACCEPTED)))
        assert ca.of("x.1", K.ACCEPTED)[0].qty == 1 and cb.of("x.1", K.ACCEPTED)[0].qty == 2
        a.cancel(oa, time.time_ns())
        ca.wait(lambda: bool(ca.of("x.1", K.CANCELED)))
        time.sleep(0.3)
        cb.pump()
        assert not cb.of("x.1", K.CANCELED)
        assert [s.qty for s in b.report()[0]] == [2]
        b.cancel(ob, time.time_ns())
        cb.wait(lambda: bool(cb.of("x.1", K.CANCELED)))


def test_two_clients_trade_with_each_other_and_never_with_themselves(tmp_path: Path, shared_data: Path) -> None:
    """Each client session is its own owner on the exchange's books: one client's order fills against
    another's, while an order that would cross the same client's own resting order is refused by self-trade
    prevention (no background flow, so the only counterparties are the two clients and the seeded quotes)."""
    with two_clients(tmp_path, shared_data, **{"trading.background_rate_hz": 0.0}) as (thread, ex, a, b, ca, cb):
        bid, ask = best(ex, thread, 1)
        assert ask - bid >= 2  # room inside the spread for A's bid
        px = bid + 1  # A's bid becomes the best one
        a.submit(Order("a.1", 1, Side.BUY, 3, px), time.time_ns())
        ca.wait(lambda: bool(ca.of("a.1", K.ACCEPTED)))
        b.submit(Order("b.1", 1, Side.SELL, 2, px, OrderType.LIMIT, TimeInForce.IOC), time.time_ns())
        cb.wait(lambda: sum(e.qty for e in cb.of("b.1", K.FILL)) == 2)
        ca.wait(lambda: sum(e.qty for e in ca.of("a.1", K.FILL)) == 2)
        (taker,), (maker,) = cb.of("b.1", K.FILL), ca.of("a.1", K.FILL)
        assert (taker.liquidity, maker.liquidity) == ("T", "M")
        assert taker.price_ticks == maker.price_ticks == px
        assert (taker.side, maker.side) == (int(Side.SELL), int(Side.BUY))
        # A selling into its own bid: refused, and its bid keeps the 1 left
        a.submit(Order("a.2", 1, Side.SELL, 1, px, OrderType.LIMIT, TimeInForce.IOC), time.time_ns())
        ca.wait(lambda: bool(ca.of("a.2", K.CANCELED) or ca.of("a.2", K.REJECTED)))
        assert not ca.of("a.2", K.FILL)
        assert thread.call_wait(lambda: ex.venue.books[1].best_bid()) == (px, 1)


def test_a_restarted_trader_learns_its_open_orders_from_the_exchange(rig: Any) -> None:
    """OrderMassStatusRequest: a new FixVenue on the same session (the trader process restarted) asks the
    exchange for our open orders, so report() (what the engine reconciles against) holds the one still
    resting; with none open, the exchange says so and the request ends at once."""
    settings, thread, ex, venue, insts = rig
    assert venue.request_status(timeout_s=5), "no open orders: answered by a BusinessMessageReject"
    assert venue.report()[0] == []
    col = Collector(venue)
    bid, _ask = best(ex, thread, 1)
    rest = Order("r.1", 1, Side.BUY, 3, bid - 40, OrderType.LIMIT, TimeInForce.GTC)
    venue.submit(rest, time.time_ns())
    col.wait(lambda: bool(col.of("r.1", K.ACCEPTED)))
    venue.stop(logout=True)  # the trader goes away without cancelling

    again = FixVenue(settings, insts, port=ex.port)
    again.start(timeout_s=10)  # logs on and asks for the status of our orders
    try:
        [state] = again.report()[0]
        assert (state.client_id, state.instrument_id, state.side, state.qty, state.price_ticks, state.open) == (
            "r.1", 1, 1, 3, bid - 40, True)
        assert state.venue_order_id and state.cum_qty == 0
    finally:
        again.stop()
