"""Paper trading: a synthetic market, simulated venues, and :func:`build_engine`.

:class:`SyntheticMarket` moves one underlying along a geometric Brownian path (time runs ``time_scale``
times faster than the wall clock, so a 20 s run sees a few hours of market) and prices its option chain
with :func:`greekfire.quant.bsm_price` in one vectorised call per step. Each simulated venue's synthetic
participants quote around those fair values.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import torch

from greekfire.core.errors import ConfigError
from greekfire.core.settings import Settings
from greekfire.quant import bsm_price
from greekfire.trading.engine import Strategy, TradingEngine
from greekfire.trading.model import SECONDS_PER_YEAR, Instrument, InstrumentKind, option
from greekfire.trading.store import SnapshotStore, resolve_url
from greekfire.trading.venues import SimulatedVenue, Venue


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


class SyntheticMarket:
    """Fair values for a chain on one underlying. ``step(now_ns)`` moves the spot and reprices the chain;
    the first prices are taken at ``now_ns`` (ns since the epoch; default the wall clock: pass the
    scenario clock's start for a run that does not depend on when it is made)."""

    def __init__(
        self, instruments: list[Instrument], *, spot: float = 100.0, vol: float = 0.20, rate: float = 0.02,
        time_scale: float = 600.0, step_ms: float = 20.0, seed: int = 7, now_ns: int | None = None,
    ) -> None:
        self.instruments = instruments
        self.underlying = next(i for i in instruments if not i.is_option)
        self.options = [i for i in instruments if i.is_option]
        self.spot = spot
        self.vol = vol
        self.rate = rate
        self.time_scale = time_scale
        self.step_ns = int(step_ms * 1e6)
        self.rng = random.Random(seed)
        self._last_ns: int | None = None
        self._fair: dict[int, float] = {}
        self._right = torch.tensor([o.right for o in self.options], dtype=torch.float64)
        self._strike = torch.tensor([o.strike for o in self.options], dtype=torch.float64)
        self.steps = 0
        self._reprice(now_ns if now_ns is not None else time.time_ns())  # first prices at now_ns (ns since epoch)

    def _reprice(self, now_ns: int) -> None:
        self._fair[self.underlying.instrument_id] = self.spot
        if self.options:
            ttm = torch.tensor([max(o.ttm(now_ns), 1e-4) for o in self.options], dtype=torch.float64)
            px = bsm_price(self._right, self.spot, self._strike, ttm, self.rate, 0.0, self.vol).tolist()
            for o, p in zip(self.options, px, strict=True):
                self._fair[o.instrument_id] = p

    def fair_value(self, instrument_id: int) -> float:
        """Current fair value of an instrument (currency per unit)."""
        return self._fair.get(instrument_id, math.nan)

    def set_spot(self, spot: float, now_ns: int) -> None:
        """Put the underlying at ``spot`` and reprice the chain (scripted scenarios and benchmarks)."""
        self.spot = float(spot)
        self._reprice(now_ns)

    def step(self, now_ns: int) -> None:
        """Advance the spot to ``now_ns`` (at most one step per ``step_ms``) and reprice the chain."""
        if self._last_ns is None:
            self._last_ns = now_ns
            return
        if now_ns - self._last_ns < self.step_ns:
            return
        dt = (now_ns - self._last_ns) / 1e9 * self.time_scale / SECONDS_PER_YEAR
        self._last_ns = now_ns
        z = self.rng.gauss(0.0, 1.0)
        self.spot *= math.exp((self.rate - 0.5 * self.vol**2) * dt + self.vol * math.sqrt(dt) * z)
        self.steps += 1
        self._reprice(now_ns)


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
        engine.portfolio.rate = market.rate
        engine.portfolio.default_vol = market.vol
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
