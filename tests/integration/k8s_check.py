"""Helpers the Kubernetes manifest tests share (test_training_deploy.py, test_deploy_k8s.py): the dev extra's
tools, rendering a kustomization with ``kubectl kustomize``, walking the rendered objects' pod specs, and
mapping ``GREEKFIRE_<SECTION>__<KEY>`` variables onto the settings models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from conftest import need_binary

# The Kubernetes version the manifests are checked against (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.32.0"


def tool(name: str) -> str:
    """An executable of the dev extra (beside this Python) or on PATH; skip (fail in CI) where absent."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return need_binary(name)


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize <folder>`` renders (asserts it succeeds)."""
    proc = subprocess.run([tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind, in render order."""
    return [o for o in objects if o["kind"] == kind]


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside a workload (Deployment, DaemonSet, StatefulSet, Job, CronJob, PyTorchJob replicas)."""
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    return [spec["template"]["spec"]]


def settings_field(env_name: str) -> str | None:
    """The dotted settings path (``api.trading_port``) a ``GREEKFIRE_<SECTION>__<KEY>`` variable sets, or None
    when no field of the settings models has that name (section and key matched case-insensitively, aliases
    included, as pydantic-settings reads them)."""
    from greekfire.core.settings import ENV_PREFIX, Settings

    if not env_name.upper().startswith(ENV_PREFIX):
        return None
    model: Any = Settings
    path = []
    for part in env_name[len(ENV_PREFIX):].lower().split("__"):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None  # a key below a leaf
        names = {(f.alias or k).lower(): k for k, f in model.model_fields.items()} | {
            k.lower(): k for k in model.model_fields}
        if part not in names:
            return None
        path.append(names[part])
        model = model.model_fields[names[part]].annotation
    return ".".join(path)
