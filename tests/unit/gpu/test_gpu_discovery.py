from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from gpu_fake_nvml import FakeNvml, gpus

from greekfire.core.settings import GpuSettings, env_get
from greekfire.gpu.cloud import CloudInfo
from greekfire.gpu.discovery import amd_devices, cuda_runtime_version, discover, map_cuda_visible

NO_CLOUD = CloudInfo()


@pytest.fixture(autouse=True)
def clean_cuda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


def test_no_driver_gives_cpu_device_and_reason() -> None:
    fake = FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    inv = discover(GpuSettings(), nvml=fake, cloud=NO_CLOUD)
    assert [d.kind for d in inv.devices] == ["cpu"]
    assert inv.nvml == "unavailable"
    assert any("NVML unavailable" in r and "Not Found" in r for r in inv.reasons)
    cpu = inv.cpu
    assert cpu.memory_total_mb > 0 and cpu.cpu_count >= 1 and cpu.torch_device == "cpu"


def test_driver_error_mid_discovery_is_a_reason_not_an_exception() -> None:
    fake = FakeNvml()

    def broken() -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    fake.nvmlDeviceGetCount = broken  # type: ignore[method-assign]
    inv = discover(GpuSettings(), nvml=fake, cloud=NO_CLOUD)
    assert [d.kind for d in inv.devices] == ["cpu"]
    assert any("NVML error during discovery" in r for r in inv.reasons)


def test_fake_gpus_have_every_field() -> None:
    fake = FakeNvml(gpus(2))
    fake.devices[1].mig = 1
    inv = discover(GpuSettings(), nvml=fake, cloud=NO_CLOUD)
    assert inv.nvml == "ok" and inv.driver_version == "550.54.15" and inv.cuda_driver_version == "12.4"
    assert env_get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1"
    g0, g1 = inv.gpus
    assert g0.name == "NVIDIA H100 80GB HBM3" and g0.uuid == fake.devices[0].uuid
    assert g0.pci_bus_id == "00000000:3B:00.0"  # bytes from the bindings decoded
    assert g0.memory_total_mb == 81559 and g0.memory_used_mb == 1024 and g0.memory_free_mb == 81559 - 1024
    assert g0.compute_capability == "9.0" and g0.mig_mode is False and g1.mig_mode is True
    assert g0.power_limit_w == 700.0 and g0.driver_version == "550.54.15" and g0.cuda_driver_version == "12.4"
    assert (g0.cuda_index, g1.cuda_index) == (0, 1) and g1.torch_device == "cuda:1"
    assert inv.devices[-1].kind == "cpu"
    assert fake.init_calls == fake.shutdown_calls == 1


def test_unsupported_queries_leave_fields_empty() -> None:
    fake = FakeNvml(gpus(1))
    fake.devices[0].unsupported = {"mig", "power", "memory"}
    g = discover(GpuSettings(), nvml=fake, cloud=NO_CLOUD).gpus[0]
    assert g.mig_mode is None and g.power_limit_w is None and g.memory_total_mb == 0.0
    assert "memory info not available" in g.reasons


def test_cuda_visible_devices_maps_by_uuid_and_bus_order(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(gpus(3))
    # NVML index order differs from PCI order: the CUDA ordinal must follow the bus, bound by UUID
    fake.devices.reverse()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    inv = discover(GpuSettings(), nvml=fake, cloud=NO_CLOUD)
    by_bus = {d.pci_bus_id[-7:-5]: d for d in inv.gpus}
    assert by_bus["3D"].cuda_index == 0 and by_bus["3B"].cuda_index == 1 and by_bus["3C"].cuda_index is None
    assert by_bus["3D"].index == 0  # NVML index 0 is the third bus: an index mapping would have been wrong

    uuid1 = fake.devices[1].uuid
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuid1[:12])  # a unique UUID prefix is enough
    inv = discover(GpuSettings(), nvml=fake, cloud=NO_CLOUD)
    assert [d.uuid for d in inv.gpus if d.cuda_index == 0] == [uuid1]
    assert sum(d.cuda_index is not None for d in inv.gpus) == 1


def test_cuda_visible_devices_stops_at_invalid_entry() -> None:
    devs = discover(GpuSettings(), nvml=FakeNvml(gpus(2)), cloud=NO_CLOUD).gpus
    notes = map_cuda_visible(devs, "1,7,0", "PCI_BUS_ID")
    assert [d.cuda_index for d in devs] == [None, 0]
    assert any("'7'" in n for n in notes)
    notes = map_cuda_visible(devs, "", "PCI_BUS_ID")
    assert [d.cuda_index for d in devs] == [None, None]


def test_disabled_by_settings() -> None:
    fake = FakeNvml(gpus(1))
    inv = discover(GpuSettings(enabled=False), nvml=fake, cloud=NO_CLOUD)
    assert [d.kind for d in inv.devices] == ["cpu"] and fake.init_calls == 0
    assert any("gpu.enabled=false" in r for r in inv.reasons)


def test_cuda_runtime_version_without_importing_torch() -> None:
    import sys

    v = cuda_runtime_version()
    if "torch" in sys.modules:
        assert v == sys.modules["torch"].version.cuda
    else:
        assert v is None or v[0].isdigit()


class FakeAmdSmi:
    """Fake of the amdsmi driver bindings (the AMD boundary)."""

    def __init__(self) -> None:
        self.shut = False

    def amdsmi_init(self) -> None:
        return None

    def amdsmi_shut_down(self) -> None:
        self.shut = True

    def amdsmi_get_processor_handles(self) -> list[Any]:
        return [SimpleNamespace(i=0)]

    def amdsmi_get_gpu_asic_info(self, h: Any) -> dict[str, Any]:
        return {"market_name": "AMD Instinct MI300X"}

    def amdsmi_get_gpu_vram_usage(self, h: Any) -> dict[str, Any]:
        return {"vram_total": 196592, "vram_used": 592}

    def amdsmi_get_gpu_device_uuid(self, h: Any) -> str:
        return "6cff74a1-0000-1000-80b7-9fa4e6c1a2b3"

    def amdsmi_get_gpu_device_bdf(self, h: Any) -> str:
        return "0000:0c:00.0"


def test_amd_devices_through_amdsmi() -> None:
    fake = FakeAmdSmi()
    devs, state, reasons = amd_devices(fake)
    assert state == "ok" and not reasons and fake.shut
    (d,) = devs
    assert d.kind == "amd" and d.name == "AMD Instinct MI300X" and d.memory_free_mb == 196000
    inv = discover(GpuSettings(), nvml=FakeNvml([]), amdsmi=fake, cloud=NO_CLOUD)
    assert [x.kind for x in inv.devices] == ["amd", "cpu"] and inv.amd == "ok"
