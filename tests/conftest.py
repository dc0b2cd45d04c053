"""Shared test fixtures.

``need(condition, reason)`` is how a test says it needs a server, a binary or the shared data: on a
user's machine it skips with the reason; under CI (``CI=true``) it fails, so CI never passes by skipping.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `greekfire price` run by a test (and every command it starts) never leaves a minutes-long kernel build
# behind in the background; the test of that build turns it back on for its own command
NO_BACKGROUND_COMPILE = {"GREEKFIRE_QUANT__BACKGROUND_COMPILE": "false"}
os.environ.update(NO_BACKGROUND_COMPILE)


def command_env(**extra: str) -> dict[str, str]:
    """The environment for a greekfire command a test starts: this one without the caller's GREEKFIRE_*
    settings, with no background kernel build (``quant.background_compile`` false), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREEKFIRE_")}
    env.update(NO_BACKGROUND_COMPILE)
    env.update(extra)
    return env
SHARED_DATA = ROOT.parent / "shared" / "data"


def cuda_test_device() -> str | None:
    """The device tests/cuda runs on: ``cuda`` where torch sees a GPU, else None (the folder is not
    collected). ``GREEKFIRE_CUDA_TESTS_DEVICE=cpu`` runs that suite on the CPU, to check its own code on a
    machine without a GPU (its CPU-vs-device comparisons then prove nothing about CUDA)."""
    forced = os.environ.get("GREEKFIRE_CUDA_TESTS_DEVICE")
    if forced:
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else None


# tests/cuda checks the CUDA paths against the CPU ones; CI and laptops have no GPU, so it is collected
# only where one is present (the report header says which), and never counted as skipped
collect_ignore = [] if cuda_test_device() else ["cuda"]


def pytest_report_header(config: pytest.Config) -> str:
    dev = cuda_test_device()
    return f"tests/cuda: running on {dev}" if dev else "tests/cuda: not collected (torch sees no CUDA device)"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`make test`'s scheduler (pytest-xdist, ``--dist loadfile``): each test file is one unit of work for a
    worker, so its tests run in file order and its module fixtures (a Prometheus stack, a trading server)
    start once; the docs examples are one unit a page (a page's blocks build on each other, pages do not).
    Not ``--dist loadgroup`` with ``xdist_group`` marks: under pytest 9.2, xdist 3.8 drops the groups without a
    word and spreads a file's tests over the workers (pytest-xdist issue 1386)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FileOrDocsPage(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FileOrDocsPage(config, log)


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to under `make test`'s workers: its file, or ``<file>::<page>`` for a
    docs example (``test_docs_example[docs/quant.md:17:python]`` -> ``...::docs/quant.md``)."""
    file, _, test = nodeid.partition("::")
    page = re.fullmatch(r"test_docs_example\[(.+):\d+:\w+\]", test)
    return f"{file}::{page.group(1)}" if page else file


def in_ci() -> bool:
    return (os.environ.get("CI") or "").strip().lower() in {"1", "true", "yes"}


def need(condition: bool, reason: str) -> None:
    """Skip (laptop) or fail (CI) unless ``condition`` holds."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true and a test requirement is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def need_binary(name: str) -> str:
    """Path of an executable on PATH, or skip/fail with the reason."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    need(path is not None, f"`{name}` is not installed (scripts/test-services.sh installs it)")
    assert path is not None
    return path


def need_module(name: str) -> Any:
    """Import a module a test needs (a dev extra), or skip/fail with the reason."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        need(False, f"python package {name!r} is not installed ({exc}); `make test` installs the dev extras")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def poll_until(
    cond: Callable[[], object], timeout_s: float = 5.0, step_s: float = 0.02, *, ignore: tuple[type[BaseException], ...] = ()
) -> bool:
    """Call ``cond`` every ``step_s`` seconds until it returns something true (True) or ``timeout_s`` seconds
    pass (False, after one last try). Exceptions of the types in ``ignore`` count as "not yet" (a server that
    is still starting refuses connections)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cond():
                return True
        except ignore:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(step_s)


def run_in_pty(
    argv: list[str], *, timeout_s: float = 300.0, env: dict[str, str] | None = None, cwd: Path | None = None,
    columns: int = 120,
) -> tuple[int, str]:
    """Run ``argv`` with its stdout and stderr on a pseudo-terminal (so Rich sees a terminal and draws its
    progress bars, as for a user at a shell) and return ``(exit code, everything it wrote)``. The output keeps
    the terminal control sequences; a test looks for the bar's text in it. The process is killed after
    ``timeout_s`` seconds (exit code -9)."""
    import pty
    import select
    import subprocess

    master, slave = pty.openpty()
    full_env = {**os.environ, **(env or {}), "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"}
    full_env.pop("NO_COLOR", None)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=full_env, cwd=cwd, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                break
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed its side
                    data = b""
                if not data:
                    if proc.poll() is not None:
                        break
                    continue
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    rc = proc.wait()
    return rc, b"".join(chunks).decode("utf-8", errors="replace")


def pricing_checkpoint(folder: Path, preset: str = "smoke", overrides: list[str] | None = None) -> Path:
    """A Lightning-loadable checkpoint (``folder/<preset>.ckpt``) of an untrained but input-scaled pricing
    model of ``preset``: what a server or a loader needs, without a training loop."""
    import lightning as L
    import torch

    from greekfire.ml.config import compose_experiment
    from greekfire.ml.data import load_pricing_data
    from greekfire.ml.module import CHECKPOINT_FORMAT, FORMAT_KEY, module_for

    cfg = compose_experiment(preset, overrides or [])
    torch.manual_seed(0)
    module = module_for(cfg, load_pricing_data(cfg.data))
    path = folder / f"{preset}.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__, FORMAT_KEY: CHECKPOINT_FORMAT}, path)
    return path


def load_benchmark_script(stem: str) -> Any:
    """benchmarks/<stem>.py imported as the module ``bench_<stem>`` (the benchmark scripts are not a package)."""
    path = ROOT / "benchmarks" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{stem}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{stem}"] = mod
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder ``../shared/data`` beside the project; skip (fail in CI) where absent."""
    need(SHARED_DATA.is_dir(), f"the shared real-data folder {SHARED_DATA.name!r} beside the project is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the loopback PostgreSQL test database; skip (fail in CI) where no server answers."""
    url = os.environ.get("GREEKFIRE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/greekfire_test")
    need(port_open("127.0.0.1", 5432), "no PostgreSQL server on 127.0.0.1:5432 (scripts/test-services.sh starts one)")
    need(database_ready(url), f"PostgreSQL answers on 127.0.0.1:5432 but the database of {url!r} can neither be "
                              "opened nor created (scripts/test-services.sh creates it)")
    return url


def database_ready(url: str) -> bool:
    """Whether the database of ``url`` opens, after creating it where the server answers but the database
    does not exist yet (what scripts/test-services.sh does, so `make test` alone also works)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import URL, make_url

    def connect(u: URL, sql: str | None = None) -> None:
        engine = sa.create_engine(u, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                if sql:
                    conn.exec_driver_sql(sql)
        finally:
            engine.dispose()

    target = make_url(url)
    try:
        connect(target)
        return True
    except sa.exc.SQLAlchemyError as exc:
        if "does not exist" not in str(exc):
            return False
    try:
        connect(target.set(database="postgres"), f'CREATE DATABASE "{target.database}"')
        return True
    except sa.exc.SQLAlchemyError:
        return False


@pytest.fixture
def tmp_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point greekfire's local state at a temporary folder; clears GREEKFIRE_* variables (but keeps the
    background kernel build off)."""
    for k in list(os.environ):
        if k.startswith("GREEKFIRE_") and k not in NO_BACKGROUND_COMPILE:
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GREEKFIRE_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.fixture(scope="session")
def dev() -> Any:
    """tests/cuda's device under test (``cuda``, or what GREEKFIRE_CUDA_TESTS_DEVICE names)."""
    import torch

    name = cuda_test_device()
    assert name is not None, "tests/cuda is collected only where a CUDA device (or an override) is present"
    return torch.device(name)


# The three object-store servers (tests/object_stores.py), each started once per session on a free port.
@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """moto's S3 server with IAM auth on (users ``admin`` and ``outsider``); skip (fail in CI) where absent."""
    from object_stores import moto_s3 as start

    with start(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """gcp-storage-emulator (GCS JSON API, no auth); skip (fail in CI) where absent."""
    from object_stores import gcs_emulator as start

    with start(tmp_path_factory.mktemp("gcs")) as server:
        yield server


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Azurite's Blob service (Shared Key and SAS checked); skip (fail in CI) where absent."""
    from object_stores import azurite as start

    with start(tmp_path_factory.mktemp("azurite")) as server:
        yield server
