"""``GpuManager``: discovery, health, monitoring and placement wired together from the settings.

The CLI (``greekfire gpu status``), the ``/health`` server and the demo all build one of these, so they
show the same thing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from greekfire.core.settings import GpuSettings, Settings
from greekfire.gpu.cloud import CloudInfo
from greekfire.gpu.discovery import DeviceInfo, Inventory, discover
from greekfire.gpu.health import HealthTracker, XidWatcher
from greekfire.gpu.monitor import DeviceSample, GpuMonitor
from greekfire.gpu.placement import PlacementDecision, Placer


class GpuManager:
    """One process's view of its devices. ``nvml`` / ``amdsmi`` / ``cloud`` replace the drivers (tests).

    ``start()`` runs the sampler and the XID watcher threads; ``stop()`` ends them. Without ``start()``
    the manager still answers: call :meth:`sample` for one monitoring pass.
    """

    def __init__(
        self,
        settings: Settings | GpuSettings | None = None,
        *,
        nvml: Any | None = None,
        amdsmi: Any | None = None,
        cloud: CloudInfo | None = None,
    ) -> None:
        gs = settings.gpu if isinstance(settings, Settings) else settings
        self.settings: GpuSettings = gs or GpuSettings.model_validate({})
        self.inventory: Inventory = discover(self.settings, nvml=nvml, amdsmi=amdsmi, cloud=cloud)
        self.tracker = HealthTracker()
        for d in self.inventory.gpus:
            if d.kind == "nvidia":
                self.tracker.register(d.uuid, d.index)
        self.monitor = GpuMonitor(
            self.settings, nvml=nvml, tracker=self.tracker, hostname=self.inventory.host,
            cuda_index={d.uuid: d.cuda_index for d in self.inventory.gpus},
        )
        self.watcher = XidWatcher(self.tracker, nvml=nvml)
        self.placer = Placer(self.settings.placement, min_free_mb=self.settings.min_free_mb, health=self.tracker)
        self.running = False

    # ---------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the sampler thread and, where NVML supports events, the XID watcher thread."""
        if self.running or not self.settings.enabled:
            return
        self.monitor.start()
        if self.inventory.nvml == "ok":
            self.watcher.start()
        self.running = True

    def stop(self) -> None:
        """Stop both threads and shut NVML down."""
        self.monitor.stop()
        self.watcher.stop()
        self.running = False

    def sample(self) -> list[DeviceSample]:
        """One monitoring pass now (publishes the gauges); see :class:`GpuMonitor`."""
        return self.monitor.sample()

    # ----------------------------------------------------------------------------------------- queries
    def devices(self) -> list[DeviceInfo]:
        """Devices with memory from the latest sample and health from the tracker (copies)."""
        latest = {s.uuid: s for s in self.monitor.last}
        out: list[DeviceInfo] = []
        for d in self.inventory.devices:
            c = dataclasses.replace(d, reasons=list(d.reasons))
            s = latest.get(d.uuid) if d.uuid else None
            if s is not None:
                c.memory_used_mb = round(s.values["fb_used"], 1)
                c.memory_free_mb = round(s.values["fb_free"], 1)
            if c.kind == "nvidia":
                h = self.tracker.get(c.uuid)
                c.healthy = h.healthy
                c.reasons.extend(r for r in h.reasons if r not in c.reasons)
            out.append(c)
        return out

    def place(self, need_mb: float = 0.0) -> PlacementDecision:
        """Choose a device for a job needing ``need_mb`` MiB (policy from ``gpu.placement``)."""
        util = {s.uuid: s.values["gpu_util"] for s in self.monitor.last}
        return self.placer.choose(self.devices(), need_mb=need_mb, utilization=util)

    def health(self) -> dict[str, Any]:
        """``/health`` content: ``status`` is ok (every GPU healthy), degraded (an unhealthy GPU, a memory
        alert or a suspected leak) or unavailable (no usable GPU: work falls back to the CPU)."""
        devices = self.devices()
        gpus = [d for d in devices if d.is_gpu]
        latest = {s.uuid: s for s in self.monitor.last}
        memory = []
        for d in gpus:
            s = latest.get(d.uuid)
            used_pct = s.memory_used_pct if s else (100.0 * d.memory_used_mb / d.memory_total_mb if d.memory_total_mb else 0.0)
            memory.append({
                "uuid": d.uuid, "used_mb": d.memory_used_mb, "free_mb": d.memory_free_mb, "total_mb": d.memory_total_mb,
                "used_pct": round(used_pct, 1), "over_threshold": used_pct >= self.settings.alerts.memory_pct,
                "leak_suspected": bool(s.leak_suspected) if s else False,
            })
        healthy = [d for d in gpus if d.healthy]
        if not healthy:
            status = "unavailable"
        elif len(healthy) < len(gpus) or any(m["over_threshold"] or m["leak_suspected"] for m in memory):
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "driver_version": self.inventory.driver_version,
            "cuda_driver_version": self.inventory.cuda_driver_version,
            "cuda_runtime_version": self.inventory.cuda_runtime_version,
            "devices": [{"key": d.key, "kind": d.kind, "name": d.name, "healthy": d.healthy, "reasons": d.reasons,
                         "torch_device": d.torch_device} for d in devices],
            "memory": memory,
            "monitor": {"running": self.running, "samples": self.monitor.passes, "reasons": self.monitor.reasons},
            "reasons": self.inventory.reasons + self.watcher.reasons,
        }

    def status(self) -> dict[str, Any]:
        """``greekfire gpu status --json``: inventory, health, memory, telemetry, cloud and reasons.

        Takes one monitoring pass first if none ran yet, so memory, health (ECC counters) and the
        per-GPU telemetry (dcgm-exporter units, keyed by UUID) are current.
        """
        if not self.monitor.passes:
            self.sample()
        out = self.inventory.as_dict()
        out["telemetry"] = {s.uuid: dict(s.values) for s in self.monitor.last}
        out["monitor_reasons"] = list(self.monitor.reasons)
        out["devices"] = [d.as_dict() for d in self.devices()]
        h = self.health()
        out["status"] = h["status"]
        out["memory"] = h["memory"]
        out["placement"] = self.place().as_dict()
        return out
