"""Experiment tracking: TensorBoard, MLflow (local SQLite store or a server URI) and optional W&B."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

from greekfire.core.errors import ConfigError
from greekfire.core.settings import Settings, env_set
from greekfire.gpu.memory import oom_counts, peak_allocated_bytes
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


def git_commit(folder: Path | None = None) -> str | None:
    """The git commit (40 hex digits) of the code in ``folder`` (default: this package's source), with a
    ``-dirty`` suffix when the work tree has changes; None outside a git checkout or without git."""
    import subprocess  # lazy: only a tracked run asks

    where = folder or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else commit


#: run tags every tracked run carries (besides MLflow's own ``mlflow.source.git.commit``)
TAG_DATA_VERSION = "greekfire.data_version"
TAG_GIT_COMMIT = "greekfire.git_commit"
TAG_STATUS = "greekfire.status"
TAG_ERROR = "greekfire.error"


def log_run_context(loggers: list[Any], cfg: ExperimentConfig, data_version: str, version: str) -> None:
    """Record on the MLflow run what makes it reproducible: the composed config (artifact ``config.json``
    and flattened params ``cfg.*``), the data version (fingerprint of the rows, tag
    ``greekfire.data_version``) and the git commit of the code (tags ``greekfire.git_commit`` and
    ``mlflow.source.git.commit``)."""
    commit = git_commit()
    for lg in loggers:
        if not isinstance(lg, MLFlowLogger):
            continue
        client, run_id = lg.experiment, lg.run_id
        tags = {TAG_DATA_VERSION: data_version, "greekfire.run_version": version, TAG_STATUS: "running"}
        if commit:
            tags.update({TAG_GIT_COMMIT: commit, "mlflow.source.git.commit": commit.removesuffix("-dirty")})
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        composed = cfg.model_dump(mode="json")
        client.log_dict(run_id, composed, "config.json")
        from mlflow.entities import Param

        flat = _flatten(composed, "cfg")
        params = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])


def _flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def record_failure(loggers: list[Any], exc: BaseException) -> None:
    """Mark the MLflow run FAILED with the exception in tag ``greekfire.error`` (type and message) and its
    traceback as artifact ``error.txt``; the exception is also logged. Errors of the tracking server while
    doing so are logged, never raised over ``exc``."""
    import traceback

    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:4000]
    log.error("training run failed: %s", text, exc_info=exc)
    for lg in loggers:
        if not isinstance(lg, MLFlowLogger):
            continue
        try:
            lg.experiment.set_tag(lg.run_id, TAG_ERROR, text)
            lg.experiment.set_tag(lg.run_id, TAG_STATUS, "failed")
            lg.experiment.log_text(lg.run_id, "".join(traceback.format_exception(exc)), "error.txt")
            lg.finalize("failed")
        except Exception as err:  # the tracking server may be what failed
            log.warning("could not record the failure on MLflow run %s: %s", lg.run_id, err)


def record_success(loggers: list[Any]) -> None:
    """Tag the MLflow run ``greekfire.status=finished``."""
    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            lg.experiment.set_tag(lg.run_id, TAG_STATUS, "finished")


def push_training_metrics(settings: Settings, run: str, *, status: str, seconds: float, steps: int = 0,
                          scores: dict[str, Any] | None = None, error: str | None = None) -> bool:
    """Push a finished (``status`` ok) or failed run's figures to the Prometheus pushgateway at
    ``training.pushgateway_url`` (job ``training.pushgateway_job``, grouping label ``run``). Gauges:
    ``greekfire_training_run_success`` (1/0), ``greekfire_training_run_duration_seconds``,
    ``greekfire_training_run_steps``, ``greekfire_training_run_last_{success,failure}_timestamp_seconds``,
    ``greekfire_training_run_max_rss_bytes`` (peak resident memory of this process),
    ``greekfire_training_run_gpu_peak_bytes`` (peak torch CUDA memory), ``greekfire_training_run_score``
    (label ``metric``: each test/val score), ``greekfire_training_run_active`` 0 and the run's last
    ``greekfire_training_loss``, ``greekfire_training_steps_total`` and ``greekfire_oom_total{device}`` where
    it had them (see :func:`push_live_training_metrics`). Returns False (and logs why) when the gateway cannot be
    reached: a monitoring outage never fails a run. Does nothing (True) when no URL is set."""
    url = settings.training.pushgateway_url
    if not url:
        return True
    import resource
    import time

    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    ok = status == "ok"
    Gauge("greekfire_training_run_success", "1 when the run finished, 0 when it failed", registry=reg).set(int(ok))
    Gauge("greekfire_training_run_duration_seconds", "wall time of the run, seconds", registry=reg).set(seconds)
    Gauge("greekfire_training_run_steps", "optimizer steps taken", registry=reg).set(steps)
    stamp = "greekfire_training_run_last_success_timestamp_seconds" if ok else \
        "greekfire_training_run_last_failure_timestamp_seconds"
    Gauge(stamp, "Unix time the run ended, seconds", registry=reg).set(time.time())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    Gauge("greekfire_training_run_max_rss_bytes", "peak resident memory of the trainer, bytes", registry=reg).set(rss)
    gpu = peak_allocated_bytes()
    Gauge("greekfire_training_run_gpu_peak_bytes", "peak GPU memory allocated by torch, bytes", registry=reg).set(gpu)
    score = Gauge("greekfire_training_run_score", "held-out scores of the run", ["metric"], registry=reg)
    for k, v in (scores or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            score.labels(k).set(float(v))
    # the live figures end with the run: active 0, and the last loss and step count stay readable
    Gauge("greekfire_training_run_active", "1 while the run trains, 0 once it ended", registry=reg).set(0)
    _last_live_figures(reg, run)
    if error:
        Gauge("greekfire_training_run_error_info", "the failed run's exception type", ["error"],
              registry=reg).labels(error.split(":", 1)[0][:100]).set(1)
    return _push(settings, url, reg, run, "training metrics")


def _push(settings: Settings, url: str, reg: Any, run: str, what: str) -> bool:
    """Push ``reg`` as the group of ``run`` (job ``training.pushgateway_job``); False (logged) when the gateway
    cannot be reached: a monitoring outage never fails a run."""
    from prometheus_client import push_to_gateway

    try:
        push_to_gateway(url, job=settings.training.pushgateway_job, registry=reg, grouping_key={"run": run},
                        timeout=5)
    except OSError as exc:
        log.warning("could not push %s to the pushgateway %s: %s", what, url, exc)
        return False
    return True


def _last_live_figures(reg: Any, run: str) -> None:
    """Copy this process's live loss and step count of ``run`` (greekfire.ml.callbacks) and its out-of-memory
    count by device (``greekfire_oom_total``, greekfire.gpu.memory) into ``reg``."""
    from prometheus_client import Counter, Gauge

    from greekfire.core.metrics import sample_value

    loss = sample_value("greekfire_training_loss", {"run": run})
    if loss is not None:
        Gauge("greekfire_training_loss", "latest training loss (target units squared)", registry=reg).set(loss)
    steps = sample_value("greekfire_training_steps_total", {"run": run})
    if steps is not None:
        Counter("greekfire_training_steps", "optimizer steps taken", registry=reg).inc(steps)
    ooms = oom_counts()
    if ooms:
        oom = Counter("greekfire_oom", "out-of-memory errors recovered from or raised, by device", ["device"],
                      registry=reg)
        for device, n in ooms.items():
            oom.labels(device).inc(n)


def push_live_training_metrics(settings: Settings, run: str) -> bool:
    """Push a running run's live figures to the pushgateway (the group of :func:`push_training_metrics`:
    job ``training.pushgateway_job``, label ``run``): ``greekfire_training_run_active`` 1, the latest
    ``greekfire_training_loss`` and ``greekfire_training_steps_total`` (from this process's registry, which
    :class:`greekfire.ml.callbacks.PrometheusTrainingMetrics` keeps) and ``greekfire_oom_total{device}``. The
    run's end push replaces them.
    Returns False (logged) when the gateway cannot be reached; True without a URL (nothing to do)."""
    url = settings.training.pushgateway_url
    if not url:
        return True
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    Gauge("greekfire_training_run_active", "1 while the run trains, 0 once it ended", registry=reg).set(1)
    _last_live_figures(reg, run)
    return _push(settings, url, reg, run, "live training metrics")
