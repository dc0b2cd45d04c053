"""Arrow schemas for option quotes and underlying bars, quote cleaning, and date-partitioned Parquet I/O.

Quotes are end-of-day option quotes, one row per contract per quote date. Underlying bars are daily
OHLCV rows. Both live as Parquet files partitioned by date (Hive layout: ``quote_date=2018-01-02/`` for
quotes; ``year=2018/`` for daily bars, one small file per year rather than a tiny one per day) on any fsspec URL (see :mod:`greekfire.data.storage`).

In pandas, dates are ``datetime64[ns]`` at midnight; ``right`` is ``"C"`` or ``"P"``; ``style`` is
``"E"`` (European) or ``"A"`` (American). Prices are in the underlying's currency per unit of underlying.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from greekfire.core.errors import DataError
from greekfire.data.storage import StorageLike, arrow_filesystem, open_fs, storage_settings

QUOTE_PARTITION = "quote_date"
BAR_PARTITION = "date"

QUOTE_SCHEMA = pa.schema(
    [
        pa.field("quote_date", pa.date32(), nullable=False),
        pa.field("underlying", pa.string(), nullable=False),
        pa.field("symbol", pa.string()),  # the vendor's contract id, when it has one
        pa.field("spot", pa.float64()),  # underlying level at the quote time
        pa.field("expiry", pa.date32()),
        pa.field("strike", pa.float64()),
        pa.field("right", pa.string()),  # "C" | "P"
        pa.field("style", pa.string()),  # "E" | "A"
        pa.field("bid", pa.float64()),
        pa.field("ask", pa.float64()),
        pa.field("last", pa.float64()),
        pa.field("volume", pa.int64()),
        pa.field("open_interest", pa.int64()),
        # vendor analytics when present (units as the vendor publishes them)
        pa.field("vendor_iv", pa.float64()),
        pa.field("vendor_delta", pa.float64()),
        pa.field("vendor_gamma", pa.float64()),
        pa.field("vendor_theta", pa.float64()),
        pa.field("vendor_vega", pa.float64()),
    ],
    metadata={b"greekfire.schema": b"option_quotes/1"},
)

BAR_SCHEMA = pa.schema(
    [
        pa.field("date", pa.date32(), nullable=False),
        pa.field("underlying", pa.string(), nullable=False),
        pa.field("open", pa.float64()),
        pa.field("high", pa.float64()),
        pa.field("low", pa.float64()),
        pa.field("close", pa.float64()),
        pa.field("adj_close", pa.float64()),
        pa.field("volume", pa.float64()),
    ],
    metadata={b"greekfire.schema": b"underlying_bars/1"},
)

QUOTE_COLUMNS = QUOTE_SCHEMA.names
CHAIN_COLUMNS = (*QUOTE_COLUMNS, "ttm", "market_price", "rate", "div_yield", "forward")
"""A pricing-ready chain (``greekfire data spx --out FILE.csv``, read by ``greekfire price`` as it is): the
quote columns plus ``ttm`` (years ACT/365), ``market_price`` (the bid/ask mid), ``rate`` and ``div_yield``
(continuously compounded, per year) and ``forward`` (the price the dividend yield grows spot to at expiry)."""
BAR_COLUMNS = BAR_SCHEMA.names
_REQUIRED_QUOTE = ("quote_date", "underlying", "spot", "expiry", "strike", "right", "bid", "ask")
_REQUIRED_BAR = ("date", "close")

# reasons a quote row is dropped, in the order they are checked (a row is counted once, first reason wins)
DROP_REASONS = (
    "missing_field",
    "bad_right",
    "negative_price",
    "zero_bid_ask",
    "crossed",
    "expired",
    "bad_strike_or_spot",
)


def _to_day(values: Any) -> pd.Series:
    """Dates as ``datetime64[ns]`` at midnight (bad values become NaT, counted later)."""
    s = pd.to_datetime(pd.Series(values), errors="coerce")
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_localize(None)
    return s.dt.normalize().astype("datetime64[ns]")


def normalize_right(values: Iterable[Any]) -> pd.Series:
    """Map 'C'/'P'/'call'/'put'/1/-1 (any case) to 'C'/'P'; anything else becomes None."""
    table = {"c": "C", "call": "C", "1": "C", "1.0": "C", "p": "P", "put": "P", "-1": "P", "-1.0": "P"}
    return pd.Series(
        [table.get(str(v).strip().lower()) if v is not None else None for v in values], dtype=object
    )


def conform_quotes(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the quote columns, in order, with their pandas dtypes.

    Missing optional columns are filled with nulls; a missing required column raises
    :class:`DataError` naming it.
    """
    missing = [c for c in _REQUIRED_QUOTE if c not in df.columns]
    if missing:
        raise DataError(
            "quotes.columns", missing, f"required quote columns are missing (need {list(_REQUIRED_QUOTE)})"
        )
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for name in QUOTE_COLUMNS:
        col = df[name].to_numpy() if name in df.columns else None
        if name in ("quote_date", "expiry"):
            out[name] = _to_day(col if col is not None else [pd.NaT] * len(df)).to_numpy()
        elif name in ("underlying", "symbol", "style"):
            out[name] = pd.Series(col if col is not None else [None] * len(df), dtype=object).where(
                lambda s: s.notna(), None
            )
        elif name == "right":
            out[name] = normalize_right(col if col is not None else [None] * len(df)).to_numpy()
        elif name in ("volume", "open_interest"):
            out[name] = pd.array(
                pd.to_numeric(pd.Series(col if col is not None else [None] * len(df)), errors="coerce")
                .round()
                .astype("Float64"),
                dtype="Int64",
            )
        else:
            out[name] = (
                pd.to_numeric(pd.Series(col if col is not None else [np.nan] * len(df)), errors="coerce")
                .astype("float64")
                .to_numpy()
            )
    return out


def conform_bars(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the bar columns, in order, sorted by date (``close`` required)."""
    missing = [c for c in _REQUIRED_BAR if c not in df.columns]
    if missing:
        raise DataError(
            "bars.columns", missing, f"required bar columns are missing (need {list(_REQUIRED_BAR)})"
        )
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for name in BAR_COLUMNS:
        col = df[name].to_numpy() if name in df.columns else None
        if name == "date":
            out[name] = _to_day(col).to_numpy()
        elif name == "underlying":
            out[name] = pd.Series(col if col is not None else ["?"] * len(df), dtype=object).to_numpy()
        else:
            out[name] = (
                pd.to_numeric(pd.Series(col if col is not None else [np.nan] * len(df)), errors="coerce")
                .astype("float64")
                .to_numpy()
            )
    return out.sort_values("date", kind="stable").reset_index(drop=True)


def quote_problems(df: pd.DataFrame) -> pd.Series:
    """Per row, the first reason it is unusable ('' when fine); see :data:`DROP_REASONS`.

    ``df`` must be conformed (:func:`conform_quotes`). Checks: a required field is missing; right is not
    C/P; a negative bid or ask; bid and ask both zero; bid above ask (crossed); expiry on or before the
    quote date; strike or spot not positive.
    """
    n = len(df)
    reason = np.full(n, "", dtype=object)

    def flag(mask: np.ndarray, why: str) -> None:
        sel = mask & (reason == "")
        reason[sel] = why

    missing = np.zeros(n, dtype=bool)
    for c in ("quote_date", "expiry", "spot", "strike", "bid", "ask"):
        missing |= pd.isna(df[c]).to_numpy()
    missing |= pd.isna(df["underlying"]).to_numpy()
    flag(missing, "missing_field")
    flag(pd.isna(df["right"]).to_numpy(), "bad_right")
    bid = df["bid"].to_numpy(dtype=float)
    ask = df["ask"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        flag((bid < 0) | (ask < 0), "negative_price")
        flag((bid == 0) & (ask == 0), "zero_bid_ask")
        flag(bid > ask, "crossed")
        flag((df["expiry"] <= df["quote_date"]).to_numpy(), "expired")
        flag(
            (df["strike"].to_numpy(dtype=float) <= 0) | (df["spot"].to_numpy(dtype=float) <= 0),
            "bad_strike_or_spot",
        )
    return pd.Series(reason, index=df.index, dtype=object)


def clean_quotes(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Conform and drop bad quote rows; returns (clean rows, counts of dropped rows by reason).

    The counts always hold every reason in :data:`DROP_REASONS` (zero when none), so reports line up.
    """
    q = conform_quotes(df)
    why = quote_problems(q)
    counts = Counter(why[why != ""])
    dropped = {r: int(counts.get(r, 0)) for r in DROP_REASONS}
    return q[why == ""].reset_index(drop=True), dropped


ATTRS_KEY = b"greekfire.attrs"


def quotes_to_table(df: pd.DataFrame) -> pa.Table:
    """Conformed quotes as an Arrow table with :data:`QUOTE_SCHEMA`; JSON-able ``df.attrs`` (a generated
    market's rate and dividend yield) travel in the schema metadata."""
    q = conform_quotes(df)
    table = pa.Table.from_pandas(q, schema=QUOTE_SCHEMA, preserve_index=False)
    try:
        attrs = json.dumps(dict(df.attrs)).encode()
    except (TypeError, ValueError):  # attrs that are not plain data stay behind
        return table
    return table.replace_schema_metadata({**(QUOTE_SCHEMA.metadata or {}), ATTRS_KEY: attrs})


def bars_to_table(df: pd.DataFrame) -> pa.Table:
    """Conformed bars as an Arrow table with :data:`BAR_SCHEMA`."""
    return pa.Table.from_pandas(conform_bars(df), schema=BAR_SCHEMA, preserve_index=False)


def _table_to_frame(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas(date_as_object=False)
    for c in ("quote_date", "expiry", "date"):
        if c in df.columns:
            df[c] = df[c].astype("datetime64[ns]")
    for c in ("underlying", "symbol", "right", "style"):
        if c in df.columns:
            df[c] = df[c].astype(object).where(df[c].notna(), None)
    for c in ("volume", "open_interest"):
        if c in df.columns and c in QUOTE_COLUMNS and "strike" in df.columns:
            df[c] = df[c].astype("Int64")
    return df


def _write_partitions(
    table: pa.Table,
    partition: str,
    url: str,
    settings: StorageLike,
    row_group_size: int | None,
    basename: str,
    by_year: bool = False,
) -> list[str]:
    fs, root = open_fs(url, settings)
    rg = row_group_size or storage_settings(settings).row_group_rows
    days = table.column(partition).to_numpy(zero_copy_only=False).astype("datetime64[D]")
    keys = days.astype("datetime64[Y]") if by_year else days
    written = []
    for key in np.unique(keys):
        sel = pa.array(keys == key)
        if by_year:  # the date stays in the file; the folder names the year
            part = table.filter(sel)
            folder = f"{root.rstrip('/')}/year={np.datetime_as_string(key, unit='Y')}"
        else:  # the folder holds the date (Hive layout), so the column is not repeated in the file
            part = table.filter(sel).drop_columns([partition])
            folder = f"{root.rstrip('/')}/{partition}={np.datetime_as_string(key, unit='D')}"
        fs.makedirs(folder, exist_ok=True)
        path = f"{folder}/{basename}.parquet"
        # write to memory first: one PUT per file on object stores, and a half-written file never appears
        buf = io.BytesIO()
        pq.write_table(part, buf, row_group_size=rg, compression="zstd")
        with fs.open(path, "wb") as fh:
            fh.write(buf.getvalue())
        written.append(path)
    return written


def write_quotes(
    df: pd.DataFrame,
    url: str,
    settings: StorageLike = None,
    *,
    row_group_size: int | None = None,
    basename: str = "part-0",
) -> list[str]:
    """Write quotes as Parquet partitioned by quote date under ``url`` (any fsspec URL); returns file paths.

    One file ``<url>/quote_date=YYYY-MM-DD/<basename>.parquet`` per date; an existing file of the same
    name is replaced (re-running a day is idempotent). ``settings`` gives storage credentials and the
    default row-group size (rows).
    """
    return _write_partitions(quotes_to_table(df), QUOTE_PARTITION, url, settings, row_group_size, basename)


def write_bars(
    df: pd.DataFrame,
    url: str,
    settings: StorageLike = None,
    *,
    row_group_size: int | None = None,
    basename: str = "part-0",
) -> list[str]:
    """Write daily underlying bars as Parquet under ``url``, one file per calendar year
    (``<url>/year=YYYY/<basename>.parquet``; a file per day would be tiny); returns the file paths."""
    return _write_partitions(
        bars_to_table(df), BAR_PARTITION, url, settings, row_group_size, basename, by_year=True
    )


def _read_partitions(
    url: str, settings: StorageLike, schema: pa.Schema, partition: str, start: Any, end: Any, by_year: bool = False
) -> pd.DataFrame:
    # lazy: pyarrow.dataset costs about 0.5 s to import and only partition readers need it
    import pyarrow.dataset as ds

    fs, root = open_fs(url, settings)
    if not fs.exists(root):
        raise DataError("url", url, "no such dataset folder")
    part_schema = (
        pa.schema([pa.field("year", pa.int32())]) if by_year else pa.schema([schema.field(partition)])
    )
    full = schema.append(part_schema.field(0)) if by_year else schema
    dataset = ds.dataset(
        root,
        filesystem=arrow_filesystem(fs),
        format="parquet",
        partitioning=ds.partitioning(part_schema, flavor="hive"),
        schema=full,
        exclude_invalid_files=False,
    )
    flt = None
    if start is not None:
        flt = ds.field(partition) >= pa.scalar(pd.Timestamp(start).date(), pa.date32())
    if end is not None:
        e = ds.field(partition) <= pa.scalar(pd.Timestamp(end).date(), pa.date32())
        flt = e if flt is None else flt & e
    table = dataset.to_table(filter=flt, columns=schema.names)
    df = _table_to_frame(table).sort_values([partition], kind="stable").reset_index(drop=True)
    if dataset.files:  # the writer's attrs (e.g. rate, div_yield), from the first file's footer
        with fs.open(dataset.files[0], "rb") as fh:
            raw = (pq.read_schema(fh).metadata or {}).get(ATTRS_KEY)
        if raw:
            df.attrs.update(json.loads(raw))
    return df


def read_quotes(url: str, settings: StorageLike = None, *, start: Any = None, end: Any = None) -> pd.DataFrame:
    """Read date-partitioned quotes from ``url``, optionally only quote dates in [start, end]."""
    df = _read_partitions(url, settings, QUOTE_SCHEMA, QUOTE_PARTITION, start, end)
    attrs = dict(df.attrs)
    df = df.sort_values(["quote_date", "expiry", "right", "strike"], kind="stable").reset_index(drop=True)
    df.attrs.update(attrs)
    return df


def read_bars(url: str, settings: StorageLike = None, *, start: Any = None, end: Any = None) -> pd.DataFrame:
    """Read year-partitioned underlying bars from ``url``, optionally only dates in [start, end]."""
    return _read_partitions(url, settings, BAR_SCHEMA, BAR_PARTITION, start, end, by_year=True)
