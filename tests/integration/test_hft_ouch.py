"""OUCH 4.2 over SoupBinTCP on loopback: the exchange simulator (OuchServer) and the gateway (OuchGateway)
moving an OrderPool: accept, cross and fill against a resting order, replace, cancel, cancel-all, rejects,
a login refused, and a re-login that gets back the messages it missed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from conftest import poll_until
from greekfire.core.errors import DataError, UnavailableError
from greekfire.hft.orders import OrderPool
from greekfire.hft.ouch_gateway import OuchEvent, OuchGateway
from greekfire.hft.ouch_server import OuchServer
from greekfire.market.matching import Side
from greekfire.trading.orders import OrderStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
S = OrderStatus
SYMBOLS = ["AAPL", "MSFT"]


@pytest.fixture()
def server() -> Iterator[OuchServer]:
    srv = OuchServer("127.0.0.1", 0, symbols=SYMBOLS, users={"ALICE": "pw", "BOB": "pw"}, heartbeat_s=0.2)
    srv.start()
    yield srv
    srv.stop()


def gateway(server: OuchServer, user: str = "ALICE", pool: OrderPool | None = None) -> OuchGateway:
    gw = OuchGateway("127.0.0.1", server.port, pool if pool is not None else OrderPool(64), symbols=SYMBOLS, username=user, password="pw")
    gw.connect()
    return gw


def pump(gw: OuchGateway, cond: Callable[[list[OuchEvent]], bool], timeout_s: float = 5.0) -> list[OuchEvent]:
    """Poll until ``cond(all events so far)`` holds."""
    events: list[OuchEvent] = []
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        events.extend(gw.poll())
        if cond(events):
            return events
        time.sleep(0.002)
    raise AssertionError(f"timed out; events: {events}")


def kinds(events: list[OuchEvent]) -> list[str]:
    return [e.kind for e in events]


def test_accept_cross_fill_replace_cancel(server: OuchServer) -> None:
    a, b = gateway(server, "ALICE"), gateway(server, "BOB")
    pa, pb = a.pool, b.pool
    try:
        # Bob rests a sell of 100 @ 190.25 (19025 ticks of 0.01)
        sell = pb.alloc(instrument=0, side=-1, qty=100, price_ticks=19_025)
        b.enter(sell)
        pump(b, lambda ev: "accepted" in kinds(ev))
        assert pb.status(sell) is S.ACCEPTED and server.open_orders("BOB") == 1
        assert server.books["AAPL"].best_ask() == (19_025, 100)

        # Alice buys 40 @ 190.30: crosses, fills 40 at the resting price
        buy = pa.alloc(instrument=0, side=1, qty=40, price_ticks=19_030)
        a.enter(buy)
        ev = pump(a, lambda ev: "executed" in kinds(ev))
        assert kinds(ev) == ["accepted", "executed"]
        assert ev[1].qty == 40 and ev[1].price_ticks == 19_025 and ev[1].reason == "R"  # removed liquidity
        assert pa.status(buy) is S.FILLED and pa.orders[buy]["avg_px"] == 19_025
        ev = pump(b, lambda ev: "executed" in kinds(ev))
        assert ev[-1].reason == "A" and pb.status(sell) is S.PARTIALLY_FILLED and pb.leaves(sell) == 60

        # Bob replaces it: new total 80 (40 filled, 40 left working) at 190.20
        b.replace(sell, 80, 19_020)
        assert pb.status(sell) is S.PENDING_REPLACE
        ev = pump(b, lambda ev: "replaced" in kinds(ev))
        assert pb.status(sell) is S.PARTIALLY_FILLED
        assert pb.orders[sell]["qty"] == 80 and pb.orders[sell]["price_ticks"] == 19_020 and pb.leaves(sell) == 40
        assert server.books["AAPL"].best_ask() == (19_020, 40)

        # and cancels it
        b.cancel(sell)
        assert pb.status(sell) is S.PENDING_CANCEL
        ev = pump(b, lambda ev: "canceled" in kinds(ev))
        assert ev[-1].qty == 40 and ev[-1].reason == "U"
        assert pb.status(sell) is S.CANCELED and server.open_orders() == 0
        assert pb.latency(sell)["ack"] > 0 and pa.latency(buy)["fill"] >= 0
    finally:
        a.stop()
        b.stop()
    assert server.counters["executions"] == 2 and server.counters["replaces"] == 1


def test_cancel_all_and_rejects(server: OuchServer) -> None:
    gw = gateway(server)
    p = gw.pool
    try:
        slots = [p.alloc(i % 2, 1 if i % 2 else -1, 10, 10_000 + (-i if i % 2 else i + 100)) for i in range(6)]
        for s in slots:
            gw.enter(s)
        pump(gw, lambda ev: kinds(ev).count("accepted") == 6)
        assert server.open_orders("ALICE") == 6

        market = p.alloc(1, 1, 10, 0)  # price 0 ticks: a market buy where only our bids rest, canceled
        gw.enter(market)
        unknown = p.alloc(7, 1, 10, 100)
        gw.symbols = {**gw.symbols, 7: "NOPE"}
        gw.enter(unknown)
        ev = pump(gw, lambda ev: "rejected" in kinds(ev) and "canceled" in kinds(ev))
        rej = [e for e in ev if e.kind == "rejected"]
        assert rej[0].slot == unknown and rej[0].reason == "S" and p.status(unknown) is S.REJECTED
        assert p.status(market) is S.CANCELED
        assert [e.reason for e in ev if e.kind == "canceled"] == ["I"]

        # a replace to a price off the tick grid is refused; the order works on
        gw.units_per_tick, upt = 1, gw.units_per_tick  # send 1/10000 units: 100_001 is not a whole tick
        gw.replace(slots[0], 10, 100_001)
        gw.units_per_tick = upt
        pump(gw, lambda ev: "rejected" in kinds(ev))
        assert p.status(slots[0]) is S.ACCEPTED

        # what the gateway cannot send is refused before the pool moves
        for inst, side in ((5, 1), (0, 0)):
            odd = p.alloc(inst, side, 1, 10_000)
            with pytest.raises(DataError):
                gw.enter(odd)
            assert p.status(odd) is S.INITIALIZED
            p.free(odd)

        assert gw.cancel_all() == 6
        assert all(p.status(s) is S.PENDING_CANCEL for s in slots)
        ev = pump(gw, lambda ev: kinds(ev).count("canceled") == 6)
        assert all(p.status(s) is S.CANCELED for s in slots) and server.open_orders() == 0
        assert gw.cancel_all() == 0
    finally:
        gw.stop()


def test_login_refused_and_relogin_replays(server: OuchServer) -> None:
    bad = OuchGateway("127.0.0.1", server.port, OrderPool(4), symbols=SYMBOLS, username="ALICE", password="no")
    with pytest.raises(UnavailableError, match="not authorized"):
        bad.connect()

    pool = OrderPool(16)
    gw = gateway(server, pool=pool)
    s1 = pool.alloc(0, 1, 5, 15_000)
    gw.enter(s1)
    pump(gw, lambda ev: "accepted" in kinds(ev))
    seq = gw.next_seq
    gw.stop()
    assert gw.stopped and not gw.connected

    # while we are away the resting buy is hit by the house: the fill waits in our session
    server.rest("AAPL", Side.SELL, 5, 15_000)
    gw2 = OuchGateway("127.0.0.1", server.port, pool, symbols=SYMBOLS, username="ALICE", password="pw")
    gw2.next_seq = seq
    gw2.connect()
    ev = pump(gw2, lambda ev: "executed" in kinds(ev))
    assert [e.seq for e in ev] == [seq] and pool.status(s1) is S.FILLED
    gw2.stop()


def test_heartbeats_keep_an_idle_session(server: OuchServer) -> None:
    gw = gateway(server)
    gw.heartbeat_s = 0.05

    def idle() -> bool:
        gw.poll()
        return gw.counters["heartbeats"] >= 3

    assert poll_until(idle, timeout_s=10.0, step_s=0.01)
    assert gw.connected and server.counters["logins"] == 1
    gw.stop()


def test_cancel_on_disconnect_and_bad_messages() -> None:
    from greekfire.hft.ouch import Soup, soup_packet

    with OuchServer("127.0.0.1", 0, symbols=SYMBOLS, cancel_on_disconnect=True) as srv:
        gw = gateway(srv, "CAROL")
        p = gw.pool
        slots = [p.alloc(0, 1, 5, 10_000 - k) for k in range(3)]
        for s in slots:
            gw.enter(s)
        pump(gw, lambda ev: kinds(ev).count("accepted") == 3)
        # a message that is not OUCH is counted and skipped; the session goes on
        assert gw.sock is not None
        gw.sock.sendall(soup_packet(Soup.UNSEQUENCED, b"Q" + bytes(30)))
        s4 = p.alloc(0, 1, 5, 9_000)
        gw.enter(s4)
        pump(gw, lambda ev: "accepted" in kinds(ev))
        assert srv.counters["bad_messages"] == 1 and srv.open_orders("CAROL") == 4
        gw.sock.close()  # the connection drops without a logout
        assert poll_until(lambda: srv.open_orders() == 0)
        assert srv.counters["cancels"] == 4


def test_serve_for_a_duration() -> None:
    import threading

    srv = OuchServer("127.0.0.1", 0, symbols=SYMBOLS)
    ports: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=lambda: srv.serve(stop, on_listening=ports.append))
    t.start()
    try:
        assert poll_until(lambda: ports)
        gw = OuchGateway("127.0.0.1", ports[0], OrderPool(4), symbols=SYMBOLS, username="DAVE")
        gw.connect()
        gw.stop()
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and srv.counters["logins"] == 1
