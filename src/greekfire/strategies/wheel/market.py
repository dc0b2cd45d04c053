"""The backtest's market: daily prices, an implied-vol index and rates read from CSV files, and a model
option chain priced from them.

Inputs (every loader reports each bad or missing row with its line number; see :class:`RowProblem`):

- prices: ``date,close`` (optional ``open,high,low,dividend``; ``dividend`` in currency per share going
  ex that day). Default: the S&P 500 index 1999-2018 that the ``arch`` package ships. Its ``Close`` is
  used, not ``Adj Close``: the index is a price index (the two columns agree in that file), and for a
  stock file ``Adj Close`` already folds dividends and splits into history, which would count a
  ``dividend`` column twice. Dividends come from the ``dividend`` column, or, for a price-only file, a
  constant yield (``div_yield``, default 2% a year, the S&P 500's average yield over 1999-2018).
- vol: ``date,close`` of an implied-vol index in vol points (VIX-like). Default:
  ``../shared/data/vix/vix-daily.csv`` beside the project.
- rates: a constant (percent) or ``date,rate`` in percent; converted to continuously compounded decimals.

:class:`ChainModel` turns the vol index into a surface: ATM vol = index x ``atm_ratio`` at 30 days, a
term structure that reverts to ``long_vol`` at speed ``term_kappa``, a skew (``skew_slope`` per unit of
log-moneyness at 30 days, steeper for shorter expiries, and ``smile_curvature``). Option values come from
the pricing registry (Black-Scholes-Merton; for American equity options the Bjerksund-Stensland 2002 value
near and in the money), one tensor call per block of 64 days; bid/ask from the spread model, rounded out to the tick;
open interest and volume fall away from the money and with time to expiry. Expiries: monthly (third
Friday, the Thursday before when the Friday is not a trading day in the price file) out to ``max_dte``
and weekly Fridays out to ``weekly_weeks`` weeks. Every contract keeps one instrument id over its life
(:func:`contract_id`); the underlying of symbol ``i`` (in the order given) has id ``i``.

It is one module: the loaders and the chain model share the row-problem reports and the date index the
market is built on.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import torch

from greekfire.core.errors import DataError, InputFileError
from greekfire.trading.model import Instrument, InstrumentStats, Quote, option

log = logging.getLogger(__name__)

NEW_YORK = ZoneInfo("America/New_York")
BadRows = Literal["skip", "fill"]
#: index symbols whose listed options are European (cash-settled); every other symbol's are American
EUROPEAN_SYMBOLS = frozenset({"SPX", "SPXW", "XSP", "NDX", "RUT", "DJX", "OEX", "XEO", "VIX"})
_ID_EXPIRY = 100_000  # days since 1970 < 100,000 (year 2243)
_ID_STRIKE = 10_000_000  # strike in cents < 100,000.00
#: days whose chains are priced together in one tensor call
BLOCK_DAYS = 64


@dataclass(frozen=True, slots=True)
class RowProblem:
    """One bad or missing input row: the file, its line (1 = the header; 0 when the row is missing, not
    bad), the field, the value found, what was wrong and what was done (``skipped`` or ``filled``)."""

    file: str
    line: int
    field: str
    value: str
    problem: str
    action: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "missing row"
        return f"{self.file} {where}: {self.field}={self.value!r} {self.problem} ({self.action})"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "value": self.value,
                "problem": self.problem, "action": self.action}


def shared_data_dir() -> Path:
    """``../shared/data`` beside the project checkout (the real-data folder; absent in a fresh clone)."""
    return Path(__file__).resolve().parents[5] / "shared" / "data"


def default_prices_path() -> Path:
    """arch's S&P 500 daily file (``arch/data/sp500/sp500.csv.gz``), located without importing arch."""
    spec = find_spec("arch")
    if spec is None or not spec.submodule_search_locations:
        raise InputFileError("prices", "arch", "the default S&P 500 history ships with the arch package: "
                             "pip install arch, or pass a prices CSV")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "sp500" / "sp500.csv.gz"


def default_vol_path() -> Path:
    """``../shared/data/vix/vix-daily.csv`` beside the project."""
    return shared_data_dir() / "vix" / "vix-daily.csv"


def _read_table(path: Path, what: str, needed: tuple[str, ...]) -> pd.DataFrame:
    """A CSV as text columns with lower-case names; every line kept (blank ones too, so positions are
    line numbers)."""
    if not path.is_file():
        raise InputFileError(what, str(path), "no such file")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, EOFError, OSError) as exc:
        raise InputFileError(what, str(path), f"not a readable CSV: {' '.join(str(exc).split())}") from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise InputFileError(f"{what}.columns", list(raw.columns), f"{path.name} lacks column(s) "
                             f"{', '.join(missing)} (needed: {', '.join(needed)})")
    return raw


def _parse_dates(text: pd.Series) -> pd.Series:
    """ISO dates (YYYY-MM-DD) or US dates (M/D/YYYY); NaT where neither."""
    s = text.str.strip()
    iso = pd.to_datetime(s, format="%Y-%m-%d", errors="coerce")
    us = pd.to_datetime(s, format="%m/%d/%Y", errors="coerce")
    return iso.fillna(us)


def _numbers(text: pd.Series) -> pd.Series:
    return pd.to_numeric(text.str.strip(), errors="coerce")


def _clean(raw: pd.DataFrame, path: Path, what: str, value_col: str, ok: Any, problem: str,
           bad_rows: BadRows, extra: Mapping[str, tuple[Any, str, str]] | None = None) -> pd.DataFrame:
    """Rows with a date and a good ``value_col``, in date order. A bad date, a duplicate or earlier date
    is skipped; a bad value is skipped or (``fill``) takes the previous good value. ``extra`` columns:
    name -> (check, problem, fallback column or 'zero'): a bad one is filled from the fallback. Every
    problem lands in ``attrs['problems']`` with its line."""
    if bad_rows not in ("skip", "fill"):
        raise DataError("bad_rows", bad_rows, "must be skip or fill")
    name = path.name
    problems: list[RowProblem] = []
    dates = _parse_dates(raw["date"])
    values = _numbers(raw[value_col])
    good_value = values.notna() & np.isfinite(values) & ok(values)
    keep = np.ones(len(raw), dtype=bool)
    last: pd.Timestamp | None = None
    prev_value: float | None = None
    out_values = values.to_numpy(dtype=float, copy=True)
    for i in range(len(raw)):
        line = i + 2
        d = dates.iat[i]
        if pd.isna(d):
            text = raw["date"].iat[i]
            why = "is empty (a blank or short line)" if not text.strip() else "is not a date (YYYY-MM-DD or M/D/YYYY)"
            problems.append(RowProblem(name, line, "date", text, why, "skipped"))
            keep[i] = False
            continue
        if last is not None and d <= last:
            problems.append(RowProblem(name, line, "date", raw["date"].iat[i],
                                       "is not after the previous row's date (duplicate or out of order)", "skipped"))
            keep[i] = False
            continue
        if not good_value.iat[i]:
            if bad_rows == "fill" and prev_value is not None:
                out_values[i] = prev_value
                problems.append(RowProblem(name, line, value_col, raw[value_col].iat[i], problem,
                                           "filled with the previous value"))
            else:
                problems.append(RowProblem(name, line, value_col, raw[value_col].iat[i], problem, "skipped"))
                keep[i] = False
                continue
        last = d
        prev_value = out_values[i]
    out = pd.DataFrame({"date": dates, value_col: out_values})
    for col, (check, why, fallback) in (extra or {}).items():
        if col not in raw.columns:
            continue
        text = raw[col]
        v = _numbers(text)
        bad = keep & ~(text.str.strip() == "") & ~(v.notna() & np.isfinite(v) & check(v))
        empty = keep & (text.str.strip() == "")
        fill = np.zeros(len(raw)) if fallback == "zero" else out[fallback].to_numpy()
        for j in np.flatnonzero(bad.to_numpy()).tolist():
            problems.append(RowProblem(name, j + 2, col, text.iat[j], why,
                                       "filled with 0" if fallback == "zero" else f"filled with {fallback}"))
        v = v.where(~(bad | empty), fill)
        out[col] = v.to_numpy(dtype=float)
    out = out[keep].reset_index(drop=True)
    if out.empty:
        raise InputFileError(what, str(path), f"no usable rows (first problem: {problems[0] if problems else 'empty file'})")
    for p in problems[:20]:
        log.warning("%s", p)
    if len(problems) > 20:
        log.warning("%s: %d more bad rows", name, len(problems) - 20)
    out.attrs["problems"] = problems
    out.attrs["source"] = str(path)
    return out


def load_prices(path: str | Path | None = None, *, bad_rows: BadRows = "skip") -> pd.DataFrame:
    """Daily prices: columns ``date`` (``datetime.date``), ``close`` (currency) and ``open, high, low`` (a bad or
    empty one takes the close) and ``dividend`` (currency per share going ex that day; 0 where empty).
    Default file: arch's S&P 500 1999-2018. ``Close`` is read, never ``Adj Close`` (module doc). A row
    with a bad date, a repeated or earlier date is skipped; a close that is not a positive number is
    skipped, or with ``bad_rows='fill'`` takes the previous close. ``attrs['problems']`` lists each
    :class:`RowProblem`. Raises InputFileError for an unreadable file, a missing column, no usable row."""
    p = Path(path) if path is not None else default_prices_path()
    raw = _read_table(p, "prices", ("date", "close"))
    positive = lambda v: v > 0  # noqa: E731
    extra = {c: (positive, "is not a positive price", "close") for c in ("open", "high", "low")}
    extra["dividend"] = (lambda v: v >= 0, "is not a dividend >= 0 (currency per share)", "zero")
    out = _clean(raw, p, "prices", "close", positive, "is not a positive price", bad_rows, extra)
    for c in ("open", "high", "low"):
        if c not in out:
            out[c] = out["close"]
    if "dividend" not in out:
        out["dividend"] = 0.0
    out["date"] = out["date"].dt.date  # datetime.date, as MarketDay.date
    out.attrs["has_dividends"] = "dividend" in raw.columns
    return out


def load_vol(path: str | Path | None = None, *, bad_rows: BadRows = "skip") -> pd.Series:
    """An implied-vol index (VIX-like) in vol points, indexed by date; default
    ``../shared/data/vix/vix-daily.csv``. A level outside (0, 300] is bad (skipped or filled as
    ``bad_rows`` says); ``attrs['problems']`` lists each :class:`RowProblem`."""
    p = Path(path) if path is not None else default_vol_path()
    raw = _read_table(p, "vol", ("date", "close"))
    out = _clean(raw, p, "vol", "close", lambda v: (v > 0) & (v <= 300), "is not a vol level in (0, 300] vol points",
                 bad_rows)
    s = pd.Series(out["close"].to_numpy(), index=pd.DatetimeIndex(out["date"]), name="vol")
    s.attrs.update(out.attrs)
    return s


def load_rates(path_or_const: str | Path | float, *, bad_rows: BadRows = "skip") -> pd.Series:
    """Rates as continuously compounded decimals (``ln(1 + percent / 100)``), indexed by date: a number
    (percent, constant: one entry dated 1900-01-01) or a CSV ``date,rate`` in percent (a rate outside
    [-5, 50] % is bad). Days between entries take the last rate (as of)."""
    if isinstance(path_or_const, int | float) or _is_number(path_or_const):
        pct = float(path_or_const)  # type: ignore[arg-type]
        if not (math.isfinite(pct) and -5.0 <= pct <= 50.0):
            raise DataError("rates", path_or_const, "a constant rate is in percent, within [-5, 50]")
        s = pd.Series([math.log1p(pct / 100.0)], index=pd.DatetimeIndex([pd.Timestamp("1900-01-01")]), name="rate")
        s.attrs["problems"] = []
        s.attrs["source"] = f"constant {pct:g}%"
        return s
    p = Path(path_or_const)
    raw = _read_table(p, "rates", ("date", "rate"))
    out = _clean(raw, p, "rates", "rate", lambda v: (v >= -5) & (v <= 50), "is not a rate in percent within [-5, 50]",
                 bad_rows)
    s = pd.Series(np.log1p(out["rate"].to_numpy() / 100.0), index=pd.DatetimeIndex(out["date"]), name="rate")
    s.attrs.update(out.attrs)
    return s


def _price_frame(df: pd.DataFrame, symbol: str) -> pd.DataFrame:
    """A prices frame on a sorted DatetimeIndex with every column the market reads: a frame built by hand
    may give only ``date, close`` (open/high/low then take the close, dividends 0)."""
    for col in ("date", "close"):
        if col not in df:
            raise DataError(f"prices[{symbol}]", list(df.columns), f"needs a {col!r} column")
    out = df.set_index(pd.DatetimeIndex(pd.to_datetime(list(df["date"])))).sort_index()
    for col in ("open", "high", "low"):
        if col not in out:
            out[col] = out["close"]
    if "dividend" not in out:
        out["dividend"] = 0.0
    if not np.isfinite(out["close"].to_numpy(dtype=float)).all():
        raise DataError(f"prices[{symbol}].close", "NaN", "every close must be a number (load_prices reports bad rows)")
    return out


def _dated(s: pd.Series) -> pd.Series:
    """``s`` indexed by a DatetimeIndex (an index of ``datetime.date`` or strings is converted; attrs kept)."""
    if isinstance(s.index, pd.DatetimeIndex):
        return s
    out = pd.Series(s.to_numpy(), index=pd.DatetimeIndex(pd.to_datetime(list(s.index))), name=s.name)
    out.attrs.update(s.attrs)
    return out


def _is_number(x: Any) -> bool:
    try:
        float(x)
    except (TypeError, ValueError):
        return False
    return True


# ------------------------------------------------------------------------------------------------------
# the chain model
@dataclass
class ChainModel:
    """How option quotes are made from the vol index (defaults and their reasons in docs/wheel.md).

    Vol surface: ``atm_ratio`` (30-day ATM vol / index level: the VIX prices a 30-day variance swap,
    which the skew lifts above ATM vol), ``long_vol`` and ``term_kappa`` (ATM variance reverts to
    ``long_vol``^2 at ``term_kappa`` per year: an inverted curve when the index is high, upward when low),
    ``skew_slope`` (vol per unit log-moneyness at 30 days, scaled by sqrt(30 days / ttm)),
    ``smile_curvature`` (vol per unit log-moneyness squared), ``vol_floor``/``vol_cap``.
    Quotes: spread = max(``spread_min``, ``spread_pct`` x value) (currency), bid rounded down and ask up
    to ``tick``; ``commission_per_contract`` and ``fee_per_contract`` in currency. Listing: monthly
    third-Friday expiries to ``max_dte`` days, weekly Fridays to ``weekly_weeks`` weeks from
    ``weeklies_since``; strikes every ``strike_step_pct`` of spot (rounded to 1, 2.5 or 5 x 10^n) within
    ``strikes_pct`` of spot. Liquidity: ``oi_atm``/``volume_atm`` contracts at the money, falling as a
    Gaussian in standardised moneyness (width ``liquidity_width`` sigmas) and as exp(-dte/``liquidity_dte``);
    weeklies get ``weekly_liquidity`` of it. ``multiplier`` shares per contract."""

    atm_ratio: float = 0.85
    long_vol: float = 0.18
    term_kappa: float = 2.0
    skew_slope: float = -0.6
    smile_curvature: float = 0.8
    vol_floor: float = 0.05
    vol_cap: float = 3.0
    spread_pct: float = 0.04
    spread_min: float = 0.10
    tick: float = 0.05
    commission_per_contract: float = 0.65
    fee_per_contract: float = 0.10
    monthlies: bool = True
    weeklies: bool = True
    weeklies_since: date | None = date(2005, 10, 28)
    max_dte: int = 200
    weekly_weeks: int = 5
    strikes_pct: tuple[float, float] = (0.5, 1.5)
    strike_step_pct: float = 0.01
    oi_atm: int = 20_000
    volume_atm: int = 4_000
    liquidity_width: float = 1.5
    liquidity_dte: float = 90.0
    weekly_liquidity: float = 0.5
    multiplier: float = 100.0

    def __post_init__(self) -> None:
        for name in ("atm_ratio", "long_vol", "term_kappa", "vol_floor", "vol_cap", "tick", "strike_step_pct",
                     "liquidity_width", "liquidity_dte", "multiplier"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise DataError(f"ChainModel.{name}", v, "must be a number > 0")
        lo, hi = self.strikes_pct
        if not 0 < lo < 1 < hi:
            raise DataError("ChainModel.strikes_pct", self.strikes_pct, "must be (low < 1, high > 1), fractions of spot")

    def atm_vol(self, index: Any, ttm: Any) -> torch.Tensor:
        """ATM vol (annualised) at ``ttm`` years for an index level ``index`` in vol points: 30-day ATM
        vol = index / 100 x ``atm_ratio``; variance reverts to ``long_vol``^2 (mean of an exponentially
        reverting variance over ``ttm``)."""
        v30 = torch.as_tensor(index, dtype=torch.float64) / 100.0 * self.atm_ratio
        t = torch.as_tensor(ttm, dtype=torch.float64).clamp_min(1.0 / 365.0)
        k, t30, lv = self.term_kappa, 30.0 / 365.0, self.long_vol**2

        def avg(tt: torch.Tensor) -> torch.Tensor:
            return (1.0 - torch.exp(-k * tt)) / (k * tt)

        v0 = lv + (v30**2 - lv) / avg(torch.tensor(t30, dtype=torch.float64))  # spot variance that gives v30
        var = lv + (v0 - lv) * avg(t)
        return var.clamp_min(self.vol_floor**2).sqrt()

    def implied_vol(self, index: Any, log_moneyness: Any, ttm: Any) -> torch.Tensor:
        """Model implied vol at ``log_moneyness`` = ln(strike / forward) and ``ttm`` years."""
        k = torch.as_tensor(log_moneyness, dtype=torch.float64)
        t = torch.as_tensor(ttm, dtype=torch.float64).clamp_min(1.0 / 365.0)
        scale = torch.sqrt((30.0 / 365.0) / t).clamp(max=4.0)
        vol = self.atm_vol(index, t) + self.skew_slope * k * scale + self.smile_curvature * k * k * scale
        return vol.clamp(self.vol_floor, self.vol_cap)

    def spread(self, value: np.ndarray) -> np.ndarray:
        """Full bid/ask spread in currency for options worth ``value``."""
        return np.maximum(self.spread_min, self.spread_pct * value)

    def bid_ask(self, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bid (rounded down to the tick, >= 0) and ask (rounded up) around ``value``."""
        half = self.spread(value) / 2.0
        bid = np.floor(np.maximum(value - half, 0.0) / self.tick + 1e-9) * self.tick
        ask = np.ceil((value + half) / self.tick - 1e-9) * self.tick
        return np.round(bid, 6), np.round(np.maximum(ask, self.tick), 6)

    def cost(self, contracts: int) -> float:
        """Commission plus fees for ``contracts`` contracts (currency)."""
        return abs(contracts) * (self.commission_per_contract + self.fee_per_contract)

    def strike_step(self, spot: float) -> float:
        """The strike spacing at ``spot``: ``strike_step_pct`` x spot rounded down to 1, 2.5 or 5 x 10^n."""
        raw = max(spot * self.strike_step_pct, 1e-6)
        base = 10.0 ** math.floor(math.log10(raw))
        return max(m * base for m in (1.0, 2.5, 5.0) if m * base <= raw + 1e-12)


def contract_id(symbol_index: int, expiry: date, strike: float, right: float) -> int:
    """The instrument id of a contract, the same on every day it is listed: symbol index, expiry day,
    strike in cents and the right packed into one integer (>= 2 x 10^12, far above the underlyings' ids)."""
    days = (expiry - date(1970, 1, 1)).days
    cents = int(round(strike * 100))
    if not (0 <= days < _ID_EXPIRY and 0 < cents < _ID_STRIKE):
        raise DataError("contract", (expiry, strike), "expiry 1970..2243 and strike < 100,000")
    return ((((symbol_index + 1) * _ID_EXPIRY + days) * _ID_STRIKE + cents) * 2) + (1 if right > 0 else 0)


def contract_ids(symbol_index: int, expiry: date, strikes: np.ndarray, right: float) -> np.ndarray:
    """:func:`contract_id` of many strikes of one expiry and right at once (int64)."""
    days = (expiry - date(1970, 1, 1)).days
    cents = np.rint(np.asarray(strikes, dtype=np.float64) * 100).astype(np.int64)
    if not (0 <= days < _ID_EXPIRY and (cents > 0).all() and (cents < _ID_STRIKE).all()):
        raise DataError("contract", (expiry, float(np.max(strikes, initial=0))), "expiry 1970..2243 and strike < 100,000")
    return ((((symbol_index + 1) * _ID_EXPIRY + days) * _ID_STRIKE + cents) * 2) + (1 if right > 0 else 0)


def decode_id(instrument_id: int) -> tuple[int, date, float, float]:
    """``(symbol_index, expiry, strike, right)`` of a :func:`contract_id`."""
    rest, call = divmod(instrument_id, 2)
    rest, cents = divmod(rest, _ID_STRIKE)
    sym, days = divmod(rest, _ID_EXPIRY)
    return sym - 1, date(1970, 1, 1) + timedelta(days=days), cents / 100.0, 1.0 if call else -1.0


def close_ns(d: date) -> int:
    """16:00 America/New_York on ``d`` as nanoseconds since the epoch."""
    return int(datetime(d.year, d.month, d.day, 16, tzinfo=NEW_YORK).timestamp()) * 1_000_000_000


def third_friday(year: int, month: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(4 - first.weekday()) % 7 + 14)


# ------------------------------------------------------------------------------------------------------
# one day of the market
CHAIN_COLUMNS = ("id", "symbol", "right", "strike", "expiry_ns", "monthly", "american", "spot", "vol_index",
                 "now_ns", "rate", "q", "ttm", "value", "vol", "delta", "bid", "ask", "open_interest", "volume")
"""The columns of :attr:`MarketDay.chain` (``q``: dividend yield; ``value``: model value per share)."""


_V = TypeVar("_V")


class ChainRecords(Mapping[int, _V]):
    """Instrument id -> a record of one contract of a day's chain, built on first read from its row (and
    kept), after ``fixed`` (the underlyings' records). Iterates ``fixed`` then the chain in row order.
    Read-only; reading one contract costs one dict lookup and, the first time, one record."""

    __slots__ = ("_fixed", "_index", "_make", "_made")

    def __init__(self, fixed: Mapping[int, _V], index: Mapping[int, int], make: Callable[[int, int], _V]) -> None:
        self._fixed, self._index, self._make = fixed, index, make
        self._made: dict[int, _V] = {}

    def __getitem__(self, key: int) -> _V:
        if key in self._fixed:
            return self._fixed[key]
        got = self._made.get(key)
        if got is None:
            got = self._made[key] = self._make(key, self._index[key])
        return got

    def __contains__(self, key: object) -> bool:
        return key in self._fixed or key in self._index

    def __iter__(self) -> Iterator[int]:
        yield from self._fixed
        yield from (k for k in self._index if k not in self._fixed)

    def __len__(self) -> int:
        return len(self._fixed) + sum(1 for k in self._index if k not in self._fixed)


class MarketDay:
    """One trading day at the close (16:00 New York): ``date``, ``now_ns`` (ns since the epoch), ``spots``,
    ``opens``, ``highs``, ``lows`` (symbol -> currency), ``dividends`` (symbol -> cash per share going ex
    today), ``rate`` (continuously compounded), and the listed options as ``instruments``, ``quotes``,
    ``vols`` (model implied vol) and ``stats`` (model open interest and volume), the underlyings included
    (ids 0..n-1). From :class:`DailyMarket`, ``quotes``, ``vols``, ``stats`` and ``instrument_map`` are
    read-only mappings (:class:`ChainRecords`) that build a contract's record on its first read from
    ``chain``: the same contracts as numpy columns (:data:`CHAIN_COLUMNS`, one row per contract), the fast
    way to scan them (``instruments``, a list, builds them all).
    ``div_yields`` symbol -> continuously compounded yield; ``styles`` symbol -> european|american;
    ``vol_index`` symbol -> the vol index level (vol points). Built by hand (tests), give the records."""

    def __init__(self, date: date, now_ns: int, spots: dict[str, float], opens: dict[str, float] | None = None,
                 highs: dict[str, float] | None = None, lows: dict[str, float] | None = None,
                 dividends: dict[str, float] | None = None, rate: float = 0.0,
                 instruments: list[Instrument] | None = None, quotes: dict[int, Quote] | None = None,
                 vols: dict[int, float] | None = None, stats: dict[int, InstrumentStats] | None = None, *,
                 div_yields: dict[str, float] | None = None, styles: dict[str, str] | None = None,
                 chain: dict[str, np.ndarray] | None = None, underlyings: list[Instrument] | None = None,
                 vol_index: dict[str, float] | None = None, market: DailyMarket | None = None) -> None:
        self.date, self.now_ns, self.spots, self.rate = date, now_ns, spots, rate
        self.opens = opens if opens is not None else dict(spots)
        self.highs = highs if highs is not None else dict(spots)
        self.lows = lows if lows is not None else dict(spots)
        self.dividends = dividends if dividends is not None else dict.fromkeys(spots, 0.0)
        self.div_yields = div_yields if div_yields is not None else dict.fromkeys(spots, 0.0)
        self.styles = styles if styles is not None else {s: "european" if s.upper() in EUROPEAN_SYMBOLS else "american"
                                                         for s in spots}
        self.chain = chain if chain is not None else {c: np.zeros(0) for c in CHAIN_COLUMNS}
        self.underlyings = underlyings or []
        self.vol_index = vol_index or {}
        self._market = market
        self._instruments = instruments
        self._quotes: Mapping[int, Quote] | None = quotes
        self._vols: Mapping[int, float] | None = vols
        self._stats: Mapping[int, InstrumentStats] | None = stats
        self._index: dict[int, int] | None = None
        self._instrument_map: Mapping[int, Instrument] | None = None

    def __repr__(self) -> str:
        return f"MarketDay({self.date}, spots={self.spots}, rate={self.rate:.4f}, contracts={len(self.chain['id'])})"

    @property
    def from_chain(self) -> bool:
        """True when the records are built from :attr:`chain` (a :class:`DailyMarket` day), False when they
        were given (a hand-built day)."""
        return self._market is not None

    @property
    def index(self) -> dict[int, int]:
        """Instrument id -> its row in :attr:`chain`."""
        if self._index is None:
            self._index = dict(zip(self.chain["id"].astype(np.int64).tolist(), range(len(self.chain["id"])),
                                   strict=True))
        return self._index

    @property
    def instrument_map(self) -> Mapping[int, Instrument]:
        """Instrument id -> :class:`Instrument` of every listed contract and underlying (records built on first
        read, and cached by the market across days: ids are stable)."""
        if self._instrument_map is None:
            m = self._market
            if self.from_chain and m is not None:
                self._instrument_map = ChainRecords({u.instrument_id: u for u in self.underlyings}, self.index,
                                                    lambda iid, _row: m.instrument(iid))
            else:
                self._instrument_map = {i.instrument_id: i for i in self.instruments}
        return self._instrument_map

    @property
    def instruments(self) -> list[Instrument]:
        if self._instruments is None:
            m = self._market
            made: list[Instrument] = []
            if m is not None:
                cache = m._instruments
                ids: list[int] = self.chain["id"].astype(np.int64).tolist()
                made = [cache.get(i) or m.instrument(i) for i in ids]
            self._instruments = list(self.underlyings) + made
        return self._instruments

    @property
    def quotes(self) -> Mapping[int, Quote]:
        if self._quotes is None:
            c = self.chain
            bid, ask, oi = c["bid"], c["ask"], c["open_interest"]
            now = self.now_ns

            def make(iid: int, r: int) -> Quote:
                size = max(1, int(oi[r]) // 100)
                b = float(bid[r])
                return Quote(iid, b, float(ask[r]), size if b > 0 else 0, size, now, "model")

            self._quotes = ChainRecords({u.instrument_id: self._underlying_quote(u) for u in self.underlyings},
                                        self.index, make)
        return self._quotes

    def _underlying_quote(self, u: Instrument) -> Quote:
        s = self.spots[u.symbol]
        half = max(u.tick_size, round(s * 0.0001 / u.tick_size) * u.tick_size)
        mid = round(s / u.tick_size) * u.tick_size
        return Quote(u.instrument_id, round(mid - half, 6), round(mid + half, 6), 10_000, 10_000, self.now_ns, "model")

    @property
    def vols(self) -> Mapping[int, float]:
        if self._vols is None:
            vol = self.chain["vol"]
            self._vols = ChainRecords({}, self.index, lambda _iid, r: float(vol[r]))
        return self._vols

    @property
    def stats(self) -> Mapping[int, InstrumentStats]:
        if self._stats is None:
            oi, volume = self.chain["open_interest"], self.chain["volume"]
            self._stats = ChainRecords({}, self.index, lambda iid, r: InstrumentStats(iid, int(oi[r]), int(volume[r])))
        return self._stats

    def row(self, instrument_id: int) -> dict[str, Any] | None:
        """The chain row of one contract (or None when it is not in today's chain)."""
        hit = np.flatnonzero(self.chain["id"] == instrument_id)
        if not len(hit):
            return None
        return {k: v[hit[0]].item() for k, v in self.chain.items()}


class DailyMarket:
    """The daily market of a backtest: ``dates`` (the trading days, from the price files) and
    :meth:`day` (one :class:`MarketDay`). ``prices`` symbol -> a :func:`load_prices` frame; ``vol`` one
    index for every symbol or one per symbol; ``rates`` a :func:`load_rates` series or a constant
    (continuously compounded decimal). A date one symbol or the vol index lacks is forward-filled from
    the day before (``missing='fill'``) or dropped (``'skip'``), each one reported in ``problems``.
    ``div_yield``: the yield (decimal per year) of a symbol whose file has no dividends; it is also paid
    as a cash dividend each day (spot x yield x days / 365) so that holders earn it."""

    def __init__(self, prices: Mapping[str, pd.DataFrame], vol: pd.Series | Mapping[str, pd.Series],
                 rates: pd.Series | float, model: ChainModel | None = None, *, div_yield: float | Mapping[str, float] = 0.02,
                 start: Any = None, end: Any = None, missing: BadRows = "fill") -> None:
        if not prices:
            raise DataError("prices", {}, "at least one symbol")
        if missing not in ("skip", "fill"):
            raise DataError("missing", missing, "must be skip or fill")
        self.model = model or ChainModel()
        self.symbols = list(prices)
        self.problems: list[RowProblem] = []
        for df in prices.values():
            self.problems += list(df.attrs.get("problems", []))
        given = dict(vol) if isinstance(vol, Mapping) else dict.fromkeys(self.symbols, vol)
        for v in {id(v): v for v in given.values()}.values():
            self.problems += list(v.attrs.get("problems", []))
        converted = {id(v): _dated(v) for v in given.values()}
        vols = {s: converted[id(v)] for s, v in given.items()}
        if isinstance(rates, pd.Series):
            self.problems += list(rates.attrs.get("problems", []))
        frames = {s: _price_frame(df, s) for s, df in prices.items()}
        idx = frames[self.symbols[0]].index
        for f in frames.values():
            idx = idx.union(f.index)
        lo = pd.Timestamp(start) if start is not None else None
        hi = pd.Timestamp(end) if end is not None else None
        if lo is not None:
            idx = idx[idx >= lo]
        if hi is not None:
            idx = idx[idx <= hi]
        keep = np.ones(len(idx), dtype=bool)
        self._fill_notes(frames, vols, idx, keep, missing)
        idx = idx[keep]
        if len(idx) < 2:
            spans = [f"prices[{s}] {f.index.min().date()}..{f.index.max().date()}" for s, f in frames.items()]
            spans += [f"vol {v.index.min().date()}..{v.index.max().date()}" for v in list(vols.values())[:1] if len(v)]
            window = f", within {start or '...'}..{end or '...'}" if start is not None or end is not None else ""
            raise DataError("dates", "; ".join(spans), f"fewer than two trading days with both prices and vol{window}")
        self.index = idx
        self.dates: list[date] = [d.date() for d in idx]
        cols = ("close", "open", "high", "low", "dividend")
        self._px = {s: frames[s][list(cols)].reindex(idx).ffill().to_numpy(dtype=float) for s in self.symbols}
        self._vol = {s: vols[s].reindex(idx).ffill().to_numpy(dtype=float) for s in self.symbols}
        if isinstance(rates, pd.Series):
            r = _dated(rates).sort_index()
            self._rate = r.reindex(r.index.union(idx)).ffill().bfill().reindex(idx).to_numpy(dtype=float)
        else:
            self._rate = np.full(len(idx), float(rates))
        dy = div_yield if isinstance(div_yield, Mapping) else {s: float(div_yield) for s in self.symbols}
        self.div_yield = {s: float(dy.get(s, 0.0)) for s in self.symbols}
        self.has_dividends = {s: bool(prices[s].attrs.get("has_dividends", False)) for s in self.symbols}
        self.styles = {s: "european" if s.upper() in EUROPEAN_SYMBOLS else "american" for s in self.symbols}
        self.underlyings = [Instrument(i, s) for i, s in enumerate(self.symbols)]
        self._expiries = self._expiry_calendar()
        self._expiry_dates = [e for e, _ in self._expiries]
        self._blocks: dict[int, dict[int, dict[str, np.ndarray]]] = {}
        self._instruments: dict[int, Instrument] = {}

    # -- alignment ----------------------------------------------------------------------------------
    def _fill_notes(self, frames: Mapping[str, pd.DataFrame], vols: Mapping[str, pd.Series], idx: pd.DatetimeIndex,
                    keep: np.ndarray, missing: BadRows) -> None:
        action = "filled from the day before" if missing == "fill" else "skipped (the whole date)"
        for what, have in [*((f"prices[{s}]", f.index) for s, f in frames.items()),
                           *((f"vol[{s}]", v.index) for s, v in vols.items())]:
            src = frames[what[7:-1]].attrs.get("source", what) if what.startswith("prices") else \
                vols[what[4:-1]].attrs.get("source", what)
            absent = ~idx.isin(have)
            first = have.min() if len(have) else None
            for j in np.flatnonzero(absent):
                d = idx[j]
                before_start = first is None or d < first
                self.problems.append(RowProblem(Path(str(src)).name, 0, "date", d.date().isoformat(),
                                                f"has no row in {what}",
                                                "skipped (the whole date)" if (missing == "skip" or before_start) else action))
                if missing == "skip" or before_start:
                    keep[j] = False
            if absent.any():
                log.warning("%s: %d trading date(s) missing (%s)", what, int(absent.sum()), action)

    # -- expiries -----------------------------------------------------------------------------------
    def _expiry_calendar(self) -> list[tuple[date, bool]]:
        """(expiry date, is monthly) from the first date to the last + max_dte, on trading days."""
        first, last = self.dates[0], self.dates[-1] + timedelta(days=self.model.max_dte + 7)
        trading = self.index
        out: dict[date, bool] = {}

        def on_trading_day(d: date) -> date:
            if d > self.dates[-1]:
                return d
            ts = pd.Timestamp(d)
            j = trading.searchsorted(ts, side="right") - 1
            return trading[j].date() if j >= 0 else d

        y, m = first.year, first.month
        while date(y, m, 1) <= last:
            if self.model.monthlies:
                out[on_trading_day(third_friday(y, m))] = True
            y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        if self.model.weeklies:
            d = first + timedelta(days=(4 - first.weekday()) % 7)
            while d <= last:
                if d != third_friday(d.year, d.month):
                    e = on_trading_day(d)
                    out.setdefault(e, False)
                d += timedelta(days=7)
        return sorted(out.items())

    def expiries(self, i: int) -> list[tuple[date, bool]]:
        """The expiries listed on day ``i``: (date, monthly?) within max_dte (monthlies) or weekly_weeks weeks
        (weeklies, from ``weeklies_since``), the expiry day itself included."""
        d, m = self.dates[i], self.model
        weekly_ok = m.weeklies_since is None or d >= m.weeklies_since
        out = []
        for e, monthly in self._expiries[bisect_left(self._expiry_dates, d):]:
            dte = (e - d).days
            if dte < 0:
                continue
            if monthly and dte <= m.max_dte or not monthly and weekly_ok and dte <= 7 * m.weekly_weeks:
                out.append((e, monthly))
            if dte > max(m.max_dte, 7 * m.weekly_weeks):
                break
        return out

    def monthly_expiries(self) -> list[date]:
        """Every monthly expiry date of the run (the PUT replica's roll days)."""
        return [e for e, monthly in self._expiries if monthly]

    # -- the day ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.dates)

    def instrument(self, instrument_id: int) -> Instrument:
        """The Instrument of a contract id (built once, then cached) or an underlying id."""
        if instrument_id < len(self.underlyings):
            return self.underlyings[instrument_id]
        inst = self._instruments.get(instrument_id)
        if inst is None:
            sym, exp, strike, right = decode_id(instrument_id)
            inst = option(instrument_id, self.symbols[sym], strike,
                          datetime(exp.year, exp.month, exp.day, 16, tzinfo=NEW_YORK).astimezone(UTC), right,
                          multiplier=self.model.multiplier, tick_size=self.model.tick)
            self._instruments[instrument_id] = inst
        return inst

    def spot(self, i: int, symbol: str) -> float:
        return float(self._px[symbol][i, 0])

    def rate(self, i: int) -> float:
        return float(self._rate[i])

    def vol_index(self, i: int, symbol: str) -> float:
        return float(self._vol[symbol][i])

    def div_yield_at(self, i: int, symbol: str) -> float:
        """The dividend yield of ``symbol`` on day ``i``: trailing 365-day dividends / spot for a file with
        dividends, else the constant ``div_yield``."""
        if not self.has_dividends[symbol]:
            return self.div_yield[symbol]
        d0 = self.index[i] - pd.Timedelta(days=365)
        j0 = self.index.searchsorted(d0, side="right")
        return float(self._px[symbol][j0:i + 1, 4].sum() / self._px[symbol][i, 0])

    def day(self, i: int, extra: Iterable[int] = ()) -> MarketDay:
        """Day ``i`` at the close: the listed chain, plus the contracts of ``extra`` (ids, e.g. held
        positions whose strike has left today's grid) that have not expired. Chains are priced
        :data:`BLOCK_DAYS` days at a time (one tensor call per block), so a run walks the days in order
        cheaply; any order works."""
        d = self.dates[i]
        chain = self._chain(i)
        wanted = np.array(sorted({int(x) for x in extra if int(x) >= len(self.underlyings)}), dtype=np.int64)
        if len(wanted):
            absent = wanted[~np.isin(wanted, chain["id"])].tolist()
            if absent:
                rows = self._rows_of(i, absent)
                if len(rows["id"]):
                    self._price(rows)
                    chain = {k: np.concatenate([chain[k], rows[k]]) for k in chain}
        spots, divs, dys = {}, {}, {}
        for s in self.symbols:
            spots[s] = self.spot(i, s)
            dys[s] = self.div_yield_at(i, s)
            if self.has_dividends[s]:
                divs[s] = float(self._px[s][i, 4])
            else:
                gap = (d - self.dates[i - 1]).days if i > 0 else 1
                divs[s] = spots[s] * self.div_yield[s] * gap / 365.0
        px = {s: self._px[s][i] for s in self.symbols}
        return MarketDay(
            d, close_ns(d), spots, opens={s: float(v[1]) for s, v in px.items()},
            highs={s: float(v[2]) for s, v in px.items()}, lows={s: float(v[3]) for s, v in px.items()},
            dividends=divs, rate=self.rate(i), div_yields=dys, styles=dict(self.styles), chain=chain,
            underlyings=list(self.underlyings), vol_index={s: self.vol_index(i, s) for s in self.symbols},
            market=self,
        )

    def _chain(self, i: int) -> dict[str, np.ndarray]:
        """Day ``i``'s priced chain, from the block of days it belongs to (priced once, the last two kept)."""
        b = i // BLOCK_DAYS
        block = self._blocks.get(b)
        if block is None:
            days = range(b * BLOCK_DAYS, min((b + 1) * BLOCK_DAYS, len(self.dates)))
            parts = [self._listing(j) for j in days]
            sizes = [len(p["id"]) for p in parts]
            joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            self._price(joined)
            cuts = np.cumsum(sizes)[:-1]
            block = {j: {k: v for k, v in zip(joined, vals, strict=True)}
                     for j, vals in zip(days, zip(*(np.split(joined[k], cuts) for k in joined), strict=True), strict=True)}
            if len(self._blocks) >= 2:
                self._blocks.pop(next(iter(self._blocks)))
            self._blocks[b] = block
        return block[i]

    def _day_columns(self, i: int, si: int, n: int) -> dict[str, np.ndarray]:
        s = self.symbols[si]
        return {"symbol": np.full(n, si, dtype=np.int64), "spot": np.full(n, self.spot(i, s)),
                "vol_index": np.full(n, self.vol_index(i, s)), "american": np.full(n, self.styles[s] == "american"),
                "now_ns": np.full(n, close_ns(self.dates[i]), dtype=np.int64), "rate": np.full(n, self.rate(i)),
                "q": np.full(n, self.div_yield_at(i, s))}

    def _listing(self, i: int) -> dict[str, np.ndarray]:
        """The contracts listed on day ``i`` (every symbol), unpriced."""
        m = self.model
        exps = self.expiries(i)
        e_ns = np.array([close_ns(e) for e, _ in exps], dtype=np.int64)
        e_days = np.array([(e - date(1970, 1, 1)).days for e, _ in exps], dtype=np.int64)
        e_monthly = np.array([is_m for _, is_m in exps], dtype=bool)
        parts = []
        for si, s in enumerate(self.symbols):
            spot = self.spot(i, s)
            step = m.strike_step(spot)
            k_lo, k_hi = math.ceil(spot * m.strikes_pct[0] / step), math.floor(spot * m.strikes_pct[1] / step)
            strikes = np.arange(k_lo, k_hi + 1, dtype=np.float64) * step
            ne, nk = len(exps), len(strikes)
            # every (expiry, right, strike): expiries outermost, puts before calls
            ei = np.repeat(np.arange(ne), 2 * nk)
            right = np.tile(np.repeat([-1.0, 1.0], nk), ne)
            strike = np.tile(strikes, 2 * ne)
            cents = np.rint(strike * 100).astype(np.int64)
            ids = ((((si + 1) * _ID_EXPIRY + e_days[ei]) * _ID_STRIKE + cents) * 2) + (right > 0)
            part = {"id": ids.astype(np.int64), "right": right, "strike": strike, "expiry_ns": e_ns[ei],
                    "monthly": e_monthly[ei]}
            part.update(self._day_columns(i, si, len(ids)))
            parts.append(part)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _rows_of(self, i: int, ids: list[int]) -> dict[str, np.ndarray]:
        """Unpriced rows for contracts ``ids`` on day ``i`` (those not expired before today)."""
        monthlies = set(self.monthly_expiries())
        keep = [(x, *decode_id(x)) for x in ids]
        keep = [r for r in keep if r[2] >= self.dates[i] and 0 <= r[1] < len(self.symbols)]
        cols: dict[str, list[np.ndarray]] = {}
        for x, si, exp, strike, right in keep:
            row = {"id": np.array([x], np.int64), "right": np.array([right]), "strike": np.array([strike]),
                   "expiry_ns": np.array([close_ns(exp)], np.int64), "monthly": np.array([exp in monthlies])}
            row.update(self._day_columns(i, si, 1))
            for k, v in row.items():
                cols.setdefault(k, []).append(v)
        if not cols:
            return {"id": np.zeros(0, np.int64)}
        return {k: np.concatenate(v) for k, v in cols.items()}

    def _price(self, c: dict[str, np.ndarray]) -> None:
        """Fill ttm, value, vol, delta, bid, ask, open interest and volume of rows ``c`` (in place)."""
        with _small_batch_threads(len(c["id"])):
            self._price_unlocked(c)

    def _price_unlocked(self, c: dict[str, np.ndarray]) -> None:
        from greekfire.quant import MarketInputs, OptionBatch, get_engine

        m = self.model
        ttm = np.maximum(c["expiry_ns"] - c["now_ns"], 0) / 1e9 / (365.0 * 86400.0)
        q, rate, spot = c["q"], c["rate"], c["spot"]
        fwd = spot * np.exp((rate - q) * ttm)
        k = np.log(c["strike"] / fwd)
        vol = m.implied_vol(torch.from_numpy(c["vol_index"]), torch.from_numpy(k), torch.from_numpy(ttm)).numpy()
        value = np.zeros(len(k))
        delta = np.zeros(len(k))
        live = ttm > 0
        intrinsic = np.maximum(c["right"] * (spot - c["strike"]), 0.0)

        def run(engine: str, sel: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
            batch = OptionBatch(torch.from_numpy(c["right"][sel]), torch.from_numpy(c["strike"][sel]),
                                torch.from_numpy(ttm[sel]), "european" if engine == "bsm" else "american")
            mkt = MarketInputs(torch.from_numpy(spot[sel]), torch.from_numpy(rate[sel]), torch.from_numpy(q[sel]),
                               torch.from_numpy(vol[sel]))
            out = get_engine(engine)(batch, mkt, outputs=outputs, compile=False)
            return {k: v.cpu().numpy() for k, v in out.items()}

        if live.any():
            out = run("bsm", live, ("value", "delta"))
            value[live], delta[live] = out["value"], out["delta"]
        # American options: the Bjerksund-Stensland 2002 value (the registry's fastest American engine)
        # where early exercise is worth something, in the money or within 10% of it; further out the European
        # value stands (its early-exercise premium is small: 0.01 on a 100 stock's 80-strike 6-month put at
        # 5% rates and 30% vol). Deltas are the European twin's (bump Greeks would cost 10x).
        early = live & c["american"] & (c["right"] * (spot - c["strike"]) > -0.1 * spot)
        if early.any():
            value[early] = np.maximum(run("bs2002", early, ("value",))["value"], value[early])
        value[~live] = intrinsic[~live]
        itm = intrinsic > 0
        delta[~live] = np.where(itm[~live], c["right"][~live], 0.0)
        value = np.maximum(value, 0.0)
        bid, ask = m.bid_ask(value)
        dte = ttm * 365.0
        z = k / np.maximum(vol * np.sqrt(np.maximum(ttm, 1.0 / 365.0)), 1e-9)
        weight = np.exp(-0.5 * (z / m.liquidity_width) ** 2) * np.exp(-dte / m.liquidity_dte)
        weight *= np.where(c["monthly"], 1.0, m.weekly_liquidity)
        c.update(ttm=ttm, value=value, vol=vol, delta=delta, bid=bid, ask=ask,
                 open_interest=np.floor(m.oi_atm * weight).astype(np.int64),
                 volume=np.floor(m.volume_atm * weight).astype(np.int64))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread inside the block, as it was after it. For a backtest's small daily batches (a
    chain of a few thousand options, a strategy scoring them): worker threads there mostly add hand-offs,
    and on a busy machine they wait for cores (a day's chain: 1.5 ms on one thread, 60 ms on two with
    other jobs running)."""
    with _small_batch_threads(0):
        yield


@contextmanager
def _small_batch_threads(n: int) -> Iterator[None]:
    """One torch thread while a block of chains (up to a few hundred thousand options) is priced (see
    :func:`one_torch_thread`)."""
    before = torch.get_num_threads()
    if before == 1 or n > 1_000_000:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_market(prices: str | Path | Mapping[str, str | Path | None] | None = None, vol: str | Path | None = None,
                rates: str | Path | float = 2.0, *, model: ChainModel | None = None, start: Any = None, end: Any = None,
                bad_rows: BadRows = "skip", missing: BadRows = "fill", div_yield: float = 0.02,
                symbols: Iterable[str] = ("SPX",)) -> DailyMarket:
    """Read the files and build the :class:`DailyMarket`: ``prices`` one file (for the first of
    ``symbols``) or symbol -> file (None: the default S&P 500 file), ``vol`` the index file (None: the
    default VIX file), ``rates`` percent or a CSV (or a series). A bad row is handled as ``bad_rows`` says,
    a date one input lacks as ``missing`` says (``fill``: from the day before; ``skip``: dropped)."""
    syms = list(symbols)
    files = dict(prices) if isinstance(prices, Mapping) else {syms[0]: prices}
    frames = {s: load_prices(p, bad_rows=bad_rows) for s, p in files.items()}
    v = load_vol(vol, bad_rows=bad_rows)
    r = rates if isinstance(rates, pd.Series) else load_rates(rates, bad_rows=bad_rows)
    return DailyMarket(frames, v, r, model, div_yield=div_yield, start=start, end=end, missing=missing)
