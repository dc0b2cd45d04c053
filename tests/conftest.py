"""Shared test fixtures.

``need(condition, reason)`` is how a test says it needs a server, a binary or the shared data: on a
user's machine it skips with the reason; under CI (``CI=true``) it fails, so CI never passes by skipping.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


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
    return url


@pytest.fixture
def tmp_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point greekfire's local state at a temporary folder; clears GREEKFIRE_* variables."""
    for k in list(os.environ):
        if k.startswith("GREEKFIRE_"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GREEKFIRE_HOME", str(tmp_path / "home"))
    return tmp_path
