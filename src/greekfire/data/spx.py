"""Real data: SPXW end-of-day quotes in a vendor CSV layout, and the S&P 500 daily history from ``arch``.

The vendor layout (e.g. ``SPX_2018.csv``): a UTF-8 byte-order mark, CRLF lines, dates as MM/DD/YYYY, a
header ``exchange`` column written with a leading space, ``type`` as call/put, and the vendor's implied
vol and Greeks. SPXW options are European, cash-settled options on the S&P 500 index; ``arch`` ships that
same index's daily OHLC, so the two join on the date (:func:`spot_alignment` measures how well).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from greekfire.core.errors import DataError, InputFileError
from greekfire.data.chains import SPX_VENDOR_COLUMNS, pricing_inputs
from greekfire.data.schema import CHAIN_COLUMNS, clean_quotes, conform_bars, conform_quotes
from greekfire.data.storage import StorageLike
from greekfire.data.synthetic import write_partitions

# vendor column -> our column (the `--columns spx` preset of `greekfire price` is the same mapping)
_VENDOR_COLUMNS = SPX_VENDOR_COLUMNS
_NEEDED = ("underlying_last", "type", "expiration", "quotedate", "strike", "bid", "ask")
INDEX_NAME = "SPX"
SPX_SUMMARY_UNITS = {
    "first_date": "YYYY-MM-DD",
    "last_date": "YYYY-MM-DD",
    "expiries": "YYYY-MM-DD",
    "bad_rows": "rows",
    "spot_vs_sp500_close": "diffs as fractions, 0.001 = 0.1%",
    "rate": "per year, continuously compounded",
    "div_yield": "per year, continuously compounded",
}
"""The unit of each :func:`spx_report` entry that is not a plain count."""


def load_spx_quotes(path: str | Path, *, underlying: str = INDEX_NAME) -> pd.DataFrame:
    """Read an SPX/SPXW quote CSV in the vendor layout into the quote schema (every row kept).

    Rows that cannot be parsed keep nulls (a bad date becomes NaT) so that cleaning counts them; no row is
    silently lost. ``underlying`` names the index the options are on (the vendor writes the option root,
    SPXW, which is kept in ``symbol``'s prefix). Style is European. Raises :class:`DataError` when the file
    lacks a needed column.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("path", str(path), "no such file")
    # utf-8-sig drops the byte-order mark; the C parser types the numbers, and a stray bad value leaves
    # its column as text, which the coercion below turns into nulls that cleaning counts
    try:
        raw = pd.read_csv(p, encoding="utf-8-sig", skipinitialspace=True)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputFileError("path", str(path), f"not a readable vendor CSV: {' '.join(str(exc).split())}") from exc
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in _NEEDED if c not in raw.columns]
    if missing:
        raise InputFileError("csv.columns", missing, f"{p} is not an SPX vendor chain: it lacks columns the vendor "
                             f"layout has (needed: {', '.join(_NEEDED)})")
    df = pd.DataFrame({ours: raw[theirs] for theirs, ours in _VENDOR_COLUMNS.items() if theirs in raw})
    for c in ("quote_date", "expiry"):
        df[c] = pd.to_datetime(df[c].astype(str).str.strip(), format="%m/%d/%Y", errors="coerce")
    df["underlying"] = underlying
    df["style"] = "E"
    for c in (
        "spot",
        "strike",
        "last",
        "bid",
        "ask",
        "volume",
        "open_interest",
        *[v for v in _VENDOR_COLUMNS.values() if v.startswith("vendor_")],
    ):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return conform_quotes(df)


def load_sp500_history(start: Any = None, end: Any = None) -> pd.DataFrame:
    """The S&P 500 index daily bars that the ``arch`` package ships (1999-01-04..2018-12-31).

    Columns of the bar schema; ``close`` is the index level (the index is a price index, so its close and
    adjusted close agree). ``start``/``end`` bound the dates, inclusive.
    """
    try:  # lazy: arch's data module costs about 1.6 s to import, and only this loader needs it
        from arch.data import sp500
    except ImportError as exc:  # pragma: no cover - arch is a runtime dependency
        raise DataError(
            "arch", "missing", "the arch package provides the S&P 500 history (pip install arch)"
        ) from exc
    raw = sp500.load()
    df = pd.DataFrame(
        {
            "date": raw.index,
            "underlying": INDEX_NAME,
            "open": raw["Open"].to_numpy(),
            "high": raw["High"].to_numpy(),
            "low": raw["Low"].to_numpy(),
            "close": raw["Close"].to_numpy(),
            "adj_close": raw["Adj Close"].to_numpy(),
            "volume": raw["Volume"].to_numpy(dtype=float),
        }
    )
    bars = conform_bars(df)
    if start is not None:
        bars = bars[bars["date"] >= pd.Timestamp(start)]
    if end is not None:
        bars = bars[bars["date"] <= pd.Timestamp(end)]
    return bars.reset_index(drop=True)


def spot_alignment(quotes: pd.DataFrame, bars: pd.DataFrame) -> dict[str, float | int]:
    """How well the quotes' spot matches the bars' close on the same dates.

    Returns ``dates`` (quote dates), ``matched`` (dates with a bar), ``max_abs_rel_diff`` and
    ``mean_abs_rel_diff`` of spot vs close (fractions, e.g. 0.001 = 0.1%).
    """
    spot = quotes.groupby("quote_date")["spot"].median()
    close = bars.set_index("date")["close"]
    joined = pd.concat([spot, close], axis=1, join="inner", keys=["spot", "close"]).dropna()
    rel = (joined["spot"] / joined["close"] - 1.0).abs()
    return {
        "dates": int(len(spot)),
        "matched": int(len(joined)),
        "max_abs_rel_diff": float(rel.max()) if len(rel) else float("nan"),
        "mean_abs_rel_diff": float(rel.mean()) if len(rel) else float("nan"),
    }


def spx_chain(quotes: pd.DataFrame) -> pd.DataFrame:
    """Quotes (of :func:`load_spx_quotes`) as a pricing-ready chain: the columns of
    :data:`~greekfire.data.schema.CHAIN_COLUMNS` (the quote columns plus ``ttm`` in years, ``market_price``
    the mid, ``rate`` and ``div_yield`` continuously compounded per year, ``forward``), the rate and forwards
    from put-call parity (:func:`greekfire.data.chains.parity_forwards`). ``greekfire price`` reads it as is."""
    chain = pricing_inputs(quotes)
    return chain.loc[:, list(CHAIN_COLUMNS)]


def spx_report(path: str | Path, out: str | None = None, settings: StorageLike = None) -> dict[str, Any]:
    """Load the vendor file and the S&P 500 history, check they line up, count bad rows; optionally write
    them under ``out``: a path ending in ``.csv`` or ``.parquet`` gets one pricing-ready file of every quote
    (:func:`spx_chain`), any other path or URL the quotes and bars as partitions (``<out>/quotes``,
    ``<out>/underlying``), the parity rate and median dividend yield in the quotes' metadata (what training
    with ``--data`` reads). Returns a summary mapping."""
    quotes = load_spx_quotes(path)
    bars = load_sp500_history()
    _, dropped = clean_quotes(quotes)
    report: dict[str, Any] = {
        "rows": len(quotes),
        "quote_dates": int(quotes["quote_date"].nunique()),
        "first_date": str(quotes["quote_date"].min().date()),
        "last_date": str(quotes["quote_date"].max().date()),
        "expiries": sorted(str(d.date()) for d in quotes["expiry"].dropna().unique()),
        "bad_rows": {k: v for k, v in dropped.items() if v},
        "usable_rows": len(quotes) - sum(dropped.values()),
        "spot_vs_sp500_close": spot_alignment(quotes, bars),
    }
    if out and Path(out).suffix.lower() in (".csv", ".parquet", ".pq"):
        from greekfire.data.pricing import write_table  # it loads torch (seconds); only a file out needs it

        chain = spx_chain(quotes)
        write_table(chain, Path(out))
        report["rate"] = round(float(chain["rate"].iloc[0]), 6)
        report["files"] = 1
        report["out"] = out
    elif out:
        # the partitions keep the quote schema; the chain's parity rate and (median) dividend yield travel in
        # its attrs, as a generated market's do, so training on the folder (`--data`) prices on them
        chain = spx_chain(quotes)
        rate, div = float(chain["rate"].iloc[0]), float(np.nanmedian(chain["div_yield"].to_numpy(dtype=float)))
        quotes.attrs.update({"rate": round(rate, 6), "div_yield": round(div, 6)})
        report["rate"], report["div_yield"] = round(rate, 6), round(div, 6)
        paths = write_partitions(quotes, bars[bars["date"] <= quotes["quote_date"].max()], out, settings)
        report["files"] = sum(len(v) for v in paths.values())
        report["out"] = out
    return report
