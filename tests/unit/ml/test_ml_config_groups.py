"""Hydra config groups of ``configs/train``: each group composes, the env overlays, a typo names its key path,
secrets never reach a dumped config, and every experiment composes as the flat presets did (base + preset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from greekfire.cli import app
from greekfire.core.errors import ConfigError, ConfigErrors
from greekfire.core.settings import load_settings
from greekfire.ml.config import GROUPS, compose_experiment, dump_config, mask_url

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs" / "train"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
SECRET = "s3cr3t-value-never-dumped"


def _fields(exc: ConfigErrors | ConfigError) -> list[str]:
    return [e.field for e in exc.errors] if isinstance(exc, ConfigErrors) else [exc.field]


@pytest.fixture
def server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEKFIRE_MLFLOW_URI", f"https://trainer:{SECRET}@mlflow.internal:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("GREEKFIRE_RUNS_URL", "s3://runs-bucket/pricing")


def test_every_group_folder_is_a_known_group() -> None:
    folders = {d.name for d in CONFIGS.iterdir() if d.is_dir()} - {"hpo"}
    assert folders == set(GROUPS)
    assert set(EXPERIMENTS) >= {"smoke", "liu_mlp", "lstm_tiny"}


@pytest.mark.parametrize("group", [g for g in GROUPS if g not in ("experiment", "env")])
def test_each_option_of_each_group_composes_and_sets_its_keys(group: str, server_env: None) -> None:
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        cfg = compose_experiment("smoke", [f"{group}={path.stem}"])
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        assert isinstance(raw, dict)
        section = cfg.model_dump(mode="python")[group]
        for key, value in raw.items():
            got = section[key]
            got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
            assert got == (tuple(value) if isinstance(got, tuple) else value), (group, path.stem, key)


def test_a_group_choice_wins_over_the_experiment_and_key_overrides_win_over_both() -> None:
    smoke = compose_experiment("smoke")
    cfg = compose_experiment("smoke", ["model=lstm", "model.lstm_hidden=32", "optim.lr=1e-3"])
    assert smoke.model.kind == "mlp" and cfg.model.kind == "lstm" and cfg.model.lstm_hidden == 32
    assert cfg.optim.lr == 1e-3 and smoke.optim.lr != 1e-3
    assert cfg.data == smoke.data  # groups not named keep the experiment's values


def test_env_overlays_resources_tracking_and_storage(server_env: None) -> None:
    dev = compose_experiment("smoke", ["env=dev"])
    prod = compose_experiment("smoke", ["env=prod"])
    assert dev.tracking.mlflow_uri is None and dev.storage.runs_url is None
    assert prod.tracking.mlflow_uri == f"https://trainer:{SECRET}@mlflow.internal:5000"
    assert prod.storage.runs_url == "s3://runs-bucket/pricing"
    assert prod.storage.secret_access_key is not None and prod.storage.secret_access_key.get_secret_value() == SECRET
    assert prod.trainer.memory_fraction is not None and prod.trainer.max_time_s is not None
    assert prod.data.num_workers > dev.data.num_workers
    # resources, storage and tracking do not change what is learned: the version fingerprint is the same
    assert prod.fingerprint() == dev.fingerprint() == compose_experiment("smoke").fingerprint()


def test_env_without_its_variable_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREEKFIRE_MLFLOW_URI", raising=False)
    with pytest.raises(ConfigError) as info:
        compose_experiment("smoke", ["env=prod"])
    assert info.value.field == "tracking.mlflow_uri" and "GREEKFIRE_MLFLOW_URI" in info.value.allowed


def test_a_typo_names_its_key_path() -> None:
    with pytest.raises(ConfigErrors) as info:
        compose_experiment("smoke", ["env=dev", "trainer.memory_fracton=0.5"])
    assert "trainer.memory_fracton" in _fields(info.value)
    with pytest.raises(ConfigErrors) as bad:
        compose_experiment("smoke", ["trainer=gpu", "trainer.memory_fraction=1.5"])
    assert _fields(bad.value) == ["trainer.memory_fraction"]
    with pytest.raises(ConfigError) as group:
        compose_experiment("smoke", ["env=production"])
    assert group.value.field == "overrides" and "env=production" in str(group.value.value)
    with pytest.raises(ConfigError) as missing:
        compose_experiment("no_such_experiment")
    assert missing.value.field == "--preset" and "smoke" in missing.value.allowed


def test_the_cli_composes_groups_and_reports_a_typo_with_its_path() -> None:
    result = CliRunner().invoke(app, ["train", "run", "+experiment=smoke", "env=dev", "model=mlp",
                                      "optim.lrr=1e-3"])
    assert result.exit_code == 2
    assert "optim.lrr" in result.output


def test_secrets_are_masked_in_the_dump(server_env: None) -> None:
    cfg = compose_experiment("smoke", ["env=prod"])
    text = dump_config(cfg)
    assert SECRET not in text
    dumped = json.loads(text)
    assert dumped["tracking"]["mlflow_uri"] == "https://trainer:***@mlflow.internal:5000"
    assert dumped["storage"]["secret_access_key"] == "**********"
    assert mask_url("https://mlflow.internal") == "https://mlflow.internal"


def test_a_run_config_json_holds_no_secret(server_env: None, tmp_path: Path) -> None:
    from greekfire.ml.train import train_pricing

    cfg = compose_experiment("smoke", ["env=prod", "data.n_samples=64", "data.num_workers=0", "data.batch_size=32",
                                       "model.hidden=4", "model.layers=1", "trainer.max_epochs=1",
                                       "trainer.accelerator=cpu", "tracking.mlflow=false",
                                       "tracking.tensorboard=false", "tracking.log_model=false",
                                       f"storage.runs_url={(tmp_path / 'published').as_uri()}"])
    settings = load_settings(overrides={"training.runs_dir": str(tmp_path / "runs")})
    result = train_pricing(cfg, settings, test=False)
    written = (Path(result.run_dir) / "config.json").read_text()
    assert SECRET not in written
    assert json.loads(written)["storage"]["runs_url"] == (tmp_path / "published").as_uri()
    # the finished run is copied to storage.runs_url/<name>/<version>, secrets still masked there
    published = tmp_path / "published" / cfg.name / result.version
    assert result.run_url == f"{(tmp_path / 'published').as_uri()}/{cfg.name}/{result.version}"
    assert (published / "config.json").read_text() == written
    assert json.loads((published / "summary.json").read_text())["run_url"] == result.run_url
    assert (published / "checkpoints" / "last.ckpt").stat().st_size == (Path(result.run_dir) / "checkpoints" / "last.ckpt").stat().st_size


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_composes_as_the_flat_preset_did(name: str) -> None:
    """base.yaml merged with the experiment file by OmegaConf alone (the old `defaults: [base, _self_]`)
    gives the same config as composing ``experiment=NAME`` with Hydra."""
    base = OmegaConf.to_container(OmegaConf.load(CONFIGS / "base.yaml"))
    assert isinstance(base, dict)
    base.pop("defaults")
    experiment = OmegaConf.load(CONFIGS / "experiment" / f"{name}.yaml")
    merged: dict[str, Any] = dict(OmegaConf.to_container(OmegaConf.merge(base, experiment)))  # type: ignore[arg-type]
    merged.setdefault("name", name)
    from greekfire.ml.config import validate_experiment

    expected = validate_experiment(merged).model_dump(mode="json")
    got = compose_experiment(name).model_dump(mode="json")
    assert got == expected
    assert compose_experiment(name, ["trainer.max_epochs=2"]).trainer.max_epochs == 2


def test_the_flat_layout_still_composes(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("model: {hidden: 12}\n")
    (tmp_path / "tiny.yaml").write_text("defaults: [base, _self_]\nmodel: {layers: 2}\n")
    settings = load_settings(overrides={"training.config_dir": str(tmp_path)})
    cfg = compose_experiment("tiny", settings=settings)
    assert (cfg.name, cfg.model.hidden, cfg.model.layers) == ("tiny", 12, 2)
