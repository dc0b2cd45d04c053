"""Hyperparameter search with Optuna: a search space from YAML, a study shared by parallel worker processes
through PostgreSQL, pruning of poor trials each epoch, and the best trial trained in full and registered as
the ``challenger``. It is one module: the worker processes are started from it with one job record that the
space, the storage, the trial loop and the final run all read.

A search space file (``configs/train/hpo/<name>.yaml``) names the experiment to search around and, per
dotted experiment key, how to draw it::

    preset: smoke
    space:
      optim.lr: {type: float, low: 1.0e-4, high: 3.0e-2, log: true}
      model.hidden: {type: categorical, choices: [32, 64, 128]}

Example::

    from greekfire.core.settings import load_settings
    from greekfire.training.hpo import load_space, run_study

    result = run_study(load_space("smoke"), load_settings(), study="smoke-lr", trials=8, workers=2)
    print(result.best_value, result.best_params, result.registered)

Each worker is a separate process (spawned: no state is shared but the study's storage). SQLite storage is
accepted for one worker only: SQLite locks the whole file on each write, and parallel workers then fail
with "database is locked".
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from greekfire.core.db import db_error_reason, masked_url
from greekfire.core.errors import ConfigError, ConfigErrors, GreekfireError, UnavailableError
from greekfire.core.settings import Settings
from greekfire.ml.config import ExperimentConfig, compose_experiment, default_config_dir, validate_experiment

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
_SCALAR = (str, int, float, bool, type(None))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    """How one experiment key is drawn: ``float`` / ``int`` in ``[low, high]`` (``log`` scale, ``step``), or
    one of ``choices`` (``categorical``: numbers, strings, booleans or null)."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty choices list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical takes choices only (no low, high, log, step)")
            bad = [c for c in self.choices if not isinstance(c, _SCALAR)]
            if bad:
                raise ValueError(f"choices must be numbers, strings, booleans or null (Optuna), not {bad}")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low and high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs low and high")
        if self.low >= self.high:
            raise ValueError(f"low={self.low} must be below high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (low={self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"int needs whole low and high (low={self.low}, high={self.high})")
        return self


class SamplerConfig(_Strict):
    """Optuna sampler: ``tpe`` (Bayesian, after ``n_startup_trials`` random ones) or ``random``."""

    kind: Literal["tpe", "random"] = "tpe"
    seed: int | None = Field(None, description="worker i uses seed + i (default: training.seed)")
    n_startup_trials: int = Field(10, ge=0, description="tpe: random trials before the model is used")


class PrunerConfig(_Strict):
    """Optuna pruner, asked after each validation (once per epoch)."""

    kind: Literal["median", "percentile", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(2, ge=0, description="median/percentile: completed trials before any pruning")
    n_warmup_steps: int = Field(0, ge=0, description="median/percentile: epochs of a trial before it may be pruned")
    percentile: float = Field(50.0, gt=0, lt=100, description="percentile: prune when worse than this percentile")


class HpoConfig(_Strict):
    """A search: the experiment it starts from, the space, the pruner and sampler, and what follows it."""

    preset: str = Field("smoke", description="experiment in configs/train/ every trial starts from")
    overrides: list[str] = Field(default_factory=list, description="Hydra overrides for trials and the final run")
    trial_overrides: list[str] = Field(default_factory=list, description="Hydra overrides for trials only")
    final_overrides: list[str] = Field(default_factory=list, description="Hydra overrides for the final run only")
    space: dict[str, ParamSpec] = Field(min_length=1)
    metric: str = Field("val_loss", description="validation metric reported each epoch, pruned and optimised")
    direction: Literal["minimize", "maximize"] = "minimize"
    early_stopping_patience: int = Field(2, ge=0, description="trials: epochs without improvement before stopping (0: off)")
    trial_tracking: bool = Field(False, description="trials log to TensorBoard/MLflow too (off: Optuna keeps them)")
    keep_trial_runs: bool = Field(False, description="keep each trial's checkpoints (off: deleted after the trial)")
    timeout_s: float | None = Field(None, gt=0, description="a worker starts no trial after this many seconds")
    heartbeat_s: int = Field(60, ge=0, description="a running trial's heartbeat; a silent one is marked FAIL (0: off)")
    final_train: bool = Field(True, description="train the best trial in full after the search")
    register_challenger: bool = Field(True, description="register the final model with the alias challenger")
    model_name: str | None = Field(None, pattern=NAME_PATTERN, description="registered model name (default: models.name)")
    storage: str | None = Field(None, description="storage URL (default: training.hpo_storage_url)")
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig.model_validate({}))
    pruner: PrunerConfig = Field(default_factory=lambda: PrunerConfig.model_validate({}))

    @model_validator(mode="after")
    def _register_needs_final(self) -> HpoConfig:
        if self.register_challenger and not self.final_train:
            raise ValueError("register_challenger: true needs final_train: true (only the final run is registered)")
        return self


# ---------------------------------------------------------------------------------------------------------
# loading and checking the space


def _explain(exc: ValidationError, source: str) -> ConfigErrors:
    errors = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err.get("loc", ()))
        errors.append(ConfigError(path or "hpo", err.get("input"), err.get("msg", "invalid"), source=source))
    return ConfigErrors(errors)


def space_path(space: str | Path, settings: Settings | None = None) -> Path:
    """The YAML file of ``space``: a path to a file, or a name in ``<config dir>/hpo/`` (``smoke``)."""
    p = Path(space)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError("--space", str(space), "the search space file does not exist")
        return p
    folder = default_config_dir(settings) / "hpo"
    candidate = folder / f"{space}.yaml"
    if not candidate.is_file():
        known = sorted(f.stem for f in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ConfigError("--space", str(space), f"no {space}.yaml in {folder}; known: {known}, or give a file path")
    return candidate


def load_space(space: str | Path = "smoke", settings: Settings | None = None) -> HpoConfig:
    """Read and validate a search space file (see :func:`space_path`); each bad key fails naming its path
    (``space.optim.lr.low``, ``pruner.kind``)."""
    import yaml

    path = space_path(space, settings)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--space", str(path), f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError("--space", str(path), "a mapping of settings (preset, space, pruner, ...)")
    return validate_space(data, source=path.name)


def validate_space(data: dict[str, Any], source: str = "hpo") -> HpoConfig:
    """Validate a mapping into :class:`HpoConfig`, naming each bad dotted key."""
    try:
        return HpoConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def _set_key(tree: dict[str, Any], key: str, value: Any, where: str) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"{where}.{key}", value,
                              f"{'.'.join(parts[: i + 1])!r} is not an experiment key; known here: {known}")
        if i == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def apply_params(base: ExperimentConfig, params: dict[str, Any], *, name: str | None = None,
                 where: str = "space") -> ExperimentConfig:
    """``base`` with each dotted key of ``params`` set (``optim.lr`` -> 3e-3), validated; ``name`` renames
    the run. A key that is no experiment key or a value it refuses fails naming ``<where>.<key>``."""
    tree = base.model_dump()
    for key, value in params.items():
        _set_key(tree, key, value, where)
    if name is not None:
        tree["name"] = name
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err.get("loc", ()))
            errors.append(ConfigError(f"{where}.{path}", err.get("input"), err.get("msg", "invalid"), source=where))
        raise ConfigErrors(errors) from None


def check_space(config: HpoConfig, base: ExperimentConfig) -> None:
    """Every key of the space is an experiment key that takes its bounds and each of its choices."""
    for key, spec in config.space.items():
        values: list[Any] = list(spec.choices or []) if spec.type == "categorical" else [spec.low, spec.high]
        if spec.type == "int":
            values = [int(v) for v in values]
        for v in values:
            apply_params(base, {key: v}, where="space")


def trial_experiment(config: HpoConfig, settings: Settings) -> ExperimentConfig:
    """The experiment every trial starts from: the preset with ``overrides`` and ``trial_overrides``, tracking
    off unless ``trial_tracking``, no progress bar, and the search's early stopping."""
    cfg = compose_experiment(config.preset, [*config.overrides, *config.trial_overrides], settings=settings)
    fixed: dict[str, Any] = {"trainer.enable_progress_bar": False, "trainer.progress_interval_s": 1e9,
                             "trainer.early_stopping_patience": config.early_stopping_patience}
    if not config.trial_tracking:
        fixed.update({"tracking.mlflow": False, "tracking.tensorboard": False, "tracking.wandb": False})
    return apply_params(cfg, fixed, where="hpo")


def final_experiment(config: HpoConfig, settings: Settings, params: dict[str, Any]) -> ExperimentConfig:
    """The full run of the best trial: the preset with ``overrides``, ``final_overrides`` and ``params``."""
    cfg = compose_experiment(config.preset, [*config.overrides, *config.final_overrides], settings=settings)
    return apply_params(cfg, params, where="space")


# ---------------------------------------------------------------------------------------------------------
# storage


def resolve_storage(config: HpoConfig, settings: Settings, storage: str | None, workers: int) -> str:
    """The storage URL (``storage``, else the space's, else ``training.hpo_storage_url``); SQLite is refused
    for more than one worker. A relative ``sqlite:///`` path stays relative to the working folder."""
    url = storage or config.storage or settings.training.hpo_storage_url
    if url.startswith("sqlite") and workers > 1:
        raise ConfigError(
            "--workers", workers,
            f"SQLite storage ({masked_url(url)}) takes one worker: SQLite locks the whole file on each write, so "
            "parallel worker processes fail with 'database is locked'; use PostgreSQL "
            "(--storage postgresql+psycopg://user@host:5432/db) or --workers 1",
        )
    if not url.startswith(("sqlite", "postgresql", "mysql")):
        raise ConfigError("--storage", masked_url(url), "an SQLAlchemy URL: postgresql+psycopg://... or sqlite:///file.db")
    return url


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database of ``url`` when it is missing (True when created); SQLite: create the
    file's folder. Raises UnavailableError when the server cannot be reached."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        return False
    if u.get_backend_name() != "postgresql" or not u.database:
        return False
    name = u.database
    engine = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
                return False
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                conn.execute(text(f"CREATE DATABASE {quoted}"))
            except SQLAlchemyError as exc:
                if "already exists" in str(exc):  # another process created it first
                    return False
                raise
            return True
    except SQLAlchemyError as exc:
        raise UnavailableError(
            masked_url(url),
            f"{db_error_reason(exc)} (is PostgreSQL running? scripts/test-services.sh starts one; or use "
            "--storage sqlite:///hpo.db --workers 1)",
        ) from None
    finally:
        engine.dispose()


def open_storage(url: str, heartbeat_s: int = 0) -> Any:
    """Optuna's RDB storage on ``url`` (tables created on first use); with ``heartbeat_s`` a trial whose
    process died is marked FAIL by the next worker that looks."""
    import optuna

    kw: dict[str, Any] = {"engine_kwargs": {"pool_pre_ping": True}}
    if heartbeat_s:
        kw.update(heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s)
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental in Optuna; it is what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kw)
    except Exception as exc:  # SQLAlchemy and Optuna raise several kinds; the reason is in the text
        raise UnavailableError(masked_url(url), db_error_reason(exc)) from None


def make_sampler(config: SamplerConfig, seed: int) -> Any:
    """The Optuna sampler of ``config`` seeded with ``seed``."""
    import optuna

    if config.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.n_startup_trials)


def make_pruner(config: PrunerConfig) -> Any:
    """The Optuna pruner of ``config`` (steps are epochs)."""
    import optuna

    if config.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps)
    if config.kind == "percentile":
        return optuna.pruners.PercentilePruner(config.percentile, n_startup_trials=config.n_startup_trials,
                                               n_warmup_steps=config.n_warmup_steps)
    if config.kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def suggest(trial: Any, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """Draw every key of ``space`` from ``trial`` (an ``optuna.Trial``)."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if spec.type == "categorical":
            params[key] = trial.suggest_categorical(key, spec.choices)
        elif spec.type == "int":
            assert spec.low is not None and spec.high is not None
            params[key] = trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        else:
            assert spec.low is not None and spec.high is not None
            params[key] = trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)
    return params


# ---------------------------------------------------------------------------------------------------------
# the workers


class BestMetric(L.Callback):
    """Keeps the best value of ``monitor`` over the run's validations (the trial's objective)."""

    def __init__(self, monitor: str = "val_loss", direction: str = "minimize") -> None:
        self.monitor = monitor
        self.sign = 1.0 if direction == "minimize" else -1.0
        self.best: float | None = None
        self.epochs = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        v = float(value)
        self.epochs += 1
        if math.isfinite(v) and (self.best is None or self.sign * v < self.sign * self.best):
            self.best = v


@dataclass
class _Job:
    """What a worker process needs (pickled to it)."""

    config: HpoConfig
    settings: Settings
    storage_url: str
    study: str
    base: dict[str, Any]
    workers: int


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def _data_key(cfg: ExperimentConfig) -> str:
    d = cfg.data.model_dump(mode="json")
    if not d.get("streaming"):
        for k in ("batch_size", "eval_batch_size", "num_workers"):
            d.pop(k, None)
    return json.dumps(d, sort_keys=True)


def _objective(job: _Job, settings: Settings, worker: int) -> Callable[[Any], float]:
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from greekfire.ml.data import load_pricing_data
    from greekfire.ml.train import train_pricing

    base = validate_experiment(job.base, source="hpo")
    cache: dict[str, Any] = {}
    runs = Path(settings.training.runs_dir).absolute() / "hpo" / job.study

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, job.config.space)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("pid", os.getpid())
        cfg = apply_params(base, params, name=f"{job.study}-t{trial.number}")
        key = _data_key(cfg)
        if key not in cache:  # one worker loads each data set once (trials differ in model and optimiser)
            cache.clear()
            cache[key] = load_pricing_data(cfg.data, settings.storage)
        folder = runs / f"trial-{trial.number}"
        trial_settings = settings.model_copy(
            update={"training": settings.training.model_copy(update={"runs_dir": folder})})
        best = BestMetric(job.config.metric, job.config.direction)
        t0 = time.perf_counter()
        try:
            train_pricing(cfg, trial_settings, data=cache[key], test=False,
                          callbacks=[best, PyTorchLightningPruningCallback(trial, monitor=job.config.metric)])
        except optuna.TrialPruned:
            trial.set_user_attr("epochs", best.epochs)
            raise
        except Exception as exc:
            trial.set_user_attr("error", _one_line(exc))
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
            if not job.config.keep_trial_runs:
                shutil.rmtree(folder, ignore_errors=True)
        trial.set_user_attr("epochs", best.epochs)
        if best.best is None:
            raise GreekfireError(f"metric {job.config.metric!r} was never reported (known: val_loss, val_mse, val_mae)")
        return best.best

    return objective


def run_worker(job: _Job, index: int, n_trials: int, callbacks: list[Any] | None = None) -> None:
    """Run ``n_trials`` trials of ``job``'s study in this process (worker ``index``: sampler seed + index)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = job.settings
    if not settings.training.torch_threads:  # share the cores between the workers instead of oversubscribing
        threads = max(1, (os.cpu_count() or 1) // job.workers)
        settings = settings.model_copy(
            update={"training": settings.training.model_copy(update={"torch_threads": threads})})
    seed = (job.config.sampler.seed if job.config.sampler.seed is not None else settings.training.seed) + index
    study = optuna.load_study(study_name=job.study, storage=open_storage(job.storage_url, job.config.heartbeat_s),
                              sampler=make_sampler(job.config.sampler, seed), pruner=make_pruner(job.config.pruner))
    train_log = logging.getLogger("greekfire.ml.train")  # a trial's epoch lines would bury the search's own
    level = train_log.level
    train_log.setLevel(logging.WARNING)
    try:
        study.optimize(_objective(job, settings, index), n_trials=n_trials, timeout=job.config.timeout_s,
                       catch=(Exception,), callbacks=callbacks or [], gc_after_trial=False)
    finally:
        train_log.setLevel(level)


_WORKER = "import sys; from greekfire.training.hpo import worker_main; sys.exit(worker_main(*sys.argv[1:]))"


def worker_main(job_file: str, index: int | str, n_trials: int | str) -> int:
    """Entry point of a worker process (``python -c`` :data:`_WORKER` ``JOB INDEX N``): run its share of
    trials; an error ends as one line on stderr and exit code 1."""
    import pickle

    logging.basicConfig(level=logging.WARNING)
    try:
        job = pickle.loads(Path(job_file).read_bytes())
        index, n_trials = int(index), int(n_trials)
        run_worker(job, index, n_trials)
    except Exception as exc:
        print(f"hpo worker {index}: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 1
    return 0


def _start_workers(job: _Job, trials: int, workers: int, folder: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """One fresh interpreter per worker (no forked torch/OpenMP state, and no re-import of the caller's
    script as multiprocessing's spawn would do); each one's stderr goes to a log file in ``folder``."""
    import pickle

    job_file = folder / "job.pkl"
    job_file.write_bytes(pickle.dumps(job))
    procs = []
    for i, n in enumerate(_shares(trials, workers)):
        log_file = folder / f"worker-{i}.log"
        with log_file.open("wb") as err:
            cmd = [sys.executable, "-c", _WORKER, str(job_file), str(i), str(n)]
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err), log_file))
    return procs


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.is_file() else []
    return lines[-1].strip() if lines else "no output"


# ---------------------------------------------------------------------------------------------------------
# the study


@dataclass
class HpoProgress:
    """Where a running study stands (trials of this run only)."""

    total: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best_value: float | None = None

    @property
    def done(self) -> int:
        """Trials finished, whatever their state."""
        return self.complete + self.pruned + self.failed


@dataclass
class HpoResult:
    """What a search produced: its trials, the best one, its full run and its registration."""

    study: str
    storage: str
    workers: int
    trials: list[dict[str, Any]]
    complete: int
    pruned: int
    failed: int
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    seconds: float
    trials_per_hour: float
    final: dict[str, Any] | None = None
    registered: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return dict(self.__dict__)


def _progress(trials: list[Any], total: int, direction: str) -> HpoProgress:
    import optuna

    p = HpoProgress(total=total)
    values = []
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            p.complete += 1
            if t.value is not None:
                values.append(t.value)
        elif t.state == optuna.trial.TrialState.PRUNED:
            p.pruned += 1
        elif t.state == optuna.trial.TrialState.FAIL:
            p.failed += 1
        elif t.state == optuna.trial.TrialState.RUNNING:
            p.running += 1
    if values:
        p.best_value = min(values) if direction == "minimize" else max(values)
    return p


def _row(t: Any) -> dict[str, Any]:
    seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    return {"number": t.number, "state": t.state.name, "value": t.value, "epochs": len(t.intermediate_values),
            "seconds": round(seconds, 2) if seconds is not None else None, "params": dict(t.params),
            "worker": t.user_attrs.get("worker"), "pid": t.user_attrs.get("pid"), "error": t.user_attrs.get("error")}


def _shares(trials: int, workers: int) -> list[int]:
    return [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]


def run_study(
    config: HpoConfig,
    settings: Settings,
    *,
    study: str,
    trials: int,
    workers: int = 2,
    storage: str | None = None,
    on_progress: Callable[[HpoProgress], None] | None = None,
    poll_s: float = 0.5,
) -> HpoResult:
    """Run ``trials`` more trials of study ``study`` on ``workers`` processes, then train the best trial in
    full and register it as ``challenger`` (as ``config`` says).

    The study is created when missing (``load_if_exists``: a second call adds trials to it). ``storage``
    (else ``config.storage``, else ``training.hpo_storage_url``) is an SQLAlchemy URL; a PostgreSQL database
    is created when missing; SQLite only with ``workers=1``. ``on_progress`` is called as trials finish.
    Raises ConfigError for a bad name or count, UnavailableError when the storage cannot be reached and
    GreekfireError when no trial completed.
    """
    import re

    import optuna

    if not re.match(NAME_PATTERN, study):
        raise ConfigError("--study", study, "letters, digits, '_', '.', '-' (at most 100)")
    if trials < 1:
        raise ConfigError("--trials", trials, "at least 1")
    if workers < 1:
        raise ConfigError("--workers", workers, "at least 1")
    url = resolve_storage(config, settings, storage, workers)
    base = trial_experiment(config, settings)
    check_space(config, base)
    final_experiment(config, settings, {})  # a bad final override fails now, not after the search
    ensure_database(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(study_name=study, storage=open_storage(url), direction=config.direction,
                             load_if_exists=True)
    if st.direction != optuna.study.StudyDirection[config.direction.upper()]:
        raise ConfigError("direction", config.direction, f"study {study!r} exists with direction {st.direction.name.lower()}")
    first = len(st.get_trials(deepcopy=False))
    job = _Job(config=config, settings=settings, storage_url=url, study=study, base=base.model_dump(), workers=workers)
    workers = min(workers, trials)
    t0 = time.perf_counter()
    errors: list[str] = []

    def mine() -> list[Any]:
        return [t for t in st.get_trials(deepcopy=False) if t.number >= first]

    def report() -> None:
        if on_progress is not None:
            on_progress(_progress(mine(), trials, config.direction))

    if workers == 1:
        run_worker(job, 0, trials, callbacks=[lambda _s, _t: report()])
    else:
        with tempfile.TemporaryDirectory(prefix="greekfire-hpo-") as tmp:
            procs = _start_workers(job, trials, workers, Path(tmp))
            try:
                last: HpoProgress | None = None
                while any(p.poll() is None for p, _ in procs):
                    time.sleep(poll_s)
                    if on_progress is not None:
                        now = _progress(mine(), trials, config.direction)
                        if now != last:
                            on_progress(now)
                        last = now
            finally:
                for p, _ in procs:
                    if p.poll() is None:
                        p.terminate()
                    p.wait()
            errors = [_last_line(f) for p, f in procs if p.returncode]
        report()
    seconds = time.perf_counter() - t0
    rows = [_row(t) for t in mine()]
    progress = _progress(mine(), trials, config.direction)
    first_error = next((r["error"] for r in rows if r["error"]), None) or (errors[0] if errors else None)
    if progress.complete == 0:
        raise GreekfireError(
            f"study {study!r}: no trial completed ({progress.pruned} pruned, {progress.failed} failed of "
            f"{len(rows)})" + (f"; first error: {first_error}" if first_error else ""))
    best = st.best_trial
    started = [t.datetime_start for t in mine() if t.datetime_start]
    ended = [t.datetime_complete for t in mine() if t.datetime_complete]
    span = (max(ended) - min(started)).total_seconds() if started and ended else 0.0
    result = HpoResult(
        study=study, storage=masked_url(url), workers=workers, trials=rows, complete=progress.complete,
        pruned=progress.pruned, failed=progress.failed, best_trial=best.number, best_value=best.value,
        best_params=dict(best.params), seconds=round(seconds, 2),
        trials_per_hour=round(progress.done / span * 3600, 1) if span > 0 else 0.0, errors=errors,
    )
    if config.final_train:
        result.final, result.registered = train_best(config, settings, best.params, study=study,
                                                     trial=best.number)
    return result


def train_best(config: HpoConfig, settings: Settings, params: dict[str, Any], *, study: str,
               trial: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Train ``params`` in full (the preset with ``overrides`` and ``final_overrides``, its own epochs,
    tracking and early stopping), then register the model as challenger when ``config.register_challenger``.
    Returns (the run's summary, the registration or None)."""
    from greekfire.ml.train import train_pricing

    cfg = final_experiment(config, settings, params)
    result = train_pricing(cfg, settings)
    metrics = {k: v for k, v in result.scores.items() if isinstance(v, float)}
    registered = None
    if config.register_challenger:
        registered = register_challenger(result, metrics, settings=settings, name=config.model_name,
                                         tags={"greekfire.hpo.study": study, "greekfire.hpo.trial": str(trial)})
    return result.as_dict(), registered


def register_challenger(run_or_checkpoint: Any, metrics: dict[str, float], *, settings: Settings,
                        name: str | None = None, tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Register a trained model (a :class:`~greekfire.ml.train.TrainResult` tracked on MLflow, or an MLflow
    run id) as a new version of ``name`` (default ``models.name``) in the model registry and point the alias
    ``challenger`` at it (no gate: a challenger is what the A/B test and the gate will judge), with its
    held-out ``metrics`` (target units) and ``tags`` on the version and in the audit.

    Returns ``{"name", "version", "alias", "source", "run_id"}``; ConfigError naming ``run`` when the model
    was not tracked on MLflow."""
    from greekfire.training.registry import CHALLENGER, ModelRegistry

    run_id = (str(run_or_checkpoint) if isinstance(run_or_checkpoint, str | Path)
              else getattr(run_or_checkpoint, "mlflow_run_id", None))
    if not run_id:
        raise ConfigError("run", run_or_checkpoint, "a run tracked on MLflow (the final run needs tracking on)")
    registry = ModelRegistry(settings, name=name)
    try:
        version = registry.register(run_id)
        for key, value in (tags or {}).items():
            registry.client.set_model_version_tag(registry.name, version, key, value)
        registry.promote(version, alias=CHALLENGER, gate=False, reason="best trial of a hyperparameter search",
                         details={"metrics": metrics, **(tags or {})})
        return {"name": registry.name, "version": version, "alias": CHALLENGER, "source": run_id, "run_id": run_id}
    finally:
        registry.close()
