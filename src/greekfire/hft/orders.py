"""Pre-allocated order management for the HFT engine: a pool of order records in one structured array.

:class:`OrderPool` holds ``capacity`` rows of :data:`ORDER_DTYPE` allocated once, and a free list of slots.
Nothing on the hot path (alloc, sent, ack, fill, cancel, free) creates a lasting Python object: every
field is written in place. Statuses are the trading core's :class:`~greekfire.trading.orders.OrderStatus`,
stored as a one-byte code (:data:`STATUS`), and move only along the trading core's own table
(:data:`greekfire.trading.orders.TRANSITIONS`, read once into a lookup of codes); an illegal move raises
:class:`~greekfire.trading.orders.IllegalTransition` and leaves the row as it was.

Each row carries latency stamps in nanoseconds (``time.perf_counter_ns`` or any one clock the caller
uses): signal, risk, sent, ack and first fill. Denial reasons are one-byte codes that map 1:1 to
:class:`~greekfire.trading.denials.Reason` (:func:`reason_code`, :func:`reason_of`).

Example::

    pool = OrderPool(1024)
    s = pool.alloc(instrument=3, side=1, qty=100, price_ticks=10_050, t_signal_ns=t0)
    pool.on_sent(s, t1); pool.on_ack(s, t2); pool.on_fill(s, 40, 10_050, t3)
    pool.status(s)  # OrderStatus.PARTIALLY_FILLED
"""

from __future__ import annotations

from typing import Any

import numpy as np

from greekfire.core.errors import GreekfireError
from greekfire.trading.denials import Reason
from greekfire.trading.orders import OPEN, TERMINAL, TRANSITIONS, FillProblem, IllegalTransition, OrderStatus

__all__ = [
    "ORDER_DTYPE",
    "STATUS",
    "STATUS_CODE",
    "VENUE_REJECT",
    "OrderPool",
    "PoolError",
    "reason_code",
    "reason_of",
]

ORDER_DTYPE = np.dtype(
    [
        ("order_id", "u8"),  # unique per pool, never 0 for a live row (slot = order_id % capacity)
        ("instrument", "i4"),
        ("side", "i1"),  # +1 buy, -1 sell
        ("qty", "i4"),  # total order quantity, units
        ("price_ticks", "i8"),  # limit, integer ticks (0: market)
        ("status", "u1"),  # OrderStatus code, see STATUS
        ("filled", "i4"),  # cumulative filled quantity, units
        ("reason", "u1"),  # denial / reject reason code (reason_of), 0: none
        ("t_signal_ns", "i8"),
        ("t_risk_ns", "i8"),
        ("t_sent_ns", "i8"),
        ("t_ack_ns", "i8"),
        ("t_fill_ns", "i8"),  # first fill
        ("avg_px", "f8"),  # average fill price, ticks
        ("tif", "u1"),  # trading TimeInForce code (0 GTC, 1 DAY, 2 IOC, 3 FOK)
    ]
)
"""One order record (85 bytes, packed). The first 13 fields are the shared HFT interface; ``avg_px`` and
``tif`` come after them."""

STATUS: tuple[OrderStatus, ...] = tuple(OrderStatus)
"""Status code -> OrderStatus (code 0 is INITIALIZED, what a zeroed row holds)."""
STATUS_CODE: dict[OrderStatus, int] = {s: i for i, s in enumerate(STATUS)}

# the trading core's transition table as codes: _LEGAL[old][new]
_LEGAL: tuple[tuple[bool, ...], ...] = tuple(tuple(t in TRANSITIONS[s] for t in STATUS) for s in STATUS)
_TERMINAL = tuple(s in TERMINAL for s in STATUS)
OPEN_CODES = np.array(sorted(STATUS_CODE[s] for s in OPEN), dtype=np.uint8)

_INIT = STATUS_CODE[OrderStatus.INITIALIZED]
_DENIED = STATUS_CODE[OrderStatus.DENIED]
_SUBMITTED = STATUS_CODE[OrderStatus.SUBMITTED]
_ACCEPTED = STATUS_CODE[OrderStatus.ACCEPTED]
_REJECTED = STATUS_CODE[OrderStatus.REJECTED]
_PARTIAL = STATUS_CODE[OrderStatus.PARTIALLY_FILLED]
_FILLED = STATUS_CODE[OrderStatus.FILLED]
_PCANCEL = STATUS_CODE[OrderStatus.PENDING_CANCEL]
_CANCELED = STATUS_CODE[OrderStatus.CANCELED]
_PREPLACE = STATUS_CODE[OrderStatus.PENDING_REPLACE]
_EXPIRED = STATUS_CODE[OrderStatus.EXPIRED]

_REASONS: tuple[Reason, ...] = tuple(Reason)
VENUE_REJECT = 255
"""Reason code of an order the venue rejected (its own reason travels with the gateway's event)."""


def reason_code(reason: Reason) -> int:
    """The one-byte code of a trading-core reason (1..len(Reason); 0 means none)."""
    return _REASONS.index(Reason(reason)) + 1


def reason_of(code: int) -> Reason | None:
    """The trading-core reason of a code (None for 0 and :data:`VENUE_REJECT`)."""
    return _REASONS[code - 1] if 0 < code <= len(_REASONS) else None


class PoolError(GreekfireError):
    """The pool is full, or a slot was freed while its order is still working."""


class OrderPool:
    """``capacity`` order records allocated once (see the module docstring).

    ``orders`` is the structured array itself (a reader may take views of it); rows whose slot is free keep
    their last values but have ``order_id`` 0.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        if capacity <= 0:
            raise PoolError(f"capacity={capacity} must be > 0")
        self.capacity = capacity
        self.orders = np.zeros(capacity, ORDER_DTYPE)
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # a stack: slot 0 is handed out first
        self._top = capacity
        self._seq = 0
        o = self.orders
        # one view per field, made once: indexing a view is the cheapest write numpy offers from Python
        self._oid, self._inst, self._side, self._qty = o["order_id"], o["instrument"], o["side"], o["qty"]
        self._px, self._st, self._filled, self._reason = o["price_ticks"], o["status"], o["filled"], o["reason"]
        self._t_sig, self._t_risk, self._t_sent = o["t_signal_ns"], o["t_risk_ns"], o["t_sent_ns"]
        self._t_ack, self._t_fill, self._avg, self._tif = o["t_ack_ns"], o["t_fill_ns"], o["avg_px"], o["tif"]

    # ---------------------------------------------------------------- slots
    def __len__(self) -> int:
        """Slots in use."""
        return self.capacity - self._top

    @property
    def available(self) -> int:
        """Free slots."""
        return self._top

    def alloc(
        self, instrument: int, side: int, qty: int, price_ticks: int, t_signal_ns: int = 0, tif: int = 0
    ) -> int:
        """Take a free slot for a new order (INITIALIZED) and return it. ``qty`` in units, ``price_ticks`` in
        ticks (0: market), ``t_signal_ns`` the signal's stamp (ns). PoolError when no slot is free."""
        top = self._top
        if top == 0:
            raise PoolError(f"order pool full ({self.capacity} slots in use)")
        top -= 1
        self._top = top
        slot = int(self._free[top])
        self._seq += 1
        # the whole row in one write (the fields in ORDER_DTYPE's order)
        self.orders[slot] = (self._seq * self.capacity + slot, instrument, side, qty, price_ticks, _INIT, 0, 0,
                             t_signal_ns, 0, 0, 0, 0, 0.0, tif)
        return slot

    def free(self, slot: int) -> None:
        """Give a slot back. Its order must be closed (terminal) or never sent (INITIALIZED): PoolError
        otherwise, and for a slot that is already free."""
        st = int(self._st[slot])
        if self._oid[slot] == 0:
            raise PoolError(f"slot {slot} is already free")
        if not (_TERMINAL[st] or st == _INIT):
            raise PoolError(f"slot {slot}: order {int(self._oid[slot])} is still {STATUS[st].value}")
        self._oid[slot] = 0
        self._free[self._top] = slot
        self._top += 1

    def slot_of(self, order_id: int) -> int:
        """The slot holding ``order_id``, or -1 when that order's slot has been freed (or never was)."""
        if order_id <= 0:
            return -1
        slot = order_id % self.capacity
        return slot if self._oid[slot] == order_id else -1

    # ---------------------------------------------------------------- state machine
    def _move(self, slot: int, new: int, old: int = -1) -> None:
        if old < 0:
            old = int(self._st[slot])
        if not _LEGAL[old][new]:
            raise IllegalTransition(str(int(self._oid[slot])), STATUS[old], STATUS[new])
        self._st[slot] = new

    def _resting(self, slot: int) -> int:
        return _PARTIAL if self._filled[slot] > 0 else _ACCEPTED

    def stamp_risk(self, slot: int, t_ns: int) -> None:
        """The order passed pre-trade risk at ``t_ns``."""
        self._t_risk[slot] = t_ns

    def deny(self, slot: int, reason: int, t_ns: int = 0) -> None:
        """Pre-trade risk refused it: INITIALIZED -> DENIED with reason code ``reason``."""
        self._move(slot, _DENIED)
        self._reason[slot] = reason
        self._t_risk[slot] = t_ns

    def on_sent(self, slot: int, t_ns: int) -> None:
        """Sent to the venue: INITIALIZED -> SUBMITTED."""
        self._move(slot, _SUBMITTED)
        self._t_sent[slot] = t_ns

    def on_ack(self, slot: int, t_ns: int) -> None:
        """The venue accepted it: SUBMITTED -> ACCEPTED (an order already pending a cancel or replace stays
        pending; the stamp is taken either way)."""
        st = int(self._st[slot])
        if st != _PCANCEL and st != _PREPLACE:
            self._move(slot, _ACCEPTED, st)
        self._t_ack[slot] = t_ns

    def on_fill(self, slot: int, qty: int, price_ticks: int, t_ns: int) -> int:
        """Apply one fill (``qty`` units at ``price_ticks``): cumulative quantity, average price, status
        (PARTIALLY_FILLED or FILLED; an order pending a cancel or replace stays pending until its answer
        unless the fill completes it). Returns the quantity still working. FillProblem (``bad_fill``,
        ``overfill``, ``fill_on_closed``) leaves the row untouched."""
        st = int(self._st[slot])
        filled = int(self._filled[slot])
        total = int(self._qty[slot])
        if qty <= 0 or filled + qty > total or _TERMINAL[st]:
            kind = "bad_fill" if qty <= 0 else ("fill_on_closed" if _TERMINAL[st] else "overfill")
            raise FillProblem(kind, str(int(self._oid[slot])), "-", f"qty={qty} filled={filled} of {total}")
        new_filled = filled + qty
        new = _FILLED if new_filled == total else _PARTIAL
        if new == _FILLED or (st != _PCANCEL and st != _PREPLACE):
            self._move(slot, new, st)
        self._avg[slot] = (self._avg[slot] * filled + price_ticks * qty) / new_filled
        self._filled[slot] = new_filled
        if filled == 0:
            self._t_fill[slot] = t_ns
        return total - new_filled

    def on_cancel_request(self, slot: int) -> None:
        """A cancel was sent: -> PENDING_CANCEL."""
        self._move(slot, _PCANCEL)

    def on_replace_request(self, slot: int) -> None:
        """A replace was sent: -> PENDING_REPLACE."""
        self._move(slot, _PREPLACE)

    def on_replaced(self, slot: int, qty: int, price_ticks: int) -> None:
        """The venue replaced it: new total ``qty`` (units) and limit (ticks); back to ACCEPTED or
        PARTIALLY_FILLED (an order pending a cancel stays pending)."""
        if int(self._st[slot]) != _PCANCEL:
            self._move(slot, self._resting(slot))
        self._qty[slot] = qty
        self._px[slot] = price_ticks

    def on_cancel(self, slot: int, t_ns: int = 0, decrement: int = 0) -> None:
        """The venue canceled it: -> CANCELED. With ``decrement`` smaller than the working quantity only
        that much is taken off (a partial cancel: the order keeps working)."""
        leaves = int(self._qty[slot]) - int(self._filled[slot])
        if 0 < decrement < leaves:
            self._qty[slot] -= decrement
            if int(self._st[slot]) == _PCANCEL:
                self._move(slot, self._resting(slot))
            return
        self._move(slot, _CANCELED)

    def on_reject(self, slot: int, reason: int = VENUE_REJECT, t_ns: int = 0) -> None:
        """The venue refused the order: SUBMITTED -> REJECTED (reason code kept)."""
        self._move(slot, _REJECTED)
        self._reason[slot] = reason
        if t_ns:
            self._t_ack[slot] = t_ns

    def on_cancel_reject(self, slot: int) -> None:
        """The venue refused a cancel or replace: a pending order returns to ACCEPTED / PARTIALLY_FILLED
        (an order that closed meanwhile stays closed)."""
        st = int(self._st[slot])
        if st in (_PCANCEL, _PREPLACE):
            self._move(slot, self._resting(slot), st)

    def on_expire(self, slot: int) -> None:
        """The venue expired it: -> EXPIRED."""
        self._move(slot, _EXPIRED)

    # ---------------------------------------------------------------- queries (not the hot path)
    def status(self, slot: int) -> OrderStatus:
        """The slot's status."""
        return STATUS[int(self._st[slot])]

    def leaves(self, slot: int) -> int:
        """Quantity still working (0 once closed)."""
        st = int(self._st[slot])
        return 0 if _TERMINAL[st] else int(self._qty[slot]) - int(self._filled[slot])

    def is_open(self, slot: int) -> bool:
        """Whether the order is working at the venue (SUBMITTED, ACCEPTED, PARTIALLY_FILLED, PENDING_*)."""
        return STATUS[int(self._st[slot])] in OPEN and self._oid[slot] != 0

    def open_slots(self) -> np.ndarray:
        """Slots of every working order (int64 array; allocates: for cancel-all and reports)."""
        live = (self._oid != 0) & np.isin(self._st, OPEN_CODES)
        return np.flatnonzero(live)

    def latency(self, slot: int) -> dict[str, int]:
        """Stage latencies of one order in ns (0 where a stage has not happened): risk, send, ack, fill
        (each from the previous stamp; fill from the ack) and tick-to-ack (signal -> ack)."""
        r = self.orders[slot]
        sig, risk, sent, ack, fill = (int(r[k]) for k in ("t_signal_ns", "t_risk_ns", "t_sent_ns", "t_ack_ns", "t_fill_ns"))

        def d(a: int, b: int) -> int:
            return b - a if a and b else 0

        return {"risk": d(sig, risk), "send": d(risk or sig, sent), "ack": d(sent, ack), "fill": d(ack, fill),
                "signal_to_ack": d(sig, ack)}

    def row(self, slot: int) -> dict[str, Any]:
        """One row as plain data (status as its name)."""
        r = self.orders[slot]
        out: dict[str, Any] = {k: r[k].item() for k in ORDER_DTYPE.names or ()}
        out["status"] = STATUS[out["status"]].value
        return out
