"""`greekfire price`: every row written, broken rows flagged with reason codes, missing columns named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from greekfire.cli import app
from greekfire.core.errors import DataError
from greekfire.data.pricing import price_frame
from greekfire.quant import bsm_price


def chain(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    right = rng.choice(["C", "P"], n)
    spot = rng.uniform(50, 150, n)
    strike = spot * rng.uniform(0.8, 1.2, n)
    ttm = rng.uniform(0.02, 2.0, n)
    rate = rng.uniform(0.0, 0.05, n)
    div = rng.uniform(0.0, 0.03, n)
    vol = rng.uniform(0.1, 0.6, n)
    w = np.where(right == "C", 1.0, -1.0)
    import torch

    price = bsm_price(torch.as_tensor(w), torch.as_tensor(spot), torch.as_tensor(strike), torch.as_tensor(ttm),
                      torch.as_tensor(rate), torch.as_tensor(div), torch.as_tensor(vol)).numpy()
    return pd.DataFrame({"right": right, "spot": spot, "strike": strike, "ttm": ttm, "rate": rate,
                         "div_yield": div, "market_price": price, "true_vol": vol})


def break_rows(df: pd.DataFrame, share: float = 0.01, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bad = rng.choice(len(df), int(len(df) * share), replace=False)
    kinds = np.arange(len(bad)) % 4
    df.loc[bad[kinds == 0], "spot"] = -5.0
    df.loc[bad[kinds == 1], "right"] = "X"
    df.loc[bad[kinds == 2], "market_price"] = 0.0  # below intrinsic for ITM, no time value for OTM
    df.loc[bad[kinds == 3], "ttm"] = np.nan
    return bad


def test_price_frame_flags_bad_rows_and_prices_the_rest() -> None:
    df = chain(3000)
    bad = break_rows(df)
    out = price_frame(df, style="european")
    assert len(out) == len(df)
    assert set(out["error"].iloc[bad]) <= {"bad_input", "below_intrinsic", "no_time_value"}
    assert (out["error"].iloc[bad] != "").all()
    good = np.setdiff1d(np.arange(len(df)), bad)
    assert (out["error"].iloc[good] == "").all()
    assert np.allclose(out["iv"].iloc[good], df["true_vol"].iloc[good], rtol=1e-8)
    assert np.isfinite(out["delta"].iloc[good]).all() and out["delta"].iloc[bad].isna().any()


def test_missing_column_fails_naming_it() -> None:
    df = chain(10).drop(columns=["div_yield"])
    with pytest.raises(DataError, match="div_yield"):
        price_frame(df)
    with pytest.raises(DataError, match="model"):
        price_frame(chain(10), style="american", model="bsm")


def test_cli_price_csv_and_parquet(tmp_path: Path, tmp_settings_env: Path) -> None:
    df = chain(400)
    bad = break_rows(df, share=0.05)
    src = tmp_path / "in.csv"
    df.drop(columns=["true_vol"]).assign(expiry="2024-12-20", quote_date="2024-06-20").drop(columns=["ttm"]).to_csv(
        src, index=False)
    runner = CliRunner()
    res = runner.invoke(app, ["price", str(src), "-o", str(tmp_path / "out.parquet"), "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["rows"] == 400 and summary["flagged"] >= len(bad) - 5
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == 400 and {"value", "delta", "vega", "iv", "error"} <= set(out.columns)
    # American on the same file, with a vol column: Greeks by the qdfp engine
    df2 = chain(50).drop(columns=["market_price"]).rename(columns={"true_vol": "vol"})
    df2.to_csv(tmp_path / "am.csv", index=False)
    res = runner.invoke(app, ["price", str(tmp_path / "am.csv"), "-o", str(tmp_path / "am_out.csv"), "--style",
                              "american", "--model", "baw", "--json"])
    assert res.exit_code == 0, res.output
    am = pd.read_csv(tmp_path / "am_out.csv")
    assert (am["value"] >= 0).all() and am["error"].isna().all()
    res = runner.invoke(app, ["price", str(tmp_path / "am.csv"), "-o", str(tmp_path / "x.txt")])
    assert res.exit_code == 2 and "output" in res.output
