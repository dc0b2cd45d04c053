from __future__ import annotations

import pytest
from gpu_fake_nvml import FakeNvml, gpus

from conftest import poll_until
from greekfire.core.metrics import sample_value
from greekfire.core.settings import GpuSettings
from greekfire.gpu.cloud import CloudInfo
from greekfire.gpu.health import APPLICATION_XIDS, HealthTracker, XidWatcher
from greekfire.gpu.manager import GpuManager


@pytest.fixture
def fake() -> FakeNvml:
    f = FakeNvml(gpus(2))
    f.devices[0].uuid, f.devices[1].uuid = "GPU-health-0", "GPU-health-1"
    f.devices[0].util_gpu = f.devices[1].util_gpu = 0
    return f


def test_xid_79_marks_unhealthy_and_placement_skips(fake: FakeNvml) -> None:
    mgr = GpuManager(GpuSettings(placement="least_loaded", min_free_mb=0), nvml=fake, cloud=CloudInfo())
    mgr.start()
    try:
        before = mgr.place(need_mb=100)
        assert before.device.uuid == "GPU-health-0"  # equal load: the one with more free memory
        fake.inject_xid(0, 79)  # GPU has fallen off the bus
        assert poll_until(lambda: not mgr.tracker.is_healthy("GPU-health-0"))
        after = mgr.place(need_mb=100)
        assert after.device.uuid == "GPU-health-1"
        assert "critical XID 79" in after.skipped["GPU-health-0"]
        health = mgr.health()
        assert health["status"] == "degraded"
        assert sample_value("greekfire_gpu_healthy", {"gpu": "0", "UUID": "GPU-health-0"}) == 0.0
        assert sample_value("greekfire_gpu_xid_events_total", {"gpu": "0", "UUID": "GPU-health-0", "xid": "79"}) == 1.0
        # the last XID feeds DCGM_FI_DEV_XID_ERRORS on the next sample
        mgr.sample()
        assert mgr.monitor.last[0].values["xid_errors"] == 79.0
        for policy in ("round_robin", "pack"):
            mgr.placer.policy = policy
            assert {mgr.place().device.uuid for _ in range(4)} == {"GPU-health-1"}
        fake.inject_xid(1, 48)  # double-bit ECC XID on the other: no GPU left
        assert poll_until(lambda: not mgr.tracker.is_healthy("GPU-health-1"))
        assert mgr.place().device.kind == "cpu"
        assert mgr.health()["status"] == "unavailable"
    finally:
        mgr.stop()


def test_xid_13_keeps_device_healthy(fake: FakeNvml) -> None:
    tracker = HealthTracker()
    watcher = XidWatcher(tracker, nvml=fake, wait_ms=50)
    assert watcher.start()
    try:
        fake.inject_xid(0, 13)
        assert poll_until(lambda: tracker.get("GPU-health-0").xid_count == 1)
        assert tracker.is_healthy("GPU-health-0")
        assert tracker.get("GPU-health-0").last_xid == 13
    finally:
        watcher.stop()
    mgr = GpuManager(GpuSettings(min_free_mb=0), nvml=fake, cloud=CloudInfo())
    mgr.tracker = tracker
    mgr.placer.health = tracker
    assert mgr.place().device.uuid == "GPU-health-0"


@pytest.mark.parametrize("xid", sorted(APPLICATION_XIDS))
def test_application_xids_are_not_critical(xid: int) -> None:
    t = HealthTracker()
    assert t.record_xid("GPU-app", xid) is False and t.is_healthy("GPU-app")


def test_double_bit_ecc_event_and_operator_reset(fake: FakeNvml) -> None:
    tracker = HealthTracker()
    watcher = XidWatcher(tracker, nvml=fake)
    fake.inject_dbe(1)
    assert watcher.poll_once(timeout_ms=1000) == 1
    assert watcher.poll_once(timeout_ms=10) == 0  # timeout: nothing recorded
    watcher.close()
    assert not tracker.is_healthy("GPU-health-1") and tracker.get("GPU-health-1").dbe_count == 1
    tracker.mark_healthy("GPU-health-1")
    assert tracker.is_healthy("GPU-health-1")


def test_watcher_without_nvml_does_not_raise() -> None:
    import pynvml

    w = XidWatcher(HealthTracker(), nvml=FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert w.start() is False and "NVML unavailable" in w.reasons[0]
    w.stop()
