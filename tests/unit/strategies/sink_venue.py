"""A venue that acknowledges every request at the next poll and never fills on its own; it keeps, in order,
what it was sent (``sent``: kind, instrument id, limit in ticks). The market-maker tests drive fills by hand."""

from __future__ import annotations

from typing import Any

from greekfire.trading.model import VenueEvent, VenueEventKind, VenueOrderState
from greekfire.trading.orders import Order
from greekfire.trading.venues import Venue


class Sink(Venue):
    """Acknowledges every request at the next poll and never fills; keeps the order of what it was sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[tuple[str, int, int]] = []  # (kind, instrument id, limit in ticks)
        self._out: list[VenueEvent] = []

    def submit(self, order: Order, now_ns: int) -> None:
        self.sent.append(("submit", order.instrument_id, order.price_ticks or 0))
        self._out.append(VenueEvent(VenueEventKind.ACCEPTED, self.name, order.client_id, ts_ns=now_ns))

    def amend(self, order: Order, new_qty: int, new_price_ticks: int, now_ns: int) -> None:
        self.sent.append(("amend", order.instrument_id, new_price_ticks))
        self._out.append(VenueEvent(VenueEventKind.REPLACED, self.name, order.client_id, qty=new_qty,
                                    price_ticks=new_price_ticks, ts_ns=now_ns))

    def cancel(self, order: Order, now_ns: int) -> None:
        self.sent.append(("cancel", order.instrument_id, 0))
        self._out.append(VenueEvent(VenueEventKind.CANCELED, self.name, order.client_id, ts_ns=now_ns))

    def poll(self, now_ns: int) -> list[Any]:
        out, self._out = self._out, []
        return out

    def report(self) -> tuple[list[VenueOrderState], list[VenueEvent]]:
        return [], []
