"""A training run's live figures on a real pushgateway: while it trains the run's group holds
greekfire_training_run_active 1 with the latest loss and step count; the end push replaces them with the
run's figures, active 0, and keeps the last loss and step count; both carry the trainer's out-of-memory count
by device."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from conftest import command_env, free_port, need_binary, poll_until, port_open

pytestmark = pytest.mark.integration


def _group(gateway: str, run: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{gateway}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("greekfire_training_") and f'run="{run}"' in line:
            out[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def _oom_lines(gateway: str, run: str) -> str:
    with urllib.request.urlopen(f"http://{gateway}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return "\n".join(line for line in text.splitlines() if line.startswith("greekfire_oom_total") and f'run="{run}"' in line)


def test_live_push_then_end_push(tmp_path: Path) -> None:
    from greekfire.core.settings import load_settings
    from greekfire.gpu.memory import run_with_oom_backoff
    from greekfire.ml.callbacks import STEPS, TRAIN_LOSS
    from greekfire.ml.tracking import push_live_training_metrics, push_training_metrics

    binary = need_binary("prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="], env=command_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert poll_until(lambda: port_open("127.0.0.1", port), 30, 0.1), "the pushgateway did not start"
        gateway = f"127.0.0.1:{port}"
        settings = load_settings(overrides={"training.pushgateway_url": gateway, "home": str(tmp_path)})
        run = "live-push-test"
        TRAIN_LOSS.labels(run).set(0.25)  # what PrometheusTrainingMetrics sets during a run
        STEPS.labels(run).inc(7)
        run_with_oom_backoff(lambda b: b, [1.0, 2.0], batch_size=2, device="cpu")  # as evaluation does
        assert push_live_training_metrics(settings, run)
        live = _group(gateway, run)
        assert live["greekfire_training_run_active"] == 1.0
        assert live["greekfire_training_loss"] == 0.25 and live["greekfire_training_steps_total"] == 7.0
        assert "greekfire_oom_total" in _oom_lines(gateway, run)
        assert "greekfire_training_run_success" not in live
        STEPS.labels(run).inc(3)
        TRAIN_LOSS.labels(run).set(0.125)
        assert push_training_metrics(settings, run, status="ok", seconds=2.0, steps=10)
        end = _group(gateway, run)
        assert end["greekfire_training_run_active"] == 0.0 and end["greekfire_training_run_success"] == 1.0
        assert end["greekfire_training_loss"] == 0.125 and end["greekfire_training_steps_total"] == 10.0
    finally:
        proc.terminate()
        proc.wait(15)
