"""Progress of long runs: the hook a library function calls, and the Rich bars a terminal shows.

A library function that can run for more than a few seconds takes ``progress: ProgressHook | None``
and calls it as ``progress(stage, done, total, unit)`` (``done`` of ``total`` units in that stage, e.g.
``("read", 4_194_304, 20_971_520, "bytes")``); it never draws anything itself. The command line turns the
calls into one Rich bar per stage with :func:`terminal_bars`, on a terminal only, so piped output and
``--json`` stay clean.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

ProgressHook = Callable[[str, int, int, str], None]
"""``(stage, done, total, unit)``: ``done`` of ``total`` ``unit`` (bytes, messages, events, runs)."""


class CountingReader(io.RawIOBase):
    """A readable binary stream over ``raw`` that reports the bytes read so far to ``progress`` (at most
    once per ``every`` bytes, and at the end of the stream), as stage ``stage`` of ``total`` bytes."""

    def __init__(self, raw: BinaryIO, total: int, progress: ProgressHook, stage: str = "read",
                 every: int = 1 << 20, start: int = 0) -> None:
        self.raw, self.total, self.progress, self.stage, self.every = raw, total, progress, stage, every
        self.done = start
        self._last = start

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.raw.readinto(b)  # type: ignore[attr-defined]
        if n is None:
            return 0
        self.done += n
        if n == 0 or self.done - self._last >= self.every:
            self._last = self.done
            self.progress(self.stage, self.done, self.total, "bytes")
        return int(n)


def read_file_bytes(path: Path, progress: ProgressHook | None = None, stage: str = "read") -> bytes:
    """A whole file's bytes, gunzipped as it is read when it starts with the gzip magic; ``progress`` hears
    the bytes read from disk so far (compressed bytes for a gzipped file). A truncated or corrupt gzip
    stream raises ``EOFError``, ``zlib.error`` or ``gzip.BadGzipFile``."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        src: BinaryIO = f
        if progress is not None:
            src = io.BufferedReader(CountingReader(f, path.stat().st_size, progress, stage))
        if not gzipped:
            return src.read()
        with gzip.GzipFile(fileobj=src) as gz:
            return gz.read()


class _Bars:
    """One Rich task per stage, created on the stage's first call."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int, unit: str) -> None:
        task = self.tasks.get(stage)
        if task is None:
            task = self.tasks[stage] = self.bar.add_task(stage, total=max(total, 1), unit=unit)
        self.bar.update(task, completed=done, total=max(total, 1))


@contextmanager
def terminal_bars(console: Any, enabled: bool = True) -> Iterator[ProgressHook | None]:
    """A :data:`ProgressHook` drawing Rich bars (stage, bar, done/total unit, rate, elapsed) on
    ``console`` -- or ``None`` where ``enabled`` is false or the console is not a terminal (a pipe, a file),
    so nothing extra is written there. The finished bars stay on screen: they say what was done and how
    long it took."""
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} {task.fields[unit]}"), TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        yield _Bars(bar)
