"""The registry, its gate and audit, the A/B test and the compare plots, on MLflow's local store (tiny runs).

The same cycle against a real MLflow server (PostgreSQL + S3) is tests/integration/test_training_registry_cycle.py.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from conftest import command_env
from greekfire.core.errors import ConfigError
from greekfire.core.settings import load_settings
from greekfire.ml.config import compose_experiment
from greekfire.ml.tracking import TAG_DATA_VERSION, TAG_ERROR, mlflow_uri
from greekfire.ml.train import train_pricing
from greekfire.training.ab import ABRouter, RunningStats, msprt
from greekfire.training.audit import AuditLog
from greekfire.training.compare import compare_runs
from greekfire.training.registry import GateFailed, ModelRegistry, gate_decision

TINY = ["data.n_samples=600", "trainer.max_epochs=1", "tracking.tensorboard=false", "trainer.log_every_n_steps=1"]


def _settings(tmp: Path, **extra: Any):
    return load_settings(overrides={"training.runs_dir": str(tmp / "runs"), "training.torch_threads": 1,
                                    "models.audit_url": f"sqlite:///{tmp / 'audit.db'}", "home": str(tmp), **extra})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two finished tiny runs (one better trained) and one failed run on the local store."""
    tmp = tmp_path_factory.mktemp("reg")
    s = _settings(tmp)
    good = train_pricing(compose_experiment("smoke", [*TINY, "trainer.max_epochs=3", "optim.lr=0.005"]), s)
    weak = train_pricing(compose_experiment("smoke", [*TINY, "optim.lr=0.00001"]), s)

    class Boom(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        train_pricing(compose_experiment("smoke", [*TINY, "name=broken"]), s, callbacks=[Boom()])
    return {"tmp": tmp, "settings": s, "good": good, "weak": weak}


def test_gate_rule() -> None:
    assert gate_decision("test_rmse", "min", 0.0, "2", 0.5, None, None).passed
    assert gate_decision("test_rmse", "min", 0.0, "2", 0.5, "1", 0.6).passed
    assert not gate_decision("test_rmse", "min", 0.0, "2", 0.6, "1", 0.6).passed  # equal does not beat
    assert not gate_decision("test_rmse", "min", 0.2, "2", 0.5, "1", 0.6).passed  # 0.5 >= 0.6 * 0.8
    assert gate_decision("test_r2", "max", 0.0, "2", 0.9, "1", 0.8).passed
    assert not gate_decision("test_rmse", "min", 0.0, "2", float("nan"), "1", 0.6).passed


def _stream(mean: float, n: int, rng: random.Random) -> RunningStats:
    st = RunningStats()
    for _ in range(n):
        st.add(rng.expovariate(1 / mean))
    return st


def test_msprt_decides_the_right_way_and_waits_when_equal() -> None:
    rng = random.Random(3)
    kw = {"alpha": 0.05, "tau": 0.5, "min_samples": 20, "max_samples": 10_000}
    worse = msprt(_stream(1.0, 300, rng), _stream(2.0, 300, rng), **kw)
    better = msprt(_stream(2.0, 300, rng), _stream(1.0, 300, rng), **kw)
    assert (worse.outcome, better.outcome) == ("rollback", "promote")
    assert worse.ratio >= worse.threshold and worse.theta > 0
    same = msprt(_stream(1.0, 300, rng), _stream(1.0, 300, rng), **kw)
    assert same.outcome == "continue" and same.ratio < same.threshold
    few = msprt(_stream(1.0, 5, rng), _stream(9.0, 5, rng), **kw)
    assert few.outcome == "continue"  # below min_samples


def test_runs_are_tracked_with_config_data_version_commit_and_failure(trained: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    s = trained["settings"]
    client = MlflowClient(mlflow_uri(s))
    run = client.get_run(trained["good"].mlflow_run_id)
    assert run.data.tags[TAG_DATA_VERSION].startswith("bs_liu-")
    assert run.data.tags.get("greekfire.status") == "finished"
    assert run.data.params["cfg.optim.lr"] == "0.005"
    assert "mlflow.source.git.commit" in run.data.tags  # the tests run in a git checkout
    cfg = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(trained["tmp"]))).read_text())
    assert cfg["optim"]["lr"] == 0.005
    failed = client.search_runs([client.get_experiment_by_name("broken").experiment_id])
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    assert "RuntimeError: disk on fire" in failed[0].data.tags[TAG_ERROR]


def test_register_gate_promote_refuse_rollback_history(trained: dict[str, Any]) -> None:
    s = trained["settings"]
    reg = ModelRegistry(s, name="unit-model")
    weak_v = reg.register(trained["weak"].mlflow_run_id)
    good_v = reg.register(trained["good"].mlflow_run_id)
    assert [v.version for v in reg.versions()] == [weak_v, good_v]
    reg.promote(weak_v, actor="alice", reason="first")
    assert reg.alias_version("champion") == weak_v
    entry = reg.promote(good_v, actor="bob", reason="retrained")
    assert (entry.from_version, entry.to_version, entry.actor) == (weak_v, good_v, "bob")
    with pytest.raises(GateFailed, match="fails"):  # the weak one cannot displace the good one
        reg.promote(weak_v, actor="carol")
    back = reg.rollback(actor="dave", reason="bad fills")  # to the previous champion
    assert (back.action, back.from_version, back.to_version) == ("rollback", good_v, weak_v)
    assert reg.alias_version("champion") == weak_v
    with pytest.raises(ConfigError, match="reason"):
        reg.rollback(good_v, reason="")
    hist = AuditLog(reg.audit.url).history("unit-model")  # read back through a new connection
    assert [(e.action, e.actor, e.from_version, e.to_version) for e in hist] == [
        ("promote", "alice", None, weak_v), ("promote", "bob", weak_v, good_v),
        ("refused", "carol", good_v, weak_v), ("rollback", "dave", good_v, weak_v)]
    assert hist[-1].reason == "bad fills" and hist[-1].at.tzinfo is not None
    assert "gate" in hist[2].details and not hist[2].details["gate"]["passed"]


def test_failed_run_cannot_be_registered(trained: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    s = trained["settings"]
    client = MlflowClient(mlflow_uri(s))
    failed = client.search_runs([client.get_experiment_by_name("broken").experiment_id])[0]
    with pytest.raises(ConfigError, match="disk on fire"):
        ModelRegistry(s, name="unit-model").register(failed.info.run_id)


def test_compare_writes_a_table_and_learning_curve_plots(trained: dict[str, Any], tmp_path: Path) -> None:
    runs = [trained["good"].mlflow_run_id, trained["weak"].mlflow_run_id]
    cmp = compare_runs(runs, trained["settings"], out_dir=tmp_path)
    assert set(cmp.metrics["test_rmse"]) == set(runs)
    assert cmp.params["cfg.optim.lr"] == {runs[0]: "0.005", runs[1]: "1e-05"}
    assert {p.name for p in cmp.plots} == {"train_loss.png", "val_loss.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in cmp.plots)


class _FakeRegistry:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def alias_version(self, alias: str) -> str:
        return {"champion": "1", "challenger": "2"}[alias]

    def rollback_challenger(self, *, actor: str, reason: str, details: dict[str, Any]) -> Any:
        self.calls.append(("rollback", reason))
        return type("E", (), {"as_dict": lambda self: {"action": "rollback"}})()


def test_router_splits_by_weight_joins_observed_prices_and_rolls_back(tmp_path: Path) -> None:
    s = _settings(tmp_path, **{"models.ab_challenger_weight": 0.5, "models.ab_min_samples": 10})
    reg = _FakeRegistry()
    router = ABRouter({"champion": "A", "challenger": "B"}, s, registry=reg, seed=1)
    rng = random.Random(2)
    seen = {"champion": 0, "challenger": 0}
    for i in range(400):
        v = router.choose()
        seen[v] += 1
        truth = rng.random()
        pred = truth + (rng.gauss(0, 0.01) if v == "champion" else rng.gauss(0.05, 0.02))
        router.record(f"r{i}", v, [pred], latency_s=0.001)
        router.observe(f"r{i}", [truth])
        if router.decision is not None:
            break
    assert router.decision is not None and router.decision.outcome == "rollback"
    assert reg.calls and reg.calls[0][1].startswith("A/B mSPRT rollback")
    assert seen["challenger"] >= 10 and seen["champion"] >= 10
    assert router.choose() == "champion" and router.models["challenger"] is None
    with pytest.raises(Exception, match="request_id"):
        router.observe("never-sent", [0.1])


def test_models_cli_history_and_bad_rollback(trained: dict[str, Any]) -> None:
    s = trained["settings"]
    env = command_env(GREEKFIRE_TRAINING__RUNS_DIR=str(s.training.runs_dir), GREEKFIRE_HOME=str(trained["tmp"]),
                      GREEKFIRE_MODELS__AUDIT_URL=f"sqlite:///{trained['tmp'] / 'audit.db'}",
                      GREEKFIRE_MODELS__NAME="unit-model")
    out = subprocess.run([sys.executable, "-m", "greekfire.cli", "models", "history", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    actions = [e["action"] for e in json.loads(out.stdout)["history"]]
    assert actions[:2] == ["promote", "promote"] and "rollback" in actions
    bad = subprocess.run([sys.executable, "-m", "greekfire.cli", "models", "rollback", "--to", "99", "--reason", "x"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "99" in bad.stderr


def test_models_cli_list_and_compare(trained: dict[str, Any], tmp_path: Path) -> None:
    s = trained["settings"]
    reg = ModelRegistry(s, name="unit-cli")
    good_v = reg.register(trained["good"].mlflow_run_id)
    reg.register(trained["weak"].mlflow_run_id)
    reg.promote(good_v, actor="test")
    env = command_env(GREEKFIRE_TRAINING__RUNS_DIR=str(s.training.runs_dir), GREEKFIRE_HOME=str(trained["tmp"]),
                      GREEKFIRE_MODELS__AUDIT_URL=f"sqlite:///{trained['tmp'] / 'audit.db'}",
                      GREEKFIRE_MODELS__NAME="unit-cli")
    runs = [trained["good"].mlflow_run_id, trained["weak"].mlflow_run_id]
    out = subprocess.run([sys.executable, "-m", "greekfire.cli", "models", "compare", *runs, "--out",
                          str(tmp_path / "plots")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "test_rmse" in out.stdout and "cfg.optim.lr" in out.stdout
    assert (tmp_path / "plots" / "val_loss.png").is_file()
    listed = subprocess.run([sys.executable, "-m", "greekfire.cli", "models", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    versions = json.loads(listed.stdout)["versions"]
    assert [(v["version"], v["aliases"]) for v in versions] == [(good_v, ["champion"]), (str(int(good_v) + 1), [])]


def test_an_unreachable_pushgateway_never_fails_a_run(tmp_path: Path) -> None:
    from conftest import free_port
    from greekfire.ml.tracking import push_training_metrics

    s = _settings(tmp_path, **{"training.pushgateway_url": f"127.0.0.1:{free_port()}"})
    assert push_training_metrics(s, "r", status="ok", seconds=1.0) is False
    assert push_training_metrics(_settings(tmp_path), "r", status="ok", seconds=1.0) is True  # no URL: off


def test_ab_promotion_goes_through_the_registry_and_its_audit(trained: dict[str, Any]) -> None:
    s = trained["settings"].model_copy(deep=True)
    s.models.ab_challenger_weight = 0.5
    s.models.ab_min_samples = 10
    reg = ModelRegistry(s, name="unit-ab")
    weak_v = reg.register(trained["weak"].mlflow_run_id)
    good_v = reg.register(trained["good"].mlflow_run_id)
    reg.promote(weak_v, actor="test")
    reg.promote(good_v, alias="challenger", actor="test")
    router = ABRouter({"champion": "weak", "challenger": "good"}, s, registry=reg, seed=4,
                      versions={"champion": weak_v, "challenger": good_v})
    rng = random.Random(9)
    for i in range(400):
        v = router.choose()
        truth = rng.random()
        router.record(f"q{i}", v, [truth + rng.gauss(0, 0.05 if v == "champion" else 0.005)], latency_s=0.001)
        router.observe(f"q{i}", [truth])
        if router.decision is not None:
            break
    assert router.decision is not None and router.decision.outcome == "promote"
    assert (reg.alias_version("champion"), reg.alias_version("challenger")) == (good_v, None)
    last = reg.history()[-1]
    assert (last.action, last.alias, last.from_version, last.to_version, last.actor) == (
        "promote", "champion", weak_v, good_v, "ab-test")
    assert last.details["ab"]["outcome"] == "promote" and router.models["champion"] == "good"
