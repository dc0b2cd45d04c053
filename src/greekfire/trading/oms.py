"""Order management: live orders by id, instrument and strategy; transitions; fills; reconciliation.

The OMS is the only component that moves an order's state. Each transition is published on the bus topic
``orders`` as an :class:`~greekfire.trading.model.OrderEvent` and appended to the audit log. Fill problems
(duplicate, overfill, fill on a closed order) are counted, published on ``risk`` and audited, and the fill
is not applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from greekfire.core.metrics import counter
from greekfire.trading.audit import AuditLog
from greekfire.trading.bus import MessageBus
from greekfire.trading.model import Fill, OrderEvent, VenueEvent, VenueOrderState
from greekfire.trading.orders import OPEN, FillProblem, Order, OrderStatus

log = logging.getLogger(__name__)

ORDERS = counter("greekfire_trading_orders", "order transitions", ["status"])
FILL_PROBLEMS = counter("greekfire_trading_fill_problems", "fills detected as wrong and not applied", ["kind"])


class OMS:
    """Order book of the engine (ours, not the exchange's)."""

    def __init__(self, bus: MessageBus, audit: AuditLog) -> None:
        self.bus = bus
        self.audit = audit
        self.orders: dict[str, Order] = {}
        self._open: dict[str, Order] = {}
        self._by_instrument: dict[int, dict[str, Order]] = {}
        self._by_strategy: dict[str, dict[str, Order]] = {}
        self.fill_problems: dict[str, int] = {}
        self.transitions = 0
        # counted in plain ints on the hot path, copied to Prometheus by publish_metrics() on the timer
        self.status_counts: dict[str, int] = {}
        self._published: dict[str, int] = {}
        # called with (client id, new status) after every transition, before the bus; the engine's own
        # bookkeeping goes here, so an order event object is built only when someone subscribes to ``orders``
        self.on_change: Callable[[str, str], None] | None = None

    # ---------------------------------------------------------------- registry
    def add(self, order: Order) -> None:
        """Register a new order (INITIALIZED); a duplicate client id raises ValueError."""
        if order.client_id in self.orders:
            raise ValueError(f"duplicate client_id {order.client_id!r}")
        self.orders[order.client_id] = order

    def get(self, client_id: str) -> Order | None:
        return self.orders.get(client_id)

    def open_orders(self, instrument_id: int | None = None, strategy_id: str | None = None) -> list[Order]:
        """Live orders, optionally of one instrument and/or one strategy."""
        if instrument_id is not None:
            src: Iterable[Order] = self._by_instrument.get(instrument_id, {}).values()
        elif strategy_id is not None:
            src = self._by_strategy.get(strategy_id, {}).values()
        else:
            src = self._open.values()
        return [
            o for o in src
            if (strategy_id is None or o.strategy_id == strategy_id) and (instrument_id is None or o.instrument_id == instrument_id)
        ]

    def _index(self, order: Order) -> None:
        if order.is_open:
            if order.client_id not in self._open:
                self._open[order.client_id] = order
                self._by_instrument.setdefault(order.instrument_id, {})[order.client_id] = order
                self._by_strategy.setdefault(order.strategy_id, {})[order.client_id] = order
        elif order.client_id in self._open:
            del self._open[order.client_id]
            self._by_instrument[order.instrument_id].pop(order.client_id, None)
            self._by_strategy[order.strategy_id].pop(order.client_id, None)

    # ---------------------------------------------------------------- state
    def transition(self, order: Order, new: OrderStatus, ts_ns: int, reason: str = "", **info: Any) -> OrderEvent | None:
        """Move ``order`` to ``new`` (raises IllegalTransition), audit it and publish it on ``orders``.

        Returns the published event, or None when nothing subscribes to ``orders`` (then none is built)."""
        old, _ = order.transition(new, ts_ns, reason)
        return self._emit(order, old, ts_ns, reason, info)

    def transition_many(self, moves: list[tuple[Order, dict[str, Any]]], new: OrderStatus, ts_ns: int) -> None:
        """Move several orders to the same state ``new`` at ``ts_ns`` (a mass quote: PENDING_REPLACE for each
        amend), ``(order, info)`` each. Every one is audited, counted, told to ``on_change`` and published as
        by :meth:`transition`, in one pass. An illegal transition raises IllegalTransition; the orders before
        it have moved and are audited."""
        value = new._value_
        new_open = new in OPEN
        opened = self._open
        on_change = self.on_change
        entries: list[tuple[str, dict[str, Any]]] = []
        infos: list[dict[str, Any]] = []
        try:
            for order, info in moves:
                old = order.transition(new, ts_ns)[0]
                cid = order.client_id
                if new_open != (cid in opened):
                    self._index(order)
                data = {"old": old._value_, "new": value}
                data.update(info)
                entries.append((cid, data))
                infos.append(info)
                if on_change is not None:
                    on_change(cid, value)
        finally:
            n = len(entries)
            if n:
                first = self.audit.append_many(ts_ns, "order", entries)
                self.transitions += n
                self.status_counts[value] = self.status_counts.get(value, 0) + n
            if n and self.bus.has_subscribers("orders"):
                for seq, (cid, data), info in zip(range(first, first + n), entries, infos, strict=True):
                    self.bus.publish("orders", OrderEvent(seq, ts_ns, cid, data["old"], value, info))

    def _emit(self, order: Order, old: OrderStatus, ts_ns: int, reason: str, info: dict[str, Any]) -> OrderEvent | None:
        cid = order.client_id
        status = order.status
        if (status in OPEN) != (cid in self._open):  # only a change between open and closed re-indexes
            self._index(order)
        self.transitions += 1
        if reason:
            info["reason"] = reason
        new = status._value_  # the plain string (the enum's ``value`` property is a slow Python call)
        data = {"old": old._value_, "new": new}
        if info:
            data.update(info)
        seq = self.audit.append(ts_ns, "order", cid, data)
        counts = self.status_counts
        counts[new] = counts.get(new, 0) + 1
        if self.on_change is not None:
            self.on_change(cid, new)
        if not self.bus.has_subscribers("orders"):
            return None
        ev = OrderEvent(seq, ts_ns, cid, data["old"], new, info)
        self.bus.publish("orders", ev)
        return ev

    def apply_fill(self, fill: Fill) -> Order | None:
        """Apply a fill to its order; returns the order, or None when the fill is a problem (not applied)."""
        order = self.orders.get(fill.client_id)
        if order is None:
            self._problem("unknown_order", fill, "no such client id")
            return None
        try:
            old, new = order.apply_fill(fill)
        except FillProblem as exc:
            self._problem(exc.kind, fill, str(exc))
            return None
        info = {"fill_id": fill.fill_id, "qty": fill.qty, "price": fill.price, "filled": order.filled_qty}
        self._emit(order, old, fill.ts_ns, "", info)
        return order

    def _problem(self, kind: str, fill: Fill, detail: str) -> None:
        self.fill_problems[kind] = self.fill_problems.get(kind, 0) + 1
        FILL_PROBLEMS.labels(kind).inc()
        data = {"problem": kind, "fill_id": fill.fill_id, "qty": fill.qty, "price": fill.price, "detail": detail}
        self.audit.append(fill.ts_ns, "fill_problem", fill.client_id, data)
        log.warning("fill not applied: %s", detail, extra={"client_id": fill.client_id, **data})
        self.bus.publish("risk", {"event": "fill_problem", "client_id": fill.client_id, **data})

    def publish_metrics(self) -> None:
        """Add the transitions counted since the last call to the Prometheus counter."""
        for status, n in self.status_counts.items():
            done = self._published.get(status, 0)
            if n > done:
                ORDERS.labels(status).inc(n - done)
                self._published[status] = n

    # ---------------------------------------------------------------- reconciliation
    def reconcile(
        self, venue: str, states: list[VenueOrderState], fills: list[VenueEvent], ts_ns: int
    ) -> dict[str, Any]:
        """Compare our open orders on ``venue`` with the venue's report after a reconnect.

        Returns what was done: ``missing_fills`` (venue fills we had not applied, to be applied by the
        engine), ``closed`` (orders open here but not at the venue: canceled here), ``unknown`` (orders open
        at the venue that we do not know: to be canceled there) and ``qty_mismatch``.
        """
        ours = {o.client_id: o for o in self._open.values() if o.venue == venue}
        theirs = {s.client_id: s for s in states}
        missing = [
            f for f in fills
            if f.client_id in self.orders and f.fill_id not in self.orders[f.client_id].fill_ids
        ]
        unknown = [s.client_id for s in states if s.client_id not in self.orders]
        mismatch = []
        for cid, s in theirs.items():
            o = self.orders.get(cid)
            if o is not None:
                pending = sum(f.qty for f in missing if f.client_id == cid)
                if o.filled_qty + pending != s.cum_qty:
                    mismatch.append({"client_id": cid, "ours": o.filled_qty + pending, "venue": s.cum_qty})
        closed = [cid for cid in ours if cid not in theirs]
        result = {
            "venue": venue, "missing_fills": missing, "closed": closed, "unknown": unknown, "qty_mismatch": mismatch,
        }
        self.audit.append(ts_ns, "reconcile", venue, {
            "missing_fills": [f.fill_id for f in missing], "closed": closed, "unknown": unknown, "qty_mismatch": mismatch,
        })
        log.info(
            "reconciled %s: %d missing fills, %d closed, %d unknown", venue, len(missing), len(closed), len(unknown),
            extra={"venue": venue},
        )
        return result

    # ---------------------------------------------------------------- snapshots
    def snapshot(self, only_open_and_recent: bool = True) -> list[dict[str, Any]]:
        """Orders as plain data (all of them; closed ones are needed to dedup late fills)."""
        return [o.to_dict() for o in self.orders.values()]

    def restore(self, rows: list[dict[str, Any]], tick_sizes: Mapping[int, float] | None = None) -> None:
        """Load orders saved by :meth:`snapshot`; ``tick_sizes`` (instrument id -> tick size) reads rows of
        the older format, whose prices are in currency."""
        ticks = tick_sizes or {}
        for d in rows:
            o = Order.from_dict(d, ticks.get(int(d["instrument_id"])))
            self.orders[o.client_id] = o
            self._index(o)
