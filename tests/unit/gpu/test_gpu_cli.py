from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from gpu_fake_nvml import FakeNvml, gpus
from typer.testing import CliRunner

import greekfire.gpu.nvml
from greekfire.cli import STATE, app

runner = CliRunner()
DEVICE_FIELDS = {"kind", "index", "name", "uuid", "pci_bus_id", "memory_total_mb", "memory_free_mb", "memory_used_mb",
                 "driver_version", "cuda_driver_version", "compute_capability", "mig_mode", "power_limit_w",
                 "cuda_index", "healthy", "reasons", "torch_device"}


@pytest.fixture(autouse=True)
def fresh_state(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    STATE._settings = None
    STATE.config = None
    # this test machine must read as "no cloud" whatever DMI files it has: point the DMI root at an empty dir
    monkeypatch.setenv("GREEKFIRE_GPU__DMI_ROOT", str(tmp_settings_env))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_status_json_here_has_cpu_and_no_cloud() -> None:
    r = runner.invoke(app, ["gpu", "status", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    cpu = [d for d in data["devices"] if d["kind"] == "cpu"]
    assert len(cpu) == 1 and cpu[0]["torch_device"] == "cpu"
    assert data["cloud"]["provider"] == "none"
    assert data["placement"]["torch_device"] in {d["torch_device"] for d in data["devices"]}
    if data["nvml"] != "ok":
        assert data["reasons"] and data["status"] == "unavailable"


def test_status_json_with_fake_nvml_lists_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml(gpus(2))
    monkeypatch.setattr(greekfire.gpu.nvml, "pynvml", fake)  # the NVML boundary, nothing of ours
    r = runner.invoke(app, ["gpu", "status", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["nvml"] == "ok" and data["driver_version"] == "550.54.15" and data["cuda_driver_version"] == "12.4"
    gpu_rows = [d for d in data["devices"] if d["kind"] == "nvidia"]
    assert [g["uuid"] for g in gpu_rows] == [d.uuid for d in fake.devices]
    for g in gpu_rows:
        assert set(g) >= DEVICE_FIELDS
        assert g["name"] and g["pci_bus_id"] and g["compute_capability"] == "9.0" and g["power_limit_w"] == 700.0
        assert g["memory_total_mb"] == 81559 and g["mig_mode"] is False and g["healthy"] is True
    assert data["status"] == "ok" and data["placement"]["torch_device"].startswith("cuda:")
    tele = data["telemetry"][fake.devices[1].uuid]
    assert tele["gpu_util"] == 20.0 and tele["fb_used"] == 2048.0 and tele["power_usage"] == 120.0
    table = runner.invoke(app, ["gpu", "status"])
    assert table.exit_code == 0 and "H100" in table.output and "550.54.15" in table.output


def test_status_path_stays_light(tmp_settings_env: Path) -> None:
    """The status command must not import torch, lightning or mlflow (they take seconds to import)."""
    code = (
        "import sys, io, contextlib\n"
        "from greekfire.cli import app\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        app(['gpu', 'status', '--json'])\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'lightning', 'mlflow') if m in sys.modules]\n"
        "print(repr(heavy)); print(buf.getvalue()[:1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines()[0] == "[]", out.stdout + out.stderr
    assert out.stdout.splitlines()[1] == "{"


def test_demo_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(greekfire.gpu.nvml, "pynvml", FakeNvml(gpus(2)))
    r = runner.invoke(app, ["demo", "--only", "gpu", "--json"])
    assert r.exit_code == 0, r.output
    (stage,) = json.loads(r.stdout)
    s = stage["summary"]
    assert stage["status"] == "ok" and s["gpus"] == 2 and s["monitor samples"] == 2 and s["cloud"] == "none"
    assert s["placement (1 GiB job)"].startswith("cuda:")
