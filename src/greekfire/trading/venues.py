"""The venue interface: what the engine trades through (a simulated exchange, or a FIX gateway).

A :class:`Venue` takes requests (submit, amend, cancel) and gives back
:class:`~greekfire.trading.model.VenueEvent` execution events and market data
(:class:`~greekfire.trading.model.Quote`, :class:`~greekfire.trading.model.TradeTick`) when the engine calls
:meth:`Venue.poll`. :meth:`Venue.report` gives the venue's own view of our orders and fills, which the
engine reconciles against after a reconnect. Order prices cross this interface as integer ticks of the
instrument (the order's ``price_ticks``, an amend's new limit, an event's ``price_ticks``); a venue whose
wire format is decimal converts at its own edge. The simulated exchange is
:class:`greekfire.trading.simvenue.SimulatedVenue`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from greekfire.trading.model import VenueEvent, VenueOrderState
from greekfire.trading.orders import Order


class Venue(ABC):
    """What the engine needs from a venue (simulated, or a FIX gateway)."""

    name: str

    @abstractmethod
    def submit(self, order: Order, now_ns: int) -> None:
        """Send a new order (its limit ``order.price_ticks`` in integer ticks)."""

    @abstractmethod
    def amend(self, order: Order, new_qty: int, new_price_ticks: int, now_ns: int) -> None:
        """Change quantity (new total) and/or limit (integer ticks) of a live order."""

    def amend_many(self, amends: Sequence[tuple[Order, int, int]], now_ns: int) -> None:
        """Several amends in one message (a mass quote): ``(order, new total qty, new limit in ticks)``
        each, in order. The default sends them one by one with :meth:`amend`; a venue with a mass-quote message
        overrides it."""
        for order, qty, price in amends:
            self.amend(order, qty, price, now_ns)

    @abstractmethod
    def cancel(self, order: Order, now_ns: int) -> None:
        """Cancel a live order."""

    @abstractmethod
    def poll(self, now_ns: int) -> list[Any]:
        """Events due by ``now_ns``: VenueEvent for our orders, Quote / TradeTick market data."""

    @abstractmethod
    def report(self) -> tuple[list[VenueOrderState], list[VenueEvent]]:
        """The venue's view for reconciliation: our orders it knows, and every fill it gave us."""

    def fees(self) -> tuple[float, float]:
        """(maker, taker) fee per contract in currency (negative: rebate)."""
        return 0.0, 0.0

    def tick_size(self, instrument_id: int) -> float:
        return 0.01

