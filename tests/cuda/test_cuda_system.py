"""The GPU manager against a real driver (NVML), a real CUDA out-of-memory, and training and inference on
the device. NVML and CUDA are only fakeable elsewhere; here they are the real thing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from greekfire.cli import app
from greekfire.core.metrics import REGISTRY
from greekfire.core.settings import GpuSettings, load_settings
from greekfire.gpu.discovery import discover
from greekfire.gpu.manager import GpuManager
from greekfire.gpu.memory import GpuOutOfMemoryError, run_with_oom_backoff
from greekfire.gpu.monitor import FIELDS
from greekfire.ml.config import compose_experiment
from greekfire.ml.serving import load_pricing_model
from greekfire.ml.train import train_pricing


@pytest.fixture
def cuda(dev: torch.device) -> torch.device:
    if dev.type != "cuda":
        pytest.skip("needs the real driver: GREEKFIRE_CUDA_TESTS_DEVICE names a non-CUDA device")
    return dev


def _gpu_settings() -> GpuSettings:
    return GpuSettings.model_validate({"cloud": "none"})


def test_discovery_reads_the_real_driver(cuda: torch.device) -> None:
    inv = discover(_gpu_settings())
    assert inv.nvml == "ok", inv.reasons
    assert inv.driver_version and inv.cuda_driver_version
    gpus = inv.gpus
    assert len(gpus) == torch.cuda.device_count() >= 1
    g = gpus[0]
    props = torch.cuda.get_device_properties(0)
    assert g.name == props.name and g.torch_device == "cuda:0" and g.cuda_index == 0
    assert abs(g.memory_total_mb - props.total_memory / 2**20) / g.memory_total_mb < 0.02
    assert g.compute_capability == f"{props.major}.{props.minor}" and g.healthy


def test_monitor_publishes_dcgm_fields_and_torch_memory(cuda: torch.device) -> None:
    mgr = GpuManager(_gpu_settings())
    held = torch.empty(256 * 2**20, dtype=torch.uint8, device=cuda)  # 256 MiB that torch owns
    (s,) = mgr.sample()[:1]
    assert set(FIELDS) - {"xid_errors"} <= set(s.values), sorted(s.values)
    assert s.values["fb_used"] > 256 and s.values["fb_free"] > 0 and 0 <= s.values["gpu_util"] <= 100
    assert s.values["sm_clock"] > 0 and s.values["power_usage"] > 0
    assert s.torch["allocated"] >= held.numel()
    labels = {"gpu": str(s.index), "UUID": s.uuid, "pci_bus_id": s.pci_bus_id, "device": f"nvidia{s.index}",
              "modelName": s.name, "Hostname": mgr.inventory.host}
    scraped = {k: REGISTRY.get_sample_value(k, labels) for k in ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_SM_CLOCK")}
    assert scraped["DCGM_FI_DEV_FB_USED"] == s.values["fb_used"], (scraped, labels)
    assert scraped["DCGM_FI_DEV_SM_CLOCK"] == s.values["sm_clock"]
    health = mgr.health()
    assert health["status"] == "ok", health
    assert mgr.place(need_mb=1024).device.torch_device.startswith("cuda:")
    del held


def test_cli_gpu_status_json_on_the_real_device(cuda: torch.device, tmp_settings_env: Path) -> None:
    res = CliRunner().invoke(app, ["gpu", "status", "--json"], env={"GREEKFIRE_GPU__CLOUD": "none"})
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["status"] == "ok" and data["nvml"] == "ok"
    assert any(d["kind"] == "nvidia" for d in data["devices"])


def test_real_cuda_oom_halves_the_batch_and_loses_no_row(cuda: torch.device) -> None:
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(cuda)
    budget = 2 * 2**30  # torch may hold 2 GiB more than now: a batch of 4096 rows x 1 MiB does not fit
    assert free > 2 * budget
    base = torch.cuda.memory_allocated(cuda)
    label = {"device": str(cuda) if cuda.index is not None else "cuda:0"}
    before = REGISTRY.get_sample_value("greekfire_oom_total", label) or 0.0
    torch.cuda.set_per_process_memory_fraction((base + budget) / torch.cuda.get_device_properties(cuda).total_memory)
    try:
        items = torch.arange(4096, dtype=torch.float64, device=cuda)

        def fn(batch: torch.Tensor) -> torch.Tensor:
            scratch = batch.reshape(-1, 1).expand(-1, 2**17).contiguous()  # 1 MiB a row
            return scratch.sum(dim=1) / 2**17

        out = run_with_oom_backoff(fn, items, batch_size=4096)
        torch.testing.assert_close(out, items)  # every row, in order
        halvings = (REGISTRY.get_sample_value("greekfire_oom_total", label) or 0.0) - before
        assert halvings >= 1  # 4096 rows did not fit: it halved until they did
        assert REGISTRY.get_sample_value("greekfire_oom_batch_size", label) <= 2048
        with pytest.raises(GpuOutOfMemoryError, match="cuda"):
            run_with_oom_backoff(lambda b: torch.empty(4 * 2**30, dtype=torch.uint8, device=cuda), items, batch_size=8)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def test_lstm_trains_in_bf16_on_the_device_and_serves_there(cuda: torch.device, tmp_path: Path) -> None:
    cfg = compose_experiment("lstm_tiny", [
        "data.n_samples=1200", "trainer.max_epochs=4", "trainer.precision=bf16-mixed", "optim.lr=0.01",
        "trainer.accelerator=cuda", "tracking.mlflow=false", "tracking.tensorboard=false", "name=tiny_cuda",
    ])
    s = load_settings(overrides={"training.runs_dir": str(tmp_path / "runs")})
    result = train_pricing(cfg, s)
    assert result.best_checkpoint is not None and result.scores["test_r2"] > 0.3, result.scores
    on_gpu = load_pricing_model(result.best_checkpoint, device="cuda")
    on_cpu = load_pricing_model(result.best_checkpoint, device="cpu")
    assert next(on_gpu.module.parameters()).device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    contract = torch.randn(64, len(on_cpu.contract_names), generator=gen)
    seq = torch.randn(64, on_cpu.window, len(on_cpu.seq_names), generator=gen) if on_cpu.uses_sequence else None
    torch.testing.assert_close(on_gpu(contract, seq), on_cpu(contract, seq), rtol=1e-4, atol=1e-5)
