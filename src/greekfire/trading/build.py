"""Construction: :func:`build_engine` builds the trading engine the way production runs it, so tests and
benchmarks run the same thing as ``greekfire trade --paper``; with it, the default paper instruments and
simulated venues.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta

from greekfire.core.db import resolve_url
from greekfire.core.errors import ConfigError, DataError
from greekfire.core.settings import Settings
from greekfire.trading.engine import TradingEngine
from greekfire.trading.model import Instrument, InstrumentKind, option
from greekfire.trading.simvenue import SimulatedVenue
from greekfire.trading.store import SnapshotStore
from greekfire.trading.strategy import Strategy
from greekfire.trading.synthetic import SyntheticMarket
from greekfire.trading.venues import Venue


def default_instruments(
    now_ns: int | None = None, underlying: str = "GFX", spot: float = 100.0, days: int = 30,
    strikes: Iterable[float] = (90, 95, 100, 105, 110),
) -> list[Instrument]:
    """One underlying (id 1) and a call and a put per strike expiring in ``days`` days (ids from 2)."""
    now = datetime.fromtimestamp((now_ns or time.time_ns()) / 1e9, UTC)
    expiry = (now + timedelta(days=days)).replace(microsecond=0)
    out = [Instrument(1, underlying, InstrumentKind.EQUITY, underlying, tick_size=0.01, lot_size=1)]
    iid = 2
    for k in strikes:
        for right in ("C", "P"):
            out.append(option(iid, underlying, float(k), expiry, right, multiplier=100.0, tick_size=0.01))
            iid += 1
    return out


CHAIN_BASE_DAY = 10957  # 2000-01-01 in days since the epoch: stable option ids count days from here


def chain_id(expiry: datetime, strike: float, right: str) -> int:
    """A stable instrument id for one listed option: the same contract (expiry day, strike, right) gets the
    same id in every run that lists it, so positions saved by one run are found by the next. Strikes on a
    0.5 grid below 5000 (DataError otherwise)."""
    half = strike * 2.0
    if not (0 < strike < 5000 and abs(half - round(half)) < 1e-9):
        raise DataError("strike", strike, "a stable option id needs a strike on a 0.5 grid, 0 < strike < 5000")
    day = int(expiry.timestamp() // 86400) - CHAIN_BASE_DAY
    if day < 0:
        raise DataError("expiry", expiry.isoformat(), "a stable option id needs an expiry after 2000-01-01")
    return 10 + day * 20_000 + int(round(half)) * 2 + (1 if right.upper().startswith("C") else 0)


def chain_key(instrument_id: int) -> tuple[date, float, str] | None:
    """What a :func:`chain_id` encodes: ``(expiry date (UTC), strike, "P" or "C")``; None for an id below the
    chain's range (an underlying's)."""
    n = int(instrument_id) - 10
    if n < 0:
        return None
    day, rest = divmod(n, 20_000)
    half, call = divmod(rest, 2)
    return (datetime.fromtimestamp((CHAIN_BASE_DAY + day) * 86400, UTC).date(), half / 2.0, "C" if call else "P")


def option_chain(
    underlying: str, expiries: Iterable[datetime], strikes: Iterable[float], *, underlying_id: int = 1,
    multiplier: float = 100.0, tick_size: float = 0.01,
) -> list[Instrument]:
    """An underlying (id ``underlying_id``) and a put and a call per strike (currency) and expiry (aware
    datetimes), with stable ids (:func:`chain_id`): what a wheel needs (weekly expiries, strikes around the
    spot) and what a restarted run lists again identically."""
    out = [Instrument(underlying_id, underlying, InstrumentKind.EQUITY, underlying, tick_size=tick_size, lot_size=1)]
    seen: set[int] = set()
    for exp in sorted(set(expiries)):
        for k in sorted({float(k) for k in strikes}):
            for right in ("P", "C"):
                iid = chain_id(exp, k, right)
                if iid not in seen:
                    seen.add(iid)
                    out.append(option(iid, underlying, k, exp, right, multiplier=multiplier, tick_size=tick_size))
    return out


def list_instruments(engine: TradingEngine, instruments: Iterable[Instrument], now_ns: int) -> list[Instrument]:
    """Trade ``instruments`` from ``now_ns`` on (ns since the epoch), as an exchange lists a new expiry during a
    run: the engine, its simulated venues and its synthetic market (if any) learn the ones it does not know yet.
    Venues of other kinds (FIX) list what their exchange lists. Returns the new instruments."""
    new = [i for i in instruments if i.instrument_id not in engine.instruments]
    if engine.market is not None and new:  # fair values first: the venues' participants quote around them
        engine.market.add_options(new, now_ns)
    for inst in new:
        engine.add_instrument(inst)
        for venue in engine.venues.values():
            if isinstance(venue, SimulatedVenue):
                venue.add_instrument(inst, now_ns)
    return new


def simulated_venues(
    settings: Settings, instruments: list[Instrument], fair_value: Callable[[int], float], n: int | None = None,
) -> list[SimulatedVenue]:
    """``n`` simulated venues (default ``settings.trading.venues``) with spread-out latency and fees."""
    ts = settings.trading
    n = n or ts.venues
    out = []
    for k in range(n):
        v = SimulatedVenue(
            f"SIM{k + 1}", instruments, fair_value,
            latency_us=ts.venue_latency_us * (1.0 + 0.5 * k), jitter_us=ts.venue_latency_jitter_us,
            maker_fee=ts.maker_fee + 0.05 * k, taker_fee=ts.taker_fee - 0.05 * k,
            flow_rate_hz=ts.background_rate_hz, seed=ts.seed + 101 * k,
        )
        v.seed_books(now_ns=time.time_ns())
        out.append(v)
    return out


def build_engine(
    settings: Settings,
    *,
    instruments: list[Instrument] | None = None,
    venues: list[Venue] | None = None,
    strategies: Iterable[Strategy] = (),
    store: SnapshotStore | None | bool = True,
    database_url: str | None = None,
    clock_ns: Callable[[], int] | None = None,
    engine_id: str = "paper",
    restore: bool = True,
    market: SyntheticMarket | None = None,
) -> TradingEngine:
    """Build the trading engine the way production runs it.

    Without ``venues``, a :class:`SyntheticMarket` on ``instruments`` (default: :func:`default_instruments`)
    and ``settings.trading.venues`` simulated venues are made, and the market is stepped on every poll.
    ``store``: True opens ``database_url`` (default ``settings.database.url``, SQLite under
    ``settings.home``), False/None keeps no state, or pass a :class:`SnapshotStore`. With ``restore`` the
    engine resumes from the store's last snapshot and reconciles with the venues.
    """
    instruments = instruments or default_instruments()
    if venues is None:
        market = market or SyntheticMarket(instruments, seed=settings.trading.seed)
        venues = list(simulated_venues(settings, instruments, market.fair_value))
    if store is True:
        url = resolve_url(database_url or settings.database.url.get_secret_value(), settings.home)
        store = SnapshotStore(url, engine_id, echo=settings.database.echo)
    engine = TradingEngine(
        settings, instruments=instruments, venues=venues, strategies=strategies,
        store=store or None, clock_ns=clock_ns, engine_id=engine_id,
    )
    if market is not None:
        engine.poll_hooks.append(market.step)
        engine.pricing.rate = market.rate
        engine.pricing.default_vol = market.vol
        engine.market = market
    if engine.store is not None:
        if restore:
            if engine.restore():
                engine.reconcile()
        elif engine.store.load() is not None:
            raise ConfigError(
                "database.url", engine.store.url.split("@")[-1],
                f"holds the state of engine {engine_id!r}: resume it (restore=True) or clear it first",
            )
    return engine
