"""The accuracy-experiment definitions and their Markdown table (no training here)."""

from __future__ import annotations

from greekfire.ml.config import compose_experiment
from greekfire.ml.experiments import EXPERIMENTS, markdown_table


def test_every_experiment_preset_composes_and_validates() -> None:
    for name, exp in EXPERIMENTS.items():
        cfg = compose_experiment(exp.preset)
        assert cfg.name == exp.preset, name
    liu = compose_experiment("liu_mlp")
    assert liu.data.n_samples == 500_000 and liu.model.hidden == 100 and liu.model.layers == 4
    culkin = compose_experiment("culkin_mlp")
    assert culkin.data.n_samples == 300_000 and culkin.data.test_frac == 0.2  # 240k / 60k
    assert compose_experiment("heston_lstm").model.kind == "lstm"


def test_goals_are_the_issue_thresholds() -> None:
    assert EXPERIMENTS["liu"].met({"test_mse": 9e-8, "test_r2": 0.999999})
    assert not EXPERIMENTS["liu"].met({"test_mse": 2e-7, "test_r2": 0.999999})
    assert not EXPERIMENTS["liu"].met({"test_mse": 9e-8, "test_r2": 0.99999})
    assert EXPERIMENTS["culkin"].met({"test_rmse": 0.0029}) and not EXPERIMENTS["culkin"].met({"test_rmse": 0.004})
    assert EXPERIMENTS["heston"].met({"test_rmse_gain_vs_bs_pct": 31.0})
    assert not EXPERIMENTS["heston"].met({"test_rmse_gain_vs_bs_pct": 12.0})


def test_markdown_table_has_one_row_per_record() -> None:
    rec = {"experiment": "culkin", "paper": "p", "paper_figure": "RMSE 0.0112", "goal": "g", "goal_met": True,
           "figures": {"test_rmse": 0.00247, "test_mse": 6.1e-6}, "train_seconds": 313.0, "steps": 3116}
    table = markdown_table([rec, {**rec, "experiment": "liu", "goal_met": False}])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and "rmse=0.00247" in lines[2] and "mse=6.100e-06" in lines[2]
    assert "| yes |" in lines[2] and "| no |" in lines[3]


def test_remote_data_is_checked_before_training(tmp_path) -> None:
    """A job pointing at an unreachable object store fails at once, naming the problem, not an hour in."""
    import socket

    import pytest

    from greekfire.core.errors import ConfigError
    from greekfire.core.settings import load_settings
    from greekfire.ml.config import compose_experiment
    from greekfire.ml.train import _check_remote_data

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(
        overrides={"storage.s3_endpoint_url": f"http://127.0.0.1:{port}", "storage.connect_timeout_s": 1,
                   "storage.max_attempts": 1, "home": str(tmp_path)}
    )
    cfg = compose_experiment("smoke", ["data.spx_path=s3://quotes/SPX_2018.csv"], settings=settings)
    with pytest.raises(ConfigError) as ei:
        _check_remote_data(cfg, settings)
    assert ei.value.field == "storage.url" and "endpoint_unreachable" in str(ei.value)
