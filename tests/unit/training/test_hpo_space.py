"""Search spaces: validation naming the key path, the shipped space, storage rules, suggestion, worker shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from greekfire.core.errors import ConfigError, ConfigErrors, UnavailableError
from greekfire.core.settings import load_settings
from greekfire.ml.config import compose_experiment
from greekfire.training.hpo import (
    _shares,
    apply_params,
    check_space,
    ensure_database,
    load_space,
    resolve_storage,
    suggest,
    trial_experiment,
    validate_space,
)

ROOT = Path(__file__).resolve().parents[3]
SPACE = {"preset": "smoke", "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}


def _fields(exc: ConfigErrors | ConfigError) -> list[str]:
    return [e.field for e in exc.errors] if isinstance(exc, ConfigErrors) else [exc.field]


def test_the_shipped_space_validates_against_its_experiment() -> None:
    settings = load_settings(overrides={"training.config_dir": str(ROOT / "configs" / "train")})
    config = load_space("smoke", settings)
    assert config.preset == "smoke" and "optim.lr" in config.space
    base = trial_experiment(config, settings)
    check_space(config, base)
    assert base.tracking.mlflow is False and base.trainer.early_stopping_patience == config.early_stopping_patience


@pytest.mark.parametrize(("spec", "path"), [
    ({"type": "float", "low": 1e-2, "high": 1e-4}, "space.optim.lr"),
    ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "space.optim.lr"),
    ({"type": "float", "low": 1e-4, "hihg": 1e-2}, "space.optim.lr.hihg"),
    ({"type": "categorical"}, "space.optim.lr"),
    ({"type": "categorical", "choices": [[1, 2]]}, "space.optim.lr"),
    ({"type": "int", "low": 1.5, "high": 4}, "space.optim.lr"),
    ({"type": "uniform", "low": 1, "high": 2}, "space.optim.lr.type"),
])
def test_a_bad_parameter_spec_names_its_key_path(spec: dict, path: str) -> None:
    with pytest.raises(ConfigErrors) as err:
        validate_space({"space": {"optim.lr": spec}})
    assert path in _fields(err.value)


def test_a_typo_in_a_top_level_key_names_it() -> None:
    with pytest.raises(ConfigErrors) as err:
        validate_space({**SPACE, "prunner": {"kind": "median"}})
    assert "prunner" in _fields(err.value)
    with pytest.raises(ConfigErrors) as err:
        validate_space({**SPACE, "pruner": {"kind": "medain"}})
    assert "pruner.kind" in _fields(err.value)


def test_a_key_that_is_no_experiment_key_names_its_path() -> None:
    config = validate_space({"space": {"optim.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    with pytest.raises(ConfigError) as err:
        check_space(config, compose_experiment("smoke"))
    assert err.value.field == "space.optim.lrr"
    assert "lr" in err.value.allowed  # the known keys at that level are listed


def test_a_value_the_experiment_refuses_names_its_path() -> None:
    config = validate_space({"space": {"model.layers": {"type": "int", "low": 0, "high": 3}}})
    with pytest.raises(ConfigErrors) as err:
        check_space(config, compose_experiment("smoke"))
    assert "space.model.layers" in _fields(err.value)


def test_apply_params_sets_nested_keys_and_renames() -> None:
    cfg = apply_params(compose_experiment("smoke"), {"optim.lr": 0.02, "model.hidden": 7}, name="s-t3")
    assert (cfg.optim.lr, cfg.model.hidden, cfg.name) == (0.02, 7, "s-t3")


def test_sqlite_is_refused_for_parallel_workers_with_the_reason() -> None:
    config = validate_space(SPACE)
    settings = load_settings()
    with pytest.raises(ConfigError) as err:
        resolve_storage(config, settings, "sqlite:///hpo.db", workers=2)
    assert err.value.field == "--workers" and "database is locked" in err.value.allowed
    assert resolve_storage(config, settings, "sqlite:///hpo.db", workers=1) == "sqlite:///hpo.db"
    assert resolve_storage(config, settings, None, workers=2) == settings.training.hpo_storage_url


def test_an_unreachable_server_is_one_error_naming_it() -> None:
    with pytest.raises(UnavailableError) as err:
        ensure_database("postgresql+psycopg://postgres:secret@127.0.0.1:1/greekfire_hpo_x")
    assert "127.0.0.1:1" in str(err.value) and "secret" not in str(err.value)


def test_suggest_draws_every_kind_within_bounds() -> None:
    import optuna

    config = validate_space({"space": {
        "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "model.layers": {"type": "int", "low": 2, "high": 4},
        "model.activation": {"type": "categorical", "choices": ["silu", "relu"]},
    }})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        params = suggest(study.ask(), config.space)
        assert 1e-4 <= params["optim.lr"] <= 1e-2
        assert params["model.layers"] in (2, 3, 4)
        assert params["model.activation"] in ("silu", "relu")


@pytest.mark.parametrize(("trials", "workers", "shares"), [(8, 2, [4, 4]), (7, 3, [3, 2, 2]), (1, 1, [1])])
def test_trials_are_shared_between_workers(trials: int, workers: int, shares: list[int]) -> None:
    assert _shares(trials, workers) == shares and sum(shares) == trials


def test_the_command_reports_a_bad_space_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: smoke\nspace:\n  optim.lr: {type: float, low: 1.0, hihg: 2.0}\n")
    proc = subprocess.run([sys.executable, "-m", "greekfire.cli", "train", "hpo", "--study", "s", "--space", str(bad)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "space.optim.lr.hihg" in lines[0] and "Traceback" not in proc.stderr
