"""The NVML boundary: the one place greekfire touches the NVIDIA driver library.

Everything else in :mod:`greekfire.gpu` receives the NVML module as a value (``nvml=``) or calls
:func:`nvml_module`, which returns :data:`pynvml`. Tests replace that single attribute (or pass a fake
module object) to simulate GPUs; nothing of ours is mocked.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml  # pure-Python ctypes bindings: importing is cheap, the driver library loads in nvmlInit

T = TypeVar("T")

_init_lock = threading.Lock()


def nvml_module() -> Any:
    """The NVML bindings in use (``pynvml`` unless a test replaced this module's ``pynvml`` attribute)."""
    return pynvml


def text(value: Any) -> str:
    """NVML returns bytes or str depending on the bindings' version; always give str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value)


def error_reason(exc: BaseException) -> str:
    """A short human reason for an NVML failure (no driver, no library, ...)."""
    return f"{type(exc).__name__}: {exc}".strip()


def is_nvml_error(exc: BaseException, nvml: Any) -> bool:
    """True for the bindings' own error type (``NVMLError`` and its generated subclasses)."""
    err = getattr(nvml, "NVMLError", None)
    return isinstance(err, type) and isinstance(exc, err)


def try_call(nvml: Any, fn: Callable[..., T], *args: Any, default: T | None = None) -> T | None:
    """Call one NVML query; an NVML error (e.g. NOT_SUPPORTED on this board) gives ``default``."""
    try:
        return fn(*args)
    except Exception as exc:
        if is_nvml_error(exc, nvml) or isinstance(exc, AttributeError | OSError):
            return default
        raise


class NvmlSession:
    """``with NvmlSession(nvml) as s:`` initialises NVML and shuts it down (the bindings count the pairs).

    ``s.ok`` is False and ``s.reason`` says why when the library or the driver is missing or errors; the
    ``with`` block still runs so callers can fall back to the CPU device without an exception.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self.nvml = nvml if nvml is not None else nvml_module()
        self.ok = False
        self.reason = ""

    def __enter__(self) -> NvmlSession:
        with _init_lock:
            try:
                self.nvml.nvmlInit()
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, or a broken install
                self.reason = f"NVML unavailable ({error_reason(exc)})"
                return self
            self.ok = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.ok:
            return
        # shutdown failures must not mask the caller's result
        with _init_lock, contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()
