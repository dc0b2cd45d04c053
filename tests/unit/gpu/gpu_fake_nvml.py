"""A fake NVML module object for tests: the driver boundary is the only thing we fake.

It exposes the subset of the ``pynvml`` API greekfire.gpu calls, with the real bindings' constants and
error class, so code under test cannot tell it from the real module. Handles are the FakeGpu objects.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml

MIB = 1024 * 1024


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    bus_id: str = "00000000:3B:00.0"
    total_mb: int = 81559
    used_mb: int = 1024
    util_gpu: int = 10
    util_mem: int = 5
    temp_c: int = 40
    power_mw: int = 120_000
    power_limit_mw: int = 700_000
    sm_clock: int = 1980
    mem_clock: int = 2619
    sbe: int = 0
    dbe: int = 0
    cc: tuple[int, int] = (9, 0)
    mig: int = 0
    cpu_mask: list[int] = field(default_factory=lambda: [0b01])
    unsupported: set[str] = field(default_factory=set)


def gpus(n: int = 2) -> list[FakeGpu]:
    """``n`` distinct fake H100s on consecutive PCI buses."""
    return [
        FakeGpu(uuid=f"GPU-{i:08d}-aaaa-bbbb-cccc-{i:012d}", bus_id=f"00000000:{0x3B + i:02X}:00.0",
                used_mb=1024 * (i + 1), util_gpu=10 * (i + 1))
        for i in range(n)
    ]


class FakeNvml:
    """Module-like fake of ``pynvml``. ``inject_xid`` / ``inject_dbe`` queue events for the event set."""

    NVMLError = pynvml.NVMLError

    def __init__(self, devices: list[FakeGpu] | None = None, *, driver: str = "550.54.15", cuda: int = 12040,
                 init_error: int | None = None, topology: dict[tuple[int, int], int] | None = None) -> None:
        for name in dir(pynvml):
            if name.startswith(("NVML_", "nvmlEventType")):
                setattr(self, name, getattr(pynvml, name))
        self.devices = devices if devices is not None else gpus(2)
        self.driver = driver
        self.cuda = cuda
        self.init_error = init_error
        self.topology = topology or {}
        self.events: queue.Queue[Any] = queue.Queue()
        self.init_calls = 0
        self.shutdown_calls = 0

    # ---- library
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.init_calls += 1

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.cuda

    nvmlSystemGetCudaDriverVersion = nvmlSystemGetCudaDriverVersion_v2

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        if not 0 <= i < len(self.devices):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.devices[i]

    def _q(self, h: FakeGpu, what: str) -> None:
        if what in h.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    # ---- device queries
    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return h.uuid

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(busId=h.bus_id.encode())  # older bindings give bytes

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        self._q(h, "memory")
        return SimpleNamespace(total=h.total_mb * MIB, used=h.used_mb * MIB, free=(h.total_mb - h.used_mb) * MIB)

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        return h.cc

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        self._q(h, "mig")
        return [h.mig, h.mig]

    def nvmlDeviceGetPowerManagementLimit(self, h: FakeGpu) -> int:
        self._q(h, "power")
        return h.power_limit_mw

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        self._q(h, "utilization")
        return SimpleNamespace(gpu=h.util_gpu, memory=h.util_mem)

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        self._q(h, "temperature")
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return h.temp_c

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        self._q(h, "power")
        return h.power_mw

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        self._q(h, "clocks")
        return {pynvml.NVML_CLOCK_SM: h.sm_clock, pynvml.NVML_CLOCK_MEM: h.mem_clock}[clock]

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, error_type: int, counter_type: int) -> int:
        self._q(h, "ecc")
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        return h.dbe if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED else h.sbe

    def nvmlDeviceGetCpuAffinity(self, h: FakeGpu, words: int) -> list[int]:
        return (h.cpu_mask + [0] * words)[:words]

    def nvmlDeviceGetTopologyCommonAncestor(self, a: FakeGpu, b: FakeGpu) -> int:
        i, j = self.devices.index(a), self.devices.index(b)
        return self.topology.get((min(i, j), max(i, j)), pynvml.NVML_TOPOLOGY_SYSTEM)

    def nvmlDeviceGetP2PStatus(self, a: FakeGpu, b: FakeGpu, caps: int) -> int:
        i, j = self.devices.index(a), self.devices.index(b)
        level = self.topology.get((min(i, j), max(i, j)), pynvml.NVML_TOPOLOGY_SYSTEM)
        return pynvml.NVML_P2P_STATUS_OK if level <= pynvml.NVML_TOPOLOGY_HOSTBRIDGE else 4  # 4: not supported

    # ---- events
    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlDeviceGetSupportedEventTypes(self, h: FakeGpu) -> int:
        return pynvml.nvmlEventTypeAll

    def nvmlDeviceRegisterEvents(self, h: FakeGpu, types: int, event_set: object) -> None:
        return None

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> Any:
        try:
            return self.events.get(timeout=timeout_ms / 1000.0)
        except queue.Empty:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT) from None

    def nvmlEventSetFree(self, event_set: object) -> None:
        return None

    def inject_xid(self, index: int, xid: int) -> None:
        self.events.put(SimpleNamespace(device=self.devices[index], eventType=pynvml.nvmlEventTypeXidCriticalError,
                                        eventData=xid, gpuInstanceId=0, computeInstanceId=0))

    def inject_dbe(self, index: int) -> None:
        self.events.put(SimpleNamespace(device=self.devices[index], eventType=pynvml.nvmlEventTypeDoubleBitEccError,
                                        eventData=0, gpuInstanceId=0, computeInstanceId=0))
