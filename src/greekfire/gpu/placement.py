"""Placement: which device a new job goes to.

Policies (settings ``gpu.placement``):

- ``least_loaded``: the lowest utilisation, ties broken by the most free memory (spreads work).
- ``round_robin``: the next eligible device in turn (stable order by NVML index).
- ``pack``: the eligible device with the least free memory that still fits (fills one GPU before the
  next, leaving whole GPUs free for large jobs).

A GPU is eligible when it is healthy (no critical XID, no double-bit ECC error) and its free memory minus
the job's need keeps at least ``min_free_mb`` of headroom. With no eligible GPU the job goes to the CPU.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from greekfire.core.errors import ConfigError
from greekfire.gpu.discovery import DeviceInfo
from greekfire.gpu.health import HealthTracker

POLICIES = ("least_loaded", "round_robin", "pack")


@dataclass(slots=True)
class PlacementDecision:
    """The chosen device, why, and why each other device was passed over (by device key)."""

    device: DeviceInfo
    policy: str
    reason: str
    skipped: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"device": self.device.key, "torch_device": self.device.torch_device, "name": self.device.name,
                "policy": self.policy, "reason": self.reason, "skipped": dict(self.skipped)}


class Placer:
    """Chooses devices by policy; keeps the round-robin cursor between calls (thread-safe).

    ``health`` (optional) excludes unhealthy GPUs; ``utilization`` maps device key to GPU util % (from the
    monitor) for ``least_loaded``.
    """

    def __init__(self, policy: str = "least_loaded", *, min_free_mb: float = 512, health: HealthTracker | None = None):
        if policy not in POLICIES:
            raise ConfigError("gpu.placement", policy, f"one of {', '.join(POLICIES)}")
        self.policy = policy
        self.min_free_mb = float(min_free_mb)
        self.health = health
        self._cursor = 0
        self._lock = threading.Lock()

    def eligible(self, devices: Sequence[DeviceInfo], need_mb: float = 0.0) -> tuple[list[DeviceInfo], dict[str, str]]:
        """GPUs that may take a job needing ``need_mb`` MiB, and the reason each other GPU may not."""
        ok: list[DeviceInfo] = []
        skipped: dict[str, str] = {}
        for d in devices:
            if not d.is_gpu:
                continue
            if not d.healthy or (self.health is not None and not self.health.is_healthy(d.uuid)):
                reasons = self.health.get(d.uuid).reasons if self.health is not None else d.reasons
                skipped[d.key] = "unhealthy: " + ("; ".join(reasons) or "marked unhealthy")
            elif d.memory_free_mb - need_mb < self.min_free_mb:
                skipped[d.key] = (f"memory headroom: {d.memory_free_mb:.0f} MiB free - {need_mb:.0f} MiB needed "
                                  f"< {self.min_free_mb:.0f} MiB minimum")
            else:
                ok.append(d)
        return ok, skipped

    def choose(
        self,
        devices: Sequence[DeviceInfo],
        *,
        need_mb: float = 0.0,
        utilization: Mapping[str, float] | None = None,
    ) -> PlacementDecision:
        """Pick a device for a job needing ``need_mb`` MiB; the CPU device when no GPU is eligible."""
        ok, skipped = self.eligible(devices, need_mb)
        cpu = next((d for d in devices if d.kind == "cpu"), None)
        if not ok:
            if cpu is None:
                raise ConfigError("devices", [d.key for d in devices], "a device list that includes the CPU device")
            why = "no eligible GPU" if any(d.is_gpu for d in devices) else "no GPU present"
            return PlacementDecision(cpu, self.policy, f"{why}: using the CPU", skipped)
        util = utilization or {}
        if self.policy == "least_loaded":
            chosen = min(ok, key=lambda d: (util.get(d.key, 0.0), -d.memory_free_mb, d.index))
            reason = f"least loaded: {util.get(chosen.key, 0.0):.0f}% busy, {chosen.memory_free_mb:.0f} MiB free"
        elif self.policy == "pack":
            chosen = min(ok, key=lambda d: (d.memory_free_mb, d.index))
            reason = f"pack: fullest GPU that fits ({chosen.memory_free_mb:.0f} MiB free)"
        else:
            ordered = sorted(ok, key=lambda d: d.index)
            with self._lock:
                chosen = ordered[self._cursor % len(ordered)]
                self._cursor += 1
            reason = f"round robin: GPU {chosen.index}"
        for d in ok:
            if d is not chosen:
                skipped.setdefault(d.key, "eligible, not chosen")
        return PlacementDecision(chosen, self.policy, reason, skipped)
