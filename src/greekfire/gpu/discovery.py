"""Device discovery: NVIDIA through NVML, AMD through amdsmi when importable, and always the CPU.

:func:`discover` never raises for a missing driver, library or an NVML error: it returns the CPU device
and says why in ``Inventory.reasons``. It does not import torch (that costs seconds); the CUDA runtime
version is read from torch's version file, and torch is asked about CUDA only if it is already imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from greekfire.core.settings import GpuSettings, env_get, env_set
from greekfire.gpu.cloud import CloudInfo, detect_cloud
from greekfire.gpu.nvml import NvmlSession, error_reason, text, try_call

MIB = 1024 * 1024


@dataclass(slots=True)
class DeviceInfo:
    """One device. Memory in MiB, power in watts; ``index`` is the NVML (or amdsmi) index, -1 for the CPU.

    ``cuda_index`` is this device's ordinal as this process's CUDA sees it (after ``CUDA_VISIBLE_DEVICES``),
    or None when it is hidden from CUDA; ``torch_device`` is what to pass to ``torch.device``.
    """

    kind: str  # "nvidia", "amd" or "cpu"
    index: int
    name: str
    uuid: str = ""
    pci_bus_id: str = ""
    memory_total_mb: float = 0.0
    memory_free_mb: float = 0.0
    memory_used_mb: float = 0.0
    driver_version: str = ""
    cuda_driver_version: str = ""
    compute_capability: str = ""
    mig_mode: bool | None = None
    power_limit_w: float | None = None
    cuda_index: int | None = None
    cpu_count: int = 0
    healthy: bool = True
    reasons: list[str] = field(default_factory=list)

    @property
    def is_gpu(self) -> bool:
        """True for NVIDIA and AMD devices."""
        return self.kind != "cpu"

    @property
    def torch_device(self) -> str:
        """``cuda:<n>`` for a CUDA-visible GPU (ROCm torch also calls it cuda), else ``cpu``."""
        return f"cuda:{self.cuda_index}" if self.is_gpu and self.cuda_index is not None else "cpu"

    @property
    def key(self) -> str:
        """A stable identity: the UUID for GPUs, ``cpu`` for the CPU."""
        return self.uuid or ("cpu" if self.kind == "cpu" else f"{self.kind}{self.index}")

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON (with ``torch_device``)."""
        out = asdict(self)
        out["torch_device"] = self.torch_device
        return out


@dataclass(slots=True)
class Inventory:
    """What :func:`discover` found: devices (GPUs first, the CPU last), versions, cloud and reasons."""

    devices: list[DeviceInfo]
    host: str = ""
    driver_version: str = ""
    cuda_driver_version: str = ""
    cuda_runtime_version: str | None = None
    nvml: str = "unavailable"  # "ok" or "unavailable"
    amd: str = "unavailable"
    cuda_visible_devices: str | None = None
    cloud: CloudInfo = field(default_factory=CloudInfo)
    reasons: list[str] = field(default_factory=list)

    @property
    def gpus(self) -> list[DeviceInfo]:
        """The GPU devices only."""
        return [d for d in self.devices if d.is_gpu]

    @property
    def cpu(self) -> DeviceInfo:
        """The CPU device (always present)."""
        return next(d for d in self.devices if d.kind == "cpu")

    def device(self, key: str) -> DeviceInfo | None:
        """A device by UUID, ``cpu``, NVML index as text, or ``cuda:<n>``."""
        for d in self.devices:
            if key in (d.key, d.uuid, d.torch_device if d.is_gpu else "", str(d.index) if d.is_gpu else ""):
                return d
        return None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``greekfire gpu status --json``."""
        return {
            "host": self.host,
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "cuda_runtime_version": self.cuda_runtime_version,
            "nvml": self.nvml,
            "amd": self.amd,
            "cuda_visible_devices": self.cuda_visible_devices,
            "devices": [d.as_dict() for d in self.devices],
            "cloud": self.cloud.as_dict(),
            "reasons": list(self.reasons),
        }


def cuda_version_text(version: int | None) -> str:
    """NVML's integer CUDA version (12040) as text ("12.4")."""
    if not version:
        return ""
    return f"{version // 1000}.{(version % 1000) // 10}"


def cuda_runtime_version() -> str | None:
    """The CUDA runtime torch was built with (None for a CPU build or no torch), without importing torch."""
    mod = sys.modules.get("torch")
    if mod is not None:
        return getattr(getattr(mod, "version", None), "cuda", None)
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            src = (Path(folder) / "version.py").read_text()
        except OSError:
            continue
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", src, re.MULTILINE)
        return m.group(1) if m else None
    return None


def cpu_device() -> DeviceInfo:
    """The CPU as a device: model name, usable cores (this process's affinity), memory in MiB."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    total = free = 0.0
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page / MIB
        free = os.sysconf("SC_AVPHYS_PAGES") * page / MIB
    except (ValueError, OSError, AttributeError):
        pass
    try:  # MemAvailable counts reclaimable page cache, which MemFree (SC_AVPHYS_PAGES) does not
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) / 1024.0
                break
    except (OSError, ValueError, IndexError):
        pass
    return DeviceInfo(
        kind="cpu", index=-1, name=name or "cpu", memory_total_mb=round(total, 1), memory_free_mb=round(free, 1),
        memory_used_mb=round(total - free, 1), cpu_count=cpus,
    )


def normalise_bus_id(bus_id: str) -> str:
    """NVML writes 00000000:3B:00.0, CUDA 0000:3b:00.0: compare on domain-less, upper-case form."""
    bus = bus_id.strip().upper()
    parts = bus.split(":")
    if len(parts) == 3:
        parts[0] = parts[0][-4:]
    return ":".join(parts[-2:])


def map_cuda_visible(devices: list[DeviceInfo], visible: str | None, device_order: str | None) -> list[str]:
    """Set ``cuda_index`` on each NVIDIA device from ``CUDA_VISIBLE_DEVICES``; returns notes.

    Entries that are UUIDs (``GPU-...``, a unique prefix is enough) match by UUID; integer entries are
    positions in CUDA's enumeration, which we take in PCI bus order (CUDA's order with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``) and then bind by UUID, never by NVML index. Parsing stops at the
    first invalid entry, as CUDA does.
    """
    notes: list[str] = []
    nvidia = [d for d in devices if d.kind == "nvidia"]
    by_bus = sorted(nvidia, key=lambda d: normalise_bus_id(d.pci_bus_id))
    if visible is None:
        for i, d in enumerate(by_bus):
            d.cuda_index = i
        return notes
    chosen: list[DeviceInfo] = []
    for raw in visible.split(","):
        entry = raw.strip()
        if not entry:
            break
        match: DeviceInfo | None = None
        if entry.lstrip("-").isdigit():
            k = int(entry)
            if k < 0 or k >= len(by_bus):
                notes.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} is not a device; later entries are ignored")
                break
            match = by_bus[k]
        else:
            hits = [d for d in nvidia if d.uuid.upper().startswith(entry.upper()) or
                    d.uuid.upper().startswith(f"GPU-{entry.upper()}")]
            if entry.upper().startswith("MIG-"):
                notes.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} is a MIG instance; shown on its parent GPU")
            if len(hits) != 1:
                notes.append(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches {len(hits)} GPUs; later entries are ignored")
                break
            match = hits[0]
        if match in chosen:
            notes.append(f"CUDA_VISIBLE_DEVICES repeats {entry!r}; later entries are ignored")
            break
        chosen.append(match)
    for d in nvidia:
        d.cuda_index = None
    for i, d in enumerate(chosen):
        d.cuda_index = i
    if (device_order or "FASTEST_FIRST").upper() != "PCI_BUS_ID" and any(e.strip().isdigit() for e in visible.split(",")):
        names = {d.name for d in nvidia}
        if len(names) > 1:
            notes.append("CUDA_DEVICE_ORDER is not PCI_BUS_ID and GPUs differ: integer CUDA_VISIBLE_DEVICES "
                         "entries may not follow PCI order; set CUDA_DEVICE_ORDER=PCI_BUS_ID")
    return notes


def _refine_with_torch(devices: list[DeviceInfo]) -> None:
    """When this process already initialised CUDA through torch, bind ordinals by the UUIDs CUDA reports."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():  # initialising CUDA here would break later forks
        return
    by_uuid = {d.uuid.upper().removeprefix("GPU-"): d for d in devices if d.kind == "nvidia"}
    for d in by_uuid.values():
        d.cuda_index = None
    for i in range(torch.cuda.device_count()):
        uuid = str(getattr(torch.cuda.get_device_properties(i), "uuid", "")).upper().removeprefix("GPU-")
        if uuid in by_uuid:
            by_uuid[uuid].cuda_index = i


def nvidia_devices(nvml: Any) -> tuple[list[DeviceInfo], str, str, list[str]]:
    """NVIDIA devices through an initialised NVML: (devices, driver version, CUDA driver version, reasons)."""
    reasons: list[str] = []
    driver = text(try_call(nvml, nvml.nvmlSystemGetDriverVersion, default=""))
    cuda_fn = getattr(nvml, "nvmlSystemGetCudaDriverVersion_v2", None) or nvml.nvmlSystemGetCudaDriverVersion
    cuda_driver = cuda_version_text(try_call(nvml, cuda_fn, default=0))
    count = nvml.nvmlDeviceGetCount()
    devices: list[DeviceInfo] = []
    for i in range(count):
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(i)
        except Exception as exc:  # one broken device must not hide the others
            reasons.append(f"GPU {i}: no handle ({error_reason(exc)})")
            continue
        mem = try_call(nvml, nvml.nvmlDeviceGetMemoryInfo, h)
        cc = try_call(nvml, nvml.nvmlDeviceGetCudaComputeCapability, h)
        mig = try_call(nvml, nvml.nvmlDeviceGetMigMode, h)
        power_mw = try_call(nvml, nvml.nvmlDeviceGetPowerManagementLimit, h)
        pci = try_call(nvml, nvml.nvmlDeviceGetPciInfo, h)
        dev = DeviceInfo(
            kind="nvidia",
            index=i,
            name=text(try_call(nvml, nvml.nvmlDeviceGetName, h, default="NVIDIA GPU")),
            uuid=text(try_call(nvml, nvml.nvmlDeviceGetUUID, h, default="")),
            pci_bus_id=text(getattr(pci, "busId", "")) if pci is not None else "",
            memory_total_mb=round(mem.total / MIB, 1) if mem is not None else 0.0,
            memory_free_mb=round(mem.free / MIB, 1) if mem is not None else 0.0,
            memory_used_mb=round(mem.used / MIB, 1) if mem is not None else 0.0,
            driver_version=driver,
            cuda_driver_version=cuda_driver,
            compute_capability=f"{cc[0]}.{cc[1]}" if cc else "",
            mig_mode=bool(mig[0]) if mig else None,
            power_limit_w=power_mw / 1000.0 if power_mw else None,
        )
        if mem is None:
            dev.reasons.append("memory info not available")
        devices.append(dev)
    return devices, driver, cuda_driver, reasons


def amd_devices(amdsmi: Any | None = None) -> tuple[list[DeviceInfo], str, list[str]]:
    """AMD devices through ``amdsmi`` (optional): (devices, "ok"/"unavailable", reasons)."""
    if amdsmi is None:
        if importlib.util.find_spec("amdsmi") is None:
            return [], "unavailable", []
        try:
            import amdsmi as amdsmi_mod  # optional dependency, ROCm machines only
        except Exception as exc:  # a half-installed ROCm raises on import
            return [], "unavailable", [f"amdsmi import failed ({error_reason(exc)})"]
        amdsmi = amdsmi_mod
    devices: list[DeviceInfo] = []
    try:
        amdsmi.amdsmi_init()
    except Exception as exc:
        return [], "unavailable", [f"amdsmi unavailable ({error_reason(exc)})"]
    try:
        for i, h in enumerate(amdsmi.amdsmi_get_processor_handles()):
            def ask(fn: str, *args: Any, _h: Any = h) -> Any:
                try:
                    return getattr(amdsmi, fn)(_h, *args)
                except Exception:  # not every query is supported on every board / driver
                    return None

            asic = ask("amdsmi_get_gpu_asic_info") or {}
            vram = ask("amdsmi_get_gpu_vram_usage") or {}
            total = float(vram.get("vram_total", 0) or 0)  # MiB
            used = float(vram.get("vram_used", 0) or 0)
            devices.append(DeviceInfo(
                kind="amd", index=i, name=str(asic.get("market_name") or "AMD GPU"),
                uuid=str(ask("amdsmi_get_gpu_device_uuid") or ""), pci_bus_id=str(ask("amdsmi_get_gpu_device_bdf") or ""),
                memory_total_mb=total, memory_used_mb=used, memory_free_mb=max(total - used, 0.0),
                cuda_index=i,
            ))
    except Exception as exc:
        return devices, "unavailable", [f"amdsmi error ({error_reason(exc)})"]
    finally:
        with contextlib.suppress(Exception):  # shutdown failures must not mask the devices found
            amdsmi.amdsmi_shut_down()
    return devices, "ok", []


def discover(
    settings: GpuSettings | None = None,
    *,
    nvml: Any | None = None,
    amdsmi: Any | None = None,
    cloud: CloudInfo | None = None,
) -> Inventory:
    """Find every device; never raises for a missing driver or library.

    ``nvml`` / ``amdsmi`` replace the driver bindings (tests pass fakes here); ``cloud`` skips cloud
    detection. Sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` first so a later ``torch.cuda.is_available()``
    asks NVML instead of initialising CUDA, and forked workers stay safe.
    """
    s = settings or GpuSettings.model_validate({})
    env_set("PYTORCH_NVML_BASED_CUDA_CHECK", "1", overwrite=False)
    inv = Inventory(devices=[], host=socket.gethostname(), cuda_runtime_version=cuda_runtime_version())
    inv.cuda_visible_devices = env_get("CUDA_VISIBLE_DEVICES")
    if s.enabled:
        with NvmlSession(nvml) as session:
            if session.ok:
                try:
                    gpus, inv.driver_version, inv.cuda_driver_version, reasons = nvidia_devices(session.nvml)
                    inv.devices.extend(gpus)
                    inv.reasons.extend(reasons)
                    inv.nvml = "ok"
                except Exception as exc:  # an NVML error mid-way: report it, keep the CPU
                    inv.reasons.append(f"NVML error during discovery ({error_reason(exc)})")
            else:
                inv.reasons.append(session.reason)
        inv.reasons.extend(map_cuda_visible(inv.devices, inv.cuda_visible_devices, env_get("CUDA_DEVICE_ORDER")))
        _refine_with_torch(inv.devices)
        amd, inv.amd, amd_reasons = amd_devices(amdsmi)
        inv.devices.extend(amd)
        inv.reasons.extend(amd_reasons)
        if not inv.gpus:
            inv.reasons.append("no GPU found: work runs on the CPU device")
    else:
        inv.reasons.append("GPU support disabled by settings (gpu.enabled=false)")
    inv.devices.append(cpu_device())
    inv.cloud = cloud or detect_cloud(
        s.cloud, dmi_root=s.dmi_root, metadata=s.cloud_metadata, metadata_url=s.metadata_url,
        timeout_s=s.metadata_timeout_s,
    )
    return inv
