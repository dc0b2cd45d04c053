"""One data path for training: prepared sample files (in memory or streamed) through greekfire.data, and
checkpoints of every format version loading to the same predictions."""

from __future__ import annotations

import socket
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from greekfire.core.errors import ConfigError, ConfigErrors
from greekfire.core.settings import load_settings
from greekfire.data.dataset import write_splits
from greekfire.data.features import Samples, time_split
from greekfire.ml.callbacks import InterruptAtStep, TrainingInterrupted
from greekfire.ml.config import compose_experiment
from greekfire.ml.data import load_pricing_data
from greekfire.ml.module import CHECKPOINT_FORMAT, FORMAT_KEY, PricingDataModule, module_for
from greekfire.ml.serving import load_pricing_model
from greekfire.ml.train import train_pricing

QUIET = ["tracking.mlflow=false", "tracking.tensorboard=false"]


def _settings(root: Path):
    return load_settings(overrides={"training.runs_dir": str(root / "runs"), "training.torch_threads": 1})


def smooth_samples(n: int = 900, window: int = 8, seed: int = 0) -> Samples:
    """A learnable made-up target of a history window and contract features, 9 rows per quote date."""
    rng = np.random.default_rng(seed)
    seq = rng.normal(size=(n, window, 3)).astype(np.float32)
    contract = np.stack([rng.uniform(0.6, 1.4, n), rng.uniform(0.1, 2.0, n), rng.integers(0, 2, n)], axis=1)
    target = np.sin(2 * contract[:, 0]) + 0.5 * contract[:, 1] + 0.2 * contract[:, 2] + 0.1 * seq[:, -1, 0]
    return Samples(
        seq=seq,
        contract=contract.astype(np.float32),
        target=target.astype(np.float32),
        bs_baseline=np.zeros(n, dtype=np.float32),
        quote_date=np.datetime64("2024-01-01") + np.arange(n) // 9,
        seq_names=["s0", "s1", "s2"],
        contract_names=["moneyness", "ttm", "is_call"],
    )


def _prepared(root: Path) -> str:
    train, val, test = time_split(smooth_samples(), val_frac=0.15, test_frac=0.15)
    url = str(root / "prepared")
    write_splits({"train": train, "val": val, "test": test}, url, row_group_size=64)
    return url


def _samples_cfg(url: str, *extra: str):
    return compose_experiment("lstm_tiny", [
        "data.source=samples", f"data.url={url}", "data.batch_size=32", "trainer.max_epochs=3",
        "optim.lr=0.01", *QUIET, *extra,
    ])


# ------------------------------------------------------------------------------------------- checkpoints
def _format_1(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict layout checkpoints had before format versions: one FeatureScaler per input."""
    old: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "net.normalizer._extra_state":
            continue
        if key.startswith("net.normalizer.seq_") and value.numel() == 0:
            continue  # an MLP had no sequence scaler at all
        for group in ("contract", "seq"):
            for stat in ("mean", "std"):
                if key == f"net.normalizer.{group}_{stat}":
                    key = f"net.{group}_scaler.{stat}"
        old[key] = value
    return old


@pytest.mark.parametrize(("preset", "overrides"), [
    ("smoke", ["data.n_samples=400"]),
    ("lstm_tiny", ["data.n_samples=300"]),
])
def test_a_format_1_checkpoint_loads_to_the_predictions_of_the_current_format(
    tmp_path: Path, preset: str, overrides: list[str]
) -> None:
    cfg = compose_experiment(preset, overrides)
    torch.manual_seed(0)
    data = load_pricing_data(cfg.data)
    module = module_for(cfg, data)
    state = module.state_dict()
    assert "net.normalizer.contract_mean" in state and "net.contract_scaler.mean" not in state
    hp = dict(module.hparams)
    new_path, old_path = tmp_path / "new.ckpt", tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hp, "pytorch-lightning_version": L.__version__,
                FORMAT_KEY: CHECKPOINT_FORMAT}, new_path)
    old_state = _format_1(state)
    assert "net.contract_scaler.mean" in old_state and not any("normalizer" in k for k in old_state)
    torch.save({"state_dict": old_state, "hyper_parameters": hp, "pytorch-lightning_version": L.__version__},
               old_path)
    new, old = load_pricing_model(new_path, device="cpu"), load_pricing_model(old_path, device="cpu")
    rows = data.test
    seq = rows.get("seq") if new.uses_sequence else None
    expected = new(rows["contract"], seq)
    assert torch.equal(old(rows["contract"], seq), expected)
    with torch.inference_mode():  # as the server runs it (attention takes its fused path there)
        assert torch.equal(module.eval()(rows["contract"], seq).float(), expected)
    # the scaling matters: a model with its statistics dropped prices differently
    assert float(new.module.normalizer.contract_std.sub(1).abs().max()) > 0.01
    assert old.module.normalizer.contract_names == data.contract_names


def test_a_checkpoint_from_a_newer_format_is_refused_by_name(tmp_path: Path) -> None:
    cfg = compose_experiment("smoke", ["data.n_samples=200"])
    module = module_for(cfg, load_pricing_data(cfg.data))
    path = tmp_path / "future.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__, FORMAT_KEY: CHECKPOINT_FORMAT + 1}, path)
    with pytest.raises(ConfigError, match=FORMAT_KEY):
        load_pricing_model(path, device="cpu")


def test_trained_checkpoints_carry_the_format(tmp_path: Path) -> None:
    cfg = compose_experiment("smoke", ["data.n_samples=400", "trainer.max_epochs=1", *QUIET])
    result = train_pricing(cfg, _settings(tmp_path), test=False)
    assert result.best_checkpoint is not None
    ckpt = torch.load(result.best_checkpoint, weights_only=True)
    assert ckpt[FORMAT_KEY] == CHECKPOINT_FORMAT
    assert ckpt["state_dict"]["net.normalizer._extra_state"]["contract_names"] == ["moneyness", "ttm", "rate", "vol"]


# ----------------------------------------------------------------------------------- prepared samples
def test_prepared_samples_train_in_memory_and_streamed_alike(tmp_path: Path) -> None:
    url = _prepared(tmp_path)
    memory_cfg, stream_cfg = _samples_cfg(url), _samples_cfg(url, "data.streaming=true")
    memory, stream = load_pricing_data(memory_cfg.data), load_pricing_data(stream_cfg.data)
    assert not memory.streamed and stream.streamed
    assert stream.train_rows == memory.train_rows == len(memory.train["target"]) > 0
    assert memory.fingerprint == stream.fingerprint and memory.window == stream.window == 8
    torch.testing.assert_close(memory.val["target"], stream.val["target"])
    # the streamed split is fitted batch by batch to the statistics of the whole split
    a, b = module_for(memory_cfg, memory).normalizer, module_for(stream_cfg, stream).normalizer
    for name in ("contract_mean", "contract_std", "seq_mean", "seq_std"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-5, atol=1e-6)
    # every streamed row group is dealt into batches of at most batch_size rows
    dm = PricingDataModule(stream, stream_cfg.data, seed=1)
    assert dm.train_batches() == sum(-(-64 // 32) for _ in range(stream.train_rows // 64)) + (
        -(-(stream.train_rows % 64) // 32))

    class Record(L.Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_validation_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.losses.append(float(trainer.callback_metrics["val_loss"]))

    results = {}
    for name, cfg in (("memory", memory_cfg), ("stream", stream_cfg)):
        record = Record()
        results[name] = train_pricing(cfg, _settings(tmp_path / name), callbacks=[record])
        losses = record.losses
        # it learns: the validation loss ends well below the variance of the validation targets
        assert len(losses) == 3 and losses[-1] < 0.5 * float(memory.val["target"].var()), (name, losses)
    assert results["stream"].global_step == results["memory"].global_step == 3 * dm.train_batches()
    assert results["stream"].scores["test_r2"] > 0.5 and results["memory"].scores["test_r2"] > 0.5


def test_an_interrupted_streamed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    url = _prepared(tmp_path)
    cfg = _samples_cfg(url, "data.streaming=true", "model.dropout=0.1", "trainer.checkpoint_every_n_steps=1")
    whole = train_pricing(cfg, _settings(tmp_path / "a"), test=False)
    per_epoch = whole.global_step // 3
    s = _settings(tmp_path / "b")
    with pytest.raises(TrainingInterrupted):
        train_pricing(cfg, s, callbacks=[InterruptAtStep(per_epoch + 5)], test=False)  # mid-epoch 2
    resumed = train_pricing(cfg, s, resume=True, test=False)
    assert resumed.global_step == whole.global_step
    assert whole.last_checkpoint is not None and resumed.last_checkpoint is not None
    a = torch.load(whole.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.last_checkpoint, weights_only=True)["state_dict"]
    for k in a:
        if not isinstance(a[k], torch.Tensor):  # the normaliser's feature names (its extra state)
            assert a[k] == b[k], k
            continue
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)


def test_samples_source_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match="data.url"):
        compose_experiment("lstm_tiny", ["data.source=samples"])
    with pytest.raises(ConfigErrors, match="data.streaming"):
        compose_experiment("lstm_tiny", ["data.streaming=true"])
    cfg = _samples_cfg(str(tmp_path / "nothing-here"))
    with pytest.raises(Exception, match="no .parquet sample files"):
        load_pricing_data(cfg.data)


def test_remote_prepared_samples_are_checked_before_training(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = load_settings(overrides={
        "storage.s3_endpoint_url": f"http://127.0.0.1:{port}", "storage.connect_timeout_s": 1,
        "storage.max_attempts": 1, "training.runs_dir": str(tmp_path / "runs"),
    })
    cfg = _samples_cfg("s3://prepared/options")
    with pytest.raises(ConfigError) as ei:
        train_pricing(cfg, settings)
    assert ei.value.field == "storage.url" and "endpoint_unreachable" in str(ei.value)
