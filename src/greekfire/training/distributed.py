"""Distributed pricing training under torchrun: DDP on one or several nodes, elastic, with restarts.

:func:`launch` is what ``greekfire train run --nproc N --nnodes M`` calls on each node. It composes the
experiment (a bad key fails here, before any process starts), picks the process-group backend
(:func:`resolve_backend`: NCCL when the GPU manager chooses a GPU, gloo on CPU), and starts torchrun's
elastic agent in-process (``torch.distributed.launcher.elastic_launch``) with a c10d rendezvous at
``--rdzv host:port``. The agent starts ``--nproc`` workers (``python -m greekfire.training.distributed``),
each of which joins the process group (:func:`greekfire.gpu.distributed.init_distributed`) and runs the
same Lightning loop as ``greekfire train pricing`` (:func:`greekfire.ml.train.train_pricing`) with DDP.

Fault tolerance: ``--nnodes MIN:MAX`` and ``--max-restarts K``. When a worker dies, torchrun stops the
group, rendezvouses again and restarts every worker (up to K times); each worker fetches the job's
``last.ckpt`` from shared storage (:mod:`greekfire.training.elastic`) and resumes from it: weights,
optimizer, scheduler, loop counters, data position and RNG.

Why Lightning and not a plain DDP loop: under torchrun, Lightning detects the elastic environment,
takes ranks and world size from it and uses the process group we started, so nothing of the loop is
twinned; what it does not do (checkpoints on shared storage, resuming a restarted group) is done around it.

Horovod is a third backend name: it is checked here (:func:`horovod_missing`) and fails with what is missing.

Example (two nodes of one process each, on one machine)::

    greekfire train run +experiment=smoke --nproc 1 --nnodes 2 --rdzv 127.0.0.1:29400 &
    greekfire train run +experiment=smoke --nproc 1 --nnodes 2 --rdzv 127.0.0.1:29400
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import socket
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from greekfire.core.errors import ConfigError, GreekfireError, UnavailableError
from greekfire.core.settings import Settings, env_get, env_set, load_settings

log = logging.getLogger(__name__)

BACKENDS = ("auto", "gloo", "nccl", "horovod")


def horovod_missing() -> str | None:
    """Why Horovod cannot run here (one line), or None when it can.

    Horovod needs its ``horovod.torch`` extension built against this torch (``HOROVOD_WITH_PYTORCH=1 pip
    install horovod``: CMake, a C++17 compiler, and MPI or gloo), and a loop of its own: Lightning 2 has no
    Horovod strategy, so even a working build is refused with that reason.
    """
    if importlib.util.find_spec("horovod") is None:
        return ("horovod is not installed (HOROVOD_WITH_PYTORCH=1 pip install horovod: it builds a C++ "
                "extension against this torch and needs CMake, a C++17 compiler and MPI or gloo)")
    try:
        import horovod.torch  # noqa: F401  # optional and heavy: only to prove the extension loads
    except Exception as exc:  # noqa: BLE001 - an import of a native extension fails in many ways
        return f"horovod is installed but horovod.torch does not load: {type(exc).__name__}: {exc}"
    return ("horovod.torch loads, but Lightning 2 has no Horovod strategy and greekfire has no Horovod loop "
            "yet: use --backend gloo or nccl")


def resolve_backend(backend: str = "auto", device: str = "auto", min_free_mb: float = 0.0) -> str:
    """The process-group backend for ``backend``: ``auto`` is ``nccl`` when the GPU manager
    (:func:`greekfire.gpu.device.choose_device`) picks a CUDA device for ``device``, else ``gloo``.

    Raises ConfigError for an unknown name or ``nccl`` without a GPU, and UnavailableError naming what is
    missing for ``horovod`` (:func:`horovod_missing`).
    """
    name = (backend or "auto").strip().lower()
    if name not in BACKENDS:
        raise ConfigError("--backend", backend, "one of " + ", ".join(BACKENDS))
    if name == "horovod":
        missing = horovod_missing()
        if missing:
            raise UnavailableError("--backend horovod", missing)
        return name
    from greekfire.gpu.device import choose_device  # imports torch: only a training process pays for it

    on_gpu = choose_device(device, min_free_mb=min_free_mb).type == "cuda" if device != "cpu" else False
    if name == "auto":
        return "nccl" if on_gpu else "gloo"
    if name == "nccl" and not on_gpu:
        raise ConfigError("--backend", backend, "gloo: the GPU manager found no CUDA device for NCCL")
    return name


@dataclass(frozen=True)
class LaunchOptions:
    """How torchrun starts the workers of this node (``greekfire train run`` options).

    ``nnodes``: ``"M"`` or ``"MIN:MAX"`` (elastic). ``rdzv``: ``host:port`` of the c10d rendezvous (the
    same on every node; one node hosts it); none: a free loopback port (one node only). ``job_id``: the
    rendezvous id and the key of the shared checkpoints (default: experiment name and config hash; the
    same on every node). ``checkpoint_url``: shared storage for ``last.ckpt`` (a folder or fsspec URL;
    default ``<training.runs_dir>/elastic``). ``rdzv_timeout_s``: seconds to wait for the other nodes.
    """

    nproc: int = 1
    nnodes: str = "1"
    rdzv: str | None = None
    max_restarts: int = 0
    backend: str = "auto"
    job_id: str | None = None
    checkpoint_url: str | None = None
    monitor_interval_s: float = 0.5
    rdzv_timeout_s: float = 120.0

    def node_range(self) -> tuple[int, int]:
        """(min, max) nodes from ``nnodes``; raises ConfigError naming the value."""
        parts = str(self.nnodes).split(":")
        try:
            lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, 0)
        except ValueError:
            lo = hi = 0
        if lo < 1 or hi < lo:
            raise ConfigError("--nnodes", self.nnodes, "a node count M or a range MIN:MAX with 1 <= MIN <= MAX")
        return lo, hi

    def validate(self) -> None:
        """Check every option; raises ConfigError naming the first bad one."""
        self.node_range()
        if self.nproc < 1:
            raise ConfigError("--nproc", self.nproc, "processes per node, >= 1")
        if self.max_restarts < 0:
            raise ConfigError("--max-restarts", self.max_restarts, ">= 0")
        if self.rdzv is not None:
            host, _, port = self.rdzv.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError("--rdzv", self.rdzv, "host:port of the rendezvous (the same on every node)")
        elif self.node_range()[1] > 1:
            raise ConfigError("--rdzv", None, "host:port: several nodes meet at one rendezvous address")

    @property
    def distributed(self) -> bool:
        """True when torchrun is needed (several processes or nodes, restarts, or a rendezvous)."""
        return self.nproc > 1 or self.node_range()[1] > 1 or self.max_restarts > 0 or self.rdzv is not None


@dataclass
class WorkerSpec:
    """What every worker process is told (JSON on its command line)."""

    preset: str
    overrides: list[str]
    backend: str
    job_id: str
    checkpoint_url: str
    result_file: str
    config_file: str | None = None
    data_path: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    input_noise: float = 0.0

    def to_json(self) -> str:
        """The spec as one JSON string."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_job_id(name: str, overrides: Sequence[str]) -> str:
    """``<name>-<10 hex>`` from the experiment name and overrides: equal on every node of one job."""
    digest = hashlib.sha256(json.dumps([name, list(overrides)]).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def launch(
    settings: Settings,
    options: LaunchOptions,
    *,
    preset: str = "smoke",
    overrides: Sequence[str] = (),
    config_file: str | Path | None = None,
    data_path: str | None = None,
    input_noise: float = 0.0,
) -> dict[str, Any] | None:
    """Run this node's share of a distributed training job under torchrun's elastic agent.

    Without torchrun options (:attr:`LaunchOptions.distributed` false, backend ``auto``) it trains in this
    process instead, as ``greekfire train pricing`` does. ``input_noise``: the standard deviation (a
    fraction) of the multiplicative noise :class:`~greekfire.training.augment.Augment` puts on each
    training batch's inputs (0: none).

    Returns the run summary (:meth:`greekfire.ml.train.TrainResult.as_dict`, plus ``restarts``) on the node
    whose worker held global rank 0, None on the others. Raises ConfigError for bad options or config,
    UnavailableError for a backend that cannot run, GreekfireError when the workers fail after the allowed
    restarts (naming the first failure).
    """
    options.validate()
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from greekfire.ml.config import compose_experiment

    if input_noise < 0:
        raise ConfigError("--input-noise", input_noise, "a fraction >= 0 (0.01: 1 % noise on the inputs)")
    cfg = compose_experiment(preset, overrides, config_file=config_file, settings=settings)  # fail before spawning
    if not options.distributed and options.backend == "auto":
        return _train_here(cfg, settings, data_path, input_noise)
    device = "cpu" if cfg.trainer.accelerator == "cpu" else "auto"
    backend = resolve_backend(options.backend, device, settings.gpu.min_free_mb)
    lo, hi = options.node_range()
    job_id = options.job_id or default_job_id(cfg.name, [*overrides, str(config_file), str(data_path)])
    checkpoint_url = options.checkpoint_url or str(Path(settings.training.runs_dir).absolute() / "elastic")
    rdzv = options.rdzv or f"127.0.0.1:{_free_port()}"
    # every rendezvous round gets a fresh store for the workers: torch's default shares one agent-hosted
    # store across rounds with no per-round prefix, so a restarted worker can read the process-group
    # addresses its dead predecessors left there and wait forever on a peer that is gone (torch issue
    # 135712). With sharing off, the rank-0 worker hosts a new store at a port chosen for that round.
    env_set("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1", overwrite=False)
    with tempfile.TemporaryDirectory(prefix="greekfire-train-") as tmp:
        spec = WorkerSpec(preset=preset, overrides=list(overrides), backend=backend, job_id=job_id,
                          checkpoint_url=checkpoint_url, result_file=str(Path(tmp) / "result.json"),
                          config_file=str(config_file) if config_file else None, data_path=data_path,
                          settings=_worker_settings(settings), input_noise=input_noise)
        config = LaunchConfig(
            min_nodes=lo, max_nodes=hi, nproc_per_node=options.nproc, run_id=job_id, rdzv_backend="c10d",
            rdzv_endpoint=rdzv, rdzv_configs={"timeout": int(options.rdzv_timeout_s)},
            max_restarts=options.max_restarts, monitor_interval=options.monitor_interval_s, start_method="spawn",
        )
        log.info("job %s: %d process(es) on this node, %s node(s), backend %s, rendezvous %s", job_id,
                 options.nproc, options.nnodes, backend, rdzv)
        try:
            elastic_launch(config, sys.executable)("-m", "greekfire.training.distributed", spec.to_json())
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            errors = sorted(Path(tmp).glob("error-rank*.txt"))
            why = errors[0].read_text().strip() if errors else f"rank {rank} exited with code {failure.exitcode}"
            raise GreekfireError(f"training job {job_id} failed after {options.max_restarts} restart(s) allowed: "
                                 f"{why}") from None
        result = Path(spec.result_file)
        return json.loads(result.read_text()) if result.is_file() else None


def _callbacks(cfg: Any, settings: Settings, input_noise: float) -> list[Any]:
    if not input_noise:
        return []
    from greekfire.training.augment import Augment

    return [Augment(input_noise, seed=cfg.seed if cfg.seed is not None else settings.training.seed)]


def _train_here(cfg: Any, settings: Settings, data_path: str | None, input_noise: float) -> dict[str, Any]:
    from greekfire.ml.train import train_pricing, with_data

    if data_path is not None:
        cfg = with_data(cfg, data_path, settings)
    return train_pricing(cfg, settings, callbacks=_callbacks(cfg, settings, input_noise)).as_dict()


def _worker_settings(settings: Settings) -> dict[str, Any]:
    # the training section (no secrets in it) travels to the workers on their command line; everything
    # else (storage credentials included) they read as this process did: environment and config file
    return {f"training.{k}": v for k, v in settings.training.model_dump(mode="json").items()}


def _distributed_config(cfg: Any, backend: str, local_world: int, world: int) -> Any:
    from greekfire.ml.config import validate_experiment

    data = cfg.model_dump()
    data["trainer"].update(strategy="ddp", devices=local_world, num_nodes=max(1, world // max(1, local_world)),
                           accelerator="gpu" if backend == "nccl" else "cpu")
    return validate_experiment(data, source="distributed launch")


def train_worker(spec: WorkerSpec, settings: Settings) -> dict[str, Any]:
    """One torchrun worker: join the process group, fetch the job's shared checkpoint if there is one,
    train with DDP on the Lightning loop, publish ``last.ckpt`` on every save. Returns the summary."""
    from greekfire.gpu.distributed import init_distributed
    from greekfire.ml.config import compose_experiment
    from greekfire.ml.train import train_pricing, with_data
    from greekfire.training.elastic import SharedCheckpointIO, SharedCheckpoints

    info = init_distributed(spec.backend, timeout_s=settings.training.dist_timeout_s)
    cfg = compose_experiment(spec.preset, spec.overrides, config_file=spec.config_file, settings=settings)
    if spec.data_path is not None:
        cfg = with_data(cfg, spec.data_path, settings)
    cfg = _distributed_config(cfg, spec.backend, info.local_world_size, info.world_size)
    shared = SharedCheckpoints(spec.checkpoint_url, spec.job_id, settings.storage)
    restarts = int(env_get("TORCHELASTIC_RESTART_COUNT") or 0)
    with tempfile.TemporaryDirectory(prefix=f"greekfire-rank{info.rank}-") as tmp:
        start_from = shared.fetch(Path(tmp) / "last.ckpt")
        if start_from is not None:
            log.info("rank %d resumes from %s (restart %d)", info.rank, shared.location, restarts)
        result = train_pricing(cfg, settings, ckpt_path=start_from, plugins=[SharedCheckpointIO(shared)],
                               callbacks=_callbacks(cfg, settings, spec.input_noise))
    summary = result.as_dict()
    summary.update(restarts=restarts, resumed_from=shared.location if start_from is not None else None,
                   backend=spec.backend, job_id=spec.job_id)
    if info.rank == 0:
        Path(spec.result_file).write_text(json.dumps(summary, default=str))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point (``python -m greekfire.training.distributed SPEC_JSON``), started by torchrun."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m greekfire.training.distributed SPEC_JSON (started by greekfire train run)",
              file=sys.stderr)
        return 2
    from greekfire.core.logging import configure_logging

    spec = WorkerSpec.from_json(args[0])
    settings = load_settings(overrides=spec.settings)
    lg = settings.logging
    configure_logging(level=lg.level, json_format=lg.json_format, file=lg.file, max_bytes=lg.max_bytes,
                      backup_count=lg.backup_count)
    try:
        train_worker(spec, settings)
    except Exception as exc:
        # the launcher quotes the first error in its one-line message; the traceback stays in this log
        rank = env_get("RANK") or "0"
        line = " ".join(f"rank {rank}: {type(exc).__name__}: {exc}".split())
        Path(spec.result_file).with_name(f"error-rank{rank}.txt").write_text(line[:2000])
        traceback.print_exc()
        logging.shutdown()
        # exit now: a thread or a half-torn-down process group left behind must not keep the failed worker
        # alive, since torchrun restarts the group only once every worker has exited
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
