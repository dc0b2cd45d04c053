"""Venue-event handling: what a venue says about our orders (ack, fill, cancel, replace, reject) moves
them through the OMS, and fills move positions, cash and the router's statistics.

Each :class:`~greekfire.trading.model.VenueEventKind` has one handler. An event for an order we do not know
is counted (a fill of one is reported as a fill problem, not applied); one whose kind is unknown, or that
asks for an illegal transition, is counted as malformed and dropped — the engine goes on.

A cancel sent right after its order can reach the venue first and come back ``unknown_order``: it is sent
again when the venue acknowledges the order, or at once if that ack came in before the reject.

:meth:`ExecutionHandler.track_order` runs after every order transition (the OMS's ``on_change`` hook): it
marks the order for the next snapshot and, when the order closes, forgets its send time and gives a posted
order's fill outcome to the router.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter
from greekfire.trading.bus import MessageBus
from greekfire.trading.model import Fill, Side, VenueEvent, VenueEventKind
from greekfire.trading.oms import OMS
from greekfire.trading.orders import TERMINAL, Order, OrderStatus
from greekfire.trading.portfolio import Portfolio
from greekfire.trading.router import SmartOrderRouter

FILLS = counter("greekfire_trading_fills", "fills applied", ["venue", "liquidity"])

_CLOSED = frozenset(s.value for s in TERMINAL)
_K = VenueEventKind
_PENDING = (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE)


class ExecutionHandler:
    """Applies venue events. ``sent_ns`` and ``posted`` are order entry's (send times, ids sent to rest);
    ``cancel(client_id)`` sends a cancel; ``malformed(topic, exc)`` counts a bad event.

    ``latency_scale``: engine-clock seconds per wall-clock second (1 on the wall clock or a replay's own
    clock; a paper run on a market clock that runs N times faster sets N), so the venue latencies the
    router keeps and exports stay in wall-clock microseconds."""

    def __init__(
        self, *, oms: OMS, portfolio: Portfolio, router: SmartOrderRouter, bus: MessageBus,
        clock_ns: Callable[[], int], sent_ns: dict[str, int], posted: set[str],
        cancel: Callable[[str], bool], malformed: Callable[[str, Exception], None],
    ) -> None:
        self.oms, self.portfolio, self.router, self.bus, self.clock_ns = oms, portfolio, router, bus, clock_ns
        self.sent_ns, self.posted, self.cancel, self.malformed = sent_ns, posted, cancel, malformed
        self.latency_scale = 1.0
        self._cancel_on_ack: set[str] = set()
        self._acked_while_canceling: set[str] = set()
        self.new_fills: list[dict[str, Any]] = []  # fills since the last snapshot
        self.dirty_orders: set[str] = set()  # orders changed since the last snapshot
        self.fills_applied = 0
        self.unknown_events = 0
        self.risk_dirty = True  # a fill since the last risk refresh
        self._handlers: dict[VenueEventKind, Callable[[Order, VenueEvent, int], None]] = {
            _K.FILL: self._fill, _K.ACCEPTED: self._accepted, _K.REJECTED: self._rejected,
            _K.CANCELED: self._closed, _K.EXPIRED: self._closed, _K.REPLACED: self._replaced,
            _K.CANCEL_REJECT: self._refused, _K.REPLACE_REJECT: self._refused,
        }

    def on_event(self, ev: VenueEvent) -> None:
        """One execution event from a venue; unknown or bad ones are counted."""
        order = self.oms.get(ev.client_id)
        if order is None:
            self.unknown_events += 1
            if ev.kind == _K.FILL:
                self.oms.apply_fill(self.fill_of(ev, None))  # reported as unknown_order, not applied
            return
        try:
            handler = self._handlers.get(ev.kind)
            if handler is None:
                raise DataError("kind", ev.kind, "unknown venue event kind")
            handler(order, ev, ev.ts_ns or self.clock_ns())
        except Exception as exc:  # an illegal transition from a confused venue must not stop the engine
            self.malformed("venue", exc)

    # ---------------------------------------------------------------- one handler per kind
    def _accepted(self, order: Order, ev: VenueEvent, now: int) -> None:
        if order.status == OrderStatus.SUBMITTED:
            order.venue_order_id = ev.venue_order_id
            self.oms.transition(order, OrderStatus.ACCEPTED, now)
        elif order.status == OrderStatus.PENDING_CANCEL:
            self._acked_while_canceling.add(order.client_id)
        sent = self.sent_ns.get(order.client_id)
        if sent:
            self.router.venues[ev.venue].record_ack((self.clock_ns() - sent) / 1000.0 / self.latency_scale)
        if order.client_id in self._cancel_on_ack:
            self._cancel_on_ack.discard(order.client_id)
            self.cancel(order.client_id)

    def _rejected(self, order: Order, ev: VenueEvent, now: int) -> None:
        self.oms.transition(order, OrderStatus.REJECTED, now, ev.reason)

    def _closed(self, order: Order, ev: VenueEvent, now: int) -> None:
        if order.is_open:
            new = OrderStatus.CANCELED if ev.kind == _K.CANCELED else OrderStatus.EXPIRED
            self.oms.transition(order, new, now, ev.reason)

    def _replaced(self, order: Order, ev: VenueEvent, now: int) -> None:
        if order.status == OrderStatus.PENDING_REPLACE:
            order.qty = ev.qty
            order.price_ticks = ev.price_ticks
            self.oms.transition(order, order.resting_status(), now, qty=ev.qty, price_ticks=ev.price_ticks)

    def _refused(self, order: Order, ev: VenueEvent, now: int) -> None:
        if order.status in _PENDING:
            self.oms.transition(order, order.resting_status(), now, ev.reason)
            if ev.kind == _K.CANCEL_REJECT and ev.reason == "unknown_order":
                # the cancel overtook its order on the way to the venue: cancel again
                cid = order.client_id
                if cid in self._acked_while_canceling:
                    self._acked_while_canceling.discard(cid)
                    self.cancel(cid)
                else:
                    self._cancel_on_ack.add(cid)

    def _fill(self, order: Order, ev: VenueEvent, now: int) -> None:
        self.apply_fill(order, ev)

    # ---------------------------------------------------------------- fills
    def fill_of(self, ev: VenueEvent, order: Order | None) -> Fill:
        """The :class:`Fill` a venue fill event reports (side and instrument from our order when known), its
        price converted from ticks to currency (NaN for an instrument we do not trade)."""
        iid = order.instrument_id if order else ev.instrument_id
        inst = self.portfolio.instruments.get(iid)
        return Fill(
            ev.fill_id, ev.client_id, iid, order.side if order else Side(ev.side or 1), ev.qty,
            inst.from_ticks(ev.price_ticks) if inst is not None else math.nan, ev.fee, ev.liquidity, ev.venue,
            ev.ts_ns, order.strategy_id if order else "",
        )

    def apply_fill(self, order: Order, ev: VenueEvent) -> None:
        """Apply one venue fill of ``order`` once: OMS, portfolio, the snapshot's new fills, the router's fill
        latency, then ``fills`` and ``fills.<strategy>`` on the bus. A duplicate or overfill is not applied."""
        fill = self.fill_of(ev, order)
        if self.oms.apply_fill(fill) is None:
            return
        self.portfolio.apply_fill(fill)
        self.fills_applied += 1
        self.risk_dirty = True
        self.new_fills.append({
            "fill_id": fill.fill_id, "client_id": fill.client_id, "instrument_id": fill.instrument_id,
            "side": int(fill.side), "qty": fill.qty, "price": fill.price, "fee": fill.fee, "venue": fill.venue,
            "ts_ns": fill.ts_ns,
        })
        FILLS.labels(ev.venue, ev.liquidity or "?").inc()
        sent = self.sent_ns.get(order.client_id)
        if sent:
            self.router.venues[ev.venue].record_fill_latency((self.clock_ns() - sent) / 1000.0 / self.latency_scale)
        self.bus.publish("fills", fill)
        if order.strategy_id:
            self.bus.publish(f"fills.{order.strategy_id}", fill)

    # ---------------------------------------------------------------- every transition
    def track_order(self, client_id: str, new: str) -> None:
        """After every order transition (called by the OMS): mark it for the next snapshot; on a terminal
        state, forget its send time and give a posted order's fill outcome to the router."""
        self.dirty_orders.add(client_id)
        if new in _CLOSED:
            self.sent_ns.pop(client_id, None)
            self._cancel_on_ack.discard(client_id)
            self._acked_while_canceling.discard(client_id)
            if client_id in self.posted:
                self.posted.discard(client_id)
                o = self.oms.orders.get(client_id)
                if o is not None and o.qty and o.venue in self.router.venues:
                    self.router.venues[o.venue].record_outcome(o.filled_qty / o.qty)
