"""Experiment tracking: TensorBoard, MLflow (local SQLite store or a server URI) and optional W&B."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from greekfire.core.errors import ConfigError
from greekfire.core.settings import Settings, env_set
from greekfire.ml.config import ExperimentConfig

log = logging.getLogger(__name__)


def mlflow_uri(settings: Settings) -> str:
    """``training.mlflow_tracking_uri`` or the local store ``sqlite:///<runs_dir>/mlflow.db``."""
    if settings.training.mlflow_tracking_uri:
        return settings.training.mlflow_tracking_uri
    runs = Path(settings.training.runs_dir).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    # MLflow's plain-folder store is frozen upstream; its SQLite store needs no server and keeps working
    return f"sqlite:///{runs / 'mlflow.db'}"


def mlflow_artifact_location(settings: Settings) -> str | None:
    """Artifact folder for the local store (None when a tracking server decides)."""
    if settings.training.mlflow_tracking_uri:
        return None
    return (Path(settings.training.runs_dir).resolve() / "mlartifacts").as_uri()


def wandb_wanted(cfg: ExperimentConfig, settings: Settings) -> bool:
    """True when W&B logging is asked for by the experiment or the settings."""
    return bool(cfg.tracking.wandb) if cfg.tracking.wandb is not None else settings.training.wandb_enabled


def make_loggers(cfg: ExperimentConfig, settings: Settings, run_dir: Path, version: str) -> list[Any]:
    """The Lightning loggers the experiment asks for; W&B raises ConfigError when wandb is not installed."""
    experiment = cfg.tracking.experiment or cfg.name
    loggers: list[Any] = []
    if cfg.tracking.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False))
    if cfg.tracking.mlflow:
        loggers.append(
            MLFlowLogger(
                experiment_name=experiment,
                run_name=f"{cfg.name}-{version}",
                tracking_uri=mlflow_uri(settings),
                artifact_location=mlflow_artifact_location(settings),
                tags={"greekfire.version": version, "greekfire.preset": cfg.name},
                log_model=False,
            )
        )
    if wandb_wanted(cfg, settings):
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(
                "training.wandb_enabled", True,
                "Weights & Biases logging needs the wandb package, which is not installed "
                "(pip install wandb), or set tracking.wandb=false",
            )
        env_set("WANDB_MODE", settings.training.wandb_mode, overwrite=False)
        loggers.append(WandbLogger(project=experiment, name=f"{cfg.name}-{version}", save_dir=str(run_dir),
                                   offline=settings.training.wandb_mode == "offline"))
    return loggers


def mlflow_run_id(loggers: list[Any]) -> str | None:
    """The MLflow run id of the MLflow logger among ``loggers``, if any."""
    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            return str(lg.run_id)
    return None


def log_mlflow_artifact(loggers: list[Any], path: Path, artifact_path: str = "model") -> str | None:
    """Store ``path`` under the MLflow run; returns ``runs:/<id>/<artifact_path>/<name>`` or None."""
    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            lg.experiment.log_artifact(lg.run_id, str(path), artifact_path=artifact_path)
            return f"runs:/{lg.run_id}/{artifact_path}/{path.name}"
    return None
