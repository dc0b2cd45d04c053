"""A synthetic options market: a Heston underlying and daily option chains priced under the same model.

The underlying follows Heston (stochastic variance with negative spot/vol correlation), so the chains
have a realistic skew: out-of-the-money puts carry higher implied vols than calls at the same distance.
Each quote date lists calls and puts on several expiries with strikes spread by the expiry's expected
move; quotes get bid/ask spreads on a tick grid, Poisson volume and open interest that fade away from
the money, a last trade inside the spread, and the implied vol and Greeks a vendor would publish. Every
number follows from ``seed``.

A small share of rows (``bad_row_frac``) is corrupted on purpose, as vendor files are: crossed quotes,
zero bid and ask, a missing bid. Cleaning must drop and count them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from greekfire.core.errors import DataError, GreekfireError
from greekfire.data.schema import (
    clean_quotes,
    conform_bars,
    conform_quotes,
    read_bars,
    read_quotes,
    write_bars,
    write_quotes,
)
from greekfire.data.storage import StorageLike
from greekfire.data.storage_check import storage_error

TRADING_DAYS = 252


@dataclass(frozen=True, slots=True)
class HestonParams:
    """Heston parameters: ``v0``/``theta`` variances (vol^2, per year), ``kappa`` mean reversion per year,
    ``sigma`` vol of variance, ``rho`` spot/variance correlation."""

    v0: float = 0.04
    kappa: float = 2.0
    theta: float = 0.04
    sigma: float = 0.5
    rho: float = -0.7

    def __post_init__(self) -> None:
        for name in ("v0", "kappa", "theta", "sigma"):
            if getattr(self, name) <= 0:
                raise DataError(f"heston.{name}", getattr(self, name), "must be > 0")
        if not -1.0 < self.rho < 1.0:
            raise DataError("heston.rho", self.rho, "must be in (-1, 1)")


def _tick(price: np.ndarray) -> np.ndarray:
    """US equity-option style ticks: 0.01 under 3.00, 0.05 above (currency)."""
    return np.where(price < 3.0, 0.01, 0.05)


def _strike_step(spot: float) -> float:
    """A round strike spacing near 1% of spot (1, 2.5, 5 x 10^k)."""
    raw = spot * 0.01
    mag = 10 ** np.floor(np.log10(raw))
    for m in (1.0, 2.5, 5.0, 10.0):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)  # pragma: no cover


def _expiry_for(day: pd.Timestamp, calendar_days: int) -> pd.Timestamp:
    """The first Friday on or after ``day + calendar_days`` (listed options expire on Fridays)."""
    target = day + pd.Timedelta(days=calendar_days)
    return target + pd.Timedelta(days=(4 - target.day_of_week) % 7)


def generate_market(
    seed: int,
    days: int,
    *,
    start: str | pd.Timestamp = "2024-01-02",
    underlying: str = "SYN",
    spot: float = 100.0,
    rate: float = 0.03,
    div_yield: float = 0.01,
    heston: HestonParams | None = None,
    history_days: int = 120,
    expiry_days: tuple[int, ...] = (7, 14, 30, 60, 91),
    strikes_per_expiry: int = 15,
    bad_row_frac: float = 0.01,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate ``days`` business days of option chains, plus ``history_days`` of bars before them.

    Returns ``(quotes, underlying_bars)`` in the schemas of :mod:`greekfire.data.schema`; quotes start on
    the first business day on or after ``start``. ``spot`` is the first bar's close; ``rate`` and
    ``div_yield`` (continuously compounded, per year) are also stored in ``quotes.attrs``. Deterministic by
    ``seed``.
    """
    # lazy: torch and the pricing engines cost over a second to import, and the partition readers and
    # writers of this module (``greekfire data spx --out``) need neither
    import torch

    from greekfire.quant import bsm_greeks, heston_paths, heston_price, implied_vol

    if days < 1:
        raise DataError("days", days, "at least 1 quote day")
    if history_days < 0:
        raise DataError("history_days", history_days, "must be >= 0")
    if not 0.0 <= bad_row_frac < 0.5:
        raise DataError("bad_row_frac", bad_row_frac, "a fraction in [0, 0.5)")
    if strikes_per_expiry < 1 or not expiry_days or min(expiry_days) < 1:
        raise DataError(
            "expiry_days/strikes_per_expiry", (expiry_days, strikes_per_expiry), "need >= 1 of each"
        )
    hp = heston or HestonParams()
    first_quote = pd.bdate_range(pd.Timestamp(start), periods=1)[0]
    dates = pd.bdate_range(end=first_quote, periods=history_days + 1).append(
        pd.bdate_range(first_quote, periods=days)[1:]
    )
    n = len(dates)
    rng = np.random.default_rng(seed)

    # ---- the underlying: one Heston path, one step per trading day
    steps = max(n - 1, 1)
    s_paths, v_paths = heston_paths(
        spot, rate, div_yield, hp.v0, hp.kappa, hp.theta, hp.sigma, hp.rho, steps / TRADING_DAYS, steps, 2,
        seed=int(seed), antithetic=True,
    )  # fmt: skip
    close = s_paths[0, :n].detach().cpu().numpy().astype(np.float64)
    var = np.maximum(v_paths[0, :n].detach().cpu().numpy().astype(np.float64), 1e-6)
    daily_sd = np.sqrt(var / TRADING_DAYS)
    prev = np.concatenate([[close[0]], close[:-1]])
    open_ = prev * np.exp(rng.normal(0.0, 0.2, n) * daily_sd)
    wick = np.abs(rng.normal(0.0, 0.5, (2, n))) * daily_sd
    bars = conform_bars(
        pd.DataFrame(
            {
                "date": dates,
                "underlying": underlying,
                "open": open_,
                "high": np.maximum(open_, close) * (1 + wick[0]),
                "low": np.minimum(open_, close) * (1 - wick[1]),
                "close": close,
                "adj_close": close,
                "volume": np.round(rng.lognormal(np.log(2e6), 0.3, n)),
            }
        )
    )

    # ---- the chains: for each quote day, expiries x strikes x {call, put}
    rows: dict[str, list[Any]] = {k: [] for k in ("quote_date", "expiry", "strike", "right", "spot", "v")}
    for i in range(history_days, n):
        day, s, v = dates[i], close[i], var[i]
        step = _strike_step(s)
        for cal in expiry_days:
            exp = _expiry_for(day, cal)
            t = (exp - day).days / 365.0
            # strikes spread over about +-2.5 standard deviations of the expected move
            half = 2.5 * np.sqrt(max(v, hp.theta) * t) + 0.02
            ks = np.unique(np.round(s * np.exp(np.linspace(-half, half, strikes_per_expiry)) / step) * step)
            ks = ks[ks > 0]
            for right in ("C", "P"):
                rows["quote_date"].extend([day] * len(ks))
                rows["expiry"].extend([exp] * len(ks))
                rows["strike"].extend(ks.tolist())
                rows["right"].extend([right] * len(ks))
                rows["spot"].extend([s] * len(ks))
                rows["v"].extend([v] * len(ks))
    q = pd.DataFrame(rows)
    m = len(q)
    ttm = (q["expiry"] - q["quote_date"]).dt.days.to_numpy() / 365.0
    sign = np.where(q["right"].to_numpy() == "C", 1.0, -1.0)
    sp, k, v = (q[c].to_numpy(dtype=np.float64) for c in ("spot", "strike", "v"))

    def tens(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(x, dtype=np.float64))

    price = heston_price(
        tens(sign), tens(sp), tens(k), tens(ttm), rate, div_yield, tens(v), hp.kappa, hp.theta, hp.sigma, hp.rho
    ).detach().cpu().numpy()  # fmt: skip
    intrinsic_fwd = np.maximum(sign * (sp * np.exp(-div_yield * ttm) - k * np.exp(-rate * ttm)), 0.0)
    price = np.maximum(np.nan_to_num(price, nan=0.0), intrinsic_fwd)  # numerical noise never under the bound

    # spreads widen with price and stay at least two ticks; quotes snap outward to the tick grid
    tick = _tick(price)
    half_spread = np.maximum(tick, 0.5 * (0.02 * price + 0.0005 * sp * np.sqrt(ttm)))
    bid = np.floor((price - half_spread) / tick) * tick
    bid = np.where(bid < tick, 0.0, bid)
    ask = np.maximum(np.ceil((price + half_spread) / tick) * tick, bid + tick)
    logm = np.log(k / sp)
    width = np.sqrt(np.maximum(v, 1e-4) * ttm) + 1e-3
    liquidity = np.exp(-0.5 * (logm / width) ** 2) / np.sqrt(1.0 + ttm * 4)
    volume = rng.poisson(800.0 * liquidity)
    open_interest = rng.poisson(5000.0 * liquidity + 20.0) + volume
    traded = volume > 0
    last = np.where(traded, np.round((bid + rng.uniform(0, 1, m) * (ask - bid)) / tick) * tick, np.nan)

    mid = 0.5 * (bid + ask)
    iv = implied_vol(tens(mid), tens(sign), tens(sp), tens(k), tens(ttm), rate, div_yield).vol
    g = bsm_greeks(tens(sign), tens(sp), tens(k), tens(ttm), rate, div_yield, torch.nan_to_num(iv, nan=0.2))
    valid_iv = torch.isfinite(iv).numpy()
    expiry = q["expiry"]
    symbols = [
        f"{underlying}{e:%y%m%d}{r}{int(round(kk * 1000)):08d}"
        for e, r, kk in zip(expiry, q["right"], k, strict=True)
    ]
    out = pd.DataFrame(
        {
            "quote_date": q["quote_date"],
            "underlying": underlying,
            "symbol": symbols,
            "spot": sp,
            "expiry": expiry,
            "strike": k,
            "right": q["right"],
            "style": "E",
            "bid": bid,
            "ask": ask,
            "last": last,
            "volume": volume,
            "open_interest": open_interest,
            "vendor_iv": np.where(valid_iv, iv.numpy(), np.nan),
            **{
                f"vendor_{name}": np.where(valid_iv, g[name].detach().cpu().numpy(), np.nan)
                for name in ("delta", "gamma", "theta", "vega")
            },
        }
    )
    # vendor glitches, on purpose: crossed, zero bid and ask, a missing bid
    n_bad = int(round(bad_row_frac * m))
    if n_bad:
        bad = rng.choice(m, size=n_bad, replace=False)
        kinds = np.arange(n_bad) % 3
        b_cross, b_zero, b_missing = bad[kinds == 0], bad[kinds == 1], bad[kinds == 2]
        out.loc[b_cross, "bid"] = out.loc[b_cross, "ask"] + 0.10
        out.loc[b_zero, ["bid", "ask"]] = 0.0
        out.loc[b_missing, "bid"] = np.nan
    quotes = conform_quotes(out)
    quotes.attrs.update({"rate": rate, "div_yield": div_yield, "seed": int(seed), "heston": asdict(hp)})
    return quotes, bars


def write_partitions(
    quotes: pd.DataFrame,
    bars: pd.DataFrame,
    url: str,
    settings: StorageLike = None,
    *,
    row_group_size: int | None = None,
) -> dict[str, list[str]]:
    """Write a market under ``url``: quotes in ``<url>/quotes/quote_date=.../`` and bars in
    ``<url>/underlying/date=.../`` (Parquet, any fsspec URL). Returns the written paths by kind."""
    base = url.rstrip("/")
    try:
        return {
            "quotes": write_quotes(quotes, f"{base}/quotes", settings, row_group_size=row_group_size),
            "underlying": write_bars(bars, f"{base}/underlying", settings, row_group_size=row_group_size),
        }
    except GreekfireError:
        raise
    except Exception as exc:  # storage errors differ by backend (OSError, botocore's): name the URL and cause
        raise storage_error(url, exc) from exc


def read_partitions(
    url: str, settings: StorageLike = None, *, start: Any = None, end: Any = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a market written by :func:`write_partitions`; ``start``/``end`` bound the quote dates only."""
    base = url.rstrip("/")
    return read_quotes(f"{base}/quotes", settings, start=start, end=end), read_bars(
        f"{base}/underlying", settings
    )


def generate_to(
    url: str, settings: StorageLike = None, *, seed: int = 7, days: int = 20, **kwargs: Any
) -> dict[str, Any]:
    """Generate a market (:func:`generate_market`) and write it under ``url``; returns a summary mapping."""
    quotes, bars = generate_market(seed, days, **kwargs)
    paths = write_partitions(quotes, bars, url, settings)
    _, dropped = clean_quotes(quotes)
    return {
        "url": url,
        "seed": seed,
        "quote_days": int(quotes["quote_date"].nunique()),
        "quotes": len(quotes),
        "bars": len(bars),
        "files": sum(len(v) for v in paths.values()),
        "bad_rows": {k: v for k, v in dropped.items() if v},
        "rate": quotes.attrs["rate"],
        "div_yield": quotes.attrs["div_yield"],
    }
