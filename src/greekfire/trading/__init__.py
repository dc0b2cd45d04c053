"""greekfire.trading: orders and their state machine, OMS, risk engine, smart order router, venues,
portfolio, the event-driven engine and the strategy API. See docs/trading.md and docs/strategies.md.

``build_engine(settings, ...)`` builds what ``greekfire trade --paper`` and the tests run.
"""

from greekfire.trading.build import build_engine, default_instruments, simulated_venues
from greekfire.trading.bus import MessageBus
from greekfire.trading.denials import Breach, Denial, Reason, TradingState
from greekfire.trading.engine import TradingEngine
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
    VenueEvent,
    VenueEventKind,
    VenueOrderState,
    option,
)
from greekfire.trading.orders import TRANSITIONS, IllegalTransition, Order, OrderStatus
from greekfire.trading.pricing import PricingInputs
from greekfire.trading.risk import RiskEngine
from greekfire.trading.simvenue import SimulatedVenue
from greekfire.trading.strategy import OrderView, PositionView, Strategy, StrategyContext
from greekfire.trading.synthetic import SyntheticMarket
from greekfire.trading.venues import Venue

__all__ = [
    "TRANSITIONS",
    "BookUpdate",
    "Breach",
    "Denial",
    "Fill",
    "IllegalTransition",
    "Instrument",
    "InstrumentKind",
    "MessageBus",
    "Order",
    "OrderStatus",
    "OrderType",
    "OrderView",
    "PositionView",
    "PricingInputs",
    "Quote",
    "Reason",
    "RiskEngine",
    "Side",
    "SimulatedVenue",
    "Strategy",
    "StrategyContext",
    "SyntheticMarket",
    "TimeInForce",
    "TradeTick",
    "TradingEngine",
    "TradingState",
    "Venue",
    "VenueEvent",
    "VenueEventKind",
    "VenueOrderState",
    "build_engine",
    "default_instruments",
    "option",
    "simulated_venues",
]
