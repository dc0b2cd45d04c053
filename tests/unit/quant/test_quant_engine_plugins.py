"""A pricing engine defined outside greekfire prices a file with ``greekfire price --model <its name>``:
registered in the process, named by ``--engine-module``, or installed as a ``greekfire.pricing_engines``
entry point. Nothing in ``data/`` or the CLI knows the engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

import greekfire
from conftest import command_env
from greekfire.cli import app
from greekfire.quant import (
    Capabilities,
    MarketInputs,
    OptionBatch,
    as_tensors,
    bsm_price,
    register_engine,
    unregister_engine,
)

# a plugin module, as a user would write it: Black-Scholes at a fixed 30% vol, whatever the file's vol
TOY_MODULE = '''
"""Toy pricing engine: Black-Scholes at a fixed 30% vol."""
from greekfire.quant import Capabilities, bsm_price, register_engine


@register_engine("toy_fixed_vol", Capabilities(inputs=(), styles=("european", "american"), devices=("cpu",)))
def fixed_vol(batch, market, outputs, options):
    """Black-Scholes at a fixed 30% vol"""
    return {"value": bsm_price(batch.right, market.spot, batch.strike, batch.ttm, market.rate, market.div_yield, 0.3)}
'''


def _chain_csv(path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 40
    frame = pd.DataFrame({
        "right": rng.choice(["C", "P"], n), "spot": rng.uniform(90, 110, n), "strike": rng.uniform(80, 120, n),
        "ttm": rng.uniform(0.1, 1.5, n), "rate": 0.03, "div_yield": 0.01,
    })
    frame.to_csv(path, index=False)
    return frame


def _fixed_vol_values(frame: pd.DataFrame) -> np.ndarray:
    w = np.where(frame["right"] == "C", 1.0, -1.0)
    cols = [np.array(frame[c], dtype=np.float64) for c in ("spot", "strike", "ttm", "rate", "div_yield")]
    return bsm_price(w, cols[0], cols[1], cols[2], cols[3], cols[4], 0.3).numpy()


def _run_cli(args: list[str], pythonpath: list[Path], home: Path) -> subprocess.CompletedProcess[str]:
    env = command_env()
    src = Path(greekfire.__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(src), env.get("PYTHONPATH", "")])
    env["GREEKFIRE_HOME"] = str(home)
    cmd = [sys.executable, "-c", "from greekfire.cli import app; app()", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_an_engine_registered_in_the_process_prices_a_file(tmp_path: Path, tmp_settings_env: Path) -> None:
    @register_engine("toy_intrinsic", Capabilities(inputs=(), styles=("european", "american")))
    def intrinsic(batch: OptionBatch, market: MarketInputs, outputs: tuple[str, ...], options: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Intrinsic value"""
        w, S, K = as_tensors(batch.right, market.spot, batch.strike)
        return {"value": torch.clamp(w * (S - K), min=0.0)}

    try:
        frame = _chain_csv(tmp_path / "in.csv")
        res = CliRunner().invoke(app, ["price", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"),
                                       "--model", "toy_intrinsic", "--style", "american", "--device", "cpu", "--json"])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output)
        assert summary["model"] == "toy_intrinsic" and summary["priced"] == 40 and summary["flagged"] == 0
        out = pd.read_csv(tmp_path / "out.csv")
        w = np.where(frame["right"] == "C", 1.0, -1.0)
        assert np.array_equal(out["value"].to_numpy(), np.maximum(w * (frame["spot"] - frame["strike"]), 0.0))
        # the engine gives no Greeks and no implied vol: those columns are empty, not made up
        assert out["delta"].isna().all() and out["iv"].isna().all()
    finally:
        unregister_engine("toy_intrinsic")
    res = CliRunner().invoke(app, ["price", str(tmp_path / "in.csv"), "-o", str(tmp_path / "x.csv"), "--model",
                                   "toy_intrinsic"])
    assert res.exit_code == 2 and "toy_intrinsic" in res.output and "bsm" in res.output


def test_engine_module_option_registers_a_plugin_in_the_cli_process(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_engines.py").write_text(TOY_MODULE)
    frame = _chain_csv(tmp_path / "in.csv")
    res = _run_cli(["price", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.parquet"), "--model", "toy_fixed_vol",
                    "--engine-module", "toy_engines", "--json"], [tmp_path / "plugins"], tmp_path / "home")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["model"] == "toy_fixed_vol"
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert np.allclose(out["value"].to_numpy(), _fixed_vol_values(frame), rtol=1e-14, atol=0)
    # without the module the name is unknown, and the error lists what is registered
    res = _run_cli(["price", str(tmp_path / "in.csv"), "-o", str(tmp_path / "x.csv"), "--model", "toy_fixed_vol"],
                   [tmp_path / "plugins"], tmp_path / "home")
    assert res.returncode == 2 and "toy_fixed_vol" in res.stderr and "qdfp" in res.stderr


def test_an_installed_entry_point_plugin_is_found_by_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "toy_pricing").mkdir(parents=True)
    (site / "toy_pricing" / "__init__.py").write_text(TOY_MODULE)
    dist = site / "toy_pricing-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-pricing\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[greekfire.pricing_engines]\ntoy = toy_pricing\n")
    frame = _chain_csv(tmp_path / "in.csv")
    res = _run_cli(["price", str(tmp_path / "in.csv"), "-o", str(tmp_path / "out.csv"), "--model", "toy_fixed_vol",
                    "--json"], [site], tmp_path / "home")
    assert res.returncode == 0, res.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert np.allclose(out["value"].to_numpy(), _fixed_vol_values(frame), rtol=1e-12, atol=0)
    help_text = _run_cli(["price", "--help"], [site], tmp_path / "home").stdout
    assert "toy_fixed_vol" in help_text
