"""Two-process DDP (gloo on CPU) through the real command line: both ranks train, rank 0 reports. An
integration test: the ranks meet through a rendezvous server (a TCP store on loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration


def test_two_process_ddp_smoke(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "greekfire.cli", "train", "pricing", "--preset", "lstm_tiny", "--json",
        "data.n_samples=512", "data.batch_size=32", "trainer.max_epochs=2", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.strategy=ddp", "tracking.mlflow=false", "tracking.tensorboard=false",
        "name=ddp_smoke",
    ]
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
        "GREEKFIRE_TRAINING__RUNS_DIR": str(tmp_path / "runs"), "GREEKFIRE_TRAINING__TORCH_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    result = json.loads(out[out.index("{"):])  # rank 0 alone prints the result
    assert result["world_size"] == 2 and result["rank"] == 0
    # 512 rows, 10% val + 10% test -> 410 train rows, 205 per rank, 7 batches of 32 per rank and epoch
    assert result["global_step"] == 14
    assert Path(result["best_checkpoint"]).is_file() and Path(result["last_checkpoint"]).is_file()
    assert result["scores"]["test_n"] > 0
