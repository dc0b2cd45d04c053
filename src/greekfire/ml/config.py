"""Experiment configuration: YAML composed with Hydra, validated into pydantic models.

``configs/train/base.yaml`` is the primary config; an experiment (a *preset*: ``smoke``, ``liu_mlp``, ...)
in ``configs/train/experiment/`` overrides what it needs, then the config groups named on the command line
(``model=lstm env=prod``: folders ``data/ model/ optim/ trainer/ storage/ tracking/ env/``), then overrides in
Hydra's syntax (``optim.lr=3e-4 trainer.max_epochs=5``). Any unknown or bad key fails with a
:class:`~greekfire.core.errors.ConfigErrors` naming the dotted field and the value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    model_validator,
)

from greekfire.core.errors import ConfigError, ConfigErrors
from greekfire.core.settings import Settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the samples come from and how they are split and batched."""

    source: Literal["bs_liu", "bs_culkin", "heston", "spx", "quotes", "samples", "random"] = "bs_liu"
    n_samples: int = Field(20_000, ge=16, description="synthetic rows (bs_*, random)")
    val_frac: float = Field(0.1, gt=0, lt=0.5)
    test_frac: float = Field(0.1, ge=0, lt=0.5)
    seed: int = 7
    window: int = Field(20, ge=2, le=512, description="days of history per sample (heston, spx)")
    heston_days: int = Field(250, ge=40, description="trading days of the synthetic Heston market")
    spx_path: str | None = Field(None, description="SPXW quotes CSV (spx); default: the shared data folder")
    price_floor: float = Field(0.0, ge=0, description="MAPE only over prices / strike above this")
    baseline_feature: bool = Field(
        False, description="heston/spx: add the Black-Scholes price / strike at historical vol as a contract "
        "feature (bs_price_k), so the network learns the correction to it"
    )
    batch_size: int = Field(256, ge=1)
    eval_batch_size: int = Field(4096, ge=1)
    num_workers: int = Field(0, ge=0, le=64)
    seq_features: int = Field(4, ge=1, description="random source: features per time step")
    url: str | None = Field(None, description="quotes source: a Parquet file or folder (or URL, s3://...) of option "
                            "quotes, or a market written by `greekfire data generate`; samples source: the folder "
                            "or URL holding train/, val/, test/")
    streaming: bool = Field(False, description="samples source: stream the training split instead of loading it")

    @model_validator(mode="after")
    def _samples_need_url(self) -> DataConfig:
        if self.source == "samples" and not self.url:
            raise ValueError("data.url: the samples source needs the folder or URL of prepared samples")
        if self.source == "quotes" and not self.url:
            raise ValueError("data.url: the quotes source needs the Parquet file, folder or URL of the quotes")
        if self.streaming and self.source != "samples":
            raise ValueError(f"data.streaming: only the samples source streams (data.source={self.source!r})")
        return self


class ModelConfig(_Strict):
    """Network kind and sizes."""

    kind: Literal["mlp", "lstm"] = "mlp"
    hidden: int = Field(100, ge=1, description="mlp width")
    layers: int = Field(4, ge=1, le=64, description="mlp hidden layers")
    activation: str = "silu"
    dropout: float = Field(0.0, ge=0, lt=1)
    positive_output: bool = False
    proj_dim: int = Field(32, ge=1)
    lstm_hidden: int = Field(64, ge=1)
    lstm_layers: int = Field(2, ge=1, le=16)
    attn_heads: int = Field(4, ge=1)
    head_hidden: list[int] = Field(default_factory=lambda: [64, 64])
    residual_on: str | None = Field(None, description="lstm: add this raw contract feature to the output "
                                    "(e.g. bs_price_k: learn the correction to Black-Scholes)")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.kind == "lstm" and self.lstm_hidden % self.attn_heads:
            raise ValueError(f"lstm_hidden={self.lstm_hidden} must be divisible by attn_heads={self.attn_heads}")
        return self


class OptimConfig(_Strict):
    """Loss, AdamW and the learning-rate schedule."""

    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(0.01, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Literal["none", "cosine", "cosine_time", "onecycle", "plateau"] = Field(
        "cosine", description="cosine_time: cosine over trainer.max_time_s of wall time (time-boxed runs; "
        "not bit-exact on resume)"
    )
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine: final lr = lr x this")
    pct_start: float = Field(0.1, gt=0, lt=1, description="onecycle: warm-up fraction")
    plateau_patience: int = Field(3, ge=0)
    plateau_factor: float = Field(0.5, gt=0, lt=1)


class TrainerConfig(_Strict):
    """What the Lightning Trainer is told."""

    max_epochs: int = Field(10, ge=1)
    max_steps: int = Field(-1, ge=-1)
    max_time_s: float | None = Field(None, gt=0, description="stop after this wall time (seconds)")
    precision: Literal["32", "64", "bf16-mixed", "16-mixed", "auto-mixed"] = "32"
    accumulate_grad_batches: int = Field(1, ge=1)
    gradient_clip_val: float | None = Field(1.0, gt=0)
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    early_stopping_patience: int = Field(0, ge=0, description="validations without improvement (0: off)")
    check_val_every_n_epoch: int = Field(1, ge=1)
    val_check_interval: float | int | None = Field(None, description="validate every N steps (int) or fraction")
    log_every_n_steps: int = Field(20, ge=1)
    checkpoint_every_n_steps: int = Field(0, ge=0, description="also save `last` every N steps (0: per epoch)")
    deterministic: bool = False
    find_batch_size: bool = Field(False, description="halve the batch size on OOM (GPU manager) before training; "
                                  "the rows per step stay data.batch_size (micro-batches, more accumulation)")
    enable_progress_bar: bool | None = Field(
        None, description="a Rich progress bar (true), a log line every progress_interval_s and at each epoch's "
        "end (false), or none: the bar when stdout is a terminal, else the log lines"
    )
    progress_interval_s: float = Field(10.0, ge=0, description="seconds between progress log lines (no bar)")
    memory_fraction: float | None = Field(None, gt=0, le=1, description="cap this process's share of each GPU's "
                                          "memory (torch.cuda.set_per_process_memory_fraction); none: no cap")


class TrackingConfig(_Strict):
    """Where metrics go; W&B also needs ``training.wandb_enabled`` or ``wandb: true`` here."""

    experiment: str | None = Field(None, description="MLflow experiment / TensorBoard name (default: the preset)")
    tensorboard: bool = True
    mlflow: bool = True
    wandb: bool | None = None
    log_model: bool = Field(True, description="store the best checkpoint as an MLflow artifact")
    mlflow_uri: str | None = Field(None, description="MLflow server URI (instead of training.mlflow_tracking_uri); "
                                   "a password in it is masked in every dumped config")

    @field_serializer("mlflow_uri", when_used="json")
    def _mask_password(self, uri: str | None) -> str | None:
        return mask_url(uri)


def mask_url(uri: str | None) -> str | None:
    """``uri`` with the password of its user part replaced by ``***`` (``https://u:***@host``)."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class StorageConfig(_Strict):
    """Where runs and checkpoints are stored; secrets come from the environment or a mounted secret file."""

    runs_url: str | None = Field(None, description="folder or URL (s3://...) of runs; none: training.runs_dir")
    credentials_file: str | None = Field(None, description="a mounted secret file (Kubernetes secret) with the "
                                         "storage credentials; the path is dumped, never its content")
    secret_access_key: SecretStr | None = Field(None, description="from an environment variable only "
                                                "(${oc.env:AWS_SECRET_ACCESS_KEY}); masked in dumps")


class ExperimentConfig(_Strict):
    """One training experiment: data, model, optimiser, trainer and tracking."""

    name: str = Field("pricing", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int | None = Field(None, description="default: training.seed from the settings")
    data: DataConfig = Field(default_factory=lambda: DataConfig.model_validate({}))
    model: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate({}))
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig.model_validate({}))
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig.model_validate({}))
    tracking: TrackingConfig = Field(default_factory=lambda: TrackingConfig.model_validate({}))
    storage: StorageConfig = Field(default_factory=lambda: StorageConfig.model_validate({}))

    def fingerprint(self) -> dict[str, Any]:
        """The parts that change what is learned (not how long or where it is logged): hashed into versions."""
        d = self.model_dump(mode="json")
        d.pop("tracking", None)
        d.pop("storage", None)
        d["trainer"].pop("memory_fraction", None)
        for k in ("max_epochs", "max_steps", "max_time_s", "enable_progress_bar", "progress_interval_s", "log_every_n_steps",
                  "checkpoint_every_n_steps", "early_stopping_patience", "devices", "num_nodes",
                  "strategy", "accelerator"):
            d["trainer"].pop(k, None)
        d["data"].pop("num_workers", None)
        d["data"].pop("eval_batch_size", None)
        for key, default in (("url", None), ("streaming", False)):
            if d["data"].get(key) == default:  # keep the versions of runs from before these keys existed
                d["data"].pop(key, None)
        return d


def dump_config(config: ExperimentConfig) -> str:
    """The experiment as indented JSON (a run's ``config.json``): secrets masked, URI passwords hidden."""
    return json.dumps(config.model_dump(mode="json"), indent=2)


#: config groups of ``configs/train`` (folders) that ``group=option`` on the command line selects
GROUPS = ("experiment", "data", "model", "optim", "trainer", "storage", "tracking", "env")


def default_config_dir(settings: Settings | None = None) -> Path:
    """``training.config_dir`` of ``settings``, else ``configs/train`` under the working directory or the
    source checkout."""
    if settings is not None and settings.training.config_dir is not None:
        return Path(settings.training.config_dir)
    here = Path("configs/train")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "configs" / "train"


def _explain(exc: ValidationError, source: str) -> ConfigErrors:
    errors = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        errors.append(ConfigError(field or "experiment", err.get("input"), err.get("msg", "invalid"), source=source))
    return ConfigErrors(errors)


def validate_experiment(data: dict[str, Any], source: str = "experiment") -> ExperimentConfig:
    """Validate a plain mapping into :class:`ExperimentConfig`, naming each bad dotted field."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def compose_experiment(
    preset: str = "smoke",
    overrides: Sequence[str] = (),
    *,
    config_file: str | Path | None = None,
    settings: Settings | None = None,
) -> ExperimentConfig:
    """Compose an experiment with Hydra and validate it.

    ``preset`` names an experiment (``smoke`` -> ``configs/train/experiment/smoke.yaml``, composed over
    ``base.yaml``; a folder without ``experiment/`` keeps the flat layout ``<dir>/smoke.yaml``);
    ``config_file`` instead points at any YAML experiment file (its folder becomes the search path, so it
    can list ``base`` in its defaults only if ``base.yaml`` lies beside it). ``overrides`` are Hydra
    overrides: ``group=option`` picks a config group (``model=lstm``, ``env=prod``; see :data:`GROUPS`),
    ``key=value`` sets any field (``optim.lr=1e-3``). ``settings`` gives ``training.config_dir``; without
    them the folder is ``configs/train`` (see :func:`default_config_dir`). ``${oc.env:VAR}`` in a group
    reads the environment at compose time (secrets: see :class:`StorageConfig`).
    """
    if config_file is not None:
        path = Path(config_file).resolve()
        if not path.is_file():
            raise ConfigError("--experiment", str(config_file), "the experiment YAML file does not exist")
        config_dir, name, primary = path.parent, path.stem, path.stem
        select: list[str] = []
    else:
        config_dir = default_config_dir(settings).resolve()
        name = preset
        if (config_dir / "experiment" / f"{name}.yaml").is_file() and (config_dir / "base.yaml").is_file():
            primary, select = "base", [f"experiment={name}"]
        elif (config_dir / f"{name}.yaml").is_file() and name != "base":
            primary, select = name, []
        else:
            known = sorted(p.stem for p in (config_dir / "experiment").glob("*.yaml")) if config_dir.is_dir() else []
            raise ConfigError("--preset", preset, f"no experiment/{name}.yaml in the config folder; known: {known}")
    groups = {d.name for d in config_dir.iterdir() if d.is_dir() and d.name in GROUPS}
    # `key=value` may name any field of the pydantic model, not only those the YAML spells out: force-add
    # (Hydra's `++`) and let pydantic reject unknown keys with the field's dotted name; `group=option` is a
    # choice of a config group and stays as it is
    forced = [o if o.startswith(("+", "~")) or "=" not in o or o.partition("=")[0] in groups else f"++{o}"
              for o in overrides]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = compose(config_name=primary, overrides=[*select, *forced])
    except (HydraException, OmegaConfBaseException) as exc:
        why = " ".join(str(exc).split("\nConfig search path")[0].split())  # one line, the options kept
        raise ConfigError("overrides", list(overrides), f"Hydra could not compose {name}: {why}") from None
    try:
        data: Any = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:  # ${oc.env:VAR} without VAR, a bad interpolation
        key = getattr(exc, "full_key", None) or "config"
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(str(key), None, f"could not resolve {name}: {why}", source=f"{name}.yaml") from None
    assert isinstance(data, dict)
    data.setdefault("name", name)
    return validate_experiment(data, source=f"{name}.yaml or overrides")


def config_hash(config: ExperimentConfig, data_fingerprint: str) -> str:
    """Version id of a run: 12 hex digits of SHA-256 over the learning-relevant config and the data."""
    payload = json.dumps({"config": config.fingerprint(), "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
