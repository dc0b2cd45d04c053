"""``greekfire wheel backtest``: the defaults (1999-2018), other files of the documented format, bad rows
reported with their line, errors as one line with the exit code, the HTML report."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from greekfire.cli import app
from greekfire.strategies.wheel.market import default_prices_path, default_vol_path

runner = CliRunner()


def nasdaq_csv(path: Path, start: str, end: str) -> Path:
    """arch's NASDAQ composite as ``date,close,open,high,low`` (another index, another layout)."""
    with gzip.open(default_prices_path().parents[1] / "nasdaq" / "nasdaq.csv.gz", "rt") as fh:
        raw = pd.read_csv(fh, parse_dates=["Date"])
    raw = raw[(raw["Date"] >= start) & (raw["Date"] <= end)]
    out = pd.DataFrame({"date": raw["Date"].dt.strftime("%Y-%m-%d"), "close": raw["Close"], "open": raw["Open"],
                        "high": raw["High"], "low": raw["Low"]})
    out.to_csv(path, index=False)
    return path


def synthetic_vol(path: Path, start: str, end: str) -> Path:
    days = pd.bdate_range(start, end)
    level = 22 + 6 * np.sin(np.arange(len(days)) / 40.0)
    pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "close": np.round(level, 2)}).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_json_on_the_defaults_runs_1999_2018(shared_data: Path) -> None:
    r = runner.invoke(app, ["wheel", "backtest", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["period"] == {"start": "1999-01-04", "end": "2018-12-31", "days": 5031}
    for name in ("wheel", "buy_and_hold", "put_replica"):
        assert out[name]["years"] > 19.9
        assert -1 < out[name]["max_drawdown"] < 0 and out[name]["cagr"] is not None
    assert out["wheel"]["premium_per_year"] > 0 and 0 <= out["wheel"]["win_rate"] <= 1
    assert out["inputs"]["vol"] == str(default_vol_path())
    # the VIX file has no 1999-12-31: reported as a missing row, filled from the day before
    assert {"value": "1999-12-31", "action": "filled from the day before"}.items() <= out["data_problems"]["first"][0].items()


def test_other_files_of_the_documented_format_run_unchanged(tmp_path: Path) -> None:
    prices = nasdaq_csv(tmp_path / "nasdaq.csv", "2010-01-01", "2011-12-31")
    vol = synthetic_vol(tmp_path / "vol.csv", "2009-12-01", "2012-01-31")
    report = tmp_path / "report.html"
    r = runner.invoke(app, ["wheel", "backtest", "--prices", str(prices), "--vol", str(vol), "--rates", "1.5",
                            "--start", "2010-03-01", "--json", "--report", str(report)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["period"]["start"] == "2010-03-01" and out["period"]["end"] == "2011-12-30"
    assert out["inputs"]["prices"]["SPX"] == str(prices) and out["inputs"]["rates"] == "constant 1.5%"
    assert out["data_problems"]["count"] == 0 and out["wheel"]["end_value"] > 0
    page = report.read_text()
    assert page.count("data:image/png;base64,") >= 4 and "http" not in page.replace("http-equiv", "")
    assert "Drawdown" in page and "State timeline" in page


def test_a_bad_row_is_reported_with_its_line(tmp_path: Path) -> None:
    prices = nasdaq_csv(tmp_path / "nasdaq.csv", "2010-01-01", "2010-12-31")
    lines = prices.read_text().splitlines()
    lines[4] = lines[4].split(",")[0] + ",oops,1,1,1"  # line 5 of the file
    prices.write_text("\n".join(lines) + "\n")
    vol = synthetic_vol(tmp_path / "vol.csv", "2009-12-01", "2011-01-31")
    r = runner.invoke(app, ["wheel", "backtest", "--prices", str(prices), "--vol", str(vol), "--rates", "1", "--json"])
    assert r.exit_code == 0, r.output
    (problem,) = json.loads(r.stdout)["data_problems"]["first"]
    assert (problem["file"], problem["line"], problem["field"], problem["value"], problem["action"]) == (
        "nasdaq.csv", 5, "close", "oops", "skipped")
    table = runner.invoke(app, ["wheel", "backtest", "--prices", str(prices), "--vol", str(vol), "--rates", "1"])
    assert table.exit_code == 0 and "nasdaq.csv line 5: close='oops'" in table.stdout
    assert "max_drawdown" in table.stdout and "PUT replica" in table.stdout


def test_errors_are_one_line_with_the_exit_code(tmp_path: Path) -> None:
    r = runner.invoke(app, ["wheel", "backtest", "--prices", str(tmp_path / "absent.csv")])
    assert r.exit_code == 2 and "absent.csv" in r.stderr and "does not exist" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("day,price\n2020-01-02,1\n")
    r = runner.invoke(app, ["wheel", "backtest", "--prices", str(bad), "--vol", str(bad)])
    assert r.exit_code == 1 and "lacks column(s) date, close" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["wheel", "backtest", "--start", "2010-13-01"])
    assert r.exit_code == 2 and "--start '2010-13-01': not a date" in r.stderr
    r = runner.invoke(app, ["wheel", "backtest", "--rates", "nope"])
    assert r.exit_code == 2 and "--rates 'nope'" in r.stderr


def test_prices_per_symbol(tmp_path: Path) -> None:
    from greekfire.cli_errors import UsageProblem
    from greekfire.cli_wheel import parse_prices

    f = tmp_path / "q.csv"
    f.write_text("date,close\n")
    assert parse_prices([str(f)], ["SPX"]) == {"SPX": f}
    assert parse_prices([f"QQQ={f}"], ["SPX", "QQQ"]) == {"QQQ": f, "SPX": None}  # SPX: the default file
    with pytest.raises(UsageProblem, match="no prices for 'QQQ'"):
        parse_prices(None, ["SPX", "QQQ"])
    with pytest.raises(UsageProblem, match="not a symbol of the wheel config"):
        parse_prices([f"IWM={f}"], ["SPX"])
