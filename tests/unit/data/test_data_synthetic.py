"""Synthetic Heston market: deterministic by seed, a sane skew, realistic quotes, partitions round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from greekfire.core.errors import DataError
from greekfire.data.features import build_samples
from greekfire.data.schema import QUOTE_SCHEMA, clean_quotes
from greekfire.data.synthetic import HestonParams, generate_market, read_partitions, write_partitions


@pytest.fixture(scope="module")
def market() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_market(seed=11, days=3, history_days=90)


def test_same_seed_same_market(market) -> None:
    q2, b2 = generate_market(seed=11, days=3, history_days=90)
    pd.testing.assert_frame_equal(market[0], q2)
    pd.testing.assert_frame_equal(market[1], b2)
    q3, _ = generate_market(seed=12, days=3, history_days=90)
    assert not np.allclose(q3["spot"].to_numpy()[:5], market[0]["spot"].to_numpy()[:5])


def test_shape_of_the_market(market) -> None:
    quotes, bars = market
    assert list(quotes.columns) == QUOTE_SCHEMA.names
    assert quotes["quote_date"].nunique() == 3 and len(bars) == 93
    assert bars["date"].is_monotonic_increasing and (bars["high"] >= bars["low"]).all()
    last_bar = bars.set_index("date")["close"]
    assert np.allclose(quotes["spot"], last_bar.loc[quotes["quote_date"]].to_numpy())
    clean, dropped = clean_quotes(quotes)
    # the injected glitches are found and counted (1% of rows, three kinds)
    assert dropped["crossed"] > 0 and dropped["zero_bid_ask"] > 0 and dropped["missing_field"] > 0
    assert sum(dropped.values()) == pytest.approx(0.01 * len(quotes), abs=2)
    assert (clean["ask"] > clean["bid"]).all()
    assert (clean["volume"] >= 0).all() and (clean["open_interest"] >= clean["volume"]).all()
    # liquidity fades away from the money
    logm = np.abs(np.log(clean["strike"] / clean["spot"]))
    assert clean.loc[logm < 0.03, "open_interest"].mean() > clean.loc[logm > 0.15, "open_interest"].mean()


def test_skew_otm_puts_richer_than_otm_calls(market) -> None:
    quotes, _ = market
    q = quotes.dropna(subset=["vendor_iv"])
    q = q[(q["expiry"] - q["quote_date"]).dt.days.between(25, 40)]
    m = q["strike"] / q["spot"]
    put_iv = q.loc[(q["right"] == "P") & m.between(0.88, 0.95), "vendor_iv"].mean()
    call_iv = q.loc[(q["right"] == "C") & m.between(1.05, 1.12), "vendor_iv"].mean()
    assert put_iv > call_iv + 0.01, (put_iv, call_iv)


def test_partitions_round_trip_and_samples(market, tmp_path: Path) -> None:
    quotes, bars = market
    paths = write_partitions(quotes, bars, str(tmp_path / "m"))
    assert len(paths["quotes"]) == 3
    q, b = read_partitions(str(tmp_path / "m"))
    assert len(q) == len(quotes) and len(b) == len(bars)
    s = build_samples(q, b, window=20, rate=0.03, div_yield=0.01)
    assert len(s) == len(quotes) - sum(clean_quotes(quotes)[1].values())
    # the Heston prices sit near Black-Scholes at the realised vol: same order of magnitude
    assert float(np.median(np.abs(s.target - s.bs_baseline))) < 0.02


def test_bad_parameters_are_named() -> None:
    with pytest.raises(DataError, match="heston.rho"):
        HestonParams(rho=-1.5)
    with pytest.raises(DataError, match="days"):
        generate_market(seed=1, days=0)


def test_cli_generate_writes_partitions(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from greekfire.cli import app

    out = tmp_path / "syn"
    res = CliRunner().invoke(app, ["data", "generate", "--out", str(out), "--days", "2", "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["quote_days"] == 2 and summary["files"] == len(list(out.rglob("*.parquet")))
    q, _ = read_partitions(str(out))
    assert len(q) == summary["quotes"] and q.attrs["rate"] == summary["rate"]
