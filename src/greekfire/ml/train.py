"""The training driver: experiment config + settings -> Lightning Trainer run -> checkpoints, scores, tracking.

A run lives in ``<training.runs_dir>/<name>/<version>/`` where ``version`` hashes the learning-relevant
config and the data fingerprint, so two different experiments never share (or resume) each other's
checkpoints. Inside: ``checkpoints/best.ckpt`` (lowest val_loss), ``checkpoints/last.ckpt`` (resumable:
weights, optimizer, scheduler, AMP scaler, loop counters, data position, RNG), ``tensorboard/`` and
``summary.json``.

Example::

    from greekfire.core.settings import load_settings
    from greekfire.ml.config import compose_experiment
    from greekfire.ml.train import train_pricing

    result = train_pricing(compose_experiment("smoke"), load_settings())
    print(result.best_checkpoint, result.scores["test_rmse"])
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from greekfire.core.errors import ConfigError
from greekfire.core.settings import Settings
from greekfire.data.storage import publish_folder
from greekfire.data.storage_check import check_storage
from greekfire.gpu.device import choose_device, cuda_usable
from greekfire.gpu.memory import run_with_oom_backoff
from greekfire.ml.callbacks import PrometheusTrainingMetrics, RngState, TrainingProgress
from greekfire.ml.config import (
    DataConfig,
    ExperimentConfig,
    compose_experiment,
    config_hash,
    dump_config,
    mask_url,
    validate_experiment,
)
from greekfire.ml.data import PricingData, data_source_for, load_pricing_data
from greekfire.ml.evaluate import evaluate
from greekfire.ml.module import PricingDataModule, PricingModule, module_for
from greekfire.ml.tracking import (
    log_mlflow_artifact,
    log_run_context,
    make_loggers,
    mlflow_run_id,
    push_live_training_metrics,
    push_training_metrics,
    record_failure,
    record_success,
)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced."""

    name: str
    version: str
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    global_step: int
    epochs: int
    seconds: float
    scores: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    resumed_from: Path | None = None
    world_size: int = 1
    rank: int = 0
    run_url: str | None = None  # where the run folder was copied (storage.runs_url/<name>/<version>)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data summary (paths as strings), as written to ``summary.json``."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def resolve_accelerator(accelerator: str, devices: int = 1, min_free_mb: float = 0.0) -> tuple[str, int | list[int]]:
    """Lightning ``(accelerator, devices)`` for ``trainer.accelerator`` and ``trainer.devices``.

    ``auto`` asks the GPU manager (:func:`greekfire.gpu.device.choose_device`): the GPU it picks (the one with
    the most free memory, at least ``min_free_mb`` MiB, ``gpu.min_free_mb``) for a one-device run, else the
    CPU; ``cuda`` means ``gpu``. Several devices are left to Lightning.
    """
    if accelerator == "auto":
        dev = choose_device("auto", min_free_mb=min_free_mb)
        if dev.type != "cuda":
            return "cpu", devices
        return "gpu", [dev.index or 0] if devices == 1 else devices
    return ("gpu" if accelerator == "cuda" else accelerator), devices


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning precision for ``trainer.precision``; ``auto-mixed`` is bf16 on CPU, fp16/bf16 on CUDA."""
    if precision != "auto-mixed":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda_usable())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed"


# loggers whose INFO lines repeat ours or advertise (Lightning's device banner and tips, "`Trainer.fit` stopped",
# MLflow's database set-up); their warnings still show
CHATTY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning", "mlflow", "alembic")


# a warning that is only news (a new MLflow experiment is created on a project's first run)
NEWS_LOGGERS = ("lightning.pytorch.loggers.mlflow",)


def _hush() -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in NEWS_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within: Lightning's and MLflow's info lines are silenced (warnings kept), as are Lightning's
    "possible user" hints and torch's LeafSpec deprecation that Lightning triggers. Restored on exit."""
    saved = {name: logging.getLogger(name).level for name in (*CHATTY_LOGGERS, *NEWS_LOGGERS)}
    _hush()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=PossibleUserWarning)
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            # the run folder is ours and reused by design (same version: resume; best.ckpt is replaced)
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def run_dir_for(cfg: ExperimentConfig, settings: Settings, data: PricingData) -> tuple[str, Path]:
    """(version, folder) of the run of ``cfg`` on ``data``."""
    version = config_hash(cfg, data.fingerprint)
    return version, Path(settings.training.runs_dir).absolute() / cfg.name / version


def _check_remote_data(cfg: ExperimentConfig, settings: Settings) -> None:
    for url in (cfg.data.spx_path or "", cfg.data.url or ""):
        if "://" in url:
            check_storage(url, settings.storage).raise_if_failed()


def find_batch_size(
    module: PricingModule, data: PricingData, batch_size: int, device: str | torch.device = "auto"
) -> int:
    """Largest batch size up to ``batch_size`` whose forward and backward fit on the GPU (halving on OOM).

    Uses the GPU manager's :func:`~greekfire.gpu.run_with_oom_backoff` on the device it chooses for
    ``device``; on CPU it returns ``batch_size``.
    """
    dev = choose_device(device)
    if dev.type != "cuda":
        return batch_size
    module = module.to(dev)
    fitted: list[int] = []

    def probe(rows: torch.Tensor) -> torch.Tensor:
        part = {k: v[: len(rows)].to(dev) for k, v in data.train.items()}
        loss = module._loss(module(part["contract"], part.get("seq")), part["target"])
        loss.backward()
        module.zero_grad(set_to_none=True)
        fitted.append(len(rows))
        return rows

    n = min(batch_size, len(data.train["target"]))
    run_with_oom_backoff(probe, torch.arange(n), batch_size, device=str(dev))
    module.cpu()
    torch.cuda.empty_cache()
    return min(fitted) if fitted else batch_size


def micro_batches(batch_size: int, fits: int) -> tuple[int, int]:
    """(micro-batch, accumulation factor) that keep ``batch_size`` rows per optimizer step when only ``fits``
    rows fit on the device: the largest divisor of ``batch_size`` not above ``fits``, and the quotient.

    With the resumable sampler, consecutive micro-batches are the rows of one full batch, and Lightning
    divides each micro-batch's loss by the factor, so a step sees the same mean gradient."""
    if batch_size < 1 or fits < 1:
        raise ConfigError("data.batch_size", batch_size, "batch size and fitting rows must be >= 1")
    micro = min(batch_size, fits)
    while batch_size % micro:
        micro -= 1
    return micro, batch_size // micro


def train_pricing(
    cfg: ExperimentConfig,
    settings: Settings,
    *,
    resume: bool = False,
    ckpt_path: str | Path | None = None,
    data: PricingData | None = None,
    callbacks: Sequence[Any] = (),
    test: bool = True,
    plugins: Sequence[Any] = (),
) -> TrainResult:
    """Train ``cfg``; ``resume`` continues from the run's ``last.ckpt`` (or ``ckpt_path``) exactly.

    Returns the checkpoints (absolute paths), the test scores (MSE/RMSE/R^2/MAPE in target units, price /
    strike) and the tracking ids. Raises ConfigError when ``resume`` finds no checkpoint. Progress follows
    ``trainer.enable_progress_bar`` (see :class:`~greekfire.ml.callbacks.TrainingProgress`); Lightning's
    banners are silenced (:func:`quiet_lightning`). ``plugins`` go to the Trainer (for example a checkpoint
    IO that also publishes ``last.ckpt`` to shared storage: :mod:`greekfire.training.elastic`).
    """
    with quiet_lightning():
        return _train(cfg, settings, resume=resume, ckpt_path=ckpt_path, data=data, callbacks=callbacks, test=test,
                      plugins=plugins)


def _train(
    cfg: ExperimentConfig,
    settings: Settings,
    *,
    resume: bool,
    ckpt_path: str | Path | None,
    data: PricingData | None,
    callbacks: Sequence[Any],
    test: bool,
    plugins: Sequence[Any] = (),
) -> TrainResult:
    t0 = time.perf_counter()
    seed = cfg.seed if cfg.seed is not None else settings.training.seed
    if settings.training.torch_threads:
        torch.set_num_threads(settings.training.torch_threads)
    L.seed_everything(seed, workers=True, verbose=False)
    _check_remote_data(cfg, settings)
    if data is None:
        data = load_pricing_data(cfg.data, settings.storage)
    version, run_dir = run_dir_for(cfg, settings, data)
    ckpt_dir = run_dir / "checkpoints"
    start_from: Path | None = None
    if resume or ckpt_path is not None:
        start_from = Path(ckpt_path) if ckpt_path is not None else ckpt_dir / "last.ckpt"
        if not start_from.is_file():
            raise ConfigError("--resume", str(start_from), "no checkpoint to resume from (train once without --resume)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(dump_config(cfg))

    tc = cfg.trainer
    accelerator, devices = resolve_accelerator(tc.accelerator, tc.devices, settings.gpu.min_free_mb)
    if tc.memory_fraction is not None and accelerator in ("gpu", "cuda") and cuda_usable():
        for index in range(torch.cuda.device_count()):  # the trainer group's memory cap, per visible GPU
            torch.cuda.set_per_process_memory_fraction(tc.memory_fraction, index)
    module = module_for(cfg, data)
    module.time_budget_s = tc.max_time_s
    datamodule = PricingDataModule(data, cfg.data, seed)
    accumulate = tc.accumulate_grad_batches
    if tc.find_batch_size and accelerator == "gpu":
        first_gpu = f"cuda:{devices[0]}" if isinstance(devices, list) else "cuda"
        fits = find_batch_size(module, data, cfg.data.batch_size, first_gpu)
        # the same effective batch: micro-batches of what fits, more of them accumulated per step
        datamodule.batch_size, factor = micro_batches(cfg.data.batch_size, fits)
        accumulate *= factor

    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                              enable_version_counter=False)
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0, save_last=True,
                              every_n_train_steps=cfg.trainer.checkpoint_every_n_steps or None)
    cbs: list[Any] = [best_cb, last_cb, RngState(),
                      PrometheusTrainingMetrics(f"{cfg.name}-{version}", cfg.trainer.log_every_n_steps,
                                                push=partial(push_live_training_metrics, settings)),
                      TrainingProgress(tc.enable_progress_bar, interval_s=tc.progress_interval_s)]
    if cfg.trainer.early_stopping_patience:
        cbs.append(EarlyStopping(monitor="val_loss", mode="min", patience=cfg.trainer.early_stopping_patience))
    if cfg.tracking.mlflow:  # MLflow sets its loggers' levels when it is imported: import it now, then hush them
        import mlflow  # noqa: F401

        _hush()
    log_settings = settings
    if cfg.tracking.mlflow_uri:  # the tracking group / env overlay names the MLflow server
        training = settings.training.model_copy(update={"mlflow_tracking_uri": cfg.tracking.mlflow_uri})
        log_settings = settings.model_copy(update={"training": training})
    loggers = make_loggers(cfg, log_settings, run_dir, version)
    log_run_context(loggers, cfg, data.fingerprint, version)
    try:
        return _fit(cfg, settings, loggers, module, datamodule, data, cbs, callbacks, run_dir, version,
                    (accelerator, devices), start_from, best_cb, test, t0, accumulate=accumulate, plugins=plugins)
    except BaseException as exc:
        record_failure(loggers, exc)
        push_training_metrics(settings, f"{cfg.name}-{version}", status="failed",
                              seconds=time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
        raise


def _fit(cfg: ExperimentConfig, settings: Settings, loggers: list[Any], module: PricingModule,
         datamodule: PricingDataModule, data: PricingData, cbs: list[Any], callbacks: Sequence[Any], run_dir: Path,
         version: str, placement: tuple[str, Any], start_from: Path | None, best_cb: ModelCheckpoint, test: bool,
         t0: float, *, accumulate: int, plugins: Sequence[Any] = ()) -> TrainResult:
    tc = cfg.trainer
    accelerator, devices = placement
    ckpt_dir = run_dir / "checkpoints"
    if loggers and cfg.optim.scheduler != "none":
        cbs.append(LearningRateMonitor(logging_interval="step"))
    cbs.extend(callbacks)

    strategy: Any = tc.strategy
    if tc.strategy == "ddp" and (accelerator == "cpu" or not cuda_usable()):
        strategy = DDPStrategy(process_group_backend="gloo")
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=tc.num_nodes,
        strategy=strategy,
        precision=resolve_precision(tc.precision, accelerator),  # type: ignore[arg-type]
        max_epochs=tc.max_epochs,
        max_steps=tc.max_steps,
        max_time=timedelta(seconds=tc.max_time_s) if tc.max_time_s else None,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=tc.gradient_clip_val,
        check_val_every_n_epoch=tc.check_val_every_n_epoch,
        val_check_interval=tc.val_check_interval,
        log_every_n_steps=tc.log_every_n_steps,
        deterministic=tc.deterministic,
        enable_progress_bar=False,  # TrainingProgress reports instead
        enable_model_summary=False,
        logger=loggers or False,
        callbacks=cbs,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # our sampler splits ranks itself and stays resumable
        num_sanity_val_steps=0,
        plugins=list(plugins) or None,
    )
    log.info("training %s version %s in %s", cfg.name, version, run_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(start_from) if start_from else None)

    best = Path(best_cb.best_model_path) if best_cb.best_model_path else None
    last = ckpt_dir / "last.ckpt"
    result = TrainResult(
        name=cfg.name, version=version, run_dir=run_dir, best_checkpoint=best,
        last_checkpoint=last if last.is_file() else None, global_step=int(trainer.global_step),
        epochs=int(trainer.current_epoch), seconds=0.0, mlflow_run_id=mlflow_run_id(loggers),
        resumed_from=start_from, world_size=int(trainer.world_size), rank=int(trainer.global_rank),
    )
    if trainer.global_rank != 0:
        return result
    if test and len(data.test["target"]):
        scorer = PricingModule.load_from_checkpoint(str(best), map_location="cpu") if best else module.cpu()
        result.scores = evaluate(scorer, data.test, floor=cfg.data.price_floor)
        result.scores.update(evaluate(scorer, data.val, floor=cfg.data.price_floor, prefix="val_"))
        for lg in loggers:
            lg.log_metrics({k: v for k, v in result.scores.items() if isinstance(v, float)}, step=trainer.global_step)
    if best is not None and cfg.tracking.log_model:
        result.model_uri = log_mlflow_artifact(loggers, best)
    record_success(loggers)
    for lg in loggers:
        lg.finalize("success")
    result.seconds = round(time.perf_counter() - t0, 2)
    push_training_metrics(settings, f"{cfg.name}-{version}", status="ok", seconds=result.seconds,
                          steps=result.global_step, scores=result.scores)
    if cfg.storage.runs_url:
        result.run_url = f"{cfg.storage.runs_url.rstrip('/')}/{cfg.name}/{version}"
    (run_dir / "summary.json").write_text(json.dumps(result.as_dict(), indent=2, default=str))
    if result.run_url:
        files = publish_folder(run_dir, result.run_url, settings)
        log.info("run %s %s copied to %s (%d files)", cfg.name, version, mask_url(result.run_url), len(files))
    return result


def run_training(
    settings: Settings,
    *,
    preset: str = "smoke",
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    data_path: str | None = None,
) -> TrainResult:
    """Compose the experiment (``preset`` or ``config_file`` plus Hydra ``overrides``) and train it.

    ``data_path`` (``--data``): train on the quotes or prepared samples there instead of the experiment's
    own data (see :func:`with_data`)."""
    cfg = compose_experiment(preset, overrides, config_file=config_file, settings=settings)
    if data_path is not None:
        cfg = with_data(cfg, data_path, settings)
    return train_pricing(cfg, settings, resume=resume)


def with_data(cfg: ExperimentConfig, url: str, settings: Settings | None = None) -> ExperimentConfig:
    """``cfg`` reading its rows from ``url``: a folder or URL of prepared samples (``train/``, ``val/``:
    source ``samples``) or of option quotes (a market written by ``greekfire data generate``, or any Parquet
    file or folder in the quote schema: source ``quotes``). The other ``data`` keys (window, fractions,
    batch size) are kept. Raises InputFileError when ``url`` holds nothing."""
    storage = settings.storage if settings is not None else None
    if "://" in url:
        check_storage(url, storage).raise_if_failed()
    else:
        url = str(Path(url).absolute())
    source = data_source_for(url, storage)
    fields = cfg.data.model_dump()
    fields.update(source=source, url=url, streaming=fields["streaming"] and source == "samples",
                  baseline_feature=fields["baseline_feature"] and source != "samples")
    data = DataConfig.model_validate(fields)
    return validate_experiment({**cfg.model_dump(), "data": data.model_dump()}, source="--data")
