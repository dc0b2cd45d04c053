"""greekfire.trading: orders and their state machine, OMS, risk engine, smart order router, venues,
portfolio and the event-driven engine. See docs/trading.md.

``build_engine(settings, ...)`` builds what ``greekfire trade --paper`` and the tests run.
"""

from greekfire.trading.bus import MessageBus
from greekfire.trading.engine import Strategy, TradingEngine
from greekfire.trading.model import (
    BookUpdate,
    Fill,
    Instrument,
    InstrumentKind,
    OrderType,
    Quote,
    Side,
    TimeInForce,
    TradeTick,
    option,
)
from greekfire.trading.orders import TRANSITIONS, IllegalTransition, Order, OrderStatus
from greekfire.trading.paper import SyntheticMarket, build_engine, default_instruments
from greekfire.trading.risk import Denial, Reason, RiskEngine, TradingState

__all__ = [
    "TRANSITIONS",
    "BookUpdate",
    "Denial",
    "Fill",
    "IllegalTransition",
    "Instrument",
    "InstrumentKind",
    "MessageBus",
    "Order",
    "OrderStatus",
    "OrderType",
    "Quote",
    "Reason",
    "RiskEngine",
    "Side",
    "Strategy",
    "SyntheticMarket",
    "TimeInForce",
    "TradeTick",
    "TradingEngine",
    "TradingState",
    "build_engine",
    "default_instruments",
    "option",
]
