"""A training run's live figures on a real pushgateway (loopback): while the run trains, its group holds
``greekfire_training_run_active`` 1, the latest loss and the steps so far (what the training alert rules
watch); when it ends, the final push replaces them with ``greekfire_training_run_active`` 0 and the last loss."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import lightning as L
import pytest

from conftest import command_env, free_port, need_binary
from greekfire.core.settings import load_settings
from greekfire.ml.config import compose_experiment
from greekfire.ml.train import train_pricing
from object_stores import _server

pytestmark = pytest.mark.integration


def _pushed(gateway: str) -> str:
    with urllib.request.urlopen(f"http://{gateway}/metrics", timeout=5) as resp:
        return resp.read().decode()


class ReadGateway(L.Callback):
    """Reads the pushgateway at the end of the first epoch: mid-run, after the first logged batch pushed."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.mid_run = ""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.mid_run:
            self.mid_run = _pushed(self.gateway)


def _value(text: str, metric: str, run: str) -> float | None:
    m = re.search(rf'^{metric}{{[^}}]*run="{re.escape(run)}"[^}}]*}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_a_running_run_pushes_active_loss_and_steps_then_ends_inactive(tmp_path: Path) -> None:
    gateway_bin = need_binary("prometheus-pushgateway")
    port = free_port()
    gateway = f"127.0.0.1:{port}"
    argv = [gateway_bin, f"--web.listen-address={gateway}", "--persistence.file="]
    with _server(argv, port, "pushgateway", env=command_env(), workdir=tmp_path):
        settings = load_settings(overrides={"training.runs_dir": str(tmp_path / "runs"), "training.torch_threads": 1,
                                            "training.pushgateway_url": gateway})
        cfg = compose_experiment("smoke", ["data.n_samples=200", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
                                           "tracking.mlflow=false", "tracking.tensorboard=false"])
        reader = ReadGateway(gateway)
        result = train_pricing(cfg, settings, callbacks=[reader], test=False)
        run = f"{cfg.name}-{result.version}"
        after = _pushed(gateway)
    assert _value(reader.mid_run, "greekfire_training_run_active", run) == 1, reader.mid_run
    loss = _value(reader.mid_run, "greekfire_training_loss", run)
    assert loss is not None and loss > 0
    steps = _value(reader.mid_run, "greekfire_training_steps_total", run)
    assert steps is not None and 1 <= steps <= result.global_step
    assert _value(after, "greekfire_training_run_active", run) == 0
    assert _value(after, "greekfire_training_run_success", run) == 1
    last = _value(after, "greekfire_training_loss", run)  # the end push keeps the run's last loss readable
    assert last is not None and last > 0
