"""Where torch.compile keeps the kernels it builds, and which sets of kernels this machine has built.

torch's inductor caches compiled kernels on disk (FX graph and AOTAutograd caches) under
``TORCHINDUCTOR_CACHE_DIR``; by default that is a folder in ``/tmp``, lost on reboot. greekfire points it
at a folder of its own in the user's cache home (``$XDG_CACHE_HOME/greekfire/torch-compile``, else
``~/.cache/greekfire/torch-compile``) unless ``TORCHINDUCTOR_CACHE_DIR`` is already set.

A *set* of kernels (those one kind of pricing run uses, named by a key) is marked built once a process has
compiled all of them into that cache: a cold compile costs minutes, a warm one seconds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from greekfire.core.settings import env_get, env_set

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
STALE_LOCK_S = 1800.0
"""A build lock older than this (seconds), or naming a process that is gone, belongs to a build that died;
a new build may take it."""


def compile_cache_dir() -> Path:
    """The folder torch.compile caches kernels in: ``TORCHINDUCTOR_CACHE_DIR`` when set, else greekfire's
    own under the user's cache home."""
    given = env_get(CACHE_ENV)
    if given:
        return Path(given)
    home = env_get("XDG_CACHE_HOME")
    if not home:
        try:
            home = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory to be found
            import tempfile

            home = tempfile.gettempdir()
    return Path(home) / "greekfire" / "torch-compile"


def use_compile_cache() -> Path:
    """Point torch.compile at :func:`compile_cache_dir` (call before the first compile); returns it."""
    path = compile_cache_dir()
    env_set(CACHE_ENV, str(path), overwrite=False)
    return path


def _marker(key: str) -> Path:
    return compile_cache_dir() / "greekfire" / f"{key}.built"


def kernels_built(key: str) -> bool:
    """Whether the set of kernels ``key`` has been compiled into the cache on this machine."""
    return _marker(key).is_file()


def built_seconds(key: str) -> float | None:
    """How long building the set ``key`` took (seconds), or None when it has not been built."""
    try:
        return float(json.loads(_marker(key).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_built(key: str, seconds: float) -> None:
    """Record that the set of kernels ``key`` is in the cache (its build took ``seconds``)."""
    path = _marker(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"seconds": round(seconds, 1), "when": time.time()}))
    tmp.replace(path)


def take_build_lock(key: str) -> bool:
    """Claim the build of ``key`` for this machine (False when another live build holds it)."""
    path = _marker(key).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if time.time() - path.stat().st_mtime > STALE_LOCK_S or not _alive(int(path.read_text() or 0)):
            path.unlink(missing_ok=True)
    except (FileNotFoundError, ValueError):
        pass
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def release_build_lock(key: str) -> None:
    """Drop the build lock of ``key``."""
    _marker(key).with_suffix(".lock").unlink(missing_ok=True)
