"""``init_distributed()``: join the process group torchrun describes (NCCL on CUDA, gloo on CPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from greekfire.core.errors import ConfigError
from greekfire.core.settings import env_get, env_set


@dataclass(slots=True, frozen=True)
class DistributedInfo:
    """This process's place in the job: ranks, backend, device, and whether a process group was started."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: str
    initialized: bool
    master_addr: str | None = None
    master_port: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def _env_int(name: str, default: int) -> int:
    raw = env_get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(name, raw, "an integer (as torchrun sets it)", source="environment") from None


def init_distributed(backend: str | None = None, *, timeout_s: float = 300.0) -> DistributedInfo:
    """Read torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` and start the default process group (``init_method="env://"``).

    ``backend`` defaults to ``nccl`` when CUDA is available and ``gloo`` otherwise; on CUDA the process
    selects ``cuda:<LOCAL_RANK>``. Without ``WORLD_SIZE`` (a plain ``python`` run) nothing is started and a
    single-process description is returned. ``timeout_s``: seconds to wait for the other ranks.
    """
    # lazy: importing greekfire.gpu must not import torch (discovery and monitoring run without it)
    import torch
    import torch.distributed as dist

    env_set("PYTORCH_NVML_BASED_CUDA_CHECK", "1", overwrite=False)
    cuda = torch.cuda.is_available()
    chosen = backend or ("nccl" if cuda else "gloo")
    if chosen == "nccl" and not cuda:
        raise ConfigError("backend", chosen, "gloo on a machine without CUDA (NCCL needs GPUs)")
    world = _env_int("WORLD_SIZE", 0)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", max(world, 1))
    addr = env_get("MASTER_ADDR")
    port = _env_int("MASTER_PORT", 0) or None
    device = f"cuda:{local_rank}" if cuda else "cpu"
    if world <= 0:
        return DistributedInfo(0, 1, 0, 1, chosen, device, False, addr, port)
    if not 0 <= rank < world:
        raise ConfigError("RANK", rank, f"0 <= RANK < WORLD_SIZE={world}", source="environment")
    if addr is None or port is None:
        raise ConfigError("MASTER_ADDR/MASTER_PORT", f"{addr}:{port}", "both set (torchrun sets them)", source="environment")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=chosen, init_method="env://", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
    return DistributedInfo(rank, world, local_rank, local_world, chosen, device, True, addr, port)
