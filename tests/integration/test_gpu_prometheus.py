"""Real servers on loopback: `greekfire gpu serve`, a real Prometheus scraping our app, and promtool."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import free_port, need_binary, poll_until, port_open

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
sys.path.insert(0, str(ROOT / "tests" / "unit" / "gpu"))  # the fake NVML module lives beside the unit tests

from gpu_fake_nvml import FakeNvml, gpus  # noqa: E402

pytestmark = pytest.mark.integration


def test_promtool_rule_tests_pass() -> None:
    promtool = need_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", "gpu-rules.yml"], cwd=RULES_DIR, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 10 rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", "gpu-rules.test.yml"], cwd=RULES_DIR, capture_output=True,
                          text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


def test_gpu_serve_command_answers(tmp_path: Path) -> None:
    port = free_port()
    env = {"GREEKFIRE_GPU__DMI_ROOT": str(tmp_path), "GREEKFIRE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-c", "from greekfire.cli import app; app()", "gpu", "serve", "--host", "127.0.0.1",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert poll_until(lambda: port_open("127.0.0.1", port), 30, 0.1, ignore=(httpx.HTTPError,)), "greekfire gpu serve did not start"
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert health.status_code == 200 and health.headers["content-type"] == "application/json"
        body = health.json()
        assert body["status"] in {"ok", "degraded", "unavailable"} and body["devices"][-1]["kind"] == "cpu"
        assert "driver_version" in body and "memory" in body
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "process_resident_memory_bytes" in metrics and "greekfire_gpu_monitor_samples_total" in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture
def gpu_app_with_fake_gpus() -> Iterator[int]:
    import uvicorn

    from greekfire.api.gpu import build_app
    from greekfire.core.settings import load_settings
    from greekfire.gpu.cloud import CloudInfo

    fake = FakeNvml(gpus(2))
    fake.devices[0].uuid, fake.devices[1].uuid = "GPU-prom-0", "GPU-prom-1"
    app = build_app(load_settings(overrides={"gpu.sample_interval_s": 0.5}), nvml=fake, cloud=CloudInfo())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert poll_until(lambda: server.started, 20, 0.1, ignore=(httpx.HTTPError,)), "uvicorn did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_prometheus_scrapes_our_metrics(tmp_path: Path, gpu_app_with_fake_gpus: int) -> None:
    prometheus = need_binary("prometheus")
    app_port = gpu_app_with_fake_gpus
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES_DIR / 'gpu-rules.yml'}\n"
        "scrape_configs:\n  - job_name: greekfire-gpu\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{app_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        assert poll_until(lambda: httpx.get(f"{base}/-/ready", timeout=2).status_code == 200, 30, 0.1, ignore=(httpx.HTTPError,)), \
            (tmp_path / "prometheus.log").read_text()[-2000:]
        result: list[dict] = []

        def scraped() -> bool:
            nonlocal result
            r = httpx.get(f"{base}/api/v1/query", params={"query": 'DCGM_FI_DEV_GPU_UTIL{UUID="GPU-prom-1"}'}, timeout=2)
            result = r.json()["data"]["result"]
            return bool(result)

        assert poll_until(scraped, 30, 0.25, ignore=(httpx.HTTPError,)), "Prometheus did not scrape DCGM_FI_DEV_GPU_UTIL in 30 s"
        (series,) = result
        labels = series["metric"]
        assert labels["job"] == "greekfire-gpu" and labels["gpu"] == "1" and labels["device"] == "nvidia1"
        assert {"pci_bus_id", "modelName", "Hostname"} <= set(labels)
        assert float(series["value"][1]) == 20.0
        r = httpx.get(f"{base}/api/v1/query", params={"query": "greekfire_gpu_monitor_samples_total"}, timeout=2)
        assert float(r.json()["data"]["result"][0]["value"][1]) >= 1
        r = httpx.get(f"{base}/api/v1/query", params={"query": 'up{job="greekfire-gpu"}'}, timeout=2)
        assert r.json()["data"]["result"][0]["value"][1] == "1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
