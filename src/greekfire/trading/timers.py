"""Strategy timers: callbacks due at a time, fired by the engine loop between event batches.

A timer is ``(due_ns, id, fn, interval_ns)`` on a heap; a repeating one is put back ``interval_ns`` after
the time it was due. Checking costs one comparison per poll when nothing is due.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class Timers:
    """Timers by id. ``call(owner, fn, now_ns)`` runs a due callback (the engine isolates its errors)."""

    def __init__(self, call: Callable[[str, Callable[[int], None], int], None]) -> None:
        self._call = call
        self.heap: list[tuple[int, int, str, Callable[[int], None], int]] = []
        self._live: set[int] = set()
        self._next_id = 0

    def add(self, owner: str, due_ns: int, fn: Callable[[int], None], interval_ns: int = 0) -> int:
        """Call ``fn(now_ns)`` at ``due_ns`` (then every ``interval_ns`` when > 0); returns the timer id."""
        self._next_id += 1
        heapq.heappush(self.heap, (due_ns, self._next_id, owner, fn, interval_ns))
        self._live.add(self._next_id)
        return self._next_id

    def cancel(self, timer_id: int) -> bool:
        """Stop a timer; True when it was still set (it leaves the heap when it comes due)."""
        if timer_id in self._live:
            self._live.discard(timer_id)
            return True
        return False

    def fire_due(self, now_ns: int) -> int:
        """Run every timer due by ``now_ns``, in due order; returns how many ran."""
        heap, n = self.heap, 0
        while heap and heap[0][0] <= now_ns:
            due, tid, owner, fn, interval = heapq.heappop(heap)
            if tid not in self._live:
                continue
            if interval > 0:  # next due one interval on; a late poll skips the missed ones, never bursts
                nxt = due + interval
                heapq.heappush(heap, (nxt if nxt > now_ns else now_ns + interval, tid, owner, fn, interval))
            else:
                self._live.discard(tid)
            self._call(owner, fn, now_ns)
            n += 1
        return n
