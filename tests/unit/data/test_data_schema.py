"""Quote/bar schema: conforming, cleaning with reasons, and the partitioned Parquet round trip."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

from greekfire.core.errors import DataError
from greekfire.data.schema import (
    DROP_REASONS,
    QUOTE_SCHEMA,
    clean_quotes,
    conform_quotes,
    read_bars,
    read_quotes,
    write_bars,
    write_quotes,
)
from greekfire.ml.data import read_quote_parquet


def quotes_frame() -> pd.DataFrame:
    rows = []
    for day in ("2024-03-04", "2024-03-05", "2024-03-06"):
        for k in (90.0, 100.0, 110.0):
            for right in ("call", "P"):
                rows.append(
                    {
                        "quote_date": day,
                        "underlying": "XYZ",
                        "spot": 100.0,
                        "expiry": "2024-04-19",
                        "strike": k,
                        "right": right,
                        "style": "E",
                        "bid": 1.0,
                        "ask": 1.2,
                        "last": 1.1,
                        "volume": 5,
                        "open_interest": 100,
                    }
                )
    return pd.DataFrame(rows)


def test_conform_fills_optional_columns_and_types() -> None:
    q = conform_quotes(quotes_frame())
    assert list(q.columns) == QUOTE_SCHEMA.names
    assert set(q["right"]) == {"C", "P"}
    assert q["vendor_iv"].isna().all()
    assert str(q["quote_date"].dtype) == "datetime64[ns]"
    assert str(q["volume"].dtype) == "Int64"


def test_conform_names_the_missing_column() -> None:
    with pytest.raises(DataError, match="strike"):
        conform_quotes(quotes_frame().drop(columns=["strike"]))


def test_bad_rows_dropped_and_counted_by_reason() -> None:
    df = quotes_frame()
    df.loc[0, ["bid", "ask"]] = [1.5, 1.0]  # crossed
    df.loc[1, ["bid", "ask"]] = [0.0, 0.0]  # zero bid and ask
    df.loc[2, "spot"] = np.nan  # missing field
    df.loc[3, "right"] = "straddle"  # bad right
    df.loc[4, "expiry"] = df.loc[4, "quote_date"]  # expires on the quote date
    df.loc[5, "bid"] = -0.1
    clean, dropped = clean_quotes(df)
    assert set(dropped) == set(DROP_REASONS)
    assert dropped["crossed"] == 1
    assert dropped["zero_bid_ask"] == 1
    assert dropped["missing_field"] == 1
    assert dropped["bad_right"] == 1
    assert dropped["expired"] == 1
    assert dropped["negative_price"] == 1
    assert len(clean) == len(df) - 6


def test_partitioned_round_trip(tmp_path: Path) -> None:
    q = conform_quotes(quotes_frame())
    q.loc[0, "vendor_iv"] = 0.25
    q.loc[1, "volume"] = pd.NA
    paths = write_quotes(q, str(tmp_path / "quotes"), row_group_size=4)
    assert sorted(p.split("/")[-2] for p in paths) == [
        "quote_date=2024-03-04",
        "quote_date=2024-03-05",
        "quote_date=2024-03-06",
    ]
    assert pq.ParquetFile(paths[0]).num_row_groups == 2  # 6 rows per day in groups of 4
    back = read_quotes(str(tmp_path / "quotes"))
    expect = q.sort_values(["quote_date", "expiry", "right", "strike"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(back[expect.columns], expect, check_dtype=False)
    assert back["vendor_iv"].notna().sum() == 1 and back["volume"].isna().sum() == 1
    only = read_quotes(str(tmp_path / "quotes"), start="2024-03-05", end="2024-03-05")
    assert set(only["quote_date"].dt.strftime("%Y-%m-%d")) == {"2024-03-05"}


def test_rewriting_a_day_replaces_it(tmp_path: Path) -> None:
    q = conform_quotes(quotes_frame())
    write_quotes(q, str(tmp_path))
    write_quotes(q, str(tmp_path))
    assert len(read_quotes(str(tmp_path))) == len(q)


def test_bars_round_trip(tmp_path: Path) -> None:
    bars = pd.DataFrame(
        {"date": pd.bdate_range("2024-01-01", periods=5), "underlying": "XYZ", "close": [1.0, 2, 3, 4, 5]}
    )
    write_bars(bars, str(tmp_path / "bars"))
    back = read_bars(str(tmp_path / "bars"))
    assert back["close"].tolist() == [1.0, 2, 3, 4, 5]
    assert back["date"].is_monotonic_increasing


def test_read_missing_dataset_says_so(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such dataset"):
        read_quotes(str(tmp_path / "nothing"))


def test_attrs_travel_with_the_partitions(tmp_path: Path) -> None:
    q = conform_quotes(quotes_frame())
    q.attrs.update({"rate": 0.03, "div_yield": 0.01})
    write_quotes(q, str(tmp_path))
    assert read_quotes(str(tmp_path)).attrs == {"rate": 0.03, "div_yield": 0.01}


def test_local_partitions_are_read_without_arrow_threads_calling_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local dataset is read through Arrow's own filesystem. Through fsspec (PyFileSystem), Arrow's I/O
    threads call Python to open, read and close each file, and one still doing so when the interpreter
    shuts down aborts the process ("terminate called without an active exception", exit 134) after the
    command's work is done. Every fsspec call made while reading must come from the calling thread."""
    q = conform_quotes(quotes_frame())
    write_quotes(q, str(tmp_path / "quotes"), row_group_size=4)
    write_bars(pd.DataFrame({"date": pd.bdate_range("2024-01-01", periods=3), "underlying": "XYZ",
                             "close": [1.0, 2, 3]}), str(tmp_path / "bars"))
    callers: list[str] = []
    main = threading.get_ident()

    def spy(cls: type, name: str) -> None:
        real = getattr(cls, name)

        def wrapped(*a: object, **k: object) -> object:
            if threading.get_ident() != main:
                callers.append(f"{cls.__name__}.{name} on {threading.current_thread().name}")
            return real(*a, **k)

        monkeypatch.setattr(cls, name, wrapped)

    for name in ("open", "info", "ls", "find"):
        spy(LocalFileSystem, name)
    for name in ("read", "seek", "tell", "close"):
        spy(LocalFileOpener, name)
    assert len(read_quotes(str(tmp_path / "quotes"))) == len(q)
    assert len(read_bars(str(tmp_path / "bars"))) == 3
    assert len(read_quote_parquet(str(tmp_path / "quotes"))) == len(q)
    assert callers == []
