"""Demo stage "gpu": discovery, one monitoring pass and one placement decision on this machine."""

from __future__ import annotations

from typing import Any

from greekfire.core.settings import Settings
from greekfire.gpu.manager import GpuManager


def run_demo(settings: Settings) -> dict[str, Any]:
    """Discover devices, sample once, place a 1 GiB job; return a summary (no GPU needed)."""
    manager = GpuManager(settings)
    try:
        samples = manager.sample()
        decision = manager.place(need_mb=1024)
        inv = manager.inventory
        return {
            "devices": ", ".join(f"{d.kind}:{d.name}" for d in inv.devices),
            "gpus": len(inv.gpus),
            "nvml": inv.nvml,
            "driver": inv.driver_version or "-",
            "cuda runtime (torch build)": inv.cuda_runtime_version or "none (CPU build)",
            "cloud": inv.cloud.provider,
            "monitor samples": len(samples),
            "health": manager.health()["status"],
            "placement (1 GiB job)": f"{decision.device.torch_device} ({decision.reason})",
        }
    finally:
        manager.stop()
