"""One gateway interface for the HFT engine, over OUCH 4.2 or over FIX 4.4.

:class:`Gateway` is what the pipeline calls: ``enter`` / ``replace`` / ``cancel`` / ``cancel_all`` an order of its
:class:`~greekfire.hft.orders.OrderPool`, ``poll`` the replies (applied to the pool, returned as
:class:`~greekfire.hft.ouch_gateway.OuchEvent`), ``stop``. :class:`~greekfire.hft.ouch_gateway.OuchGateway` is the binary path;
:class:`FixGateway` sends the same pool orders through any trading-core
:class:`~greekfire.trading.venues.Venue` (the FIX engine's :class:`~greekfire.trading.fixvenue.FixVenue`, or a
simulated venue), one trading :class:`~greekfire.trading.orders.Order` per pool order, its ``client_id`` the pool
order id. :func:`open_gateway` builds and connects either by name ("ouch" or "fix").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from greekfire.core.errors import ConfigError, DataError
from greekfire.core.settings import Settings
from greekfire.hft.orders import OrderPool
from greekfire.hft.ouch_gateway import OuchEvent, OuchGateway
from greekfire.trading.model import Instrument, OrderType, Side, TimeInForce, VenueEvent, VenueEventKind
from greekfire.trading.orders import FillProblem, IllegalTransition, Order, OrderStatus
from greekfire.trading.venues import Venue

log = logging.getLogger("greekfire.hft.gateway")
K = VenueEventKind
GATEWAYS = ("ouch", "fix")


class Gateway(Protocol):
    """What the HFT pipeline trades through."""

    pool: OrderPool
    stopped: bool

    def enter(self, slot: int, t_ns: int | None = None) -> None: ...
    def replace(self, slot: int, qty: int, price_ticks: int) -> None: ...
    def cancel(self, slot: int) -> None: ...
    def cancel_all(self) -> int: ...
    def poll(self, timeout_s: float = 0.0) -> list[OuchEvent]: ...
    def stop(self, drain_s: float = 1.0) -> None: ...


class FixGateway:
    """Pool orders through a trading-core venue (see the module docstring). ``instruments`` maps the pool's
    instrument number to the venue's instrument id (default: the same number). A venue with ``start`` /
    ``stop`` (a FixVenue) is started by :meth:`connect` and stopped by :meth:`stop`. ``counters``: sent,
    received, bad_events."""

    def __init__(self, venue: Venue, pool: OrderPool | None = None, *, instruments: Mapping[int, int] | None = None) -> None:
        self.venue = venue
        self.pool = pool if pool is not None else OrderPool()
        self.instruments = instruments
        self.stopped = False
        self._orders: dict[int, Order] = {}  # pool order id -> the trading order the venue knows
        self.counters = {"sent": 0, "received": 0, "bad_events": 0}

    def connect(self, timeout_s: float = 10.0) -> None:
        """Start the venue's session (a FixVenue logs on; UnavailableError when the exchange does not answer)."""
        start = getattr(self.venue, "start", None)
        if start is not None:
            start(timeout_s=timeout_s)
        self.stopped = False

    def _order(self, slot: int) -> Order:
        p = self.pool
        oid = int(p._oid[slot])
        o = self._orders.get(oid)
        if o is None:
            inst = int(p._inst[slot])
            iid = self.instruments.get(inst, -1) if self.instruments is not None else inst
            known = getattr(self.venue, "instruments", None)
            if iid < 0 or (isinstance(known, Mapping) and iid not in known):
                raise DataError("instrument", inst, "an instrument the venue trades", slot)
            price = int(p._px[slot])
            tif = int(p._tif[slot])
            o = Order(str(oid), iid, Side(int(p._side[slot])), int(p._qty[slot]), price if price > 0 else None,
                      OrderType.LIMIT if price > 0 else OrderType.MARKET, TimeInForce(tif))
            self._orders[oid] = o
        return o

    def enter(self, slot: int, t_ns: int | None = None) -> None:
        """Send the pool order in ``slot`` (NewOrderSingle on FIX) and mark it SUBMITTED."""
        o = self._order(slot)
        self.pool.on_sent(slot, time.perf_counter_ns() if t_ns is None else t_ns)
        o.transition(OrderStatus.SUBMITTED)
        self.venue.submit(o, time.time_ns())
        self.counters["sent"] += 1

    def replace(self, slot: int, qty: int, price_ticks: int) -> None:
        """New total ``qty`` (units) and limit (ticks) for the working order; PENDING_REPLACE until answered."""
        self.pool.on_replace_request(slot)
        self.venue.amend(self._order(slot), qty, price_ticks, time.time_ns())
        self.counters["sent"] += 1

    def cancel(self, slot: int) -> None:
        """Cancel the working order; PENDING_CANCEL until answered."""
        self.pool.on_cancel_request(slot)
        self.venue.cancel(self._order(slot), time.time_ns())
        self.counters["sent"] += 1

    def cancel_all(self) -> int:
        """Cancel every working order of the pool; returns how many cancels were sent."""
        n = 0
        pending = OrderStatus.PENDING_CANCEL
        for slot in self.pool.open_slots().tolist():
            if self.pool.status(slot) is not pending:
                self.cancel(slot)
                n += 1
        return n

    def poll(self, timeout_s: float = 0.0) -> list[OuchEvent]:
        """The venue's reports for our orders, applied to the pool (market data is dropped here); with none,
        one more look after sleeping ``timeout_s`` seconds (0: never block)."""
        out: list[OuchEvent] = []
        for ev in self.venue.poll(time.time_ns()):
            if type(ev) is VenueEvent:
                self._apply(ev, out)
        if not out and timeout_s > 0:
            time.sleep(timeout_s)
            for ev in self.venue.poll(time.time_ns()):
                if type(ev) is VenueEvent:
                    self._apply(ev, out)
        return out

    def _apply(self, ev: VenueEvent, out: list[OuchEvent]) -> None:
        self.counters["received"] += 1
        try:
            oid = int(ev.client_id)
        except ValueError:
            oid = -1
        p = self.pool
        slot = p.slot_of(oid)
        if slot < 0:
            self.counters["bad_events"] += 1
            log.warning("FIX gateway: %s for unknown order %r", ev.kind, ev.client_id)
            return
        t = time.perf_counter_ns()
        k = ev.kind
        o = self._orders.get(oid)
        try:
            if k == K.ACCEPTED:
                p.on_ack(slot, t)
                out.append(OuchEvent("accepted", slot, oid, ev.qty, ev.price_ticks, "", 0))
            elif k == K.FILL:
                p.on_fill(slot, ev.qty, ev.price_ticks, t)
                out.append(OuchEvent("executed", slot, oid, ev.qty, ev.price_ticks, ev.liquidity, 0))
            elif k in (K.CANCELED, K.EXPIRED):
                leaves = p.leaves(slot)
                (p.on_cancel if k == K.CANCELED else p.on_expire)(slot)
                out.append(OuchEvent("canceled", slot, oid, leaves, 0, ev.reason, 0))
            elif k == K.REPLACED:
                p.on_replaced(slot, ev.qty, ev.price_ticks)
                if o is not None:
                    o.qty, o.price_ticks = ev.qty, ev.price_ticks
                out.append(OuchEvent("replaced", slot, oid, ev.leaves_qty, ev.price_ticks, "", 0))
            elif k == K.REJECTED:
                p.on_reject(slot, t_ns=t)
                out.append(OuchEvent("rejected", slot, oid, 0, 0, ev.reason, 0))
            elif k in (K.CANCEL_REJECT, K.REPLACE_REJECT):
                p.on_cancel_reject(slot)
                out.append(OuchEvent("cancel_rejected", slot, oid, 0, 0, ev.reason, 0))
        except (IllegalTransition, FillProblem) as e:
            self.counters["bad_events"] += 1
            log.warning("FIX gateway: %s", e)
            return
        if not p.is_open(slot):
            self._orders.pop(oid, None)

    def stop(self, drain_s: float = 1.0) -> None:
        """Apply the answers still coming (up to ``drain_s`` seconds while orders are pending a cancel),
        then stop the venue's session."""
        deadline = time.monotonic() + drain_s
        pcancel = OrderStatus.PENDING_CANCEL
        while time.monotonic() < deadline and any(
                self.pool.status(s) is pcancel for s in self.pool.open_slots().tolist()):
            self.poll()
            time.sleep(0.002)
        stop = getattr(self.venue, "stop", None)
        if stop is not None:
            stop()
        self.stopped = True


def open_gateway(
    kind: str,
    pool: OrderPool,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    symbols: Sequence[str] | Mapping[int, str] = (),
    username: str = "GF",
    password: str = "",
    tick_size: float = 0.01,
    settings: Settings | None = None,
    instruments: list[Instrument] | None = None,
    timeout_s: float = 10.0,
) -> OuchGateway | FixGateway:
    """A connected gateway: ``kind`` "ouch" (an OUCH 4.2 exchange at host:port, ``symbols`` by pool
    instrument number) or "fix" (the FIX venue of ``settings`` at host:port, ``instruments`` its instruments,
    pool instrument numbers being their ids). ConfigError for another kind."""
    if kind == "ouch":
        gw = OuchGateway(host, port, pool, symbols=symbols, username=username, password=password, tick_size=tick_size)
        gw.connect(timeout_s)
        return gw
    if kind == "fix":
        from greekfire.trading.fixvenue import FixVenue

        if settings is None or not instruments:
            raise ConfigError("hft.gateway", kind, "the FIX gateway needs the settings and the instruments")
        fgw = FixGateway(FixVenue(settings, instruments, host=host, port=port or None), pool)
        fgw.connect(timeout_s)
        return fgw
    raise ConfigError("hft.gateway", kind, f"one of {', '.join(GATEWAYS)}")
