"""The strategy API: the :class:`Strategy` base class and the :class:`StrategyContext` the engine hands it.

A strategy hears the market through its ``on_*`` hooks and acts only through ``self.ctx``: commands
(submit, amend, amend many / mass quote, cancel, cancel all, timers, after-batch work, a declared
volatility) and read-only views (its own orders, positions and P&L, the book's Greeks per underlying, last
quotes, spots and marks, instruments, the clock, its parameters). It never holds the OMS, the portfolio,
the router or the risk engine; the engine's implementation of the context is
:class:`greekfire.trading.context.EngineContext`. In the spirit of nautilus_trader's strategy + cache.

Views are live (they show the engine's state at the moment they are read) and read-only: mappings are
``MappingProxyType`` over the engine's own dicts, Greek rows are tuples, an order is an :class:`OrderView`
(the engine's order object, typed read-only: a strategy reads it, only the engine moves it). Reading them
costs what reading a dict costs, so a quoting loop may read them per event.

A command that risk refuses comes back with its reason: a denied new order is returned in state DENIED
with ``reason`` set to the :class:`~greekfire.trading.denials.Reason` value; a denied amend returns its
:class:`~greekfire.trading.denials.Denial`.

Units: order prices (limits, stops, amends) in integer ticks of the instrument — ``ctx.ticks(instrument_id,
price)`` converts a currency price exactly (an off-grid one raises), ``Instrument.from_ticks`` goes back;
market data, fills and P&L in currency per unit; quantities in units (contracts or shares); times in ns
since the epoch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from greekfire.trading.denials import Denial, Reason, TradingState
from greekfire.trading.model import (
    BookUpdate,
    Fill,
    Instrument,
    InstrumentStats,
    OrderType,
    Quote,
    Settlement,
    SettlementKind,
    Side,
    TimeInForce,
    TradeTick,
)
from greekfire.trading.orders import OrderStatus

# a strategy needs this module alone: the records it handles are re-exported here
__all__ = [
    "CHAIN_VIEW_COLUMNS", "BookUpdate", "Denial", "Fill", "GreekRow", "Instrument", "InstrumentStats", "OrderStatus", "OrderType",
    "OrderView", "PositionView", "Quote", "Reason", "Settlement", "SettlementKind", "Side", "Strategy",
    "StrategyContext", "TimeInForce", "TradeTick", "TradingState",
]

GreekRow = tuple[float, float, float, float]  # (delta, gamma, vega, theta)
CHAIN_VIEW_COLUMNS = ("id", "right", "strike", "expiry_ns", "bid", "ask", "open_interest", "volume", "vol")
"""The columns of :meth:`StrategyContext.option_chain`."""


class OrderView(Protocol):
    """One of the strategy's orders as it reads it (live; read-only)."""

    @property
    def client_id(self) -> str: ...
    @property
    def instrument_id(self) -> int: ...
    @property
    def strategy_id(self) -> str: ...
    @property
    def side(self) -> Side: ...
    @property
    def qty(self) -> int: ...
    @property
    def price_ticks(self) -> int | None: ...
    @property
    def stop_ticks(self) -> int | None: ...
    @property
    def ord_type(self) -> OrderType: ...
    @property
    def tif(self) -> TimeInForce: ...
    @property
    def status(self) -> OrderStatus: ...
    @property
    def filled_qty(self) -> int: ...
    @property
    def avg_px(self) -> float: ...
    @property
    def venue(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def leaves_qty(self) -> int: ...
    @property
    def is_open(self) -> bool: ...


@dataclass(slots=True, frozen=True)
class PositionView:
    """A position as of the moment it was read: quantity (units), average cost (currency per unit), and
    realized P&L, unrealized P&L at the mark, and fees (currency)."""

    instrument_id: int
    qty: int
    avg_cost: float
    realized_pnl: float
    unrealized_pnl: float
    fees: float


class StrategyContext(ABC):
    """What a strategy may do and see. The engine makes one per strategy when it is added.

    Views (attributes, live and read-only):

    - ``strategy_id``: the strategy's name, the owner of its orders;
    - ``params``: the strategy's parameters;
    - ``instruments``: instrument id -> :class:`Instrument`; ``by_symbol``: symbol -> :class:`Instrument`;
    - ``positions``: instrument id -> net quantity of the account (units; absent: flat);
    - ``greeks``: underlying -> the book's (delta, gamma, vega, theta), delta in share equivalents, gamma
      per 1.00 of spot, vega per 1.00 vol, theta per year;
    - ``unit_greeks``: instrument id -> (delta, gamma, vega, theta) of one unit (before the multiplier);
    - ``spots``: underlying -> its last mid; ``marks``: instrument id -> last mid;
    - ``quotes``: instrument id -> the last :class:`Quote` seen (any venue);
    - ``venue_quotes``: venue name -> (instrument id -> the last :class:`Quote` from that venue), for each
      venue the engine routes to (what its router sees as displayed liquidity);
    - ``stats``: instrument id -> :class:`InstrumentStats` (open interest, volume) where the data source
      reports them (empty otherwise);
    - :meth:`option_chain` (optional, a method): the quoted options of an underlying as numpy columns, for
      a strategy that scans a whole chain; the default builds it from the views above, and a context that
      holds the chain as columns (a backtest) may serve it without building a record per contract.
    """

    strategy_id: str
    params: Mapping[str, Any]
    instruments: Mapping[int, Instrument]
    by_symbol: Mapping[str, Instrument]
    positions: Mapping[int, int]
    greeks: Mapping[str, GreekRow]
    unit_greeks: Mapping[int, GreekRow]
    spots: Mapping[str, float]
    marks: Mapping[int, float]
    quotes: Mapping[int, Quote]
    venue_quotes: Mapping[str, Mapping[int, Quote]]
    stats: Mapping[int, InstrumentStats]

    # ---------------------------------------------------------------- commands
    @abstractmethod
    def submit(
        self, instrument_id: int, side: Side, qty: int, price_ticks: int | None = None,
        ord_type: OrderType = OrderType.LIMIT, tif: TimeInForce = TimeInForce.GTC, *,
        stop_ticks: int | None = None, expire_ns: int = 0, post_only: bool = False, reduce_only: bool = False,
    ) -> list[OrderView]:
        """A new order (risk-checked, routed, sent), its limit ``price_ticks`` and stop ``stop_ticks`` in
        integer ticks of the instrument. Returns the order, or its child orders when the router sweeps several
        venues; a denied order comes back DENIED with its reason code in ``reason`` (a limit that is not a
        whole number of ticks, a float included, is BAD_TICK)."""

    @abstractmethod
    def amend(self, order: OrderView | str, qty: int, price_ticks: int) -> Denial | None:
        """Change one of its live orders to ``qty`` (new total) at ``price_ticks`` (integer ticks); the
        denial, or None when sent or when the order can no longer be amended (closed, or a cancel/replace
        already pending)."""

    @abstractmethod
    def amend_many(self, changes: Sequence[tuple[OrderView, int, int]]) -> list[Denial | None]:
        """A mass quote: ``(order, new total qty, new limit in ticks)`` each, risk-checked one by one and sent
        to each venue in one message; for each change its denial or None, as :meth:`amend`."""

    @abstractmethod
    def cancel(self, order: OrderView | str) -> bool:
        """Cancel one of its orders; True when a cancel was sent (or a held stop was canceled at once)."""

    @abstractmethod
    def cancel_all(self, instrument_id: int | None = None) -> int:
        """Cancel all its open orders (optionally of one instrument); returns how many."""

    @abstractmethod
    def set_timer(self, delay_s: float, fn: Callable[[int], None], *, repeat: bool = False) -> int:
        """Call ``fn(now_ns)`` after ``delay_s`` seconds (then every ``delay_s`` with ``repeat``); returns the
        timer's id. Timers fire on the engine loop, between event batches."""

    @abstractmethod
    def cancel_timer(self, timer_id: int) -> bool:
        """Stop a timer; True when it was still set."""

    @abstractmethod
    def after_batch(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once at the end of the current event batch (work that must not delay this event's
        orders, such as a full re-price); its orders are not timed as event -> order latency."""

    @abstractmethod
    def declare_vol(self, underlying: str, vol: float) -> None:
        """Declare the volatility (annualised) the strategy prices ``underlying``'s options with: the engine's
        pricing inputs take it, so the book's Greeks and the risk engine's VaR use the same figure."""

    # ---------------------------------------------------------------- views that take arguments
    def ticks(self, instrument_id: int, price: float, field: str = "price") -> int:
        """A price in currency as integer ticks of the instrument, exactly; a price off its tick grid (or not
        a finite price > 0) raises DataError naming ``field``, the value and the instrument."""
        return self.instruments[instrument_id].ticks(price, field)

    def price(self, instrument_id: int, ticks: int) -> float:
        """Integer ticks of the instrument as a price in currency (the nearest double to the decimal price)."""
        return self.instruments[instrument_id].from_ticks(ticks)

    def option_chain(self, underlying: str) -> dict[str, np.ndarray]:
        """The options of ``underlying`` that have a quote, one row each, as read-only numpy columns
        (:data:`CHAIN_VIEW_COLUMNS`): ``id`` (int64), ``right`` (+1 call / -1 put), ``strike`` (currency),
        ``expiry_ns`` (int64, ns since the epoch), ``bid``, ``ask`` (currency per unit), ``open_interest``,
        ``volume`` (contracts; inf where not reported), ``vol`` (annualised; nan where unknown). Rows in
        :attr:`instruments` order. The default reads ``instruments``, ``quotes``, ``stats`` and :meth:`vol`;
        a context may override it with a faster view of the same data."""
        rows = [(i, self.quotes[i.instrument_id]) for i in self.instruments.values()
                if i.is_option and i.underlying == underlying and i.instrument_id in self.quotes]
        ids = [i.instrument_id for i, _ in rows]
        stats = [self.stats.get(x) for x in ids]
        out = {
            "id": np.array(ids, dtype=np.int64),
            "right": np.array([i.right for i, _ in rows], dtype=np.float64),
            "strike": np.array([i.strike for i, _ in rows], dtype=np.float64),
            "expiry_ns": np.array([i.expiry_ns for i, _ in rows], dtype=np.int64),
            "bid": np.array([q.bid for _, q in rows], dtype=np.float64),
            "ask": np.array([q.ask for _, q in rows], dtype=np.float64),
            "open_interest": np.array([np.inf if s is None else s.open_interest for s in stats], dtype=np.float64),
            "volume": np.array([np.inf if s is None else s.volume for s in stats], dtype=np.float64),
            "vol": np.array([self.vol(x) for x in ids], dtype=np.float64),
        }
        for v in out.values():
            v.flags.writeable = False
        return out

    @abstractmethod
    def now_ns(self) -> int:
        """The engine's clock (ns since the epoch)."""

    @abstractmethod
    def open_orders(self, instrument_id: int | None = None) -> list[OrderView]:
        """Its live orders (optionally of one instrument)."""

    @abstractmethod
    def order(self, client_id: str) -> OrderView | None:
        """One of its orders by client id (None when unknown or another strategy's)."""

    @abstractmethod
    def position(self, instrument_id: int) -> PositionView:
        """The account's position in one instrument, with its P&L at the current mark (currency)."""

    @abstractmethod
    def pnl(self) -> dict[str, float]:
        """The account's realized, unrealized, fees and total P&L since the start (currency)."""

    @abstractmethod
    def vol(self, instrument_id: int) -> float:
        """The volatility (annualised) the engine values an option with."""

    @abstractmethod
    def trading_state(self) -> TradingState:
        """ACTIVE, REDUCING (only position-reducing orders pass) or HALTED."""


class _Unattached:
    """The context of a strategy no engine has taken yet: any use says so."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        raise RuntimeError(f"strategy {self._name!r} is not attached to an engine: engine.add_strategy(...) first")


class Strategy:
    """Base class of strategies. Override the ``on_*`` hooks; act only through ``self.ctx``.

    ``name`` is the strategy id (owner of its orders); ``params`` are its keyword arguments. A hook that
    raises is isolated: the exception is logged and counted, and the engine goes on. Hooks run on the
    engine loop, so they should be short; heavy work goes to :meth:`StrategyContext.after_batch` or a timer.
    """

    name = "strategy"

    def __init__(self, name: str | None = None, **params: Any) -> None:
        if name:
            self.name = name
        self.params = params
        # replaced by the engine's context when the strategy is added (engine.add_strategy)
        self.ctx: StrategyContext = cast(StrategyContext, _Unattached(self.name))

    # hooks
    def on_start(self) -> None:
        """The engine starts (restored orders are already in ``ctx.open_orders()``)."""

    def on_quote(self, quote: Quote) -> None:
        """A top-of-book quote of any instrument, after the engine has marked it."""

    def on_trade(self, trade: TradeTick) -> None:
        """A print on a venue."""

    def on_book(self, book: BookUpdate) -> None:
        """A depth snapshot (venues that publish depth)."""

    def on_fill(self, fill: Fill) -> None:
        """A fill of one of its orders, after positions and cash have moved."""

    def on_settlement(self, settlement: Settlement) -> None:
        """An option position of the account ended by expiry, assignment or exercise, after positions and cash
        have moved (shares and cash follow the strike)."""

    def on_timer(self, now_ns: int) -> None:
        """The engine's timer (every ``trading.timer_interval_s``)."""

    def on_stop(self) -> None:
        """The engine stops."""

    # shorthands for the context's commands
    def submit(
        self, instrument_id: int, side: Side, qty: int, price_ticks: int | None = None,
        ord_type: OrderType = OrderType.LIMIT, tif: TimeInForce = TimeInForce.GTC, **kw: Any,
    ) -> list[OrderView]:
        """``self.ctx.submit(...)`` (limit in integer ticks)."""
        return self.ctx.submit(instrument_id, side, qty, price_ticks, ord_type, tif, **kw)

    def amend(self, client_id: str, qty: int, price_ticks: int) -> Denial | None:
        """``self.ctx.amend(...)`` (limit in integer ticks)."""
        return self.ctx.amend(client_id, qty, price_ticks)

    def cancel(self, client_id: str) -> bool:
        """``self.ctx.cancel(...)``."""
        return self.ctx.cancel(client_id)
