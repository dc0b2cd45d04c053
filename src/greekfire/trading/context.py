"""The engine's side of the strategy API: :class:`EngineContext`, one per strategy, and :func:`attach`.

Commands go to order entry with the strategy as the owner (a strategy cannot touch another's orders);
views are built once, as read-only proxies over the engine's own dicts, so reading them per event costs
what a dict read costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

from greekfire.core.errors import DataError
from greekfire.trading.denials import Denial, TradingState
from greekfire.trading.model import OrderType, Side, TimeInForce
from greekfire.trading.strategy import OrderView, PositionView, Strategy, StrategyContext

if TYPE_CHECKING:
    from greekfire.trading.engine import TradingEngine


class EngineContext(StrategyContext):
    """The context ``engine`` hands ``strategy`` (see :class:`StrategyContext` for what each member does)."""

    def __init__(self, engine: TradingEngine, strategy: Strategy) -> None:
        self._engine = engine
        self._entry = engine.entry
        self.strategy_id = sid = strategy.name
        self.params = MappingProxyType(strategy.params)
        pf = engine.portfolio
        self.instruments = MappingProxyType(engine.instruments)
        self.by_symbol = MappingProxyType(engine.by_symbol)
        self.positions = MappingProxyType(pf.net)
        self.greeks = MappingProxyType(pf.totals)
        self.unit_greeks = MappingProxyType(pf.unit)
        self.spots = MappingProxyType(pf.spots)
        self.marks = MappingProxyType(pf.marks)
        self.quotes = MappingProxyType(engine.last_quotes)
        self.venue_quotes = MappingProxyType(engine.venue_quotes)
        self.stats = MappingProxyType(engine.instrument_stats)
        self._owner = sid

    # ---------------------------------------------------------------- commands
    def submit(
        self, instrument_id: int, side: Side, qty: int, price_ticks: int | None = None,
        ord_type: OrderType = OrderType.LIMIT, tif: TimeInForce = TimeInForce.GTC, *,
        stop_ticks: int | None = None, expire_ns: int = 0, post_only: bool = False, reduce_only: bool = False,
    ) -> list[OrderView]:
        entry = self._entry
        order = entry.new_order(instrument_id, side, qty, price_ticks, ord_type, tif, strategy_id=self._owner,
                                stop_ticks=stop_ticks, expire_ns=expire_ns, post_only=post_only, reduce_only=reduce_only)
        return list(entry.submit(order))

    def amend(self, order: OrderView | str, qty: int, price_ticks: int) -> Denial | None:
        cid = order if isinstance(order, str) else order.client_id
        return self._entry.amend(cid, qty, price_ticks, self._owner)

    def amend_many(self, changes: Sequence[tuple[OrderView, int, int]]) -> list[Denial | None]:
        # the views are the engine's own orders: handed back as they are, ownership checked per order
        return self._entry.amend_many(changes, self._owner)  # type: ignore[arg-type]  # no cast() call on this path

    def cancel(self, order: OrderView | str) -> bool:
        cid = order if isinstance(order, str) else order.client_id
        return self._entry.cancel(cid, self._owner)

    def cancel_all(self, instrument_id: int | None = None) -> int:
        return self._entry.cancel_all(self._owner, instrument_id)

    def set_timer(self, delay_s: float, fn: Callable[[int], None], *, repeat: bool = False) -> int:
        if not delay_s > 0:
            raise DataError("delay_s", delay_s, "a timer needs a delay > 0 seconds")
        every = int(delay_s * 1e9)
        return self._engine.timers.add(self._owner, self._engine.clock_ns() + every, fn, every if repeat else 0)

    def cancel_timer(self, timer_id: int) -> bool:
        return self._engine.timers.cancel(timer_id)

    def after_batch(self, fn: Callable[[], None]) -> None:
        self._engine.after_batch(fn)

    def declare_vol(self, underlying: str, vol: float) -> None:
        eng = self._engine
        options = [i.instrument_id for i in eng.instruments.values() if i.is_option and i.underlying == underlying]
        if not options and underlying not in eng.portfolio.totals:
            raise DataError("underlying", underlying, "no instrument of the engine has this underlying")
        eng.pricing.set_flat(underlying, options, vol, by=self._owner)
        eng.audit.append(eng.clock_ns(), "pricing", underlying, {"vol": vol, "declared_by": self._owner})

    # ---------------------------------------------------------------- views that take arguments
    def now_ns(self) -> int:
        return self._engine.clock_ns()

    def open_orders(self, instrument_id: int | None = None) -> list[OrderView]:
        return list(self._engine.oms.open_orders(instrument_id, self._owner))

    def order(self, client_id: str) -> OrderView | None:
        o = self._engine.oms.get(client_id)
        return o if o is not None and o.strategy_id == self._owner else None

    def position(self, instrument_id: int) -> PositionView:
        pf = self._engine.portfolio
        p = pf.positions.get(instrument_id)
        if p is None:
            return PositionView(instrument_id, 0, 0.0, 0.0, 0.0, 0.0)
        mark = pf.marks.get(instrument_id, p.avg_cost)
        unreal = p.unrealized(mark, pf.instruments[instrument_id].multiplier)
        return PositionView(instrument_id, p.qty, p.avg_cost, p.realized_pnl, unreal, p.fees)

    def pnl(self) -> dict[str, float]:
        return self._engine.portfolio.pnl()

    def vol(self, instrument_id: int) -> float:
        return self._engine.pricing.vol(instrument_id)

    def trading_state(self) -> TradingState:
        return self._engine.risk.state

    def __repr__(self) -> str:
        return f"EngineContext(strategy={self._owner!r})"


def attach(engine: TradingEngine, strategy: Strategy) -> EngineContext:
    """Give ``strategy`` its context on ``engine`` and subscribe the hooks it overrides on the engine's bus
    (quotes, trades, books, its own fills, settlements, timers), under the owner ``strategy:<name>`` so a hook that
    raises is isolated and counted. Returns the context."""
    strategy.ctx = ctx = EngineContext(engine, strategy)
    bus, owner, cls = engine.bus, f"strategy:{strategy.name}", type(strategy)
    if cls.on_quote is not Strategy.on_quote:
        bus.subscribe("quotes.*", strategy.on_quote, owner)
    if cls.on_trade is not Strategy.on_trade:
        bus.subscribe("trades.*", strategy.on_trade, owner)
    if cls.on_book is not Strategy.on_book:
        bus.subscribe("books.*", strategy.on_book, owner)
    if cls.on_fill is not Strategy.on_fill:
        bus.subscribe(f"fills.{strategy.name}", strategy.on_fill, owner)
    if cls.on_settlement is not Strategy.on_settlement:
        bus.subscribe("settlements", strategy.on_settlement, owner)
    if cls.on_timer is not Strategy.on_timer:
        bus.subscribe("timers", strategy.on_timer, owner)
    return ctx
