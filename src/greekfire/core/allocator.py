"""Process allocator tuning for large tensor batches (glibc's malloc).

torch allocates CPU tensors with malloc. glibc serves blocks of 128 KiB and more with a fresh ``mmap``
and gives them back on free (or trims them off its heap), so a batch kernel that writes seven fresh
1M-element outputs touches every page of 56 MB for the first time on each call, and the page faults
cost more than the arithmetic (measured: European price + Greeks, 1M options, 45M options/s on two
threads with glibc's defaults, 83M/s with freed memory kept). :func:`keep_freed_memory` keeps freed
blocks in the process instead. PyTorch's CPU tuning guide makes the same point about allocators.

The CLI applies it when ``quant.keep_freed_memory`` is on (the default); a program of your own that prices
large batches calls it once. It is process-wide and cannot be undone in the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit builds
MAX_MMAP_THRESHOLD_MB = 32

_applied: tuple[int, int] | None = None


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # a glibc system whose C library cannot be opened by name (unusual containers)
        return None


def keep_freed_memory(mmap_threshold_mb: int = MAX_MMAP_THRESHOLD_MB, trim_threshold_mb: int = 512) -> str:
    """Serve blocks up to ``mmap_threshold_mb`` MiB from malloc's heap and keep up to ``trim_threshold_mb``
    MiB of freed heap in the process (``mallopt`` M_MMAP_THRESHOLD and M_TRIM_THRESHOLD, as the
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variables would at start). The process then keeps
    up to that much memory it freed. Returns ``"ok"``, or why nothing was changed (not glibc, a value glibc
    refuses); never raises. Idempotent."""
    global _applied
    if not 0 < mmap_threshold_mb <= MAX_MMAP_THRESHOLD_MB:
        return f"mmap_threshold_mb={mmap_threshold_mb} is outside 1..{MAX_MMAP_THRESHOLD_MB}"
    if trim_threshold_mb < mmap_threshold_mb:
        return f"trim_threshold_mb={trim_threshold_mb} is below mmap_threshold_mb={mmap_threshold_mb}"
    want = (mmap_threshold_mb, trim_threshold_mb)
    if _applied == want:
        return "ok"
    libc = _libc()
    if libc is None:
        return f"no glibc to tune here ({platform.system()}, {platform.libc_ver()[0] or 'unknown libc'}): allocator left as is"
    mib = 1024 * 1024
    ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold_mb * mib) == 1
    ok = ok and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold_mb * mib) == 1
    if not ok:
        return "glibc's mallopt refused the values"
    _applied = want
    log.debug("malloc keeps freed blocks: mmap threshold %d MiB, trim threshold %d MiB", *want)
    return "ok"
