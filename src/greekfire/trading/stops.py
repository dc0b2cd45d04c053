"""Stop and stop-limit orders, held by the engine until the reference price trades through the stop.

A held stop is SUBMITTED and ACCEPTED by the engine itself (venue ``"engine"``). On every quote of its
instrument the reference (mid) price, in currency, is compared with each stop of that instrument (its
``stop_ticks`` in currency): a buy stop triggers at or above its stop price, a sell stop at or below. A triggered stop leaves the book and is handed to the
``send`` callback (order entry routes it to a venue as a market or limit order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from greekfire.trading.model import Instrument, Side
from greekfire.trading.oms import OMS
from greekfire.trading.orders import Order, OrderStatus

_BUY = Side.BUY


class StopBook:
    """Held stops by instrument. ``send(order, reference price, now_ns)`` takes a triggered one."""

    def __init__(self, oms: OMS, send: Callable[[Order, float, int], None], instruments: Mapping[int, Instrument]) -> None:
        self.oms = oms
        self.send = send
        self.instruments = instruments
        self.held: dict[int, list[Order]] = {}

    def hold(self, order: Order, now_ns: int) -> None:
        """Take a risk-checked stop order: accepted here, held until triggered."""
        order.venue = "engine"
        self.oms.transition(order, OrderStatus.SUBMITTED, now_ns, venue="engine")
        self.oms.transition(order, OrderStatus.ACCEPTED, now_ns, note="stop held by engine")
        self.held.setdefault(order.instrument_id, []).append(order)

    def cancel(self, order: Order, now_ns: int) -> None:
        """Cancel a held stop at once (nothing is at a venue)."""
        self.held.get(order.instrument_id, []).remove(order)
        self.oms.transition(order, OrderStatus.CANCELED, now_ns, "canceled")

    def check(self, ref: float, stops: list[Order], now_ns: int) -> None:
        """Trigger the ``stops`` of one instrument that ``ref`` (its reference price, currency) reached."""
        for o in list(stops):
            sp = self.instruments[o.instrument_id].from_ticks(o.stop_ticks) if o.stop_ticks else 0.0
            if (ref >= sp) if o.side == _BUY else (ref <= sp):
                stops.remove(o)
                self.send(o, ref, now_ns)
