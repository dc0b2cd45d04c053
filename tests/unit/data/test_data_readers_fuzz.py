"""Any bytes given to the option-file readers give a table or greekfire's own error, never another exception."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greekfire.core.errors import GreekfireError
from greekfire.data.pricing import read_table
from greekfire.data.spx import load_spx_quotes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parquet_bytes() -> bytes:
    sink = io.BytesIO()
    pd.DataFrame({"right": ["C", "P"], "spot": [100.0, 101.0], "strike": [100.0, 95.0], "ttm": [0.5, 0.25]}).to_parquet(sink)
    return sink.getvalue()


PARQUET = _parquet_bytes()
CSV_TEXT = st.text(alphabet=st.sampled_from(list("abcCP,.\n\r\"' -0123456789eE;\t\x00\xff")), max_size=400)


@st.composite
def damaged_parquet(draw: st.DrawFn) -> bytes:
    """A real Parquet file cut short and with some bytes overwritten: what a bad copy looks like."""
    raw = bytearray(PARQUET[: draw(st.integers(0, len(PARQUET)))])
    for _ in range(draw(st.integers(0, 8))):
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


def _read(data: bytes, suffix: str, reader: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"in{suffix}"
        path.write_bytes(data)
        try:
            out = reader(path)  # type: ignore[operator]
        except GreekfireError:
            return
        assert isinstance(out, pd.DataFrame)


@FUZZ
@given(st.one_of(st.binary(max_size=400), CSV_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_csv_reader_gives_a_table_or_our_error(data: bytes) -> None:
    _read(data, ".csv", read_table)


@FUZZ
@given(st.one_of(st.binary(max_size=400), damaged_parquet()))
def test_parquet_reader_gives_a_table_or_our_error(data: bytes) -> None:
    _read(data, ".parquet", read_table)


@FUZZ
@given(st.one_of(st.binary(max_size=400), CSV_TEXT.map(lambda t: ("quotedate,type," + t).encode())))
def test_spx_vendor_reader_gives_quotes_or_our_error(data: bytes) -> None:
    _read(data, ".csv", load_spx_quotes)


def test_a_damaged_parquet_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "chain.parquet"
    bad.write_bytes(PARQUET[: len(PARQUET) // 2])
    with pytest.raises(GreekfireError, match="chain.parquet"):
        read_table(bad)
