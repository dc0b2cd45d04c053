from __future__ import annotations

import os

import pytest
from gpu_fake_nvml import FakeNvml, gpus

from greekfire.core.errors import ConfigError
from greekfire.gpu.discovery import DeviceInfo, cpu_device
from greekfire.gpu.health import HealthTracker
from greekfire.gpu.placement import Placer
from greekfire.gpu.topology import cpu_affinity, mask_to_cpus, pin_process_to, topology_matrix


def gpu(i: int, free: float, total: float = 80_000) -> DeviceInfo:
    return DeviceInfo(kind="nvidia", index=i, name="H100", uuid=f"GPU-{i}", memory_total_mb=total,
                      memory_free_mb=free, memory_used_mb=total - free, cuda_index=i)


DEVICES = [gpu(0, 50_000), gpu(1, 20_000), gpu(2, 70_000), cpu_device()]


def test_least_loaded_uses_utilization_then_free_memory() -> None:
    p = Placer("least_loaded", min_free_mb=512)
    assert p.choose(DEVICES).device.uuid == "GPU-2"
    assert p.choose(DEVICES, utilization={"GPU-2": 90, "GPU-0": 50, "GPU-1": 10}).device.uuid == "GPU-1"


def test_pack_fills_the_fullest_that_fits() -> None:
    p = Placer("pack", min_free_mb=1000)
    assert p.choose(DEVICES, need_mb=5_000).device.uuid == "GPU-1"
    d = p.choose(DEVICES, need_mb=30_000)
    assert d.device.uuid == "GPU-0" and "memory headroom" in d.skipped["GPU-1"]


def test_round_robin_cycles_eligible() -> None:
    p = Placer("round_robin", min_free_mb=0)
    assert [p.choose(DEVICES).device.index for _ in range(4)] == [0, 1, 2, 0]


def test_headroom_and_health_fall_back_to_cpu() -> None:
    health = HealthTracker()
    health.record_xid("GPU-2", 79)
    p = Placer("least_loaded", min_free_mb=512, health=health)
    d = p.choose(DEVICES, need_mb=60_000)
    assert d.device.kind == "cpu" and d.device.torch_device == "cpu"
    assert "unhealthy" in d.skipped["GPU-2"] and "headroom" in d.skipped["GPU-0"]
    assert p.choose([cpu_device()]).reason.startswith("no GPU present")


def test_bad_policy_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="gpu.placement"):
        Placer("random")


def test_topology_matrix_labels_and_p2p() -> None:
    import pynvml

    fake = FakeNvml(gpus(3), topology={(0, 1): pynvml.NVML_TOPOLOGY_SINGLE, (0, 2): pynvml.NVML_TOPOLOGY_SYSTEM,
                                        (1, 2): pynvml.NVML_TOPOLOGY_NODE})
    m = topology_matrix(fake)
    assert m.links[0] == ["X", "PIX", "SYS"] and m.links[2][1] == "NODE"
    assert m.p2p[0][1] and m.p2p[1][0] and not m.p2p[0][2]
    assert topology_matrix(FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)).links == []


def test_cpu_affinity_intersects_and_pins() -> None:
    assert mask_to_cpus([0b101, 0b1]) == {0, 2, 64}
    allowed = os.sched_getaffinity(0)
    first = min(allowed)
    fake = FakeNvml(gpus(1))
    fake.devices[0].cpu_mask = [1 << first | 1 << 200 % 64]  # one CPU we may use, maybe one we may not
    dev = gpu(0, 1000)
    assert cpu_affinity(dev, fake) == ({first, 200 % 64} & allowed)
    assert cpu_affinity(cpu_device()) == allowed
    try:
        applied = pin_process_to(dev, fake)
        assert os.sched_getaffinity(0) == applied and first in applied
    finally:
        os.sched_setaffinity(0, allowed)
    fake.devices[0].cpu_mask = [0]  # mask outside our cgroup: keep every allowed CPU
    assert cpu_affinity(dev, fake) == allowed
