"""Acceptance 3 of the production trainer: a full cycle against a real MLflow tracking server (PostgreSQL backend
store, artifacts on moto's S3 server) with the audit table on PostgreSQL and metrics on a pushgateway:

train (smoke, tiny) -> register -> gate (a better model passes, a worse one is refused) -> promote -> A/B on the
inference server with observed prices under which the challenger is worse -> automatic rollback -> a manual
rollback -> the audit history read back (who, when, why, from, to).

Skips with the reason where mlflow, PostgreSQL, moto or the pushgateway is missing; fails instead under CI=true.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import pytest

from conftest import command_env, free_port, need, need_binary
from greekfire.core.errors import UnavailableError
from greekfire.core.settings import load_settings
from greekfire.ml.config import compose_experiment
from greekfire.ml.data import load_pricing_data
from greekfire.ml.train import train_pricing
from greekfire.training.mlflow_server import (
    drop_database,
    ensure_database,
    mlflow_binary,
    start_mlflow_server,
)
from object_stores import _server

BUCKET = "greekfire-mlflow"
TINY = ["data.n_samples=3000", "tracking.tensorboard=false", "trainer.log_every_n_steps=1"]


def _pg_database(base_url: str, prefix: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(base_url).set(database=f"{prefix}_{uuid.uuid4().hex[:8]}").render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def mlflow_stack(postgres_url: str, moto_s3: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, Any]]:
    """An MLflow server on a fresh PostgreSQL database with S3 artifacts on moto, an audit database, a pushgateway."""
    need(mlflow_binary() is not None, "the mlflow command is not installed (the ml extra has it)")
    gateway = need_binary("prometheus-pushgateway")
    work = tmp_path_factory.mktemp("mlflow")
    moto_s3["s3"].create_bucket(Bucket=BUCKET)
    key, secret = moto_s3["keys"]["admin"]
    backend = _pg_database(postgres_url, "greekfire_mlflow")
    audit = _pg_database(postgres_url, "greekfire_audit")
    env = {"MLFLOW_S3_ENDPOINT_URL": moto_s3["endpoint"], "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        ensure_database(backend)
        ensure_database(audit)
        server = start_mlflow_server(backend, f"s3://{BUCKET}/artifacts", workdir=work, env=env)
    except UnavailableError as exc:
        drop_database(backend)
        drop_database(audit)
        need(False, f"the MLflow server cannot start: {exc}")
        raise
    port = free_port()
    argv = [gateway, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="]
    try:
        with _server(argv, port, "pushgateway", env=command_env(), workdir=work):
            yield {"url": server.url, "audit": audit, "s3": moto_s3["s3"], "pushgateway": f"127.0.0.1:{port}",
                   "server": server}
    finally:
        server.stop()
        drop_database(backend)
        drop_database(audit)


def test_train_register_gate_promote_ab_rollback_audit(mlflow_stack: dict[str, Any], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from mlflow.tracking import MlflowClient

    from greekfire.api.pricing import build_app
    from greekfire.training.ab import router_from_registry
    from greekfire.training.compare import compare_runs
    from greekfire.training.registry import GateFailed, ModelRegistry

    s = load_settings(overrides={
        "home": str(tmp_path), "training.runs_dir": str(tmp_path / "runs"), "training.torch_threads": 1,
        "training.mlflow_tracking_uri": mlflow_stack["url"], "training.pushgateway_url": mlflow_stack["pushgateway"],
        "models.audit_url": mlflow_stack["audit"], "models.name": "cycle-model",
        "models.ab_challenger_weight": 0.5, "models.ab_min_samples": 15,
    })
    # -- train: a champion, a better candidate, a much worse one (same data), and a run that fails
    base = compose_experiment("smoke", [*TINY, "trainer.max_epochs=1", "optim.lr=0.002"])
    better = compose_experiment("smoke", [*TINY, "trainer.max_epochs=4", "optim.lr=0.004"])
    worse = compose_experiment("smoke", [*TINY, "trainer.max_epochs=1", "optim.lr=0.00001"])
    data = load_pricing_data(base.data)
    r1, r2, r3 = (train_pricing(c, s, data=data) for c in (base, better, worse))

    class Boom(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            raise RuntimeError("worker lost its disk")

    with pytest.raises(RuntimeError):
        train_pricing(compose_experiment("smoke", [*TINY, "name=doomed"]), s, data=data, callbacks=[Boom()])

    # -- tracking: metrics, params, composed config, data version and commit; artifacts landed on S3
    client = MlflowClient(mlflow_stack["url"])
    run = client.get_run(r2.mlflow_run_id)
    assert run.data.tags["greekfire.data_version"] == data.fingerprint
    assert run.data.tags["mlflow.source.git.commit"]
    assert run.data.params["cfg.optim.lr"] == "0.004" and "test_rmse" in run.data.metrics
    assert len(client.get_metric_history(r2.mlflow_run_id, "val_loss")) == 4
    keys = [o["Key"] for o in mlflow_stack["s3"].list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(k.endswith(f"{r2.mlflow_run_id}/artifacts/model/best.ckpt") for k in keys)
    assert any(k.endswith(f"{r2.mlflow_run_id}/artifacts/config.json") for k in keys)
    doomed = client.search_runs([client.get_experiment_by_name("doomed").experiment_id])[0]
    assert doomed.info.status == "FAILED" and "worker lost its disk" in doomed.data.tags["greekfire.error"]
    with urllib.request.urlopen(f"http://{mlflow_stack['pushgateway']}/metrics", timeout=5) as resp:
        pushed = resp.read().decode()
    assert f'greekfire_training_run_success{{instance="",job="greekfire_training",run="smoke-{r2.version}"}} 1' in pushed
    assert 'greekfire_training_run_success{instance="",job="greekfire_training",run="doomed-' in pushed
    assert "greekfire_training_run_error_info" in pushed and 'error="RuntimeError"' in pushed
    cmp = compare_runs([r1.mlflow_run_id, r2.mlflow_run_id], s, out_dir=tmp_path / "cmp")
    assert {p.name for p in cmp.plots} == {"train_loss.png", "val_loss.png"}

    # -- register, gate, promote
    reg = ModelRegistry(s)
    v1, v2, v3 = (reg.register(r.mlflow_run_id) for r in (r1, r2, r3))
    assert (v1, v2, v3) == ("1", "2", "3")
    assert reg.gate(v1).passed  # no champion yet
    reg.promote(v1, actor="ci", reason="first model")
    assert reg.gate(v2).passed, reg.gate(v2).reason
    with pytest.raises(GateFailed):
        reg.promote(v3, alias="challenger", actor="ci", reason="nightly")
    reg.promote(v2, alias="challenger", actor="ci", reason="nightly retrain")
    assert (reg.alias_version("champion"), reg.alias_version("challenger")) == (v1, v2)

    # -- A/B on the inference server: observed prices follow the champion, so the challenger errs more
    router = router_from_registry(s, reg, seed=11)
    champion_model = router.models["champion"]
    app = build_app(s, None, ab=router)
    rows = data.test["contract"]
    rng = random.Random(5)
    variants: dict[str, int] = {"champion": 0, "challenger": 0}
    with TestClient(app) as http:
        for i in range(600):
            row = rows[i % len(rows)].tolist()
            ans = http.post("/v1/price", json={"contract": [row]}).json()
            variants[ans["variant"]] += 1
            import torch

            truth = float(champion_model(torch.tensor([row]))[0]) + rng.gauss(0.0, 1e-4)
            obs = http.post("/v1/observed", json={"request_id": ans["request_id"], "price": [truth]})
            assert obs.status_code == 200, obs.text
            if obs.json()["decision"]["outcome"] != "continue":
                break
        state = http.get("/v1/ab").json()
    assert state["decision"]["outcome"] == "rollback", state
    assert state["applied"]["action"] == "rollback" and variants["challenger"] >= 15
    assert state["stats"]["challenger"]["mean"] > state["stats"]["champion"]["mean"]
    assert reg.alias_version("challenger") is None and reg.alias_version("champion") == v1

    # -- a manual promotion, then a rollback to the version before it
    reg.promote(v2, actor="alice", reason="offline metrics better; retry without A/B")
    reg.rollback(actor="bob", reason="desk reports mispriced wings")
    assert reg.alias_version("champion") == v1

    # -- the audit history, read back by the command line from PostgreSQL
    env = command_env(GREEKFIRE_TRAINING__MLFLOW_TRACKING_URI=mlflow_stack["url"],
                      GREEKFIRE_MODELS__AUDIT_URL=mlflow_stack["audit"], GREEKFIRE_MODELS__NAME="cycle-model",
                      GREEKFIRE_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "greekfire.cli", "models", "history", "--json"], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    hist = json.loads(out.stdout)["history"]
    got = [(e["action"], e["alias"], e["from_version"], e["to_version"], e["actor"]) for e in hist]
    assert got == [
        ("promote", "champion", None, v1, "ci"),
        ("refused", "challenger", None, v3, "ci"),
        ("promote", "challenger", None, v2, "ci"),
        ("rollback", "challenger", v2, v1, "ab-test"),
        ("promote", "champion", v1, v2, "alice"),
        ("rollback", "champion", v2, v1, "bob"),
    ]
    assert hist[3]["reason"].startswith("A/B mSPRT rollback") and hist[5]["reason"] == "desk reports mispriced wings"
    assert all(e["at"].endswith("+00:00") for e in hist)
