"""The HFT gateway's FIX path: pool orders through the trading core's FixVenue to the FIX exchange simulator on
loopback (accept, fill, replace, cancel-all), and open_gateway choosing "ouch" or "fix"."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from greekfire.core.errors import ConfigError, DataError
from greekfire.core.settings import load_settings
from greekfire.fix.transport import FixThread
from greekfire.hft.gateway import FixGateway, open_gateway
from greekfire.hft.orders import OrderPool
from greekfire.hft.ouch_gateway import OuchEvent, OuchGateway
from greekfire.hft.ouch_server import OuchServer
from greekfire.trading.build import default_instruments
from greekfire.trading.fixexchange import FixExchange
from greekfire.trading.orders import OrderStatus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
S = OrderStatus


@pytest.fixture()
def fix_rig(tmp_path: Path) -> Iterator[tuple[FixExchange, FixThread, Any, Any]]:
    settings = load_settings(overrides={
        "home": str(tmp_path), "fix.store_url": "sqlite:///fix.db", "fix.port": 0, "fix.reconnect_s": 0.2,
        "fix.max_reconnect_s": 0.5, "fix.heartbeat_s": 5, "fix.quote_interval_ms": 50.0,
    })
    insts = default_instruments()
    thread = FixThread("test-fix-exchange")
    ex = FixExchange(settings, insts)
    port = thread.run(ex.start())
    try:
        yield ex, thread, settings, (insts, port)
    finally:
        thread.run(ex.stop())
        thread.stop()


def pump(gw: FixGateway, cond: Callable[[list[OuchEvent]], bool], timeout_s: float = 10.0) -> list[OuchEvent]:
    events: list[OuchEvent] = []
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        events.extend(gw.poll())
        if cond(events):
            return events
        time.sleep(0.005)
    raise AssertionError(f"timed out; events: {events}")


def test_pool_orders_over_fix(fix_rig: Any) -> None:
    ex, thread, settings, (insts, port) = fix_rig
    pool = OrderPool(32)
    gw = open_gateway("fix", pool, port=port, settings=settings, instruments=insts)
    assert isinstance(gw, FixGateway)
    try:
        book = ex.venue.books[1]
        bid, ask = thread.call_wait(lambda: (book.best_bid(), book.best_ask()))
        assert bid and ask
        # a marketable IOC buy fills (at most its limit)
        take = pool.alloc(1, 1, 2, ask[0] + 50, tif=2)
        gw.enter(take)
        ev = pump(gw, lambda ev: pool.status(take) in (S.FILLED, S.CANCELED))
        assert [e.kind for e in ev][0] == "accepted"
        fills = [e for e in ev if e.kind == "executed"]
        assert fills and all(0 < e.price_ticks <= ask[0] + 50 for e in fills)
        assert pool.orders[take]["filled"] == sum(e.qty for e in fills)

        # resting orders far from the market: replace one, then cancel all
        rest = [pool.alloc(1, 1, 3, bid[0] - 200 - k) for k in range(3)]
        for s in rest:
            gw.enter(s)
        pump(gw, lambda ev: all(pool.status(s) is S.ACCEPTED for s in rest))
        gw.replace(rest[0], 5, bid[0] - 190)
        pump(gw, lambda ev: "replaced" in [e.kind for e in ev])
        assert pool.status(rest[0]) is S.ACCEPTED and pool.orders[rest[0]]["qty"] == 5
        assert pool.orders[rest[0]]["price_ticks"] == bid[0] - 190
        odd = pool.alloc(999, 1, 1, bid[0])
        with pytest.raises(DataError):
            gw.enter(odd)
        assert pool.status(odd) is S.INITIALIZED
        pool.free(odd)
        assert gw.cancel_all() == 3
        pump(gw, lambda ev: all(pool.status(s) is S.CANCELED for s in rest))
        assert len(pool.open_slots()) == 0
    finally:
        gw.stop()
    assert gw.stopped and gw.counters["bad_events"] == 0


def test_open_gateway_by_name() -> None:
    with OuchServer("127.0.0.1", 0, symbols=["AAPL"]) as srv:
        gw = open_gateway("ouch", OrderPool(4), port=srv.port, symbols=["AAPL"])
        assert isinstance(gw, OuchGateway) and gw.connected
        gw.stop()
    with pytest.raises(ConfigError):
        open_gateway("carrier-pigeon", OrderPool(4))
    with pytest.raises(ConfigError):
        open_gateway("fix", OrderPool(4))
