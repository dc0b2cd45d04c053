"""STAND-IN CPU placement (replaced by the real module at merge)."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator


def pin(cpu: int | None) -> int | None:
    """Pin this process to ``cpu`` (None: leave it); returns the CPU pinned or None."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    target = cpus[cpu % len(cpus)] if cpus else cpu
    os.sched_setaffinity(0, {target})
    return target


def set_realtime(priority: int = 50) -> tuple[bool, str]:
    return False, "stand-in: not attempted"


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()
