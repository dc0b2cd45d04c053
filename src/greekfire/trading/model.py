"""Trading records: instruments, fills, market data, and the events orders and venues produce.

An order's limit and stop prices travel as integer ticks of its instrument, from the strategy through risk,
router and venue and back in execution events (:class:`VenueEvent`, :class:`VenueOrderState`); currency
floats are for market data (:class:`Quote`, :class:`TradeTick`), fills (:class:`Fill`, P&L) and the edges
(reports, CLI, API), converted with :meth:`Instrument.ticks` / :meth:`Instrument.from_ticks`. Quantities are
integers (contracts or shares).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from greekfire.core.errors import DataError

# one side, order type and time in force for exchange and trader (Side: the sign of the position change)
from greekfire.market.matching import OrderType, Side, TimeInForce

__all__ = [
    "SECONDS_PER_YEAR", "BookUpdate", "Fill", "Instrument", "InstrumentKind", "InstrumentStats", "OrderEvent",
    "OrderType", "Quote", "Settlement", "SettlementKind", "Side", "TimeInForce", "TradeTick", "VenueEvent",
    "VenueEventKind", "VenueOrderState", "option",
]

SECONDS_PER_YEAR = 365.0 * 86400.0  # ACT/365, the pricing core's convention


class InstrumentKind(IntEnum):
    EQUITY = 0
    OPTION = 1


@dataclass(slots=True, frozen=True)
class Instrument:
    """A tradable instrument. ``right`` is +1.0 call / -1.0 put (0.0 for equities).

    ``expiry_ns`` is the expiry as nanoseconds since the epoch (UTC); ``tick_size`` in currency per unit;
    ``lot_size`` the quantity increment; ``multiplier`` units of underlying per contract.
    """

    instrument_id: int
    symbol: str
    kind: InstrumentKind = InstrumentKind.EQUITY
    underlying: str = ""
    strike: float = 0.0
    expiry_ns: int = 0
    right: float = 0.0
    multiplier: float = 1.0
    tick_size: float = 0.01
    lot_size: int = 1

    def __post_init__(self) -> None:
        if self.tick_size <= 0:
            raise DataError("tick_size", self.tick_size, "must be > 0", self.symbol)
        if self.lot_size <= 0:
            raise DataError("lot_size", self.lot_size, "must be > 0", self.symbol)
        if self.multiplier <= 0:
            raise DataError("multiplier", self.multiplier, "must be > 0", self.symbol)
        if self.kind == InstrumentKind.OPTION:
            if self.right not in (1.0, -1.0):
                raise DataError("right", self.right, "an option needs +1.0 (call) or -1.0 (put)", self.symbol)
            if self.strike <= 0:
                raise DataError("strike", self.strike, "an option needs a strike > 0", self.symbol)
            if not self.underlying:
                raise DataError("underlying", self.underlying, "an option needs an underlying symbol", self.symbol)
        elif not self.underlying:
            object.__setattr__(self, "underlying", self.symbol)

    @property
    def is_option(self) -> bool:
        return self.kind == InstrumentKind.OPTION

    def to_ticks(self, price: float) -> int:
        """Price in currency -> integer ticks (rounded to the nearest tick)."""
        return round(price / self.tick_size)

    def ticks(self, price: float, field: str = "price") -> int:
        """Price in currency -> integer ticks, exactly: a price off the tick grid (by more than 1e-6 of a
        tick), not finite or not > 0 raises DataError naming ``field`` and the value."""
        if not (isinstance(price, int | float) and math.isfinite(price) and price > 0):
            raise DataError(field, price, "must be a finite price > 0 (currency)", self.symbol)
        q = price / self.tick_size
        n = round(q)
        if abs(q - n) >= 1e-6:
            raise DataError(field, price, f"is not on the tick grid of {self.tick_size:g}", self.symbol)
        return n

    def from_ticks(self, ticks: int) -> float:
        """Integer ticks -> price in currency."""
        return round(ticks * self.tick_size, 10)  # 280 x 0.01 is 2.8000000000000003 otherwise

    def on_tick(self, price: float) -> bool:
        """True when ``price`` is a whole number of ticks (to 1e-6 of a tick)."""
        q = price / self.tick_size
        return abs(q - round(q)) < 1e-6

    def ttm(self, now_ns: int) -> float:
        """Time to expiry in years (ACT/365) from ``now_ns``; 0 for equities or past expiry."""
        if not self.is_option:
            return 0.0
        return max(0.0, (self.expiry_ns - now_ns) / 1e9 / SECONDS_PER_YEAR)


def option(
    instrument_id: int,
    underlying: str,
    strike: float,
    expiry: datetime,
    right: str | float,
    *,
    multiplier: float = 100.0,
    tick_size: float = 0.05,
    lot_size: int = 1,
) -> Instrument:
    """Build an option Instrument; ``right`` is 'C'/'P'/'call'/'put' or +1/-1; ``expiry`` a UTC datetime."""
    r = right
    if isinstance(r, str):
        key = r.strip().lower()
        if key in ("c", "call"):
            r = 1.0
        elif key in ("p", "put"):
            r = -1.0
        else:
            raise DataError("right", right, "use C/P/call/put or +1/-1")
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=UTC)
    tag = "C" if float(r) > 0 else "P"
    symbol = f"{underlying} {expiry:%Y%m%d} {strike:g}{tag}"
    return Instrument(
        instrument_id,
        symbol,
        InstrumentKind.OPTION,
        underlying,
        float(strike),
        int(expiry.timestamp() * 1e9),
        float(r),
        multiplier,
        tick_size,
        lot_size,
    )


@dataclass(slots=True, frozen=True)
class Fill:
    """One execution of one order. ``fill_id`` is unique per venue trade and side (dedup key)."""

    fill_id: str
    client_id: str
    instrument_id: int
    side: Side
    qty: int
    price: float
    fee: float = 0.0  # currency, negative is a rebate
    liquidity: str = ""  # "M" maker / "T" taker
    venue: str = ""
    ts_ns: int = 0
    strategy_id: str = ""


@dataclass(slots=True, frozen=True)
class Quote:
    """Top of book for one instrument (prices in currency, sizes in units)."""

    instrument_id: int
    bid: float
    ask: float
    bid_size: int = 0
    ask_size: int = 0
    ts_ns: int = 0
    venue: str = ""


@dataclass(slots=True, frozen=True)
class TradeTick:
    """A print on a venue."""

    instrument_id: int
    price: float
    qty: int
    aggressor: Side
    ts_ns: int = 0
    venue: str = ""


@dataclass(slots=True, frozen=True)
class BookUpdate:
    """Depth snapshot: lists of (price, size), best first."""

    instrument_id: int
    bids: tuple[tuple[float, int], ...]
    asks: tuple[tuple[float, int], ...]
    ts_ns: int = 0
    venue: str = ""


@dataclass(slots=True, frozen=True)
class InstrumentStats:
    """Liquidity of one option or stock as its data source reports it: open interest (contracts) and the
    day's volume (units). Sources that have none leave the view empty."""

    instrument_id: int
    open_interest: int = 0
    volume: int = 0


class SettlementKind(StrEnum):
    """How an option position ended without a trade (stable names: logs, databases, metrics)."""

    EXPIRED = "expired"  # out of the money at expiry: the option goes, nothing else moves
    ASSIGNED = "assigned"  # a short option exercised against us: shares and cash move at the strike
    EXERCISED = "exercised"  # a long option we exercised (or auto-exercised in the money at expiry)


@dataclass(slots=True, frozen=True)
class Settlement:
    """An option position closed by expiry, assignment or exercise.

    ``qty``: the option position that was closed (signed contracts: -2 = two short contracts);
    ``underlying_qty``: the signed change in the underlying position (shares: a short put assigned gives
    +100 per contract, a short call assigned -100); ``price``: the strike (currency per share);
    ``cash``: the signed cash change (currency; -strike x shares bought); ``early``: before expiry
    (American assignment); ``reason``: a short sentence (``"deep ITM before ex-dividend 2024-05-10"``).
    """

    instrument_id: int
    kind: SettlementKind
    qty: int
    underlying: str
    underlying_id: int
    underlying_qty: int
    price: float
    cash: float
    ts_ns: int = 0
    early: bool = False
    reason: str = ""


@dataclass(slots=True)
class OrderEvent:
    """One order state transition, as published on the bus and written to the audit log."""

    seq: int
    ts_ns: int
    client_id: str
    old: str
    new: str
    info: dict[str, Any] = field(default_factory=dict)


class VenueEventKind(StrEnum):
    """What a venue reports about one of our orders (the values are the stable names used in logs)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    FILL = "fill"
    CANCELED = "canceled"
    REPLACED = "replaced"
    EXPIRED = "expired"
    CANCEL_REJECT = "cancel_reject"
    REPLACE_REJECT = "replace_reject"


@dataclass(slots=True, frozen=True)
class VenueEvent:
    """One execution event for one of our orders.

    ``price_ticks``: the fill price, or the new limit of a replace, in integer ticks of the instrument;
    ``leaves_qty``/``cum_qty`` as the venue sees them after this event.
    """

    kind: VenueEventKind
    venue: str
    client_id: str
    venue_order_id: str = ""
    qty: int = 0
    price_ticks: int = 0
    leaves_qty: int = 0
    cum_qty: int = 0
    fill_id: str = ""
    fee: float = 0.0
    liquidity: str = ""
    reason: str = ""
    ts_ns: int = 0
    instrument_id: int = -1
    side: int = 0


@dataclass(slots=True, frozen=True)
class VenueOrderState:
    """A venue's view of one of our orders, for reconciliation (limit price in integer ticks)."""

    client_id: str
    venue_order_id: str
    instrument_id: int
    side: int
    qty: int
    price_ticks: int
    cum_qty: int
    open: bool
