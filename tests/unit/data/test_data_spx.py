"""The SPXW vendor file and the S&P 500 history from arch (real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from greekfire.core.errors import DataError
from greekfire.data.features import build_samples
from greekfire.data.schema import QUOTE_SCHEMA, clean_quotes
from greekfire.data.spx import load_sp500_history, load_spx_quotes, spot_alignment


@pytest.fixture(scope="module")
def spx(shared_data: Path):
    return load_spx_quotes(shared_data / "options" / "SPX_2018.csv")


def test_vendor_layout_parsed(spx) -> None:
    assert len(spx) == 14_438  # every data row of the file, none lost to parsing
    assert list(spx.columns) == QUOTE_SCHEMA.names
    assert spx["quote_date"].nunique() == 40
    assert (
        str(spx["quote_date"].min().date()) == "2018-01-02"
        and str(spx["quote_date"].max().date()) == "2018-02-28"
    )
    assert {str(d.date()) for d in spx["expiry"].unique()} == {"2018-01-31", "2018-02-28"}
    assert set(spx["right"]) == {"C", "P"}
    assert spx["spot"].notna().all() and spx["vendor_iv"].notna().all()
    first = spx.iloc[0]
    assert (
        first["symbol"] == "SPXW180131C01200000" and first["bid"] == 1483.6 and first["open_interest"] == 6007
    )


def test_bad_rows_reported(spx) -> None:
    clean, dropped = clean_quotes(spx)
    # quotes taken on their expiry day have no time left; a few far strikes have no bid and no ask
    assert dropped["expired"] == 750
    assert dropped["zero_bid_ask"] == 15
    assert dropped["crossed"] == 0 and dropped["missing_field"] == 0
    assert len(clean) == 14_438 - 765


def test_sp500_levels_line_up_with_the_quotes(spx) -> None:
    bars = load_sp500_history()
    assert len(bars) == 5031 and str(bars["date"].iloc[0].date()) == "1999-01-04"
    fit = spot_alignment(spx, bars)
    assert fit["matched"] == 40  # every quote date has a bar
    assert fit["max_abs_rel_diff"] < 1e-3  # the same index: spot and close agree to < 0.1%


def test_samples_from_real_data(spx) -> None:
    s = build_samples(spx, load_sp500_history(end="2018-03-31"), window=20)
    assert len(s) == 14_438 - 765
    assert np.isfinite(s.seq).all() and np.isfinite(s.contract).all()
    # the baseline is close to the market on average (SPX smile aside)
    assert float(np.mean(np.abs(s.target - s.bs_baseline))) < 0.01


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_spx_quotes(tmp_path / "nope.csv")
