"""Vendor chain layouts read by `greekfire price --columns`: presets on the real SPX and optopsy files, a
hand-written mapping, rate / dividend / forward from put-call parity, and the command's outputs (preview,
``-o -`` on stdout, the implied vols against the vendor's)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import command_env
from greekfire.core.errors import DataError
from greekfire.data.chains import PRESETS, parity_forwards, parse_columns, vendor_iv_agreement
from greekfire.data.pricing import load_chain, price_chain, price_frame
from greekfire.data.schema import CHAIN_COLUMNS
from greekfire.data.spx import spx_report

SPX_MAPPING = "right=type,strike=strike,spot=underlying_last,expiry=expiration,quote_date=quotedate,bid=bid,ask=ask"


@pytest.fixture(scope="module")
def spx_path(shared_data: Path) -> Path:
    return shared_data / "options" / "SPX_2018.csv"


@pytest.fixture(scope="module")
def optopsy_path(shared_data: Path) -> Path:
    return shared_data / "options" / "A_2016-01-05.csv"


@pytest.fixture(scope="module")
def spx_chain(spx_path: Path) -> pd.DataFrame:
    return load_chain(spx_path, "spx")


def _env(tmp: Path, columns: int = 80) -> dict[str, str]:
    env = command_env()
    env.update(GREEKFIRE_HOME=str(tmp / "home"), COLUMNS=str(columns))
    return env


def test_parse_columns_presets_pairs_and_constants() -> None:
    spx = parse_columns("spx")
    assert spx.columns["right"] == "type" and spx.columns["vendor_iv"] == "impliedvol" and spx.date_format
    over = parse_columns("spx, rate=0.02, strike=K")
    assert over.constants == {"rate": 0.02} and over.columns["strike"] == "K" and over.columns["spot"] == "underlying_last"
    plain = parse_columns("right=cp,strike=k")
    assert dict(plain.columns) == {"right": "cp", "strike": "k"} and plain.date_format is None
    assert set(PRESETS) == {"spx", "optopsy"}


@pytest.mark.parametrize(("spec", "named"), [("spx2", "'spx2'"), ("strik=strike", "'strik'"),
                                             ("spx,right", "'right'"), ("", "''")])
def test_bad_columns_name_the_part_and_what_is_allowed(spec: str, named: str) -> None:
    with pytest.raises(DataError) as err:
        parse_columns(spec)
    text = str(err.value)
    assert text.startswith(f"bad --columns={named}") and "spx, optopsy" in text and "market_price" in text


def test_spx_preset_reads_every_row_with_the_inputs_computed(spx_chain: pd.DataFrame) -> None:
    c = spx_chain
    assert len(c) == 14_438
    first = c.iloc[0]
    assert first["right"] == "call" and first["strike"] == 1200 and first["spot"] == 2695.79
    assert first["ttm"] == pytest.approx(29 / 365)  # 2018-01-02 to 2018-01-31, ACT/365
    assert first["market_price"] == pytest.approx((1483.6 + 1503.2) / 2)
    # one rate for the file, from parity on expiries of 18+ days; each expiry's forward grows spot at r - q
    assert c["rate"].nunique() == 1 and c["rate"].iloc[0] == pytest.approx(0.0263, abs=5e-4)
    live = c["ttm"] > 0
    grown = c["spot"] * np.exp((c["rate"] - c["div_yield"]) * c["ttm"])
    assert np.allclose(grown[live], c["forward"][live], rtol=1e-12)
    # the vendor's own columns ride along: its implied vol and the ones we do not map
    assert {"vendor_iv", "vendor_delta", "exchange", "optionalias"} <= set(c.columns)
    assert c["vendor_iv"].iloc[0] == 0.0908


def test_optopsy_preset_reads_the_older_layout(optopsy_path: Path) -> None:
    c = load_chain(optopsy_path, "optopsy")
    assert len(c) == 208
    assert set(c["right"]) == {"call", "put"} and c["spot"].eq(40.55).all()
    assert str(c["quote_date"].iloc[0].date()) == "2016-01-05" and c["ttm"].iloc[0] == pytest.approx(10 / 365)
    assert {"IVBid", "IVAsk", "Flags"} <= set(c.columns) and c["vendor_iv"].iloc[0] == 2.7379
    out = price_frame(c, device="cpu")
    assert (out["error"] == "").sum() >= 190
    agreement = vendor_iv_agreement(out)
    assert agreement is not None and agreement["quotes"] > 50 and agreement["median_abs_diff"] < 0.01


def test_a_written_mapping_reads_what_the_preset_reads(spx_path: Path, spx_chain: pd.DataFrame) -> None:
    mine = load_chain(spx_path, SPX_MAPPING)  # dates inferred, not told
    for col in ("right", "strike", "spot", "ttm", "market_price", "rate", "div_yield"):
        assert mine[col].equals(spx_chain[col]), col
    assert "impliedvol" in mine.columns  # not mapped, so kept under the vendor's name
    # a given rate is used as it is; parity then gives only the dividend yield
    fixed = load_chain(spx_path, "spx,rate=0.02")
    assert (fixed["rate"] == 0.02).all() and not np.allclose(fixed["div_yield"], spx_chain["div_yield"])


def test_a_mapped_column_the_file_lacks_is_named(optopsy_path: Path) -> None:
    with pytest.raises(DataError, match=r"--columns='spot=underlying_last'.*no column 'underlying_last'.*UnderlyingPrice"):
        load_chain(optopsy_path, "spx")


def test_parity_recovers_a_known_rate_and_forward() -> None:
    from greekfire.quant import bsm_price

    strikes = np.arange(80.0, 121.0, 5.0)
    rows = []
    for t in (0.1, 0.5):
        for w, right in ((1.0, "C"), (-1.0, "P")):
            values = bsm_price(w, 100.0, strikes, t, 0.03, 0.01, 0.25).numpy()
            rows += [{"right": right, "strike": k, "spot": 100.0, "ttm": t, "market_price": v, "expiry": t}
                     for k, v in zip(strikes, values, strict=True)]
    frame = pd.DataFrame(rows)
    rate, forward = parity_forwards(frame)
    assert rate == pytest.approx(0.03, abs=1e-9)
    assert np.allclose(forward, 100.0 * np.exp(0.02 * frame["ttm"].to_numpy()), rtol=1e-9)


def test_spx_implied_vols_agree_with_the_vendor_through_the_command(spx_path: Path, tmp_path: Path) -> None:
    """The figure in docs/quant.md: on the 5,319 out-of-the-money quotes with a bid, our vols and the vendor's
    differ by 0.010 vol at the median. Run as a user would, the rows piped out of stdout."""
    res = subprocess.run([sys.executable, "-m", "greekfire.cli", "price", str(spx_path), "--columns", "spx", "-o", "-",
                          "--json", "--device", "cpu"], capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr
    rows = pd.read_csv(io.StringIO(res.stdout))  # stdout is the CSV and nothing else
    assert len(rows) == 14_438 and {"iv", "vendor_iv", "ttm", "rate", "div_yield", "error"} <= set(rows.columns)
    assert rows["error"].fillna("").eq("").sum() == 12_578
    summary = json.loads(res.stderr[res.stderr.index("{"):])
    assert summary["output"] == "-" and summary["rows"] == 14_438
    vs = summary["iv_vs_vendor"]
    assert vs["quotes"] == 5_319 and vs["median_abs_diff"] == pytest.approx(0.010, abs=5e-4)
    # the same figure from the piped rows themselves, not the summary
    w = np.where(rows["right"] == "call", 1.0, -1.0)
    otm = rows["error"].isna() & (rows["bid"] > 0) & (w * (rows["strike"] - rows["spot"]) > 0)
    assert otm.sum() == 5_319
    assert float(np.median(np.abs(rows["iv"] - rows["vendor_iv"])[otm])) == pytest.approx(0.010, abs=5e-4)


def test_preview_without_output_shows_units(optopsy_path: Path, tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "greekfire.cli", "price", str(optopsy_path), "--columns", "optopsy",
                          "--device", "cpu"], capture_output=True, text=True, env=_env(tmp_path, 160), cwd=tmp_path,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "first 10 of 208 rows" in out
    for header in ("ttm", "(years)", "vega", "(per 1.00 vol)", "delta", "(per 1 spot)", "vendor_iv"):
        assert header in out, header
    assert "rate (per year)" in out and "seconds (s)" in out and "iv_vs_vendor (vol" in out
    assert not list(tmp_path.glob("*.csv"))  # a preview writes nothing


def test_a_narrow_terminal_leaves_columns_out_rather_than_cutting_them(optopsy_path: Path) -> None:
    from rich.console import Console

    from greekfire.cli_output import print_preview

    result, _ = price_chain(optopsy_path, columns="optopsy", device="cpu")
    screen = io.StringIO()
    print_preview(Console(file=screen, width=60), result)
    text = screen.getvalue()
    assert "not shown on this terminal:" in text and "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 60 and "(years)" in text


def test_data_spx_out_file_is_read_by_price_without_columns(spx_path: Path, tmp_path: Path) -> None:
    report = spx_report(spx_path, str(tmp_path / "chain.parquet"))
    assert report["files"] == 1 and report["rate"] == pytest.approx(0.0263, abs=5e-4)
    written = pd.read_parquet(tmp_path / "chain.parquet")
    assert list(written.columns) == list(CHAIN_COLUMNS) and len(written) == 14_438
    result, summary = price_chain(tmp_path / "chain.parquet", device="cpu")
    assert summary["priced"] == 12_578 and summary["iv_vs_vendor"]["quotes"] == 5_319
    assert summary["iv_vs_vendor"]["median_abs_diff"] == pytest.approx(0.010, abs=5e-4)


def test_data_spx_out_folder_carries_the_parity_rate_to_training(spx_path: Path, tmp_path: Path) -> None:
    from greekfire.ml.data import read_quote_parquet

    report = spx_report(spx_path, str(tmp_path / "spx"))
    assert report["rate"] == pytest.approx(0.0263, abs=5e-4) and 0.0 < report["div_yield"] < 0.05
    quotes = read_quote_parquet(str(tmp_path / "spx" / "quotes"))  # what `train pricing --data` reads
    assert len(quotes) == 14_438
    assert quotes.attrs["rate"] == report["rate"] and quotes.attrs["div_yield"] == report["div_yield"]
