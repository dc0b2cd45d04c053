"""`greekfire price`: every row written, broken rows flagged with reason codes, missing columns named."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from greekfire.cli import app
from greekfire.core.errors import DataError
from greekfire.data.pricing import price_frame, resolve_device
from greekfire.gpu.device import cuda_usable
from greekfire.quant import Capabilities, register_engine, unregister_engine
from quant_grids import break_rows, chain


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


@pytest.mark.skipif(cuda_usable(), reason="checks the error on a machine where torch sees no GPU")
def test_asking_for_cuda_without_a_gpu_names_the_device() -> None:
    with pytest.raises(DataError, match="device='cuda'"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_an_engine_is_held_to_the_devices_it_declares() -> None:
    @register_engine("toy_gpu_only", Capabilities(inputs=(), devices=("cuda",)))
    def gpu_only(batch: Any, market: Any, outputs: tuple[str, ...], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        raise AssertionError("never called on the CPU")

    try:
        with pytest.raises(DataError, match="device='cpu'.*toy_gpu_only runs on cuda"):
            price_frame(chain(5), model="toy_gpu_only", device="cpu")
    finally:
        unregister_engine("toy_gpu_only")


def test_black76_implied_vols_reprice_the_quotes_on_the_forward() -> None:
    df = chain(200).drop(columns=["true_vol"])
    out = price_frame(df, model="black76")
    ok = out["error"] == ""
    assert ok.sum() > 150
    assert np.allclose(out["value"][ok], df["market_price"][ok], rtol=1e-8)
