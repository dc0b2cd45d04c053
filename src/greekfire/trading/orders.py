"""Orders and their state machine.

Every allowed transition is in one table, :data:`TRANSITIONS`; anything else raises
:class:`IllegalTransition`. An order never changes state on its own: the OMS calls :meth:`Order.transition`
(and :meth:`Order.apply_fill`), then publishes the returned event and writes it to the audit log.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from greekfire.core.errors import DataError, GreekfireError
from greekfire.trading.model import Fill, OrderType, Side, TimeInForce


class OrderStatus(StrEnum):
    INITIALIZED = "INITIALIZED"
    DENIED = "DENIED"
    SUBMITTED = "SUBMITTED"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    PENDING_REPLACE = "PENDING_REPLACE"
    EXPIRED = "EXPIRED"


S = OrderStatus

# The whole state machine. A venue may fill or cancel an order while our cancel/replace request is in
# flight, hence the fill/cancel/expire exits from the PENDING_* states; a refused cancel or replace returns
# the order to ACCEPTED or PARTIALLY_FILLED (whichever matches its filled quantity).
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.INITIALIZED: frozenset({S.DENIED, S.SUBMITTED}),
    S.SUBMITTED: frozenset({S.ACCEPTED, S.REJECTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED, S.PENDING_CANCEL}),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE, S.CANCELED, S.EXPIRED}),
    S.PARTIALLY_FILLED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE, S.CANCELED, S.EXPIRED}
    ),
    S.PENDING_CANCEL: frozenset({S.CANCELED, S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.EXPIRED}),
    S.PENDING_REPLACE: frozenset(
        {S.ACCEPTED, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED, S.PENDING_CANCEL}
    ),
    S.DENIED: frozenset(),
    S.REJECTED: frozenset(),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.EXPIRED: frozenset(),
}

TERMINAL: frozenset[OrderStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
OPEN: frozenset[OrderStatus] = frozenset(
    {S.SUBMITTED, S.ACCEPTED, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE}
)


_PENDING: frozenset[OrderStatus] = frozenset({S.PENDING_CANCEL, S.PENDING_REPLACE})


class IllegalTransition(GreekfireError):
    """An order was asked to move along an edge that is not in :data:`TRANSITIONS`."""

    def __init__(self, client_id: str, old: OrderStatus, new: OrderStatus) -> None:
        self.client_id, self.old, self.new = client_id, old, new
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[old])) or "none (terminal)"
        super().__init__(f"order {client_id}: illegal transition {old.value} -> {new.value} (allowed: {allowed})")


class FillProblem(GreekfireError):
    """A fill that must not be applied: ``kind`` is 'duplicate_fill', 'overfill' or 'fill_on_closed'."""

    def __init__(self, kind: str, client_id: str, fill_id: str, detail: str) -> None:
        self.kind, self.client_id, self.fill_id = kind, client_id, fill_id
        super().__init__(f"order {client_id}: {kind} {fill_id}: {detail}")


class Order:
    """A mutable order with an explicit state machine. Quantities in units; the limit (``price_ticks``) and
    stop (``stop_ticks``) prices in integer ticks of the instrument (``Instrument.from_ticks`` gives currency);
    the average fill price ``avg_px`` and ``fees`` in currency.

    ``client_id`` is ours (unique per engine); ``venue_order_id`` the venue's once accepted.
    """

    __slots__ = (
        "client_id", "instrument_id", "strategy_id", "side", "qty", "ord_type", "price_ticks", "stop_ticks", "tif",
        "expire_ns", "post_only", "reduce_only", "status", "filled_qty", "avg_px", "fees", "venue",
        "venue_order_id", "fill_ids", "ts_init_ns", "ts_last_ns", "parent_id", "reason", "_prev_open", "trace_id",
    )

    def __init__(
        self,
        client_id: str,
        instrument_id: int,
        side: Side,
        qty: int,
        price_ticks: int | None = None,
        ord_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.GTC,
        *,
        strategy_id: str = "",
        stop_ticks: int | None = None,
        expire_ns: int = 0,
        post_only: bool = False,
        reduce_only: bool = False,
        ts_ns: int = 0,
        parent_id: str = "",
        trace_id: str | None = None,
    ) -> None:
        self.client_id = client_id
        self.instrument_id = instrument_id
        self.strategy_id = strategy_id
        self.side = side
        self.qty = qty
        self.ord_type = ord_type
        self.price_ticks = price_ticks
        self.stop_ticks = stop_ticks
        self.tif = tif
        self.expire_ns = expire_ns
        self.post_only = post_only
        self.reduce_only = reduce_only
        self.status = OrderStatus.INITIALIZED
        self.filled_qty = 0
        self.avg_px = 0.0
        self.fees = 0.0
        self.venue = ""
        self.venue_order_id = ""
        self.fill_ids: set[str] = set()
        self.ts_init_ns = ts_ns
        self.ts_last_ns = ts_ns
        self.parent_id = parent_id
        self.reason = ""
        self._prev_open = OrderStatus.INITIALIZED
        #: the request that entered the order (the API's X-Request-ID); its log lines carry it as trace_id
        self.trace_id = trace_id

    @property
    def leaves_qty(self) -> int:
        """Quantity still working (0 once the order is closed)."""
        return 0 if self.status in TERMINAL else self.qty - self.filled_qty

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def signed_qty(self) -> int:
        return int(self.side) * self.qty

    def can(self, new: OrderStatus) -> bool:
        """True when ``status -> new`` is an allowed transition."""
        return new in TRANSITIONS[self.status]

    def transition(self, new: OrderStatus, ts_ns: int = 0, reason: str = "") -> tuple[OrderStatus, OrderStatus]:
        """Move to ``new`` or raise :class:`IllegalTransition`; returns (old, new)."""
        old = self.status
        if new not in TRANSITIONS[old]:
            raise IllegalTransition(self.client_id, old, new)
        if new in _PENDING and old not in _PENDING:
            self._prev_open = old
        self.status = new
        self.ts_last_ns = ts_ns or self.ts_last_ns
        if reason:
            self.reason = reason
        return old, new

    def resting_status(self) -> OrderStatus:
        """The state a refused cancel/replace returns to (by filled quantity)."""
        return OrderStatus.PARTIALLY_FILLED if self.filled_qty > 0 else OrderStatus.ACCEPTED

    def check_fill(self, fill: Fill) -> None:
        """Raise :class:`FillProblem` for a duplicate, an overfill, or a fill on a closed order."""
        if fill.fill_id in self.fill_ids:
            raise FillProblem("duplicate_fill", self.client_id, fill.fill_id, "already applied")
        if fill.qty <= 0:
            raise FillProblem("bad_fill", self.client_id, fill.fill_id, f"qty={fill.qty} must be > 0")
        if self.filled_qty + fill.qty > self.qty:
            raise FillProblem(
                "overfill", self.client_id, fill.fill_id,
                f"filled {self.filled_qty} + {fill.qty} > order qty {self.qty}",
            )
        if self.status in TERMINAL:
            raise FillProblem("fill_on_closed", self.client_id, fill.fill_id, f"order is {self.status.value}")

    def apply_fill(self, fill: Fill) -> tuple[OrderStatus, OrderStatus]:
        """Check then apply one fill (quantity, average price, fees, state); returns (old, new)."""
        self.check_fill(fill)
        new_filled = self.filled_qty + fill.qty
        self.avg_px = (self.avg_px * self.filled_qty + fill.price * fill.qty) / new_filled
        self.filled_qty = new_filled
        self.fees += fill.fee
        self.fill_ids.add(fill.fill_id)
        new = OrderStatus.FILLED if new_filled == self.qty else OrderStatus.PARTIALLY_FILLED
        if self.status in (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE) and new != OrderStatus.FILLED:
            # still waiting for the cancel/replace answer: stay pending, remember where to fall back to
            self._prev_open = OrderStatus.PARTIALLY_FILLED
            return self.status, self.status
        return self.transition(new, fill.ts_ns)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for snapshots and the API (prices in ticks: ``price_ticks``, ``stop_ticks``)."""
        return {
            "client_id": self.client_id, "instrument_id": self.instrument_id, "strategy_id": self.strategy_id,
            "side": int(self.side), "qty": self.qty, "ord_type": int(self.ord_type),
            "price_ticks": self.price_ticks, "stop_ticks": self.stop_ticks, "tif": int(self.tif), "expire_ns": self.expire_ns,
            "post_only": self.post_only, "reduce_only": self.reduce_only, "status": self.status.value,
            "filled_qty": self.filled_qty, "avg_px": self.avg_px, "fees": self.fees, "venue": self.venue,
            "venue_order_id": self.venue_order_id, "fill_ids": sorted(self.fill_ids),
            "ts_init_ns": self.ts_init_ns, "ts_last_ns": self.ts_last_ns, "parent_id": self.parent_id,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], tick_size: float | None = None) -> Order:
        """Rebuild an order from :meth:`to_dict` output (state restored without re-running transitions).

        A row of the older format (``price`` / ``stop_price`` in currency) needs the instrument's
        ``tick_size`` to be read: its prices are converted to the nearest tick."""
        if "price_ticks" in d:
            price, stop = d["price_ticks"], d.get("stop_ticks")
        elif tick_size is None:
            raise DataError("tick_size", tick_size, "a snapshot row with currency prices needs its tick size",
                            d.get("client_id"))
        else:
            price, stop = d.get("price"), d.get("stop_price")
            price = None if price is None else round(price / tick_size)
            stop = None if stop is None else round(stop / tick_size)
        o = cls(
            d["client_id"], int(d["instrument_id"]), Side(d["side"]), int(d["qty"]), price,
            OrderType(d["ord_type"]), TimeInForce(d["tif"]), strategy_id=d.get("strategy_id", ""),
            stop_ticks=stop, expire_ns=int(d.get("expire_ns", 0)),
            post_only=bool(d.get("post_only")), reduce_only=bool(d.get("reduce_only")),
            ts_ns=int(d.get("ts_init_ns", 0)), parent_id=d.get("parent_id", ""),
        )
        o.status = OrderStatus(d["status"])
        o.filled_qty = int(d["filled_qty"])
        o.avg_px = float(d["avg_px"])
        o.fees = float(d.get("fees", 0.0))
        o.venue = d.get("venue", "")
        o.venue_order_id = d.get("venue_order_id", "")
        o.fill_ids = set(d.get("fill_ids", ()))
        o.ts_last_ns = int(d.get("ts_last_ns", 0))
        o.reason = d.get("reason", "")
        return o

    def __repr__(self) -> str:
        return (
            f"Order({self.client_id} {self.side.name} {self.qty}@{self.price_ticks}t inst={self.instrument_id} "
            f"{self.status.value} filled={self.filled_qty})"
        )
