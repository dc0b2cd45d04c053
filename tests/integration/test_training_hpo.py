"""Acceptance 4: Optuna with 2 worker processes on PostgreSQL completes a study with pruned trials; the best
trial is trained in full and registered as challenger.

Pruning is made deterministic enough: the learning rate is drawn log-uniformly over 1e-6..1e-2 by seeded
random samplers (worker i: seed 6 + i), so some trials barely move from their initial loss in three epochs
while others learn; the median pruner (after one completed trial) stops those worse than the median at an
epoch. Which trials are pruned depends on the order in which the two workers finish, not whether some are.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from greekfire.core.settings import load_settings
from greekfire.training.hpo import run_study, validate_space

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TRIALS = 8


def _space() -> dict:
    return {
        "preset": "smoke",
        "overrides": ["data.n_samples=1000", "data.batch_size=64", "model.hidden=32", "model.layers=2",
                      "optim.scheduler=none"],
        "trial_overrides": ["trainer.max_epochs=3"],
        "final_overrides": ["trainer.max_epochs=3"],
        "space": {"optim.lr": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}},
        "sampler": {"kind": "random", "seed": 6},
        "pruner": {"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        "early_stopping_patience": 2,
        "heartbeat_s": 0,
        "model_name": "pricing-hpo-test",
    }


def test_two_workers_on_postgresql_prune_and_register_the_best_as_challenger(postgres_url: str, tmp_path: Path) -> None:
    import optuna
    from mlflow import MlflowClient

    from greekfire.ml.tracking import mlflow_uri

    storage = make_url(postgres_url).set(database="greekfire_hpo_test").render_as_string(hide_password=False)
    settings = load_settings(overrides={
        "training.runs_dir": str(tmp_path / "runs"),
        "training.config_dir": str(ROOT / "configs" / "train"),
        "training.torch_threads": 1,
    })
    study = f"accept-{uuid.uuid4().hex[:8]}"
    seen = []
    try:
        result = run_study(validate_space(_space()), settings, study=study, trials=TRIALS, workers=2,
                           storage=storage, on_progress=seen.append, poll_s=0.2)

        # the study is complete: every trial finished, some were pruned, none failed
        assert len(result.trials) == TRIALS
        assert result.failed == 0, [t["error"] for t in result.trials]
        assert result.pruned > 0
        assert result.complete + result.pruned == TRIALS
        # by two worker processes sharing it through PostgreSQL
        assert {t["worker"] for t in result.trials} == {0, 1}
        assert len({t["pid"] for t in result.trials}) == 2
        stored = optuna.load_study(study_name=study, storage=storage)
        states = [t.state for t in stored.trials]
        assert states.count(optuna.trial.TrialState.PRUNED) == result.pruned
        # a trial is pruned on a validation it reported (one per epoch)
        assert all(1 <= t["epochs"] <= 3 for t in result.trials)
        assert seen and seen[-1].done == TRIALS

        # the best trial is the lowest validation loss among the completed ones
        complete = [t for t in result.trials if t["state"] == "COMPLETE"]
        best = min(complete, key=lambda t: t["value"])
        assert result.best_trial == best["number"] and result.best_params == best["params"]

        # trained in full with its parameters
        assert result.final is not None
        run_dir = Path(result.final["run_dir"])
        config = json.loads((run_dir / "config.json").read_text())
        assert config["optim"]["lr"] == pytest.approx(result.best_params["optim.lr"])
        assert Path(result.final["best_checkpoint"]).is_file()
        assert result.final["scores"]["test_rmse"] > 0

        # and registered as challenger in the MLflow store the run was logged to
        assert result.registered is not None
        client = MlflowClient(tracking_uri=mlflow_uri(settings), registry_uri=mlflow_uri(settings))
        version = client.get_model_version_by_alias("pricing-hpo-test", "challenger")
        assert str(version.version) == str(result.registered["version"])  # the registry names versions as text
        assert version.run_id == result.final["mlflow_run_id"]
        assert version.tags["greekfire.hpo.trial"] == str(result.best_trial)
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=study, storage=storage)


def test_the_command_shows_progress_on_a_terminal_and_a_table(tmp_path: Path) -> None:
    """`greekfire train hpo` at a terminal: a progress bar over the trials, then the trial table (one worker
    on SQLite, no final run, so it needs no server)."""
    import sys

    from conftest import command_env, run_in_pty

    space = tmp_path / "space.yaml"
    space.write_text(
        "preset: smoke\n"
        "overrides: [data.n_samples=400, model.hidden=8, model.layers=1, trainer.max_epochs=1]\n"
        "space:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "sampler: {kind: random, seed: 1}\nfinal_train: false\nregister_challenger: false\n"
    )
    rc, out = run_in_pty(
        [sys.executable, "-m", "greekfire.cli", "train", "hpo", "--study", "tty", "--trials", "2", "--workers", "1",
         "--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "--space", str(space)],
        timeout_s=240, cwd=tmp_path,
        env=command_env(GREEKFIRE_TRAINING__RUNS_DIR=str(tmp_path / "runs"), GREEKFIRE_TRAINING__TORCH_THREADS="1",
                        GREEKFIRE_TRAINING__CONFIG_DIR=str(ROOT / "configs" / "train")),
    )
    assert rc == 0, out[-3000:]
    assert "trials" in out and "2/2" in out  # the bar counted both trials
    assert "trials 2/2:" not in out  # (the log line written when stdout is no terminal)
    assert "study tty: " in out and "complete (best)" in out
    assert "Traceback" not in out
