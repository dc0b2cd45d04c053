"""GPU monitoring: a sampler thread publishing per-device gauges, threshold alerts and leak detection.

Gauge names and labels follow NVIDIA dcgm-exporter (``DCGM_FI_DEV_GPU_UTIL{gpu, UUID, pci_bus_id, device,
modelName, Hostname}``) so existing Grafana dashboards work. On nodes that already run dcgm-exporter set
``gpu.metric_naming: greekfire`` to publish the same values as ``greekfire_gpu_*`` instead of clashing.
A value a board cannot report is published as 0, never left out, so series do not flap.
Units as dcgm-exporter: utilisation %, framebuffer MiB, temperature C, power W, clocks MHz.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from greekfire.core.metrics import counter, gauge
from greekfire.core.settings import GpuSettings
from greekfire.gpu.health import HealthTracker
from greekfire.gpu.nvml import NvmlSession, error_reason, text, try_call

log = logging.getLogger(__name__)

MIB = 1024 * 1024
LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")

# field -> (dcgm-exporter name, greekfire name, help)
FIELDS: dict[str, tuple[str, str, str]] = {
    "gpu_util": ("DCGM_FI_DEV_GPU_UTIL", "greekfire_gpu_utilization_pct", "GPU utilization (in %)."),
    "mem_copy_util": ("DCGM_FI_DEV_MEM_COPY_UTIL", "greekfire_gpu_mem_copy_utilization_pct", "Memory utilization (in %)."),
    "fb_used": ("DCGM_FI_DEV_FB_USED", "greekfire_gpu_fb_used_mib", "Framebuffer memory used (in MiB)."),
    "fb_free": ("DCGM_FI_DEV_FB_FREE", "greekfire_gpu_fb_free_mib", "Framebuffer memory free (in MiB)."),
    "gpu_temp": ("DCGM_FI_DEV_GPU_TEMP", "greekfire_gpu_temperature_celsius", "GPU temperature (in C)."),
    "power_usage": ("DCGM_FI_DEV_POWER_USAGE", "greekfire_gpu_power_usage_watts", "Power draw (in W)."),
    "sm_clock": ("DCGM_FI_DEV_SM_CLOCK", "greekfire_gpu_sm_clock_mhz", "SM clock frequency (in MHz)."),
    "mem_clock": ("DCGM_FI_DEV_MEM_CLOCK", "greekfire_gpu_mem_clock_mhz", "Memory clock frequency (in MHz)."),
    "xid_errors": ("DCGM_FI_DEV_XID_ERRORS", "greekfire_gpu_last_xid", "Value of the last XID error encountered."),
    "ecc_sbe_vol": ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "greekfire_gpu_ecc_sbe_volatile", "Total number of single-bit volatile ECC errors."),
    "ecc_dbe_vol": ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "greekfire_gpu_ecc_dbe_volatile", "Total number of double-bit volatile ECC errors."),
}

_samples_total = counter("greekfire_gpu_monitor_samples", "monitor sampling passes")
_sample_errors = counter("greekfire_gpu_monitor_errors", "monitor passes that met an NVML error")
_devices_gauge = gauge("greekfire_gpu_devices", "devices known to the GPU manager, by kind", ["kind"])
_alerts_total = counter("greekfire_gpu_alerts", "threshold crossings (each logged once)", ["alert", "gpu", "UUID"])
_alert_active = gauge("greekfire_gpu_alert_active", "1 while a threshold is crossed", ["alert", "gpu", "UUID"])
_leaks_total = counter("greekfire_gpu_memory_leaks", "memory-leak suspicions raised", ["gpu", "UUID"])
_leak_gauge = gauge("greekfire_gpu_memory_leak_suspected", "1 while allocated memory keeps growing", ["gpu", "UUID"])
_torch_labels = ("gpu", "UUID", "device")
_torch_allocated = gauge("greekfire_torch_allocated_bytes", "torch CUDA memory allocated to tensors (bytes)", _torch_labels)
_torch_reserved = gauge("greekfire_torch_reserved_bytes", "torch CUDA memory held by the caching allocator (bytes)", _torch_labels)
_torch_retries = gauge("greekfire_torch_alloc_retries", "torch cudaMalloc retries after freeing the cache", _torch_labels)
_torch_fragmentation = gauge(
    "greekfire_torch_fragmentation_ratio", "reserved but unallocated share of torch's reserved memory (0..1)", _torch_labels
)


def device_gauges(naming: str) -> dict[str, Any]:
    """The per-device gauges for ``naming`` (``dcgm`` or ``greekfire``), created on first use."""
    pick = 0 if naming == "dcgm" else 1
    return {k: gauge(names[pick], names[2], LABELS) for k, names in FIELDS.items()}


@dataclass(slots=True)
class DeviceSample:
    """One device's readings in one pass: ``values`` keyed as :data:`FIELDS` (dcgm-exporter units)."""

    index: int
    uuid: str
    pci_bus_id: str
    name: str
    memory_total_mb: float
    power_limit_w: float
    cuda_index: int | None
    values: dict[str, float] = field(default_factory=dict)
    torch: dict[str, float] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)
    leak_suspected: bool = False

    @property
    def memory_used_pct(self) -> float:
        """Framebuffer used, percent of the total (0 when unknown)."""
        return 100.0 * self.values.get("fb_used", 0.0) / self.memory_total_mb if self.memory_total_mb else 0.0


def torch_memory(cuda_index: int | None) -> dict[str, float]:
    """torch's caching-allocator figures for one CUDA ordinal; zeros unless torch already initialised CUDA."""
    zeros = {"allocated": 0.0, "reserved": 0.0, "alloc_retries": 0.0, "fragmentation": 0.0}
    torch = sys.modules.get("torch")
    if cuda_index is None or torch is None or not torch.cuda.is_initialized():
        return zeros  # asking would initialise CUDA in this process
    try:
        allocated = float(torch.cuda.memory_allocated(cuda_index))
        reserved = float(torch.cuda.memory_reserved(cuda_index))
        retries = float(torch.cuda.memory_stats(cuda_index).get("num_alloc_retries", 0))
    except (RuntimeError, AssertionError, ValueError):
        return zeros
    frag = (reserved - allocated) / reserved if reserved > 0 else 0.0
    return {"allocated": allocated, "reserved": reserved, "alloc_retries": retries, "fragmentation": frag}


class GpuMonitor:
    """Samples every NVIDIA device through NVML and publishes gauges; one :meth:`sample` per interval.

    ``tracker`` receives double-bit ECC counts (and lends the last XID to ``DCGM_FI_DEV_XID_ERRORS``).
    Alerts (settings ``gpu.alerts``): memory %, temperature and power % of the limit, each logged once
    when crossed and once when cleared, and counted. A leak is flagged when a device's allocated memory
    (torch's allocated bytes when torch uses the device, else framebuffer used) grew in each of the last
    ``leak_samples`` samples.
    """

    def __init__(
        self,
        settings: GpuSettings | None = None,
        *,
        nvml: Any | None = None,
        tracker: HealthTracker | None = None,
        hostname: str | None = None,
        cuda_index: dict[str, int | None] | None = None,
    ) -> None:
        self.settings = settings or GpuSettings.model_validate({})
        self.tracker = tracker or HealthTracker()
        self.hostname = hostname or socket.gethostname()
        self.cuda_index = cuda_index or {}  # uuid -> CUDA ordinal (from discovery), for torch figures
        self.gauges = device_gauges(self.settings.metric_naming)
        self.last: list[DeviceSample] = []
        self.reasons: list[str] = []
        self.passes = 0
        self._session = NvmlSession(nvml)
        self._opened = False
        self._active: set[tuple[str, str]] = set()
        self._prev_alloc: dict[str, float] = {}
        self._growth: dict[str, int] = {}
        self._leaking: set[str] = set()
        self._prev_dbe: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------------------------- NVML
    def _open(self) -> bool:
        if not self._opened:
            self._session.__enter__()
            self._opened = True
            if not self._session.ok:
                self.reasons = [self._session.reason]
        return self._session.ok

    def close(self) -> None:
        """Shut NVML down (idempotent)."""
        if self._opened:
            self._session.__exit__()
            self._opened = False

    def _read_device(self, nv: Any, i: int) -> DeviceSample:
        h = nv.nvmlDeviceGetHandleByIndex(i)
        uuid = text(nv.nvmlDeviceGetUUID(h))
        pci = try_call(nv, nv.nvmlDeviceGetPciInfo, h)
        mem = try_call(nv, nv.nvmlDeviceGetMemoryInfo, h)
        util = try_call(nv, nv.nvmlDeviceGetUtilizationRates, h)
        limit_mw = try_call(nv, nv.nvmlDeviceGetPowerManagementLimit, h, default=0) or 0
        s = DeviceSample(
            index=i, uuid=uuid, pci_bus_id=text(getattr(pci, "busId", "")) if pci is not None else "",
            name=text(try_call(nv, nv.nvmlDeviceGetName, h, default="")),
            memory_total_mb=mem.total / MIB if mem is not None else 0.0, power_limit_w=limit_mw / 1000.0,
            cuda_index=self.cuda_index.get(uuid),
        )

        def num(value: Any, scale: float = 1.0) -> float:
            return float(value) * scale if value is not None else 0.0

        v = s.values
        v["gpu_util"] = num(getattr(util, "gpu", None))
        v["mem_copy_util"] = num(getattr(util, "memory", None))
        v["fb_used"] = num(getattr(mem, "used", None), 1 / MIB)
        v["fb_free"] = num(getattr(mem, "free", None), 1 / MIB)
        v["gpu_temp"] = num(try_call(nv, nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU))
        v["power_usage"] = num(try_call(nv, nv.nvmlDeviceGetPowerUsage, h), 1 / 1000.0)
        v["sm_clock"] = num(try_call(nv, nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM))
        v["mem_clock"] = num(try_call(nv, nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM))
        v["xid_errors"] = float(self.tracker.get(uuid).last_xid)
        v["ecc_sbe_vol"] = num(try_call(nv, nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                                        nv.NVML_VOLATILE_ECC))
        v["ecc_dbe_vol"] = num(try_call(nv, nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                        nv.NVML_VOLATILE_ECC))
        s.torch = torch_memory(s.cuda_index)
        return s

    # -------------------------------------------------------------------------------------------- checks
    def _alert(self, s: DeviceSample, name: str, crossed: bool, detail: str) -> None:
        key = (s.uuid, name)
        labels = {"alert": name, "gpu": str(s.index), "UUID": s.uuid}
        if crossed:
            s.alerts.append(name)
        if crossed and key not in self._active:
            self._active.add(key)
            _alerts_total.labels(**labels).inc()
            log.warning("GPU %d (%s) alert %s: %s", s.index, s.uuid, name, detail,
                        extra={"gpu_uuid": s.uuid, "alert": name})
        elif not crossed and key in self._active:
            self._active.discard(key)
            log.info("GPU %d (%s) alert %s cleared", s.index, s.uuid, name, extra={"gpu_uuid": s.uuid, "alert": name})
        _alert_active.labels(**labels).set(1.0 if crossed else 0.0)

    def _check(self, s: DeviceSample) -> None:
        a = self.settings.alerts
        v = s.values
        self._alert(s, "memory", s.memory_used_pct >= a.memory_pct,
                    f"memory {s.memory_used_pct:.1f}% >= {a.memory_pct}%")
        self._alert(s, "temperature", v["gpu_temp"] >= a.temperature_c,
                    f"temperature {v['gpu_temp']:.0f} C >= {a.temperature_c} C")
        power_pct = 100.0 * v["power_usage"] / s.power_limit_w if s.power_limit_w else 0.0
        self._alert(s, "power", power_pct >= a.power_pct, f"power {power_pct:.1f}% of the limit >= {a.power_pct}%")
        # leak: allocated memory grew in each of the last N samples
        alloc = s.torch["allocated"] if s.torch.get("allocated") else v["fb_used"] * MIB
        prev = self._prev_alloc.get(s.uuid)
        self._growth[s.uuid] = self._growth.get(s.uuid, 0) + 1 if prev is not None and alloc > prev else 0
        self._prev_alloc[s.uuid] = alloc
        s.leak_suspected = self._growth[s.uuid] >= a.leak_samples
        labels = {"gpu": str(s.index), "UUID": s.uuid}
        if s.leak_suspected and s.uuid not in self._leaking:
            self._leaking.add(s.uuid)
            _leaks_total.labels(**labels).inc()
            log.warning("GPU %d (%s): allocated memory grew in %d consecutive samples (now %.0f MiB): possible leak",
                        s.index, s.uuid, self._growth[s.uuid], alloc / MIB, extra={"gpu_uuid": s.uuid})
        elif not s.leak_suspected:
            self._leaking.discard(s.uuid)
        _leak_gauge.labels(**labels).set(1.0 if s.leak_suspected else 0.0)
        # uncorrectable ECC errors since the last sample make the device unhealthy
        dbe = v["ecc_dbe_vol"]
        if dbe > self._prev_dbe.get(s.uuid, 0.0):
            self.tracker.record_double_bit_ecc(s.uuid, int(dbe - self._prev_dbe.get(s.uuid, 0.0)))
        self._prev_dbe[s.uuid] = dbe

    def _publish(self, s: DeviceSample) -> None:
        labels = {"gpu": str(s.index), "UUID": s.uuid, "pci_bus_id": s.pci_bus_id, "device": f"nvidia{s.index}",
                  "modelName": s.name, "Hostname": self.hostname}
        for key, g in self.gauges.items():
            g.labels(**labels).set(s.values.get(key, 0.0))
        tl = {"gpu": str(s.index), "UUID": s.uuid, "device": f"cuda:{s.cuda_index}" if s.cuda_index is not None else ""}
        _torch_allocated.labels(**tl).set(s.torch["allocated"])
        _torch_reserved.labels(**tl).set(s.torch["reserved"])
        _torch_retries.labels(**tl).set(s.torch["alloc_retries"])
        _torch_fragmentation.labels(**tl).set(s.torch["fragmentation"])

    # ---------------------------------------------------------------------------------------------- loop
    def sample(self) -> list[DeviceSample]:
        """One pass over every device: read, publish, check alerts, leaks and ECC; returns the samples."""
        with self._lock:
            samples: list[DeviceSample] = []
            if self._open():
                nv = self._session.nvml
                try:
                    for i in range(nv.nvmlDeviceGetCount()):
                        try:
                            samples.append(self._read_device(nv, i))
                        except Exception as exc:  # one failing device must not blank the others
                            _sample_errors.inc()
                            self.reasons = [f"GPU {i}: {error_reason(exc)}"]
                except Exception as exc:
                    _sample_errors.inc()
                    self.reasons = [f"NVML error while sampling ({error_reason(exc)})"]
            for s in samples:
                self._check(s)
                self._publish(s)
            _devices_gauge.labels(kind="nvidia").set(len(samples))
            _devices_gauge.labels(kind="cpu").set(1)
            _samples_total.inc()
            self.passes += 1
            self.last = samples
            return samples

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # keep sampling after an unexpected error; it is logged with its traceback
                log.exception("GPU monitor pass failed")
            self._stop.wait(self.settings.sample_interval_s)

    def start(self) -> None:
        """Start the sampler thread (one pass at once, then every ``gpu.sample_interval_s`` seconds)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="greekfire-gpu-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the sampler thread and shut NVML down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._lock:
            self.close()
