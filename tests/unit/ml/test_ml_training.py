"""Lightning training of the pricing model: loss falls, checkpoints, exact resume, tracking (tiny runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import need_module
from greekfire.core.errors import ConfigError
from greekfire.core.settings import load_settings
from greekfire.ml.callbacks import InterruptAtStep, TrainingInterrupted
from greekfire.ml.config import compose_experiment
from greekfire.ml.serving import load_pricing_model
from greekfire.ml.tracking import mlflow_uri
from greekfire.ml.train import train_pricing

QUIET = ["tracking.mlflow=false", "tracking.tensorboard=false"]


def _settings(root: Path):
    return load_settings(overrides={"training.runs_dir": str(root / "runs"), "training.torch_threads": 1})


def test_tiny_lstm_run_learns_logs_and_checkpoints(tmp_path: Path) -> None:
    cfg = compose_experiment("lstm_tiny", [
        "data.n_samples=1200", "trainer.max_epochs=4", "trainer.precision=bf16-mixed", "optim.lr=0.01",
        "trainer.log_every_n_steps=2", "name=tiny_tracked",
    ])
    s = _settings(tmp_path)
    losses: list[float] = []

    import lightning as L

    class Record(L.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            losses.append(float(trainer.callback_metrics["val_loss"]))

    result = train_pricing(cfg, s, callbacks=[Record()])
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert result.last_checkpoint is not None and result.last_checkpoint.is_file()
    assert result.run_dir.parent.name == "tiny_tracked" and len(result.version) == 12
    assert result.scores["test_r2"] > 0.3 and result.scores["test_n"] > 0
    assert (result.run_dir / "summary.json").is_file()
    # TensorBoard event files
    assert list((result.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    # MLflow local store: metrics and the best checkpoint as an artifact
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri(s))
    assert result.mlflow_run_id is not None
    history = client.get_metric_history(result.mlflow_run_id, "val_loss")
    assert len(history) == 4
    assert client.get_run(result.mlflow_run_id).data.metrics["test_rmse"] == pytest.approx(
        result.scores["test_rmse"])
    assert result.model_uri is not None and result.model_uri.startswith("runs:/")
    loaded = load_pricing_model(result.model_uri, device="cpu", tracking_uri=mlflow_uri(s))
    assert loaded.uses_sequence and loaded.window == 8 and loaded.contract_names == ["c0", "c1", "c2"]


def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    # dropout on and the interrupt mid-epoch: weights, optimizer, scheduler, RNG and data position all matter
    overrides = [
        "data.n_samples=600", "data.batch_size=64", "trainer.max_epochs=3", "model.dropout=0.1",
        "trainer.checkpoint_every_n_steps=1", "optim.scheduler=cosine", *QUIET,
    ]
    cfg = compose_experiment("lstm_tiny", overrides)
    whole = train_pricing(cfg, _settings(tmp_path / "a"), test=False)
    s = _settings(tmp_path / "b")
    with pytest.raises(TrainingInterrupted):
        train_pricing(cfg, s, callbacks=[InterruptAtStep(13)], test=False)  # 8 batches an epoch: mid-epoch 2
    state = torch.load(Path(s.training.runs_dir) / "lstm_tiny" / whole.version / "checkpoints" / "last.ckpt",
                       weights_only=True)
    assert state["global_step"] == 13
    resumed = train_pricing(cfg, s, resume=True, test=False)
    assert resumed.global_step == whole.global_step == 24
    assert whole.last_checkpoint is not None and resumed.last_checkpoint is not None
    a = torch.load(whole.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        if not isinstance(a[k], torch.Tensor):  # the normaliser's feature names (its extra state)
            assert a[k] == b[k], k
            continue
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_experiment("lstm_tiny", ["data.n_samples=200", *QUIET])
    with pytest.raises(ConfigError, match="--resume"):
        train_pricing(cfg, _settings(tmp_path), resume=True)


def test_wandb_asked_for_but_missing_says_so(tmp_path: Path) -> None:
    need_module("lightning")
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here; the missing-package message cannot be shown")
    cfg = compose_experiment("lstm_tiny", ["data.n_samples=200", "tracking.wandb=true", *QUIET])
    with pytest.raises(ConfigError, match="wandb"):
        train_pricing(cfg, _settings(tmp_path))
