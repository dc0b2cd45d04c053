"""Performance figures of a backtest: CAGR, volatility, Sharpe, Sortino, maximum drawdown and its length,
Calmar, win rate, premium per year, turnover; and the buy-and-hold benchmark on the same market.

Conventions: returns are simple daily returns of the equity series (one row per trading day); annualised
with 252 trading days a year (volatility, Sharpe, Sortino) and with calendar time for growth (CAGR:
365.25 days a year). ``rf`` is the risk-free rate, continuously compounded per year (the
``load_rates`` convention): a constant or a dated series, earned over each day's calendar gap.
Drawdowns are fractions (-0.25 = 25% below the running peak), their length in calendar days from the
peak to the recovery (or to the last day when there was none).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from greekfire.core.errors import DataError

if TYPE_CHECKING:
    from greekfire.strategies.wheel.market import DailyMarket

TRADING_DAYS = 252
SUMMARY_KEYS = ("start_value", "end_value", "years", "cagr", "vol", "sharpe", "sortino", "max_drawdown",
                "max_dd_days", "calmar", "win_rate", "premium_per_year", "premium_yield", "turnover")
SUMMARY_UNITS = {
    "start_value": "currency", "end_value": "currency", "years": "years", "cagr": "per year, 0.05 = 5%",
    "vol": "per year (daily x sqrt 252)", "sharpe": "per year, over rf", "sortino": "per year, over rf",
    "max_drawdown": "fraction, -0.3 = -30%", "max_dd_days": "calendar days, peak to recovery",
    "calmar": "cagr / |max drawdown|", "win_rate": "fraction of closed option positions with a profit",
    "premium_per_year": "currency per year", "premium_yield": "premium per year / mean equity",
    "turnover": "traded option premium and share value per year / mean equity",
}


def dated(series: pd.Series) -> pd.Series:
    """``series`` as floats on a sorted DatetimeIndex (an index of ``datetime.date``, as a backtest's
    results carry, or of strings is converted)."""
    idx = series.index if isinstance(series.index, pd.DatetimeIndex) else pd.DatetimeIndex(pd.to_datetime(list(series.index)))
    return pd.Series(series.to_numpy(dtype=float), index=idx, name=series.name).sort_index()


def _check(equity: pd.Series) -> pd.Series:
    if not isinstance(equity, pd.Series) or len(equity) < 2:
        raise DataError("equity", type(equity).__name__, "needs a series of at least two days")
    e = dated(equity)
    if not np.isfinite(e.to_numpy()).all():
        bad = e.index[~np.isfinite(e.to_numpy())][0]
        raise DataError("equity", float(e.loc[bad]), "must be finite on every day", str(bad))
    if (e <= 0).any():
        bad = e.index[(e <= 0).to_numpy()][0]
        raise DataError("equity", float(e.loc[bad]), "must stay > 0 for returns (the account was wiped out)", str(bad))
    return e


def rf_returns(index: pd.DatetimeIndex, rf: float | pd.Series) -> np.ndarray:
    """The risk-free simple return earned over each day of ``index`` after the first (from the previous
    day's close): exp(rate x calendar days / 365) - 1, rate as of the previous day."""
    gaps = np.diff(index.values).astype("timedelta64[s]").astype(float) / 86400.0
    if isinstance(rf, pd.Series):
        r = rf.sort_index()
        rates = r.reindex(r.index.union(index)).ffill().bfill().reindex(index).to_numpy(dtype=float)[:-1]
    else:
        rates = np.full(len(gaps), float(rf))
    return np.expm1(rates * gaps / 365.0)


def drawdown(equity: pd.Series) -> pd.Series:
    """Fraction below the running peak on each day (0 at a new high, negative below it)."""
    e = dated(equity)
    return e / e.cummax() - 1.0


def max_drawdown(equity: pd.Series) -> tuple[float, int]:
    """The deepest drawdown (a fraction <= 0) and the calendar days from its peak to the recovery of that
    peak (or to the last day when it was not recovered)."""
    e = dated(equity)
    dd = drawdown(e)
    trough = int(np.argmin(dd.to_numpy()))
    depth = float(dd.iloc[trough])
    if depth >= 0:
        return 0.0, 0
    peak = int(np.argmax(e.to_numpy()[: trough + 1]))
    after = np.flatnonzero(e.to_numpy()[trough:] >= e.iloc[peak])
    end = trough + int(after[0]) if len(after) else len(e) - 1
    return depth, int((e.index[end] - e.index[peak]).days)


def _is_option(trades: pd.DataFrame) -> np.ndarray:
    """Which trade rows are option trades: a ``right`` column (non-zero), else the instrument: an option
    symbol (``SPX 20200320 2875P``, with spaces) or a contract id (>= 10^12); shares otherwise."""
    if "right" in trades:
        return (trades["right"].astype(float) != 0).to_numpy()
    inst = trades["instrument"]
    return np.array([(" " in x) if isinstance(x, str) else int(x) >= 10**12 for x in inst.tolist()], dtype=bool)


def _multiplier(trades: pd.DataFrame, multiplier: float) -> np.ndarray:
    if "multiplier" in trades:
        return trades["multiplier"].astype(float).to_numpy()
    return np.where(_is_option(trades), multiplier, 1.0)


def _kinds(trades: pd.DataFrame) -> pd.Series:
    return trades["kind"].astype(str).str.lower() if "kind" in trades else pd.Series("", index=trades.index)


def win_rate(trades: pd.DataFrame, multiplier: float = 100.0) -> float:
    """Share of closed option positions that made money: the premium sold, less what closing cost and the
    fees, is positive. ``trades`` columns: instrument, side (+1 buy / -1 sell), qty, price (currency per
    share), fee, and optionally kind, multiplier (default 100 for options) and intrinsic. A row whose kind
    says expired closes the position at 0; one that says assigned or exercised closes it at ``intrinsic``
    (currency per share) when the trades carry that column, and otherwise counts as a loss (the option
    ended in the money). A position is closed when its quantities net to zero. NaN when none closed."""
    need = {"instrument", "side", "qty", "price"}
    if trades is None or trades.empty or not need <= set(trades.columns):
        return float("nan")
    t = trades[_is_option(trades)]
    if t.empty:
        return float("nan")
    kind = _kinds(t)
    expired = kind.str.contains("expir").to_numpy()
    assigned = (kind.str.contains("assign") | kind.str.contains("exercis")).to_numpy()
    price = t["price"].astype(float).to_numpy().copy()
    price[expired] = 0.0
    if "intrinsic" in t:
        price[assigned] = t["intrinsic"].astype(float).to_numpy()[assigned]
    qty = t["qty"].astype(float).abs().to_numpy()
    side = t["side"].astype(float).to_numpy()
    fee = t["fee"].astype(float).to_numpy() if "fee" in t else 0.0
    flow = -side * qty * price * _multiplier(t, multiplier) - fee
    g = pd.DataFrame({"i": t["instrument"].astype(str).to_numpy(), "flow": flow, "q": side * qty,
                      "lost": assigned & ("intrinsic" not in t)}).groupby("i").agg(flow=("flow", "sum"), q=("q", "sum"),
                                                                                     lost=("lost", "any"))
    closed = g[np.isclose(g["q"], 0.0)]
    if closed.empty:
        return float("nan")
    return float(((closed["flow"] > 0) & ~closed["lost"]).mean())


def summary(equity: pd.Series, premium: pd.Series | None = None, trades: pd.DataFrame | None = None,
            rf: float | pd.Series = 0.0) -> dict[str, float]:
    """The figures of one equity curve (module doc for units): ``equity`` date -> account value
    (currency); ``premium`` date -> net option premium collected that day (currency); ``trades`` one row
    per trade (instrument, side, qty, price, fee, optional multiplier) for the win rate and turnover;
    ``rf`` continuously compounded per year. Figures that cannot be computed are NaN (no trades: no
    win rate)."""
    e = _check(equity)
    ret = e.pct_change().to_numpy()[1:]
    excess = ret - rf_returns(pd.DatetimeIndex(e.index), rf)
    years = (e.index[-1] - e.index[0]).days / 365.25
    if years <= 0:
        raise DataError("equity", f"{e.index[0]}..{e.index[-1]}", "the dates must span some time")
    cagr = (e.iloc[-1] / e.iloc[0]) ** (1.0 / years) - 1.0
    sd = float(np.std(ret, ddof=1)) if len(ret) > 1 else float("nan")
    ann = math.sqrt(TRADING_DAYS)
    sharpe = float(np.mean(excess) / np.std(excess, ddof=1) * ann) if len(ret) > 1 and np.std(excess) > 0 else float("nan")
    downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
    sortino = float(np.mean(excess) / downside * ann) if downside > 0 else float("nan")
    mdd, mdd_days = max_drawdown(e)
    mean_eq = float(e.mean())
    prem_year = float(dated(premium).sum()) / years if premium is not None else float("nan")
    turnover = float("nan")
    if trades is not None and not trades.empty and {"instrument", "qty", "price"} <= set(trades.columns):
        moved = ~_kinds(trades).str.contains("expir").to_numpy()  # an expiry trades nothing
        value = trades["qty"].astype(float).abs() * trades["price"].astype(float).abs() * _multiplier(trades, 100.0)
        turnover = float(value[moved].sum()) / years / mean_eq
    return {
        "start_value": float(e.iloc[0]), "end_value": float(e.iloc[-1]), "years": years, "cagr": float(cagr),
        "vol": sd * ann, "sharpe": sharpe, "sortino": sortino, "max_drawdown": mdd, "max_dd_days": float(mdd_days),
        "calmar": float(cagr / abs(mdd)) if mdd < 0 else float("nan"),
        "win_rate": win_rate(trades) if trades is not None else float("nan"),
        "premium_per_year": prem_year, "premium_yield": prem_year / mean_eq if premium is not None else float("nan"),
        "turnover": turnover,
    }


def buy_and_hold(market: DailyMarket, symbol: str | None = None, starting_value: float = 1_000_000.0) -> pd.Series:
    """The value of ``starting_value`` put into ``symbol`` (default: the market's first) on the first day
    and held, dividends reinvested on their day (the file's dividend column, or the constant yield the
    market pays daily for a price-only file). Indexed by date, currency."""
    sym = symbol or market.symbols[0]
    px = market._px[sym]
    close, div = px[:, 0], px[:, 4].copy()
    if not market.has_dividends[sym]:
        gaps = np.diff(market.index.values).astype("timedelta64[s]").astype(float) / 86400.0
        div[1:] = close[1:] * market.div_yield[sym] * gaps / 365.0
    growth = np.ones(len(close))
    growth[1:] = (close[1:] + div[1:]) / close[:-1]
    return pd.Series(starting_value * np.cumprod(growth), index=market.index, name=f"buy_and_hold_{sym}")


def evaluate(equity: pd.Series, market: DailyMarket, *, premium: pd.Series | None = None,
             trades: pd.DataFrame | None = None, rf: float | pd.Series | None = None) -> dict[str, dict[str, float]]:
    """:func:`summary` of a backtest's ``equity`` beside buy-and-hold of the market's first symbol and the
    PUT-index replica over the same days (both scaled to the same starting value); ``rf`` defaults to the
    market's rates. Keys ``wheel``, ``buy_and_hold``, ``put_replica``."""
    from greekfire.strategies.wheel.putindex import put_replica

    rates = rf if rf is not None else pd.Series(market._rate, index=market.index)
    e = dated(equity)
    out = {"wheel": summary(e, premium, trades, rates)}
    bh = buy_and_hold(market, starting_value=float(e.iloc[0]))
    bh = bh[(bh.index >= e.index[0]) & (bh.index <= e.index[-1])]
    out["buy_and_hold"] = summary(bh / bh.iloc[0] * float(e.iloc[0]), rf=rates)
    try:
        rep = put_replica(market, e.index[0], e.index[-1], starting_value=float(e.iloc[0]))
        out["put_replica"] = summary(rep["equity"], rep["premium"], rf=rates)
    except DataError:  # no monthly expiry inside a short run
        out["put_replica"] = {k: float("nan") for k in SUMMARY_KEYS}
    return out
