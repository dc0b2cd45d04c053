"""STAND-IN rings over multiprocessing.shared_memory (replaced by the real module at merge).

No care for memory ordering beyond x86's store order; enough for the pipeline's tests.
"""

from __future__ import annotations

import contextlib
import time
from multiprocessing import shared_memory

import numpy as np

_HDR = 1024  # counters: [0] head, [1] capacity, [2] consumers, [8 + 8 * i] tail of consumer i


def _open(name: str) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name=name)
    return shm


class _Base:
    def __init__(self, shm: shared_memory.SharedMemory, dtype: np.dtype, consumer: int) -> None:
        self._shm = shm
        self.name = shm.name
        self.dtype = np.dtype(dtype)
        self._ctr = np.ndarray((_HDR // 8,), np.int64, shm.buf, 0)
        self.capacity = int(self._ctr[1])
        self.consumers = int(self._ctr[2])
        self._mask = self.capacity - 1
        self._data = np.ndarray((self.capacity,), self.dtype, shm.buf, _HDR)
        self._c = consumer

    @classmethod
    def _make(cls, dtype: np.dtype, capacity: int, consumers: int, name: str | None) -> shared_memory.SharedMemory:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"capacity {capacity}: must be a power of 2")
        shm = shared_memory.SharedMemory(name=name, create=True, size=_HDR + capacity * np.dtype(dtype).itemsize)
        ctr = np.ndarray((_HDR // 8,), np.int64, shm.buf, 0)
        ctr[:] = 0
        ctr[1], ctr[2] = capacity, consumers
        return shm

    def _min_tail(self) -> int:
        return int(self._ctr[8 : 8 + 8 * self.consumers : 8].min())

    def publish(self, rec: object) -> bool:
        arr = np.zeros(1, self.dtype)
        arr[0] = rec
        return self.publish_batch(arr) == 1

    def publish_batch(self, recs: np.ndarray) -> int:
        head = int(self._ctr[0])
        n = min(len(recs), self.capacity - (head - self._min_tail()))
        if n <= 0:
            return 0
        i = head & self._mask
        first = min(n, self.capacity - i)
        self._data[i : i + first] = recs[:first]
        if n > first:
            self._data[: n - first] = recs[first:n]
        self._ctr[0] = head + n
        return n

    def available(self) -> int:
        return int(self._ctr[0] - self._ctr[8 + 8 * self._c])

    def consume(self, max_n: int) -> np.ndarray:
        tail = int(self._ctr[8 + 8 * self._c])
        i = tail & self._mask
        n = min(int(self._ctr[0]) - tail, max_n, self.capacity - i)
        return self._data[i : i + n]

    def release(self, n: int) -> None:
        self._ctr[8 + 8 * self._c] += n

    def wait(self, n: int = 1, strategy: str = "yield", timeout_s: float | None = None) -> int:
        end = None if timeout_s is None else time.monotonic() + timeout_s
        spins = 0
        while True:
            a = self.available()
            if a >= n:
                return a
            if end is not None and time.monotonic() >= end:
                return a
            spins += 1
            if strategy == "busy" and spins < 10_000:
                continue
            time.sleep(0 if strategy == "yield" and spins < 100 else 0.0001)

    def close(self) -> None:
        self._ctr = None  # type: ignore[assignment]
        self._data = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):
            self._shm.close()

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._shm.unlink()


class Ring(_Base):
    """Single producer, single consumer."""

    @classmethod
    def create(cls, dtype: np.dtype, capacity: int, name: str | None = None) -> Ring:
        return cls(cls._make(dtype, capacity, 1, name), dtype, 0)

    @classmethod
    def attach(cls, name: str, dtype: np.dtype) -> Ring:
        return cls(_open(name), dtype, 0)


class BroadcastRing(_Base):
    """One producer, many consumers, each with its own cursor."""

    @classmethod
    def create(cls, dtype: np.dtype, capacity: int, consumers: int, name: str | None = None) -> BroadcastRing:
        return cls(cls._make(dtype, capacity, consumers, name), dtype, 0)

    @classmethod
    def attach(cls, name: str, dtype: np.dtype, consumer: int) -> BroadcastRing:
        return cls(_open(name), dtype, consumer)
