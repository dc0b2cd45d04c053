"""The engine on one in-process simulated venue ("A", no background flow, no jitter) with a little resting
liquidity on instrument 2 (2.40 x 2.60) and on the underlying 1 (99.99 x 100.01), on a manual clock: what the
order-handling and strategy-API tests drive by hand."""

from __future__ import annotations

from greekfire.core.clock import ManualClock
from greekfire.core.settings import load_settings
from greekfire.trading import build_engine
from greekfire.trading.build import default_instruments
from greekfire.trading.engine import TradingEngine
from greekfire.trading.simvenue import SimulatedVenue
from greekfire.trading.strategy import Side, Strategy

T0 = 1_800_000_000 * 10**9


def one_venue_engine(*strategies: Strategy, start: bool = False) -> tuple[TradingEngine, SimulatedVenue, ManualClock]:
    """The engine, its venue and its clock, after 2 ms of polls (started first when ``start``)."""
    clock = ManualClock(T0)
    insts = default_instruments(T0)
    venue = SimulatedVenue("A", insts, {i.instrument_id: 2.5 for i in insts}.get, latency_us=100, jitter_us=0,
                           flow_rate_hz=0)
    eng = build_engine(load_settings(), instruments=insts, venues=[venue], strategies=list(strategies), store=False,
                       clock_ns=clock.now_ns)
    venue.add_liquidity(2, Side.BUY, 10, 2.40, T0)
    venue.add_liquidity(2, Side.SELL, 10, 2.60, T0)
    venue.add_liquidity(1, Side.BUY, 100, 99.99, T0)
    venue.add_liquidity(1, Side.SELL, 100, 100.01, T0)
    if start:
        eng.start()
    step(eng, clock)
    return eng, venue, clock


def step(eng: TradingEngine, clock: ManualClock, ms: int = 2) -> None:
    """Advance the clock 1 ms at a time, polling the venues after each, ``ms`` times."""
    for _ in range(ms):
        clock.advance(1_000_000)
        eng.poll_once(clock.now_ns())
