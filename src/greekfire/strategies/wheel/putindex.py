"""A replica of the CBOE S&P 500 PutWrite index (PUT) on the backtest's market, and the published figures
it is checked against.

The PUT rule: on each monthly expiry day (third Friday), the expiring puts settle and the index sells
one-month at-the-money S&P 500 puts (the listed strike at or just below the index level), as many as the
account's cash covers at the strike (fully collateralised); the cash, premium included, earns the
Treasury-bill rate. Our replica follows it on the :class:`~greekfire.strategies.wheel.market.DailyMarket`:
puts are valued with the market's :class:`~greekfire.strategies.wheel.market.ChainModel` surface, sold at
the model mid (``price='bid'`` sells at the bid), settled at expiry on the close (CBOE settles PUT on the
morning's special opening quotation), and the position is fractional (an index, not an account).

:func:`published_put_table` gives Bondarenko (2016) figures for 2006-2015 and :func:`put_table` ours on
the same basis (monthly returns, month-end values).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from greekfire.core.errors import DataError
from greekfire.strategies.wheel.analytics import buy_and_hold, dated, drawdown, rf_returns
from greekfire.strategies.wheel.market import DailyMarket

# Annual averages of the 3-month Treasury-bill secondary-market rate (percent; FRED series TB3MS, the
# monthly figures averaged over each calendar year, rounded to 0.01). The PUT index's collateral earns the
# T-bill rate; a step per year is a coarse stand-in for the monthly rate (2008 fell from 3% to 0 within it).
TBILL_3M_ANNUAL: dict[int, float] = {
    1990: 7.50, 1991: 5.38, 1992: 3.43, 1993: 3.00, 1994: 4.25, 1995: 5.49, 1996: 5.01, 1997: 5.06,
    1998: 4.78, 1999: 4.64, 2000: 5.82, 2001: 3.39, 2002: 1.60, 2003: 1.01, 2004: 1.37, 2005: 3.15,
    2006: 4.73, 2007: 4.36, 2008: 1.37, 2009: 0.15, 2010: 0.14, 2011: 0.05, 2012: 0.09, 2013: 0.06,
    2014: 0.03, 2015: 0.05, 2016: 0.32, 2017: 0.93, 2018: 1.94, 2019: 2.06, 2020: 0.37, 2021: 0.05,
    2022: 2.02, 2023: 5.07, 2024: 4.97,
}


def tbill_rates() -> pd.Series:
    """:data:`TBILL_3M_ANNUAL` as a rates series (continuously compounded decimals dated 1 January of each
    year), the shape :func:`~greekfire.strategies.wheel.market.load_rates` returns. Later years take 2024's."""
    s = pd.Series({pd.Timestamp(year=y, month=1, day=1): math.log1p(p / 100.0) for y, p in TBILL_3M_ANNUAL.items()},
                  name="rate")
    s.index = pd.DatetimeIndex(s.index)
    s.attrs["problems"] = []
    s.attrs["source"] = "3-month T-bill, annual averages (FRED TB3MS)"
    return s


def published_put_table() -> dict[str, Any]:
    """Bondarenko (2016), "An Analysis of Index Option Writing for Russell 2000, S&P 500 ...", CBOE: the PUT
    index and the S&P 500 (total return) over 2006-2015, from monthly returns. Fractions per year."""
    return {
        "source": "Bondarenko (2016), CBOE PutWrite index study, 2006-01..2015-12, monthly returns",
        "period": ("2006-01-01", "2015-12-31"),
        "put": {"cagr": 0.0659, "std": 0.1151, "sharpe": 0.52, "max_drawdown": -0.327, "gross_premium": 0.241},
        "sp500": {"cagr": 0.0709, "std": 0.1511, "max_drawdown": -0.509},
    }


def put_replica(market: DailyMarket, start: Any = None, end: Any = None, *, symbol: str | None = None,
                price: str = "mid", starting_value: float = 100.0) -> pd.DataFrame:
    """The PUT-index replica on ``market`` from the first monthly expiry on or after ``start`` to ``end``.

    One row per trading day: ``equity`` (cash less the puts' model value), ``cash``, ``units`` (puts
    short, in units of the index), ``strike``, ``expiry``, ``put_value`` (per unit), ``premium`` (currency
    received that day), ``premium_pct`` (premium / the account before the sale), ``spot``, ``rate``.
    ``price``: ``mid`` (the model value) or ``bid`` (the model bid)."""
    if price not in ("mid", "bid"):
        raise DataError("price", price, "must be mid or bid")
    sym = symbol or market.symbols[0]
    idx = market.index
    lo = pd.Timestamp(start) if start is not None else idx[0]
    hi = pd.Timestamp(end) if end is not None else idx[-1]
    expiries = [pd.Timestamp(e) for e in market.monthly_expiries()]
    rolls = [e for e in expiries if lo <= e <= hi and e in idx]
    if not rolls:
        raise DataError("start", f"{lo.date()}..{hi.date()}", "no monthly expiry inside the period")
    first = idx.get_loc(rolls[0])
    last = int(idx.searchsorted(hi, side="right")) - 1
    days = idx[first:last + 1]
    n = len(days)
    pos = np.arange(first, last + 1)
    spot = market._px[sym][pos, 0]
    rate = np.array([market.rate(int(i)) for i in pos])
    q = np.array([market.div_yield_at(int(i), sym) for i in pos])
    vix = np.array([market.vol_index(int(i), sym) for i in pos])
    roll_set = set(rolls)
    strike = np.zeros(n)
    expiry = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    is_roll = np.array([d in roll_set for d in days])
    # the strike and expiry held each day (set on the roll day, kept until the next roll)
    k, e = 0.0, np.datetime64("NaT")
    for j in range(n):
        if is_roll[j]:
            step = market.model.strike_step(spot[j])
            k = math.floor(spot[j] / step + 1e-9) * step
            nxt = [x for x in expiries if x > days[j]]
            e = np.datetime64(nxt[0]) if nxt else np.datetime64("NaT")
        strike[j], expiry[j] = k, e
    ttm = np.maximum((expiry - days.values).astype("timedelta64[s]").astype(float) / 86400.0 / 365.0, 0.0)
    ttm = np.nan_to_num(ttm, nan=0.0)
    value = _put_values(market, spot, strike, ttm, rate, q, vix)
    sell = value.copy()
    if price == "bid":
        sell = market.model.bid_ask(value)[0]
    # cash: accrues the rate; on a roll day the expiring puts settle on the close, then new puts are sold
    gaps = np.diff(days.values).astype("timedelta64[s]").astype(float) / 86400.0
    cash = np.zeros(n)
    units = np.zeros(n)
    prem = np.zeros(n)
    prem_pct = np.zeros(n)
    c, u, k_held = float(starting_value), 0.0, 0.0
    for j in range(n):
        if j:
            c *= math.exp(rate[j - 1] * gaps[j - 1] / 365.0)
        if is_roll[j]:
            c -= u * max(k_held - spot[j], 0.0)
            if j < n - 1:
                u = c / strike[j]
                prem[j] = u * sell[j]
                prem_pct[j] = prem[j] / c
                c += prem[j]
                k_held = strike[j]
            else:
                u = 0.0
        cash[j], units[j] = c, u
    equity = cash - units * value
    return pd.DataFrame({"equity": equity, "cash": cash, "units": units, "strike": strike, "expiry": expiry,
                         "put_value": value, "premium": prem, "premium_pct": prem_pct, "spot": spot, "rate": rate},
                        index=days)


def _put_values(market: DailyMarket, spot: np.ndarray, strike: np.ndarray, ttm: np.ndarray, rate: np.ndarray,
                q: np.ndarray, vix: np.ndarray) -> np.ndarray:
    """Model values (per unit) of the European puts, in one tensor call; intrinsic at expiry."""
    from greekfire.quant import bsm_price

    live = (ttm > 0) & (strike > 0)
    out = np.maximum(strike - spot, 0.0)
    if live.any():
        fwd = spot[live] * np.exp((rate[live] - q[live]) * ttm[live])
        vol = market.model.implied_vol(torch.from_numpy(vix[live]), torch.from_numpy(np.log(strike[live] / fwd)),
                                       torch.from_numpy(ttm[live]))
        out[live] = bsm_price(-1.0, torch.from_numpy(spot[live]), torch.from_numpy(strike[live]),
                              torch.from_numpy(ttm[live]), torch.from_numpy(rate[live]), torch.from_numpy(q[live]),
                              vol, compile=False).numpy()
    return out


def monthly_figures(equity: pd.Series, rf: float | pd.Series = 0.0, start: Any = None, end: Any = None,
                    premium_pct: pd.Series | None = None) -> dict[str, float]:
    """Figures on Bondarenko's basis: month-end values from the last month-end before ``start`` to
    ``end``; ``cagr``; ``std`` of monthly returns x sqrt 12; ``sharpe`` (mean monthly excess return x 12
    / std); ``max_drawdown`` of month-end values; ``gross_premium`` (premium / account, summed per
    year, averaged over the years) when ``premium_pct`` is given. Fractions per year."""
    e = dated(equity)
    lo = pd.Timestamp(start) if start is not None else e.index[0]
    hi = pd.Timestamp(end) if end is not None else e.index[-1]
    month_end = e.groupby(e.index.to_period("M")).tail(1)
    base = month_end[month_end.index < lo]
    body = month_end[(month_end.index >= lo) & (month_end.index <= hi)]
    m = pd.concat([base.tail(1), body]) if len(base) else body
    if len(m) < 3:
        raise DataError("equity", f"{lo.date()}..{hi.date()}", "needs at least two months inside the period")
    ret = m.pct_change().to_numpy()[1:]
    rf_m = _period_rf(pd.DatetimeIndex(m.index), rf)
    years = (len(m) - 1) / 12.0
    std = float(np.std(ret, ddof=1) * math.sqrt(12))
    out = {
        "cagr": float((m.iloc[-1] / m.iloc[0]) ** (1 / years) - 1),
        "std": std,
        "sharpe": float(np.mean(ret - rf_m) * 12 / std) if std > 0 else float("nan"),
        "max_drawdown": float(drawdown(m).min()),
        "daily_max_drawdown": float(drawdown(e[(e.index >= (m.index[0])) & (e.index <= hi)]).min()),
    }
    if premium_pct is not None:
        pp = dated(premium_pct)
        p = pp[(pp.index >= lo) & (pp.index <= hi)]
        out["gross_premium"] = float(p.sum() / years)
    return out


def _period_rf(index: pd.DatetimeIndex, rf: float | pd.Series) -> np.ndarray:
    """Risk-free return over each period between consecutive dates of ``index``."""
    return rf_returns(index, rf)


def put_table(market: DailyMarket, start: Any = "2006-01-01", end: Any = "2015-12-31", *, rf: float | pd.Series | None = None,
              price: str = "mid") -> dict[str, Any]:
    """Our replica and the S&P 500 (total return, the market's dividends) over ``start..end`` on the
    published table's basis, beside :func:`published_put_table`. The replica starts at the last monthly
    expiry before ``start`` so that it is invested on the first day. ``rf`` for the Sharpe ratio: default the
    market's rates."""
    lo = pd.Timestamp(start)
    before = [pd.Timestamp(e) for e in market.monthly_expiries() if pd.Timestamp(e) < lo and pd.Timestamp(e) in market.index]
    if not before:
        raise DataError("start", str(start), "the market must begin at least one monthly expiry before it")
    rep = put_replica(market, before[-1], end, price=price)
    rates = rf if rf is not None else pd.Series(rep["rate"].to_numpy(), index=rep.index)
    ours = monthly_figures(rep["equity"], rates, start, end, rep["premium_pct"])
    bh = buy_and_hold(market)
    spx = monthly_figures(bh[bh.index >= before[-1]], rates, start, end)
    pub = published_put_table()
    return {"published": pub, "ours": {"put": ours, "sp500": spx}, "price": price,
            "period": (str(lo.date()), str(pd.Timestamp(end).date())),
            "gaps": {
                "put": {k: ours[k] - v for k, v in pub["put"].items() if k in ours},
                "sp500": {k: spx[k] - v for k, v in pub["sp500"].items() if k in spx},
            }}


def format_put_table(table: dict[str, Any]) -> str:
    """The table as Markdown rows (published | ours | gap), percent with two decimals."""
    pub, ours = table["published"], table["ours"]
    rows = ["| | published | ours | gap |", "|---|---:|---:|---:|"]
    names = {"cagr": "CAGR", "std": "standard deviation", "sharpe": "Sharpe ratio", "max_drawdown": "maximum drawdown",
             "gross_premium": "average annual gross premium"}
    for side, label in (("put", "PUT"), ("sp500", "S&P 500")):
        for key, name in names.items():
            if key not in pub[side]:
                continue
            p, o = pub[side][key], ours[side][key]
            fmt = (lambda x: f"{x:.2f}") if key == "sharpe" else (lambda x: f"{100 * x:.2f}%")
            gap = f"{o - p:+.2f}" if key == "sharpe" else f"{100 * (o - p):+.2f} pts"
            rows.append(f"| {label} {name} | {fmt(p)} | {fmt(o)} | {gap} |")
    return "\n".join(rows)
