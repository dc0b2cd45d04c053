from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from gpu_fake_nvml import FakeNvml, gpus

from conftest import poll_until
from greekfire.api.gpu import build_app
from greekfire.core.settings import load_settings
from greekfire.gpu.cloud import CloudInfo


def test_health_and_metrics_cpu_only(tmp_path: Path) -> None:
    import pynvml

    s = load_settings(overrides={"gpu.dmi_root": str(tmp_path)})
    app = build_app(s, nvml=FakeNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    with TestClient(app) as client:
        h = client.get("/health")
        assert h.status_code == 200
        body = h.json()
        assert body["status"] == "unavailable" and body["devices"][-1]["kind"] == "cpu"
        assert body["cloud"]["provider"] == "none" and any("NVML unavailable" in r for r in body["reasons"])
        m = client.get("/metrics")
        assert m.status_code == 200 and "text/plain" in m.headers["content-type"]
        assert "process_cpu_seconds_total" in m.text and "greekfire_gpu_devices" in m.text
        assert client.get("/placement").json()["torch_device"] == "cpu"


def test_health_and_metrics_with_fake_gpus() -> None:
    fake = FakeNvml(gpus(2))
    fake.devices[0].uuid, fake.devices[1].uuid = "GPU-api-0", "GPU-api-1"
    app = build_app(load_settings(overrides={"gpu.sample_interval_s": 0.05}), nvml=fake, cloud=CloudInfo())
    with TestClient(app) as client:
        body = client.get("/health").json()
        assert body["status"] == "ok" and body["driver_version"] == "550.54.15"
        assert [m["uuid"] for m in body["memory"]] == ["GPU-api-0", "GPU-api-1"]
        assert body["memory"][0]["used_mb"] == 1024 and body["memory"][0]["over_threshold"] is False
        text = client.get("/metrics").text
        assert 'DCGM_FI_DEV_GPU_UTIL{Hostname=' in text and 'UUID="GPU-api-1"' in text
        fake.inject_xid(1, 79)
        poll_until(lambda: client.get("/health").json()["status"] == "degraded", 5)
        body = client.get("/health").json()
        assert body["status"] == "degraded"
        assert [d["healthy"] for d in body["devices"] if d["kind"] == "nvidia"] == [True, False]
    assert fake.init_calls == fake.shutdown_calls  # threads stopped, NVML shut down with the app
