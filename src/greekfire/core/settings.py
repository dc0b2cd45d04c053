"""Settings: one tree of pydantic models.

Sources, strongest first:

1. values passed to :func:`load_settings` (``overrides``, dotted keys such as ``{"gpu.sample_interval_s": 1}``),
2. environment variables ``GREEKFIRE_<SECTION>__<KEY>`` (``GREEKFIRE_GPU__SAMPLE_INTERVAL_S=1``),
3. the YAML file named by ``config_path`` (the CLI's ``--config``) or by ``GREEKFIRE_CONFIG``,
4. the defaults below.

A bad value fails at start with :class:`~greekfire.core.errors.ConfigErrors`, naming the field path, the
value and what is allowed. This is the only module that reads ``os.environ``: other modules call
:func:`env_get` / :func:`env_set` so that every read of the process environment is visible here.

It is one module on purpose: the whole tree (every section of every system, with its default and its
check) is read in one place, and ``docs/configuration.md`` is generated from it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from greekfire.core.errors import ConfigError, ConfigErrors

ENV_PREFIX = "GREEKFIRE_"
CONFIG_ENV = "GREEKFIRE_CONFIG"


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoggingSettings(Section):
    """Logging: console (Rich) for people, JSON lines for machines, optional rotating file."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="least severe log level shown (the CLI's --log-level beats it)"
    )
    json_format: bool = Field(False, alias="json", description="JSON lines instead of the Rich console")
    file: Path | None = Field(None, description="rotating log file; none by default")
    max_bytes: int = Field(10_000_000, gt=0, description="rotate the file at this size (bytes)")
    backup_count: int = Field(5, ge=0, description="rotated files kept")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class MetricsSettings(Section):
    """Prometheus metrics."""

    enabled: bool = Field(True, description="not read yet: metrics are always recorded")
    namespace: str = Field(
        "greekfire", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", description="not read yet: metric names are fixed (greekfire_*)"
    )


class DatabaseSettings(Section):
    """Database URL (SQLAlchemy): SQLite embedded by default, PostgreSQL in production."""

    url: SecretStr = Field(
        SecretStr("sqlite:///.greekfire/greekfire.db"),
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pass@host/db; masked when shown",
    )
    echo: bool = Field(False, description="log every SQL statement")


class StorageSettings(Section):
    """Object storage through fsspec: local paths, s3:// (AWS, MinIO, any S3-compatible), gs://, az://."""

    root: str = Field(".greekfire/data", description="default root for datasets (path or URL)")
    s3_endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000 for MinIO")
    s3_region: str | None = Field(None, description="S3 region; none: the client's default chain")
    s3_access_key_id: SecretStr | None = Field(None, description="S3 key id; none: the default credential chain")
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key (masked when shown)")
    s3_anon: bool = Field(False, description="anonymous S3 access (public buckets), no credentials")
    gcs_endpoint_url: str | None = Field(
        None, description="GCS endpoint with scheme and port, e.g. http://127.0.0.1:9023 for an emulator; none: Google's"
    )
    gcs_project: str | None = Field(None, description="GCS project id (bucket creation, listing); none: the credentials'")
    gcs_credentials_file: Path | None = Field(
        None,
        description="service-account or authorized-user JSON key file (a mounted secret); none: Google's default "
        "chain (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, the metadata server)",
    )
    gcs_anon: bool = Field(False, description="anonymous GCS access (public buckets, emulators), no credentials")
    azure_account_name: str | None = Field(None, description="Azure storage account; none: AZURE_STORAGE_ACCOUNT_NAME")
    azure_endpoint_url: str | None = Field(
        None,
        description="Blob endpoint with scheme, e.g. http://127.0.0.1:10000/devstoreaccount1 for Azurite; "
        "none: https://<account>.blob.core.windows.net",
    )
    azure_account_key: SecretStr | None = Field(None, description="Azure account key (masked when shown)")
    azure_account_key_file: Path | None = Field(None, description="file holding the account key (a mounted secret)")
    azure_connection_string: SecretStr | None = Field(
        None, description="Azure connection string; beats the account settings (masked when shown)"
    )
    azure_connection_string_file: Path | None = Field(
        None, description="file holding the connection string (a mounted secret)"
    )
    azure_sas_token: SecretStr | None = Field(None, description="Azure SAS token (masked when shown)")
    azure_anon: bool = Field(False, description="anonymous Azure access (public containers), no credentials")
    connect_timeout_s: float = Field(5.0, gt=0, le=300, description="object-store connect timeout, seconds")
    max_attempts: int = Field(3, ge=1, le=20, description="tries per object-store request (1: no retry)")
    row_group_rows: int = Field(65_536, ge=1, description="rows per Parquet row group when writing")

    @model_validator(mode="after")
    def _one_source_per_secret(self) -> StorageSettings:
        for key in ("azure_account_key", "azure_connection_string"):
            if getattr(self, key) is not None and getattr(self, f"{key}_file") is not None:
                raise ValueError(f"set storage.{key} or storage.{key}_file, not both")
        return self


class GpuAlertSettings(Section):
    """Alert thresholds, each logged once per crossing and counted."""

    memory_pct: float = Field(90.0, gt=0, le=100, description="framebuffer used, percent")
    temperature_c: float = Field(85.0, gt=0, description="GPU temperature, degrees C")
    power_pct: float = Field(95.0, gt=0, le=200, description="power draw, percent of the limit")
    leak_samples: int = Field(10, ge=2, description="consecutive growing samples that flag a leak")


class GpuSettings(Section):
    """GPU resource manager: discovery, memory policy, monitoring, health and placement."""

    enabled: bool = Field(True, description="use GPUs when present; false: CPU only")
    sample_interval_s: float = Field(5.0, gt=0, le=3600, description="monitor sampling interval, seconds")
    metric_naming: Literal["dcgm", "greekfire"] = Field(
        "dcgm", description="dcgm: DCGM_FI_DEV_* names; greekfire: greekfire_gpu_* (nodes running dcgm-exporter)"
    )
    cloud: Literal["auto", "aws", "gcp", "azure", "none"] = Field(
        "auto", description="cloud provider; auto: detected from DMI data"
    )
    cloud_metadata: bool = Field(False, description="query the metadata service for instance type/region")
    metadata_timeout_s: float = Field(1.0, gt=0, le=10, description="metadata service timeout, seconds")
    metadata_url: str | None = Field(None, description="metadata service base URL (default: the cloud's own)")
    dmi_root: Path = Field(Path("/"), description="root under which sys/class/dmi/id is read (tests: a temp dir)")
    memory_fraction: float | None = Field(None, gt=0, le=1, description="per-process fraction of device memory")
    expandable_segments: bool = Field(True, description="torch CUDA allocator expandable segments (less fragmentation)")
    preallocate_mb: int = Field(0, ge=0, description="reserve this many MiB at start (0: none)")
    placement: Literal["least_loaded", "round_robin", "pack"] = Field(
        "least_loaded", description="how work is placed on devices"
    )
    min_free_mb: int = Field(512, ge=0, description="memory headroom a device needs to be placed on")
    host: str = Field("127.0.0.1", description="address `greekfire gpu serve` listens on")
    port: int = Field(9400, ge=1, le=65535, description="port of `greekfire gpu serve` (/health, /metrics)")
    alerts: GpuAlertSettings = GpuAlertSettings()


class QuantSettings(Section):
    """Pricing defaults."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="pricing device; auto: a GPU when present")
    dtype: Literal["float64", "float32"] = Field("float64", description="floating-point precision of pricing")
    tree_steps: int = Field(200, ge=1, le=100_000, description="binomial tree steps")
    background_compile: bool = Field(
        True, description="`greekfire price` prices eagerly until this machine has compiled its pricing kernels "
        "and then builds them once in a low-priority background process (minutes); false: never start that "
        "build (kernels built before are still used)"
    )
    keep_freed_memory: bool = Field(
        True, description="greekfire commands make glibc's malloc keep freed blocks up to 32 MiB (large pricing "
        "batches then skip refaulting fresh pages; the process keeps up to 512 MiB it freed)"
    )


class MarketSettings(Section):
    """Market core: books, feeds, microstructure (owned by greekfire.market)."""

    max_levels: int = Field(10, ge=1, le=1000, description="depth levels kept in snapshots")
    itch_framing: Literal["length", "zero_prefix"] = Field(
        "length", description="ITCH file framing: Nasdaq 2-byte length, or two zero bytes + size by type"
    )
    demo_messages: int = Field(200_000, ge=1_000, le=10_000_000, description="synthetic ITCH messages in the demo")
    stp: Literal["cancel_newest", "cancel_oldest", "cancel_both", "none"] = Field(
        "cancel_newest", description="self-trade prevention of simulated matching engines"
    )


class RiskSettings(Section):
    """Pre-trade and continuous risk limits (owned by greekfire.trading.risk); changeable at run time."""

    max_order_qty: int = Field(1000, gt=0, description="contracts or shares per order")
    max_notional: float = Field(1_000_000.0, gt=0, description="per order, in currency")
    price_band_pct: float = Field(0.10, gt=0, le=10, description="limit price band around the reference, fraction")
    price_band_ticks: int = Field(20, ge=0, description="the band is never narrower than this many ticks")
    max_position: int = Field(500, gt=0, description="absolute position per instrument (contracts or shares)")
    max_underlying_position: int = Field(2000, gt=0, description="sum of absolute positions per underlying")
    max_delta: float = Field(50_000.0, gt=0, description="portfolio delta per underlying, share equivalents")
    max_gamma: float = Field(5_000.0, gt=0, description="portfolio gamma per underlying, shares per 1.00 spot")
    max_vega: float = Field(100_000.0, gt=0, description="portfolio vega per underlying, currency per 1.00 vol")
    max_theta: float = Field(500_000.0, gt=0, description="portfolio |theta| per underlying, currency per year")
    max_total_delta_cash: float = Field(5_000_000.0, gt=0, description="sum over underlyings of delta x spot")
    max_total_vega: float = Field(250_000.0, gt=0, description="sum over underlyings, currency per 1.00 vol")
    max_total_gamma_cash: float = Field(1_000_000.0, gt=0, description="sum of gamma x spot^2 / 100 (per 1% move)")
    max_total_theta: float = Field(1_000_000.0, gt=0, description="sum of |theta|, currency per year")
    var_limit: float = Field(250_000.0, gt=0, description="1-day VaR limit, currency (positive loss)")
    var_confidence: float = Field(0.99, gt=0.5, lt=1, description="VaR confidence level, fraction")
    var_mc_paths: int = Field(2000, ge=100, le=1_000_000, description="Monte Carlo VaR paths (continuous check)")
    var_refresh_s: float = Field(1.0, gt=0, description="exact parametric VaR at most this often; bounded between")
    max_orders_per_s: int = Field(5000, gt=0, description="order submits + amends per second, per strategy")
    margin_rate: float = Field(0.20, ge=0, le=1, description="short option margin as a fraction of underlying notional")
    stop_loss: float = Field(50_000.0, gt=0, description="loss on one position that closes it (currency)")
    daily_loss_limit: float = Field(200_000.0, gt=0, description="loss since the start of the day that halts")
    max_drawdown: float = Field(300_000.0, gt=0, description="fall from the equity peak that halts (currency)")
    kill_on_breach: bool = Field(True, description="a continuous-limit breach trips the kill switch")


class TradingSettings(Section):
    """Event-driven trading engine (owned by greekfire.trading)."""

    venues: int = Field(2, ge=1, le=16, description="simulated venues in paper trading")
    risk: RiskSettings = RiskSettings()
    strategy: str = Field("market_maker", description="strategy run by `greekfire trade` (name or module:Class)")
    starting_cash: float = Field(1_000_000.0, description="paper account cash at start, currency")
    duration_s: float = Field(20.0, gt=0, description="default paper run length, seconds")
    timer_interval_s: float = Field(0.25, gt=0, description="strategy timers and continuous risk checks")
    snapshot_interval_s: float = Field(1.0, gt=0, description="state snapshots to the database")
    venue_latency_us: float = Field(200.0, ge=0, description="simulated one-way venue latency, microseconds")
    venue_latency_jitter_us: float = Field(100.0, ge=0, description="extra uniform latency, microseconds")
    maker_fee: float = Field(-0.20, description="per contract; negative is a rebate")
    taker_fee: float = Field(0.50, description="per contract")
    background_rate_hz: float = Field(200.0, ge=0, description="synthetic participant orders per second per venue")
    seed: int = Field(7, description="random seed of the simulated venues and participants")
    audit_file: Path | None = Field(None, description="append-only JSON-lines audit log; none keeps it in memory")


class TrainingSettings(Section):
    """Pricing-model training (owned by greekfire.ml / greekfire.training)."""

    runs_dir: Path = Field(Path(".greekfire/runs"), description="checkpoints, TensorBoard and MLflow store")
    seed: int = Field(1234, description="random seed of training runs")
    config_dir: Path | None = Field(None, description="Hydra experiment configs (default: configs/train)")
    mlflow_tracking_uri: str | None = Field(None, description="MLflow server URI; none: local store in runs_dir")
    wandb_enabled: bool = Field(False, description="also log to Weights & Biases (needs the wandb package)")
    wandb_mode: Literal["offline", "online"] = Field("offline", description="W&B mode; offline needs no network")
    torch_threads: int = Field(0, ge=0, le=1024, description="CPU threads for torch (0: torch's default)")
    dist_timeout_s: float = Field(300.0, gt=0, description="seconds a distributed worker waits for the others "
                                  "(joining the group, a collective); past it the worker fails and torchrun restarts the group")
    serve_max_batch_rows: int = Field(4096, ge=1, description="inference micro-batch: most rows per forward")
    serve_max_wait_ms: float = Field(2.0, ge=0, le=1000, description="inference micro-batch: gather window, ms")
    serve_compile: Literal["none", "script", "compile"] = Field(
        "script", description="served network: none (eager), script (TorchScript trace, frozen), compile (torch.compile)"
    )
    hpo_storage_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/greekfire_hpo",
        description="Optuna study storage (PostgreSQL; its database is created if missing; sqlite:/// for one worker)",
    )
    pushgateway_url: str | None = Field(
        None, description="Prometheus pushgateway (host:port or URL) training runs push their metrics to; none: off"
    )
    pushgateway_job: str = Field("greekfire_training", min_length=1, description="pushgateway job label of runs")


class ModelsSettings(Section):
    """Model registry, gated promotion, audited rollback and A/B serving (greekfire.training, `greekfire models`)."""

    name: str = Field("greekfire-pricing", min_length=1, description="registered model name in the MLflow registry")
    gate_metric: str = Field("test_rmse", min_length=1, description="held-out run metric the promotion gate compares")
    gate_mode: Literal["min", "max"] = Field("min", description="min: lower is better (errors); max: higher (R^2)")
    gate_margin: float = Field(
        0.0, ge=0, lt=1, description="relative improvement over the champion a candidate needs (0.02: 2% better)"
    )
    audit_url: SecretStr | None = Field(
        None, description="SQLAlchemy URL of the promotion audit table; none: database.url (masked when shown)"
    )
    ab_challenger_weight: float = Field(
        0.0, ge=0, le=1, description="share of inference requests routed to the challenger (0: champion only)"
    )
    ab_alpha: float = Field(0.05, gt=0, lt=1, description="A/B test error rate: decide when the mSPRT ratio >= 1/alpha")
    ab_tau: float = Field(
        0.5, gt=0, description="A/B mixture scale, as a fraction of the pooled mean squared error"
    )
    ab_min_samples: int = Field(30, ge=2, description="observed prices per variant before the A/B test may decide")
    ab_max_samples: int = Field(
        100_000, ge=2, description="observed prices per variant after which an undecided test stops (champion stays)"
    )
    ab_auto_decide: bool = Field(True, description="promote or roll back through the registry when the test decides")
    ab_pending_max: int = Field(100_000, ge=1, description="predictions kept awaiting an observed price (oldest dropped)")


class FixSettings(Section):
    """FIX 4.4 sessions (owned by greekfire.fix): the trader's initiator and `greekfire fix exchange`."""

    data_dictionary: Path | None = Field(
        None, description="QuickFIX-format FIX44.xml validating every message (none: framing checks only)"
    )
    store_url: str = Field(
        "sqlite:///fix.db", description="sequence numbers and sent messages (SQLite under home, or PostgreSQL)"
    )
    host: str = Field("127.0.0.1", description="address the exchange listens on / the trader connects to")
    port: int = Field(9878, ge=0, le=65535, description="port of `greekfire fix exchange` (0: any free port)")
    sender_comp_id: str = Field("GREEKFIRE", min_length=1, description="our CompID as a trader (initiator)")
    exchange_comp_id: str = Field("GFEXCH", min_length=1, description="the exchange's CompID")
    clients: list[str] = Field(
        ["GREEKFIRE"], min_length=1, description="CompIDs the exchange accepts, one session each"
    )
    heartbeat_s: int = Field(30, ge=1, le=3600, description="HeartBtInt the initiator asks for, seconds")
    reset_on_logon: bool = Field(False, description="start both sequence numbers at 1 on every logon")
    max_latency_s: float = Field(120.0, gt=0, description="largest SendingTime difference accepted, seconds")
    reconnect_s: float = Field(1.0, gt=0, description="first reconnect delay; doubles up to max_reconnect_s")
    max_reconnect_s: float = Field(30.0, gt=0, description="longest reconnect delay, seconds")
    start_time: str | None = Field(
        None, pattern=r"^\d{2}:\d{2}(:\d{2})?$", description="daily session start, UTC HH:MM[:SS] (none: always on)"
    )
    end_time: str | None = Field(
        None, pattern=r"^\d{2}:\d{2}(:\d{2})?$", description="daily session end, UTC HH:MM[:SS]"
    )
    tls_cert: Path | None = Field(None, description="PEM certificate: the exchange serves TLS with it")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    tls_ca: Path | None = Field(None, description="PEM CA the trader verifies the exchange with (turns TLS on)")
    quote_interval_ms: float = Field(100.0, gt=0, description="exchange market-data snapshots, milliseconds")


class ApiSettings(Section):
    """HTTP servers (trading API, inference, dashboards)."""

    host: str = Field("127.0.0.1", description="address `greekfire serve pricing` listens on")
    port: int = Field(8000, ge=1, le=65535, description="port of `greekfire serve pricing`")
    trading_port: int = Field(8010, ge=1, le=65535, description="port of `greekfire serve trading`")
    wheel_port: int = Field(8020, ge=1, le=65535, description="port of `greekfire serve wheel` (the wheel dashboard)")
    redis_url: str | None = Field(
        None, description="Redis shared by the servers' rate limits (redis://host:6379/0); none: in memory"
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 key of the bearer tokens; none: a random key per process"
    )
    jwt_ttl_s: int = Field(900, ge=10, le=86_400, description="bearer token lifetime, seconds")
    rate_limit_per_s: float = Field(20.0, gt=0, description="requests per second per API key and route")
    rate_limit_burst: int = Field(40, ge=1, description="requests a key may send at once (token bucket size)")
    ws_queue_size: int = Field(
        1000, ge=1, description="messages a WebSocket client may fall behind before it is dropped"
    )


class HftRiskSettings(Section):
    """Pre-trade checks in the HFT gateway's fast path (greekfire.hft.risk)."""

    max_order_qty: int = Field(1000, gt=0, description="shares per order")
    max_notional: float = Field(1_000_000.0, gt=0, description="per order, in dollars (price ticks of 1e-4 dollars)")
    max_position: int = Field(5000, gt=0, description="absolute position per instrument, shares")
    max_orders_per_s: int = Field(100_000, gt=0, description="orders per second through the gateway")
    tick_size: float = Field(1e-4, gt=0, description="dollars per price tick (ITCH prices: 1e-4 dollars)")


class HftSettings(Section):
    """The HFT engine (greekfire.hft): processes pinned to cores, shared-memory rings, multicast feed."""

    cpus: list[int] = Field(
        [], description="CPUs for the stages in order feed, feature workers..., strategy, gateway, exchange "
        "(index into this process's allowed CPUs); empty: no pinning"
    )
    ring_capacity: int = Field(65_536, ge=64, le=1 << 24, description="records per ring (a power of 2)")
    batch: int = Field(256, ge=1, le=65_536, description="most records a stage takes off a ring at once")
    wait: Literal["busy", "yield", "block"] = Field("yield", description="how a stage waits on an empty ring")
    feed_group: str = Field("239.192.0.1", description="multicast group of the ITCH feed")
    feed_port: int = Field(31_001, ge=1, le=65535, description="UDP port of the ITCH feed")
    feed_iface: str = Field("127.0.0.1", description="interface address the feed is joined on")
    feed_session: str = Field("GREEKFIRE", min_length=1, max_length=10, description="MoldUDP64 session")
    rerequest_host: str = Field("127.0.0.1", description="address of the MoldUDP64 re-request server")
    rerequest_port: int = Field(0, ge=0, le=65535, description="port of the MoldUDP64 re-request server (`hft "
                                "feed-server` listens there; 0: any free port there, and `hft run` recovers no gap)")
    workers: int = Field(1, ge=1, le=64, description="book/feature worker processes (instruments split among them)")
    device: str = Field("cpu", description="feature device per worker: cpu, auto (GPUs when present), cuda:N")
    feature_backend: Literal["numba", "torch"] = Field("numba", description="numba loop or torch batches")
    n_locates: int = Field(8192, ge=1, le=65_536, description="book slots (ITCH stock locate codes)")
    max_orders: int = Field(1 << 20, ge=1024, description="resting orders the books hold, per worker")
    decide_every: int = Field(16, ge=1, description="a strategy decision on every book message whose sequence "
                              "number is a multiple of this")
    levels: int = Field(5, ge=1, le=64, description="depth levels in the imbalance")
    enter: float = Field(0.6, gt=0, le=1, description="|imbalance| that gives a signal")
    max_spread: float = Field(500.0, gt=0, description="no signal on a spread wider than this, ticks (1e-4 dollars)")
    order_qty: int = Field(100, gt=0, description="shares per order of the imbalance taker")
    max_position: int = Field(1000, gt=0, description="the strategy's own position cap per instrument, shares")
    gateway: Literal["sim", "ouch", "fix"] = Field(
        "sim", description="sim: the exchange simulator as a process on rings; ouch: OUCH 4.2 over SoupBinTCP (to "
        "the OUCH exchange simulator holding the file's closing book, or to hft.venue_*); fix: not driven by the "
        "pipeline yet"
    )
    venue_host: str = Field("127.0.0.1", description="address of the OUCH venue `hft run` trades with (hft.gateway "
                            "ouch; `hft replay` runs its own OUCH exchange simulator)")
    venue_port: int = Field(15_000, ge=0, le=65535, description="port of the OUCH venue `hft run` trades with")
    risk: HftRiskSettings = HftRiskSettings()
    killswitch_file: Path | None = Field(None, description="the kill switch trips when this file exists")
    killswitch_port: int | None = Field(None, ge=0, le=65535, description="HTTP port of the kill switch (none: off)")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics of `hft run` and `hft replay` (none: off)"
    )
    metrics_host: str = Field(
        "127.0.0.1", description="address the HFT metrics server binds (0.0.0.0 so a Prometheus in another pod scrapes it)"
    )
    status_file: Path = Field(Path(".greekfire/hft-status.json"), description="what `greekfire hft status` reads")
    status_interval_s: float = Field(1.0, gt=0, description="how often the running pipeline writes its status")

    @field_validator("ring_capacity")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"must be a power of 2 (e.g. {1 << v.bit_length()})")
        return v
ItmRule = Literal["hold", "roll", "always_roll", "close"]
WriteWhen = Literal["always", "green", "red"]


class WheelSymbolSettings(Section):
    """Per-symbol overrides of the wheel's targets (unset keys take the section's value)."""

    put_delta: float | None = Field(None, gt=0, lt=1, description="target |delta| of puts written on this symbol")
    call_delta: float | None = Field(None, gt=0, lt=1, description="target delta of calls written on this symbol")
    dte: int | None = Field(None, ge=1, le=3650, description="target days to expiry for this symbol")
    max_dte: int | None = Field(None, ge=1, le=3650, description="longest days to expiry for this symbol")
    put_strike_limit: float | None = Field(None, gt=0, description="never write a put above this strike")
    call_strike_limit: float | None = Field(None, gt=0, description="never write a call below this strike")


class WheelSettings(Section):
    """The wheel strategy (owned by greekfire.strategies.wheel): cash-secured puts, then covered calls on
    assigned shares. Fractions are of the account value unless said otherwise; prices in currency per share."""

    symbols: dict[str, float] = Field(
        {"SPY": 1.0}, description="underlyings and their target weights (normalised to sum 1)"
    )
    symbol_overrides: dict[str, WheelSymbolSettings] = Field(
        {}, description="per-symbol put_delta, call_delta, dte, max_dte, put_strike_limit, call_strike_limit"
    )
    buying_power: float = Field(1.0, gt=0, le=4, description="fraction of the account value the wheel may commit")
    max_symbol_fraction: float = Field(1.0, gt=0, le=1, description="cap on one symbol's share of the buying power")
    max_contracts: int = Field(100, ge=1, description="most contracts written per symbol and order")
    cash_reserve: float = Field(0.0, ge=0, lt=1, description="fraction of the account value never committed")
    put_delta: float = Field(0.30, gt=0, lt=1, description="target |delta| of puts written")
    call_delta: float = Field(0.30, gt=0, lt=1, description="target delta of calls written")
    dte: int = Field(45, ge=1, le=3650, description="target days to expiry: the nearest expiry at or after it")
    max_dte: int = Field(180, ge=1, le=3650, description="longest days to expiry written")
    min_open_interest: int = Field(10, ge=0, description="least open interest of a contract written, contracts")
    min_volume: int = Field(0, ge=0, description="least day's volume of a contract written, contracts")
    max_spread: float = Field(0.5, gt=0, description="widest bid/ask spread as a fraction of the mid")
    min_premium: float = Field(0.05, ge=0, description="least mid price of a contract written (currency/share)")
    min_annual_yield: float = Field(0.0, ge=0, description="least premium / collateral per year (fraction)")
    put_write_when: WriteWhen = Field("always", description="write puts only on green/red days (close vs previous)")
    call_write_when: WriteWhen = Field("always", description="write calls only on green/red days")
    write_threshold: float = Field(0.0, ge=0, lt=1, description="least |daily move| to write (fraction; 0: off)")
    write_threshold_sigma: float = Field(
        0.0, ge=0, description="least |daily log move| in daily sigmas to write (0: off; beats write_threshold)"
    )
    sigma_days: int = Field(30, ge=2, le=1000, description="days of log returns behind the daily sigma")
    iv_rank_min: float = Field(0.0, ge=0, le=1, description="least IV rank (0..1 over iv_rank_days) to write")
    iv_rank_days: int = Field(252, ge=2, le=5000, description="days of at-the-money IV behind the IV rank")
    sma_days: int = Field(0, ge=0, le=1000, description="write puts only with the close >= its SMA (0: off)")
    exit_below_sma: bool = Field(False, description="close a short put when the close falls below the SMA")
    rsi_days: int = Field(14, ge=2, le=1000, description="Wilder RSI length, days")
    put_rsi_max: float = Field(100.0, ge=0, le=100, description="write puts only with RSI <= this")
    call_rsi_min: float = Field(0.0, ge=0, le=100, description="write calls only with RSI >= this")
    roll_pnl: float = Field(0.9, gt=0, le=1, description="roll when P&L >= this fraction of the premium")
    roll_dte: int = Field(15, ge=0, description="roll at or under this many days to expiry ...")
    roll_min_pnl: float = Field(0.0, description="... when P&L >= this fraction of the premium")
    roll_max_dte: int | None = Field(None, ge=1, description="never roll a leg with more days to expiry than this")
    put_itm: ItmRule = Field("hold", description="an ITM short put: hold to assignment, roll, always_roll or close")
    call_itm: ItmRule = Field("roll", description="an ITM short call: hold to assignment, roll, always_roll or close")
    roll_credit_only: bool = Field(False, description="roll only for a net credit")
    close_if_unable_to_roll: bool = Field(False, description="close a leg due a roll when no contract qualifies")
    close_at_pnl: float | None = Field(None, gt=0, le=1, description="close (not roll) at this P&L fraction")
    stop_underlying_drawdown: float | None = Field(
        None, gt=0, lt=1, description="close everything when the underlying falls this fraction below the cycle's entry"
    )
    stop_option_loss: float | None = Field(
        None, gt=0, description="buy back a short option whose loss reaches this multiple of its premium"
    )
    call_below_cost_basis: bool = Field(False, description="allow call strikes below the shares' cost basis")
    call_cap_factor: float = Field(1.0, gt=0, le=1, description="fraction of the shares covered by calls")
    maintain_high_water_mark: bool = Field(False, description="a rolled call's strike never goes down")
    exercise: Literal["american", "european"] = Field("american", description="exercise style the Greeks assume")
    american_engine: str = Field("baw", description="pricing engine of American Greeks (registry name)")
    european_engine: str = Field("bsm", description="pricing engine of European Greeks (registry name)")
    rate: float = Field(0.02, ge=-0.1, le=1, description="risk-free rate for the Greeks (continuous)")
    dividend_yield: float = Field(0.0, ge=0, le=1, description="dividend yield for the Greeks (continuous)")
    score_dte_weight: float = Field(1.0, ge=0, description="score penalty per year of DTE beyond the target")
    score_yield_weight: float = Field(0.0, ge=0, description="score weight of the annualised yield")
    score_liquidity_weight: float = Field(0.01, ge=0, description="score weight of the liquidity score (0..1)")
    limit_fraction: float = Field(0.5, ge=0, le=1, description="limit price: bid + this fraction of the spread")
    cycle_time: str = Field(
        "15:30", pattern=r"^\d{2}:\d{2}$", description="on the engine: the daily cycle runs at the first timer "
        "tick at or after this New York time (HH:MM)"
    )
    device: str = Field("auto", description="strike-scoring device: auto, cpu, cuda or cuda:N")
    batch_rows: int = Field(1_000_000, ge=1, description="candidate rows scored per batch (halved on OOM)")

    @model_validator(mode="after")
    def _check(self) -> WheelSettings:
        if not self.symbols:
            raise ValueError("symbols: at least one underlying")
        bad = {k: v for k, v in self.symbols.items() if not v > 0}
        if bad:
            raise ValueError(f"symbols: weights must be > 0, got {bad}")
        if self.dte > self.max_dte:
            raise ValueError(f"dte={self.dte} exceeds max_dte={self.max_dte}")
        unknown = sorted(set(self.symbol_overrides) - set(self.symbols))
        if unknown:
            raise ValueError(f"symbol_overrides: {unknown} not among symbols {sorted(self.symbols)}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> WheelSettings:
        """The wheel configuration in a YAML file: the section's keys at the top level, or under ``wheel:``
        (a whole settings file). A bad or unknown key raises ConfigErrors naming ``wheel.<key>``."""
        data = _read_yaml(Path(path))
        if set(data) == {"wheel"} and isinstance(data["wheel"], dict):
            data = data["wheel"]
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigErrors(_explain(exc, str(path), prefix=("wheel",)).errors) from None


_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("greekfire_yaml_data", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """The parsed YAML file of the current :func:`load_settings` call."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return (_yaml_data.get() or {}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


class Settings(BaseSettings):
    """The whole settings tree. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        case_sensitive=False,
    )

    home: Path = Field(Path(".greekfire"), description="folder for local state (SQLite, data, runs)")
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    gpu: GpuSettings = GpuSettings()
    quant: QuantSettings = QuantSettings()
    market: MarketSettings = MarketSettings()
    trading: TradingSettings = TradingSettings()
    training: TrainingSettings = TrainingSettings()
    models: ModelsSettings = ModelsSettings()
    fix: FixSettings = FixSettings()
    api: ApiSettings = ApiSettings()
    hft: HftSettings = HftSettings()
    wheel: WheelSettings = WheelSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # explicit overrides (init) beat the environment, which beats the YAML file, which beats defaults.
        return (init_settings, env_settings, _YamlSource(settings_cls))


def env_get(name: str, default: str | None = None) -> str | None:
    """Read one process environment variable (the only sanctioned way outside this module)."""
    return os.environ.get(name, default)


def env_set(name: str, value: str, *, overwrite: bool = True) -> None:
    """Set one process environment variable (e.g. ``PYTORCH_CUDA_ALLOC_CONF`` before CUDA starts)."""
    if overwrite or name not in os.environ:
        os.environ[name] = value


def env_snapshot(prefix: str = "") -> dict[str, str]:
    """A copy of the environment variables whose names start with ``prefix``."""
    return {k: v for k, v in os.environ.items() if k.startswith(prefix)}


def is_ci() -> bool:
    """True when running under CI (``CI=true``): tests that would skip must fail instead."""
    return (os.environ.get("CI") or "").strip().lower() in {"1", "true", "yes"}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError("config", str(path), "the YAML file does not exist", source="--config/GREEKFIRE_CONFIG")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", str(path), f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "the top level must be a mapping of sections")
    return data


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(dotted, value, f"{p} is not a section")
        node = nxt
    node[parts[-1]] = value


def _did_you_mean(word: str, choices: list[str]) -> str:
    """``did you mean 'x'? `` (with the trailing space) for a close choice, else ''."""
    close = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the section at ``loc`` (a path of names in the settings tree)."""
    model: Any = Settings
    for name in loc:
        field = model.model_fields.get(str(name)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = field.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return sorted({f.alias or k for k, f in model.model_fields.items()} | set(model.model_fields))


def _explain(exc: ValidationError, source: str, prefix: tuple[str, ...] = ()) -> ConfigErrors:
    errors = []
    for err in exc.errors():
        loc = prefix + tuple(err.get("loc", ()))
        field = ".".join(str(p) for p in loc)
        value = err.get("input")
        allowed = err.get("msg", "invalid")
        ctx = err.get("ctx") or {}
        if "expected" in ctx:
            allowed = f"{allowed} (allowed: {ctx['expected']})"
        if err.get("type") == "extra_forbidden" and loc:
            keys = _keys_at(loc[:-1])
            where = ".".join(str(p) for p in loc[:-1]) or "the top level"
            allowed = f"unknown key; {_did_you_mean(str(loc[-1]), keys)}keys of {where}: {', '.join(keys)}"
        errors.append(ConfigError(field or "settings", value, allowed, source=source))
    return ConfigErrors(errors)


def _unknown_env_sections() -> list[ConfigError]:
    """``GREEKFIRE_<SECTION>__<KEY>`` variables whose section does not exist: pydantic-settings reads only
    the sections it knows, so without this check a typo in the section would be ignored without a word."""
    sections = [k for k, f in Settings.model_fields.items() if isinstance(f.annotation, type)
                and issubclass(f.annotation, BaseModel)]
    errors = []
    for name, value in sorted(os.environ.items()):
        if not name.upper().startswith(ENV_PREFIX) or "__" not in name:
            continue
        section = name[len(ENV_PREFIX):].split("__", 1)[0].lower()
        if section not in sections:
            errors.append(ConfigError(
                name, value, f"unknown settings section {section!r}; {_did_you_mean(section, sections)}"
                f"sections: {', '.join(sections)}", source="environment",
            ))
    return errors


def load_settings(
    config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the settings tree from defaults, a YAML file, the environment and ``overrides``.

    ``config_path`` falls back to ``$GREEKFIRE_CONFIG``. ``overrides`` maps dotted keys to values
    (``{"gpu.placement": "pack"}``) and beats every other source. Raises ``ConfigErrors`` naming each bad
    field path, its value and what is allowed.
    """
    path = config_path or os.environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    source = "defaults/environment"
    if path:
        data = _read_yaml(Path(path))
        source = f"{path} or environment"
    init: dict[str, Any] = {}
    for k, v in (overrides or {}).items():
        _set_dotted(init, k, v)
    if init:
        source += " or overrides"
    unknown = _unknown_env_sections()
    token = _yaml_data.set(data)
    try:
        settings = Settings(**init)
    except ValidationError as exc:
        raise ConfigErrors(unknown + _explain(exc, source).errors) from None
    finally:
        _yaml_data.reset(token)
    if unknown:
        raise ConfigErrors(unknown)
    return settings


_MASK = "********"


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        raw = value.get_secret_value()
        if "://" in raw and "@" in raw:  # a URL with credentials: keep the scheme and host
            scheme, rest = raw.split("://", 1)
            return f"{scheme}://{_MASK}@{rest.split('@', 1)[1]}"
        if "://" in raw:  # a URL without credentials (sqlite:///file.db) is not a secret
            return raw
        return _MASK if raw else ""
    if isinstance(value, BaseModel):
        return {(f.alias or k): _mask(getattr(value, k)) for k, f in type(value).model_fields.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


def settings_dict(settings: Settings, *, reveal: bool = False) -> dict[str, Any]:
    """The effective settings as plain data; secrets are masked unless ``reveal``."""
    if reveal:
        return settings.model_dump(mode="json", by_alias=True)
    return _mask(settings)
