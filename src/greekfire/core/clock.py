"""Clocks: one place for wall time (UTC) and monotonic time, so tests can replace them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def monotonic_ns() -> int:
    """Monotonic nanoseconds, for latency measurement (never goes backwards)."""
    return time.perf_counter_ns()


def wall_ns() -> int:
    """Nanoseconds since the Unix epoch (UTC)."""
    return time.time_ns()


class ManualClock:
    """A clock that moves only when told to; for simulations and deterministic tests.

    Times are nanoseconds since the epoch.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now = int(start_ns)

    def now_ns(self) -> int:
        """Current simulated time in nanoseconds."""
        return self._now

    def advance(self, ns: int) -> int:
        """Move forward by ``ns`` nanoseconds (must be >= 0); returns the new time."""
        if ns < 0:
            raise ValueError(f"ManualClock.advance: ns={ns} must be >= 0")
        self._now += int(ns)
        return self._now


def stop_when(stop: threading.Event | float | None) -> Callable[[], bool]:
    """A predicate that turns True once ``stop`` says so: an Event that gets set, a duration in seconds from
    now (wall monotonic clock), or never (None: the caller runs until interrupted)."""
    if isinstance(stop, threading.Event):
        return stop.is_set
    if stop is None:
        return lambda: False
    t_end = time.monotonic() + float(stop)
    return lambda: time.monotonic() >= t_end
