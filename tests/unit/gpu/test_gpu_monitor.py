from __future__ import annotations

import logging

import pytest
from gpu_fake_nvml import FakeNvml, gpus

from conftest import poll_until
from greekfire.core.metrics import render, sample_value
from greekfire.core.settings import GpuAlertSettings, GpuSettings
from greekfire.gpu.health import HealthTracker
from greekfire.gpu.monitor import FIELDS, LABELS, GpuMonitor

DCGM_NAMES = [
    "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
]


def labels_of(fake: FakeNvml, i: int, host: str = "node-a") -> dict[str, str]:
    d = fake.devices[i]
    return {"gpu": str(i), "UUID": d.uuid, "pci_bus_id": d.bus_id, "device": f"nvidia{i}", "modelName": d.name,
            "Hostname": host}


def test_every_dcgm_name_with_dcgm_labels() -> None:
    fake = FakeNvml(gpus(2))
    fake.devices[1].uuid = "GPU-dcgm-names-1"
    mon = GpuMonitor(GpuSettings(), nvml=fake, hostname="node-a")
    samples = mon.sample()
    assert len(samples) == 2
    assert sorted(n for n, _, _ in FIELDS.values()) == sorted(DCGM_NAMES)
    text = render()[0].decode()
    for name in DCGM_NAMES:
        assert f"# TYPE {name} gauge" in text
        for i in range(2):
            assert sample_value(name, labels_of(fake, i)) is not None, (name, i)
    lab = labels_of(fake, 1)
    assert set(lab) == set(LABELS)
    assert sample_value("DCGM_FI_DEV_GPU_UTIL", lab) == 20.0
    assert sample_value("DCGM_FI_DEV_FB_USED", lab) == 2048.0  # MiB, as dcgm-exporter
    assert sample_value("DCGM_FI_DEV_FB_FREE", lab) == 81559.0 - 2048.0
    assert sample_value("DCGM_FI_DEV_POWER_USAGE", lab) == 120.0  # W
    assert sample_value("DCGM_FI_DEV_SM_CLOCK", lab) == 1980.0
    assert sample_value("DCGM_FI_DEV_GPU_TEMP", lab) == 40.0
    assert sample_value("greekfire_gpu_monitor_samples_total") >= 1
    mon.stop()


def test_unsupported_values_are_zero_not_missing() -> None:
    fake = FakeNvml(gpus(1))
    fake.devices[0].uuid = "GPU-unsupported-0"
    fake.devices[0].unsupported = {"temperature", "power", "clocks", "ecc", "utilization"}
    mon = GpuMonitor(GpuSettings(), nvml=fake, hostname="node-a")
    mon.sample()
    lab = labels_of(fake, 0)
    for name in ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_GPU_UTIL",
                 "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"):
        assert sample_value(name, lab) == 0.0, name
    assert sample_value("DCGM_FI_DEV_FB_USED", lab) == 1024.0


def test_greekfire_naming_switch() -> None:
    fake = FakeNvml(gpus(1))
    fake.devices[0].uuid = "GPU-naming-switch"
    mon = GpuMonitor(GpuSettings(metric_naming="greekfire"), nvml=fake, hostname="node-a")
    mon.sample()
    lab = labels_of(fake, 0)
    for _, gf_name, _ in FIELDS.values():
        assert gf_name.startswith("greekfire_gpu_")
        assert sample_value(gf_name, lab) is not None, gf_name
    assert sample_value("DCGM_FI_DEV_GPU_UTIL", lab) is None  # no clash with a node's dcgm-exporter
    # torch framework metrics are published as 0 when torch has not started CUDA (no missing series)
    tl = {"gpu": "0", "UUID": lab["UUID"], "device": "cuda:0"}
    mon2 = GpuMonitor(GpuSettings(metric_naming="greekfire"), nvml=fake, cuda_index={lab["UUID"]: 0})
    mon2.sample()
    for name in ("greekfire_torch_allocated_bytes", "greekfire_torch_reserved_bytes", "greekfire_torch_alloc_retries",
                 "greekfire_torch_fragmentation_ratio"):
        assert sample_value(name, tl) == 0.0, name


def test_alerts_logged_once_per_crossing_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml(gpus(1))
    g = fake.devices[0]
    g.uuid = "GPU-alerts-0"
    s = GpuSettings(alerts=GpuAlertSettings(memory_pct=90, temperature_c=85, power_pct=95))
    mon = GpuMonitor(s, nvml=fake)
    key = {"alert": "temperature", "gpu": "0", "UUID": g.uuid}
    caplog.set_level(logging.WARNING, logger="greekfire.gpu.monitor")
    mon.sample()
    assert sample_value("greekfire_gpu_alerts_total", key) in (None, 0.0)
    g.temp_c = 90
    for _ in range(3):
        assert "temperature" in mon.sample()[0].alerts
    assert sample_value("greekfire_gpu_alerts_total", key) == 1.0
    assert sum("alert temperature" in r.getMessage() for r in caplog.records) == 1
    g.temp_c = 50
    mon.sample()
    assert sample_value("greekfire_gpu_alert_active", key) == 0.0
    g.temp_c = 95
    mon.sample()
    assert sample_value("greekfire_gpu_alerts_total", key) == 2.0  # a new crossing counts again
    g.used_mb = int(g.total_mb * 0.95)
    g.power_mw = 690_000
    alerts = mon.sample()[0].alerts
    assert set(alerts) == {"temperature", "memory", "power"}


def test_leak_flagged_after_n_growing_samples() -> None:
    fake = FakeNvml(gpus(1))
    g = fake.devices[0]
    g.uuid = "GPU-leak-0"
    mon = GpuMonitor(GpuSettings(alerts=GpuAlertSettings(leak_samples=3)), nvml=fake)
    flags = []
    for used in (1000, 1100, 1200, 1300, 1400, 1400, 1500):
        g.used_mb = used
        flags.append(mon.sample()[0].leak_suspected)
    # grows in samples 2,3,4 -> flagged at the 4th; still growing at the 5th; flat at the 6th resets
    assert flags == [False, False, False, True, True, False, False]
    assert sample_value("greekfire_gpu_memory_leaks_total", {"gpu": "0", "UUID": g.uuid}) == 1.0
    assert sample_value("greekfire_gpu_memory_leak_suspected", {"gpu": "0", "UUID": g.uuid}) == 0.0


def test_double_bit_ecc_in_a_sample_marks_unhealthy() -> None:
    fake = FakeNvml(gpus(2))
    fake.devices[0].uuid, fake.devices[1].uuid = "GPU-ecc-0", "GPU-ecc-1"
    tracker = HealthTracker()
    mon = GpuMonitor(GpuSettings(), nvml=fake, tracker=tracker)
    mon.sample()
    assert tracker.is_healthy("GPU-ecc-1")
    fake.devices[1].dbe = 2
    mon.sample()
    assert not tracker.is_healthy("GPU-ecc-1") and tracker.is_healthy("GPU-ecc-0")
    assert "double-bit ECC" in tracker.get("GPU-ecc-1").reasons[0]


def test_sampler_thread_runs_and_stops() -> None:
    fake = FakeNvml(gpus(1))
    mon = GpuMonitor(GpuSettings(sample_interval_s=0.05), nvml=fake)
    mon.start()
    poll_until(lambda: mon.passes >= 3, 5)
    mon.stop()
    assert mon.passes >= 3
    assert fake.init_calls == fake.shutdown_calls == 1


def test_no_nvml_monitor_reports_reason() -> None:
    import pynvml

    mon = GpuMonitor(GpuSettings(), nvml=FakeNvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert mon.sample() == []
    assert "NVML unavailable" in mon.reasons[0]
    assert sample_value("greekfire_gpu_devices", {"kind": "cpu"}) == 1.0
