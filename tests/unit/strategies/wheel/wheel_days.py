"""Hand-built market days for the wheel's scenario tests: one underlying, a few options, quotes chosen by
the test (no model), so each scenario states exactly what the market did."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from greekfire.strategies.wheel.market import MarketDay
from greekfire.trading.model import Instrument, InstrumentKind, InstrumentStats, Quote, option

SPY = Instrument(0, "SPY", InstrumentKind.EQUITY, "SPY", tick_size=0.01)
D0 = date(2024, 1, 2)


def close_ns(d: date) -> int:
    """16:00 New York on ``d`` (ns since the epoch): the close the market's days are stamped with."""
    return int(datetime.combine(d, time(16, 0), ZoneInfo("America/New_York")).timestamp()) * 10**9


def gbm_prices(days: int, *, spot: float = 100.0, mu: float = 0.05, sigma: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """A geometric Brownian motion of closes on weekdays from 2020-01-02 (columns date, close)."""
    rng = np.random.default_rng(seed)
    r = (mu - 0.5 * sigma**2) / 252 + sigma / math.sqrt(252) * rng.standard_normal(days)
    r[0] = 0.0
    return pd.DataFrame({"date": pd.bdate_range(date(2020, 1, 2), periods=days).date,
                         "close": spot * np.exp(np.cumsum(r))})


def day(n: int) -> date:
    """The ``n``-th calendar day after D0 (tests use them as trading days)."""
    return D0 + timedelta(days=n)


_ids: dict[tuple[date, float, str], Instrument] = {}


def opt(expiry: date, strike: float, right: str) -> Instrument:
    """The one option of that expiry, strike and right (stable id across days)."""
    key = (expiry, strike, right)
    if key not in _ids:
        exp = datetime.fromtimestamp(close_ns(expiry) / 1e9, UTC)
        _ids[key] = option(100 + len(_ids), "SPY", strike, exp, right)
    return _ids[key]


@dataclass
class Listed:
    inst: Instrument
    bid: float
    ask: float
    iv: float = 0.2
    oi: int = 1000
    volume: int = 100


def make_day(d: date, spot: float, listed: Sequence[Listed] = (), dividend: float = 0.0) -> MarketDay:
    now = close_ns(d)
    quotes = {0: Quote(0, round(spot - 0.01, 2), round(spot + 0.01, 2), 100, 100, now)}
    quotes |= {x.inst.instrument_id: Quote(x.inst.instrument_id, x.bid, x.ask, 10, 10, now) for x in listed}
    return MarketDay(
        date=d, now_ns=now, spots={"SPY": spot}, opens={"SPY": spot}, highs={"SPY": spot}, lows={"SPY": spot},
        dividends={"SPY": dividend} if dividend else {}, rate=0.0, instruments=[SPY, *(x.inst for x in listed)],
        quotes=quotes, vols={x.inst.instrument_id: x.iv for x in listed},
        stats={x.inst.instrument_id: InstrumentStats(x.inst.instrument_id, x.oi, x.volume) for x in listed},
    )


@dataclass
class Model:
    commission_per_contract: float = 0.0
    fee_per_contract: float = 0.0
    fill_fraction: float = 0.5


@dataclass
class ListMarket:
    """A market of given days (the DailyMarket interface: dates, day(i), model)."""

    days: list[MarketDay]
    model: Model = field(default_factory=Model)

    @property
    def dates(self) -> list[date]:
        return [d.date for d in self.days]

    def day(self, i: int, extra: Iterable[int] = ()) -> MarketDay:
        return self.days[i]  # every day lists its contracts by hand: ``extra`` (held ids) adds nothing
