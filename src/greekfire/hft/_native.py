"""The rings' compiled helper: ``_sync.c`` built with the system C compiler through cffi at first use.

The build is cached in the user's cache home (``$XDG_CACHE_HOME/greekfire/hft``, else ``~/.cache/...``;
a folder in the temp dir where that cannot be written),
keyed by a hash of the source, the Python ABI and the machine, so each machine compiles once (about a
second). Concurrent first uses each build in a private folder and move the result into place atomically.

Why compiled and not a library: the ``atomics`` package (PyPI) works on shared-memory buffers but costs
about 11 µs per load + store from Python on the reference machine, against 0.18 µs for this helper (cffi's
API mode), 0.27 µs for a numba intrinsic and 0.44 µs through ctypes; see docs/hft.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from greekfire.core.errors import UnavailableError
from greekfire.core.settings import env_get

SOURCE = Path(__file__).with_name("_sync.c")
CDEF = """
uint64_t gf_load(uintptr_t p);
void gf_store(uintptr_t p, uint64_t v);
uint64_t gf_min_tail(uintptr_t base, uint32_t consumers);
void gf_commit(uintptr_t base, uint64_t head);
int64_t gf_wait(uintptr_t base, uint64_t tail, uint64_t n, int64_t timeout_ns, int mode);
"""
_lock = threading.Lock()
_lib: Any = None


def cache_dir() -> Path:
    """Where the built helper is kept."""
    home = env_get("XDG_CACHE_HOME")
    if not home:
        try:
            home = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory
            home = tempfile.gettempdir()
    return Path(home) / "greekfire" / "hft"


def _module_name(src: str) -> str:
    key = "|".join([src, CDEF, sys.version, sysconfig.get_config_var("SOABI") or "", platform.machine()])
    return "_greekfire_sync_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lib() -> Any:
    """The helper's functions (cffi ``lib``); builds it on first use. UnavailableError when it cannot be
    built (no C compiler, no cffi/setuptools)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        src = SOURCE.read_text()
        name = _module_name(src)
        out = cache_dir()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only home (some containers): a private folder in the temp dir
            out = Path(tempfile.gettempdir()) / f"greekfire-hft-{os.getuid() if hasattr(os, 'getuid') else 0}"
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        target = out / f"{name}{suffix}"
        if not target.exists():
            try:
                import cffi

                out.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix="build-", dir=out))
                try:
                    ffi = cffi.FFI()
                    ffi.cdef(CDEF)
                    ffi.set_source(name, src, extra_compile_args=["-O2"])
                    built = Path(ffi.compile(tmpdir=str(tmp), verbose=False))
                    os.replace(built, target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            except Exception as exc:  # cffi missing, no compiler, read-only cache
                raise UnavailableError(
                    "the ring helper (greekfire/hft/_sync.c)",
                    f"{type(exc).__name__}: {exc}; it needs cffi, setuptools and a C compiler "
                    "(pip install 'greekfire[hft]'; apt-get install gcc)",
                ) from exc
        _lib = _load(target, name).lib
        return _lib
