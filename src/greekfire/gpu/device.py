"""The one place that decides cpu or cuda for a torch computation.

Every other package asks :func:`choose_device` (or :func:`cuda_usable`) instead of calling
``torch.cuda.is_available()`` itself, so the choice follows one rule: what the caller or the settings ask for
(``auto``, ``cpu``, ``cuda``, ``cuda:N``), whether torch sees a GPU, and, for ``auto``, whether the chosen GPU
has the free memory the settings ask a device to keep (``gpu.min_free_mb``). A long-lived process that runs
a :class:`~greekfire.gpu.manager.GpuManager` passes it, and ``auto`` then follows the manager's placement:
healthy GPUs only (no critical XID, no double-bit ECC error), the headroom, and the ``gpu.placement`` policy.

Example::

    from greekfire.gpu.device import choose_device
    dev = choose_device("auto")          # cuda:0 on a GPU machine, cpu elsewhere
    x = torch.ones(3, device=dev)

This module imports torch at import time; ``greekfire.gpu`` itself does not import it, so discovery and
monitoring stay light.
"""

from __future__ import annotations

import torch

from greekfire.core.errors import ConfigError
from greekfire.gpu.manager import GpuManager

MIB = 1 << 20


def cuda_usable() -> bool:
    """True when torch can run on a CUDA device in this process (a CUDA build and a visible GPU)."""
    return bool(torch.cuda.is_available())


def _free_mb(index: int) -> float | None:
    """Free memory of CUDA device ``index`` in MiB, None when the driver cannot say."""
    try:
        free, _total = torch.cuda.mem_get_info(index)
    except (RuntimeError, AssertionError):
        return None
    return free / MIB


def placed_device(manager: GpuManager, need_mb: float = 0.0) -> torch.device:
    """The torch device of ``manager``'s placement for a job needing ``need_mb`` MiB: a healthy GPU that
    keeps the manager's ``min_free_mb`` headroom, chosen by its policy, or the CPU when none does."""
    return torch.device(manager.place(need_mb=need_mb).device.torch_device)


def choose_device(
    requested: str | torch.device | None = "auto", *, min_free_mb: float = 0.0, manager: GpuManager | None = None
) -> torch.device:
    """The torch device for ``requested``: ``auto`` (or None) picks the CUDA device with the most free memory
    when torch sees one and it has at least ``min_free_mb`` MiB free, else the CPU; with a ``manager``,
    ``auto`` takes its placement instead (:func:`placed_device`: health, headroom and policy). ``cpu``,
    ``cuda`` and ``cuda:N`` are taken as asked, and asking for CUDA where torch sees none raises ConfigError
    naming the value (use ``cpu`` or ``auto``)."""
    if isinstance(requested, torch.device):
        requested = str(requested)
    req = (requested or "auto").strip().lower()
    if req == "auto":
        if not cuda_usable():
            return torch.device("cpu")
        if manager is not None:
            return placed_device(manager)
        best, best_free = 0, -1.0
        for i in range(torch.cuda.device_count()):
            free = _free_mb(i)
            if free is None:
                free = float(min_free_mb)
            if free > best_free:
                best, best_free = i, free
        if best_free < min_free_mb:
            return torch.device("cpu")
        return torch.device(f"cuda:{best}")
    if req == "cpu":
        return torch.device("cpu")
    if req.startswith("cuda"):
        if not cuda_usable():
            raise ConfigError("device", requested, "CUDA is not available to torch here (use cpu or auto)")
        dev = torch.device(req)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError("device", requested, f"torch sees {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise ConfigError("device", requested, "one of auto, cpu, cuda, cuda:N")
