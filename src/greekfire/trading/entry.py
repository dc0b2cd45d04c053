"""Order entry: new orders, amends and mass quotes, cancels — risk check, route, send, book.

Prices are integer ticks of the order's instrument all the way (``price_ticks``, ``stop_ticks``).
Every order goes the same way: a client id unique across restarts (:meth:`OrderEntry.new_order`), the
pre-trade risk check (a denial is booked DENIED with its reason and published on ``risk``), stop orders to
the :class:`~greekfire.trading.stops.StopBook`, the rest to the smart order router, and each child order to
its venue. An order handed to a venue while a market event is being handled records one latency sample.

A mass quote (:meth:`OrderEntry.amend_many`) checks every amend, hands each venue its passing amends in one
call, and books them (PENDING_REPLACE, audit, bus) right after, before any other event can be handled: the
loop is single-threaded and a venue only queues what it is handed, so the bookkeeping stays off the path an
order takes to leave.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from greekfire.trading.audit import AuditLog
from greekfire.trading.bus import MessageBus
from greekfire.trading.denials import Denial, Reason
from greekfire.trading.latency import LatencyRecorder
from greekfire.trading.model import Instrument, OrderType, Side, TimeInForce
from greekfire.trading.oms import OMS
from greekfire.trading.orders import TRANSITIONS, Order, OrderStatus
from greekfire.trading.portfolio import Portfolio
from greekfire.trading.risk import RiskEngine
from greekfire.trading.router import SmartOrderRouter
from greekfire.trading.stops import StopBook
from greekfire.trading.venues import Venue

# bound once: Enum attribute lookups cost ~0.2 us each on the per-order path
_PENDING_REPLACE, _SUBMITTED = OrderStatus.PENDING_REPLACE, OrderStatus.SUBMITTED
_AMENDABLE = frozenset(s for s, nxt in TRANSITIONS.items() if _PENDING_REPLACE in nxt)
_STOPPED = Denial(Reason.STOPPED, {}, "the engine is stopping: new orders and amends are refused, cancels pass")
_HELD_TYPES = frozenset((OrderType.STOP, OrderType.STOP_LIMIT))  # held by the engine until triggered
_NO_LIMIT_TYPES = frozenset((OrderType.MARKET, OrderType.STOP))
_NO_POST_TIFS = frozenset((TimeInForce.IOC, TimeInForce.FOK))  # never rest a remainder

log = logging.getLogger(__name__)


class NotOwner(PermissionError):
    """A strategy asked to change an order that belongs to another strategy."""

    def __init__(self, client_id: str, owner: str, caller: str) -> None:
        super().__init__(f"order {client_id} belongs to strategy {owner!r}, not {caller!r}")


class OrderEntry:
    """The engine's order path. ``sent_ns`` (client id -> send time) and ``posted`` (ids sent to rest) are
    shared with the venue-event handler, which reads them back."""

    def __init__(
        self, *, engine_id: str, clock_ns: Callable[[], int], risk: RiskEngine, portfolio: Portfolio, oms: OMS,
        bus: MessageBus, audit: AuditLog, router: SmartOrderRouter, instruments: Mapping[int, Instrument],
        venues: Mapping[str, Venue], latency: LatencyRecorder,
    ) -> None:
        self.engine_id = engine_id
        self.incarnation = 1  # a restarted engine takes the next one, so its ids never collide
        self.seq = 0
        self.clock_ns = clock_ns
        self.risk, self.portfolio, self.oms, self.bus, self.audit = risk, portfolio, oms, bus, audit
        self.router, self.instruments, self.venues, self.latency = router, instruments, venues, latency
        self.stops = StopBook(oms, self.send_triggered, instruments)
        self.sent_ns: dict[str, int] = {}
        self.posted: set[str] = set()
        self.orders_out = 0
        # False once the engine stops: new orders and amends are denied STOPPED while it winds down (a
        # strategy reacting to the last fills must not put new orders at the venue); cancels still pass
        self.accepting = True

    # ---------------------------------------------------------------- new orders
    def new_order(
        self, instrument_id: int, side: Side, qty: int, price_ticks: int | None = None,
        ord_type: OrderType = OrderType.LIMIT, tif: TimeInForce = TimeInForce.GTC, **kw: Any,
    ) -> Order:
        """A new INITIALIZED order with a fresh client id (unique across restarts); ``price_ticks`` (and a
        ``stop_ticks`` keyword) in integer ticks of the instrument."""
        self.seq += 1
        return Order(f"{self.engine_id}.{self.incarnation}.{self.seq}", instrument_id, Side(side), qty, price_ticks,
                     ord_type, tif, ts_ns=self.clock_ns(), **kw)

    def submit(self, order: Order) -> list[Order]:
        """Risk-check, route and send an order. Returns the orders created (DENIED, one, or sweep children).

        An order with a ``trace_id`` (entered through the API) logs its outcome with that id; the others log
        nothing here (this is the per-order path of every strategy)."""
        out = self._submit(order)
        if order.trace_id is not None:
            log.info("order entry: %s -> %s", order.client_id, ", ".join(f"{o.client_id} {o.status.value}" for o in out),
                     extra={"trace_id": order.trace_id, "client_id": order.client_id})
        return out

    def _submit(self, order: Order) -> list[Order]:
        now = self.clock_ns()
        denial = (self.risk.check(order, self.portfolio.marks.get(order.instrument_id), now) if self.accepting
                  else _STOPPED)
        self.oms.add(order)
        if denial is not None:
            self.oms.transition(order, OrderStatus.DENIED, now, denial.reason.value, values=denial.values)
            self.bus.publish("risk", {"event": "denied", "client_id": order.client_id, **denial.to_dict()})
            return [order]
        if order.ord_type in _HELD_TYPES:
            self.stops.hold(order, now)
            return [order]
        return self._route(order, now)

    def _route(self, order: Order, now: int) -> list[Order]:
        inst = self.instruments[order.instrument_id]
        limit = None if order.ord_type in _NO_LIMIT_TYPES else order.price_ticks
        children = self.router.route(order.client_id, order.instrument_id, order.side, order.qty, limit, inst.multiplier,
                                     tick_size=inst.tick_size, allow_post=order.tif not in _NO_POST_TIFS)
        if not children:
            self.oms.transition(order, OrderStatus.SUBMITTED, now)
            self.oms.transition(order, OrderStatus.REJECTED, now, "no_venue")
            return [order]
        if len(children) == 1:
            c = children[0]
            self._send(order, c.venue, c.mode, now)
            return [order]
        # a sweep: the parent becomes child orders, one per venue; the parent itself is not sent
        del self.oms.orders[order.client_id]
        out = []
        for k, c in enumerate(children, 1):
            child = Order(
                f"{order.client_id}/{k}", order.instrument_id, order.side, c.qty, order.price_ticks, order.ord_type,
                order.tif if c.mode == "post" else (TimeInForce.IOC if order.tif == TimeInForce.GTC else order.tif),
                strategy_id=order.strategy_id, post_only=order.post_only, reduce_only=order.reduce_only,
                expire_ns=order.expire_ns, ts_ns=now, parent_id=order.client_id, trace_id=order.trace_id,
            )
            self.oms.add(child)
            self._send(child, c.venue, c.mode, now)
            out.append(child)
        return out

    def _send(self, order: Order, venue: str, mode: str, now: int) -> None:
        order.venue = venue
        self.oms.transition(order, _SUBMITTED, now, venue=venue, mode=mode)
        self.sent_ns[order.client_id] = now
        if mode == "post":
            self.posted.add(order.client_id)
        self.venues[venue].submit(order, now)
        self.orders_out += 1
        lat = self.latency
        if lat.t0:
            lat.record()

    def send_triggered(self, order: Order, ref: float, now: int) -> None:
        """A held stop whose trigger (``ref``, currency) traded: it goes to one venue as a market/limit order.
        Its state stays ACCEPTED (the engine accepted it), so the venue's ack changes nothing and its fills
        apply as usual."""
        iid = order.instrument_id
        inst = self.instruments[iid]
        order.ord_type = OrderType.MARKET if order.ord_type == OrderType.STOP else OrderType.LIMIT
        limit = order.price_ticks if order.ord_type == OrderType.LIMIT else None
        children = self.router.route(order.client_id, iid, order.side, order.qty, limit, inst.multiplier,
                                     tick_size=inst.tick_size)
        venue = children[0].venue if children else next(iter(self.venues))
        order.venue = venue
        self.audit.append(now, "order", order.client_id, {"stop_triggered": ref, "venue": venue})
        self.sent_ns[order.client_id] = now
        self.venues[venue].submit(order, now)
        self.orders_out += 1
        if self.latency.t0:  # a triggered stop is an order caused by this market event: timed like the others
            self.latency.record()

    # ---------------------------------------------------------------- amends
    def amend(self, client_id: str, qty: int, price_ticks: int, owner: str | None = None) -> Denial | None:
        """Change a live order's total quantity and limit (integer ticks; risk-checked like a new order). Returns the
        denial, or None when sent or when the order can no longer be amended (closed, or a cancel/replace
        already pending). ``owner``: the strategy that must own the order (else :class:`NotOwner`)."""
        order = self.oms.orders.get(client_id)
        return None if order is None else self.amend_many(((order, qty, price_ticks),), owner)[0]

    def amend_many(
        self, changes: Sequence[tuple[Order, int, int]], owner: str | None = None,
    ) -> list[Denial | None]:
        """Amend several live orders at once (a mass quote), ``(order, new total qty, new limit in integer
        ticks)`` each. Returns, for each change, its denial or None, as :meth:`amend`. The passing ones go
        to each venue in one :meth:`Venue.amend_many` call, timed when it has returned; a venue call that
        raises leaves its orders untouched (nothing was sent). ``owner`` as in :meth:`amend`."""
        now = self.clock_ns()
        out: list[Denial | None] = [None] * len(changes)
        if not changes:
            return out
        venue = changes[0][0].venue
        one_venue = True
        where: Sequence[int] = range(len(changes))
        todo: Sequence[tuple[Order, int, int]] = changes
        for order, _, _ in changes:  # the common case: every order amendable, all on one venue
            if owner is not None and order.strategy_id != owner:
                raise NotOwner(order.client_id, order.strategy_id, owner)
            if order.venue != venue:
                one_venue = False
            if order.status not in _AMENDABLE and todo is changes:
                where = [k for k, c in enumerate(changes) if c[0].status in _AMENDABLE]
                todo = [changes[k] for k in where]
        if not todo:
            denials: list[Denial | None] = []
        elif self.accepting:
            denials = self.risk.check_amends(todo, self.portfolio.marks, now)
        else:
            denials = [_STOPPED] * len(todo)
        if one_venue and todo is changes and denials.count(None) == len(changes):
            self._send_amends(((venue, changes),), now)
            return out
        by_venue: dict[str, list[tuple[Order, int, int]]] = {}
        for k, item, denial in zip(where, todo, denials, strict=True):
            if denial is None:
                by_venue.setdefault(item[0].venue, []).append(item)
            else:
                out[k] = denial
                cid = item[0].client_id
                self.audit.append(now, "risk", cid, {"amend_denied": denial.to_dict()})
                self.bus.publish("risk", {"event": "amend_denied", "client_id": cid, **denial.to_dict()})
        self._send_amends(by_venue.items(), now)
        return out

    def _send_amends(self, groups: Iterable[tuple[str, Sequence[tuple[Order, int, int]]]], now: int) -> None:
        # risk-checked amends, grouped by venue: hand every group over (each timed as its call returns), then
        # the bookkeeping of all of them; a venue that raises stops here, its group and the later ones unsent
        sent_groups = []
        lat = self.latency
        try:
            for venue, group in groups:
                self.venues[venue].amend_many(group, now)
                if lat.t0:
                    lat.record(len(group))
                sent_groups.append(group)
        finally:
            sent = self.sent_ns
            for group in sent_groups:
                self.orders_out += len(group)
                for order, _, _ in group:
                    sent[order.client_id] = now
                self.oms.transition_many([(o, {"new_qty": q, "new_price_ticks": p}) for o, q, p in group], _PENDING_REPLACE, now)

    # ---------------------------------------------------------------- cancels
    def cancel(self, client_id: str, owner: str | None = None) -> bool:
        """Request a cancel; True when a request was sent (or a held stop was canceled at once). With
        ``owner``, another strategy's order is left alone (False)."""
        now = self.clock_ns()
        order = self.oms.get(client_id)
        if order is None or not order.can(OrderStatus.PENDING_CANCEL):
            return False
        if owner is not None and order.strategy_id != owner:
            return False
        if order.venue == "engine":  # a held stop
            self.stops.cancel(order, now)
            return True
        self.oms.transition(order, OrderStatus.PENDING_CANCEL, now)
        self.venues[order.venue].cancel(order, now)
        return True

    def cancel_all(self, strategy_id: str | None = None, instrument_id: int | None = None) -> int:
        """Cancel every open order (optionally of one strategy / instrument); returns how many."""
        n = 0
        for o in self.oms.open_orders(instrument_id, strategy_id):
            n += self.cancel(o.client_id)
        return n
