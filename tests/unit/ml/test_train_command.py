"""``greekfire train pricing`` as a user runs it: on the market ``greekfire data generate`` writes (``--data``),
with the checkpoint's full path at the end, a Rich bar on a terminal and plain log lines elsewhere, without
Lightning's banners; ``serve pricing --model`` taking a run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import ROOT, command_env, run_in_pty
from greekfire.cli import app
from greekfire.core.errors import ConfigError, InputFileError
from greekfire.data.features import CONTRACT_NAMES
from greekfire.data.schema import read_quotes
from greekfire.data.synthetic import generate_to
from greekfire.ml.config import DataConfig, compose_experiment
from greekfire.ml.data import load_pricing_data, read_quote_parquet
from greekfire.ml.serving import checkpoint_in, load_pricing_model
from greekfire.ml.train import with_data

QUIET = ["tracking.mlflow=false", "tracking.tensorboard=false", "trainer.max_epochs=1"]
# what Lightning prints by itself and our commands must not
BANNERS = ("GPU available", "TPU available", "Tip:", "Trainer.fit", "LeafSpec", "LOCAL_RANK", "| Name",
           "mlflow.store", "Creating it")


def _env(tmp: Path) -> dict[str, str]:
    env = command_env()
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]),
               GREEKFIRE_HOME=str(tmp / "home"), GREEKFIRE_TRAINING__TORCH_THREADS="1", COLUMNS="60")
    env.pop("FORCE_COLOR", None)
    return env


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small market as ``greekfire data generate --days 8`` writes it (quotes/ and underlying/)."""
    out = tmp_path_factory.mktemp("market") / "D"
    generate_to(str(out), days=8)
    return out


def test_train_on_generated_market_prints_full_checkpoint_and_log_lines(market: Path, tmp_path: Path) -> None:
    deep = tmp_path / ("a-folder-with-a-long-name-" * 3) / "work"  # longer than the 60 columns of a table
    deep.mkdir(parents=True)
    # MLflow on (a first run: it creates its database and experiment, and must not say so)
    res = subprocess.run([sys.executable, "-m", "greekfire.cli", "train", "pricing", "--data", str(market),
                          "--preset", "smoke", "tracking.tensorboard=false", "trainer.max_epochs=1"], capture_output=True, text=True, env=_env(tmp_path),
                         cwd=deep, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("checkpoint: "), res.stdout
    ckpt = Path(last.removeprefix("checkpoint: "))
    assert ckpt.is_absolute() and ckpt.is_file() and ckpt.name == "best.ckpt", last
    assert ckpt.is_relative_to(deep)
    run_dir = ckpt.parent.parent
    data_cfg = json.loads((run_dir / "config.json").read_text())["data"]
    assert data_cfg["source"] == "quotes" and data_cfg["url"] == str(market)
    # no bar, no terminal codes: the progress is a log line per epoch end, with the validation loss
    out = res.stdout + res.stderr
    assert "\x1b[" not in out and "\r" not in out and "━" not in res.stderr, out
    assert "epoch 1/1 step" in res.stderr and "val_loss" in res.stderr, res.stderr
    for banner in BANNERS:
        assert banner not in out, (banner, out)
    # `serve pricing --model` takes the run folder (and the experiment's folder of versions)
    for folder in (run_dir, run_dir.parent):
        assert checkpoint_in(folder) == ckpt
    model = load_pricing_model(run_dir, device="cpu")
    assert model.contract_names == list(CONTRACT_NAMES) and model.window == 20


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    rc, out = run_in_pty([sys.executable, "-m", "greekfire.cli", "train", "pricing", "--preset", "smoke",
                          "data.n_samples=2000", *QUIET], env=_env(tmp_path), cwd=tmp_path, timeout_s=240)
    assert rc == 0, out
    assert "epoch 1/1" in out and "━" in out and "7/7" in out and "loss 0." in out, out
    assert "checkpoint: " in out
    for banner in BANNERS:
        assert banner not in out, (banner, out)


def test_train_pricing_has_one_experiment_flag(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["train", "pricing", "--config", str(tmp_path / "x.yaml")])
    assert res.exit_code == 2 and "No such option: --config" in res.output, res.output
    res = runner.invoke(app, ["train", "pricing", "-e", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "--experiment" in res.output and "missing.yaml" in res.output, res.output


def test_a_single_quotes_file_reads_like_the_folder(market: Path, tmp_path: Path) -> None:
    folder = read_quotes(str(market / "quotes"))
    one = tmp_path / "quotes.parquet"
    folder.to_parquet(one)
    got = read_quote_parquet(str(one))
    assert len(got) == len(folder) and list(got.columns) == list(folder.columns)
    assert (got["strike"].to_numpy() == folder["strike"].to_numpy()).all()
    # a file of quotes alone has the quotes' spot as its underlying; 8 dates are too few for the indicators
    with pytest.raises(InputFileError, match="insufficient_history") as err:
        load_pricing_data(DataConfig(source="quotes", url=str(one)))
    assert str(one) in str(err.value)


def test_data_path_picks_the_source_and_keeps_the_rest(market: Path, tmp_path: Path) -> None:
    cfg = compose_experiment("heston_lstm", ["data.window=10"])
    quotes = with_data(cfg, str(market))
    assert (quotes.data.source, quotes.data.url) == ("quotes", str(market))
    assert quotes.data.window == 10 and quotes.data.baseline_feature and quotes.model == cfg.model
    for split in ("train", "val"):
        (tmp_path / "prepared" / split).mkdir(parents=True)
    prepared = with_data(cfg, str(tmp_path / "prepared"))
    assert prepared.data.source == "samples" and not prepared.data.baseline_feature  # samples carry their features
    with pytest.raises(InputFileError, match="no such file"):
        with_data(cfg, str(tmp_path / "nothing"))


def test_missing_quote_columns_name_the_file_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "q.parquet"
    pd.DataFrame({"quote_date": ["2024-01-02"], "underlying": ["X"], "spot": [1.0], "strike": [1.0]}).to_parquet(path)
    with pytest.raises(InputFileError) as err:
        read_quote_parquet(str(path))
    message = str(err.value)
    assert str(path) in message and all(c in message for c in ("expiry", "right", "bid", "ask")), message


def test_checkpoint_in_a_folder(tmp_path: Path) -> None:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    assert checkpoint_in(tmp_path / "run") == last  # no best.ckpt: the last one
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    best.write_bytes(b"x")
    assert checkpoint_in(tmp_path / "run") == best
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint") as err:
        checkpoint_in(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)
