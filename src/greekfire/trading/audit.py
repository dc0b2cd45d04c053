"""Append-only audit log of order transitions, fill problems and risk actions.

Entries are appended in memory on the hot path (a tuple, no formatting) and written out in batches by
:meth:`AuditLog.flush` to an optional JSON-lines file (opened in append mode; nothing is ever rewritten) and
to the snapshot store. There is no API to change or delete an entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class AuditLog:
    """Sequence-numbered entries ``(seq, ts_ns, kind, ref, data)``; ``kind`` e.g. 'order', 'risk', 'fill'."""

    def __init__(self, path: str | Path | None = None, start_seq: int = 0) -> None:
        self._entries: list[tuple[int, int, str, str, dict[str, Any]]] = []
        self._seq = start_seq
        self._flushed = 0
        self._path = Path(path) if path else None
        if self._path:
            self._path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, ts_ns: int, kind: str, ref: str, data: dict[str, Any]) -> int:
        """Add one entry; returns its sequence number."""
        self._seq += 1
        self._entries.append((self._seq, ts_ns, kind, ref, data))
        return self._seq

    def append_many(self, ts_ns: int, kind: str, entries: list[tuple[str, dict[str, Any]]]) -> int:
        """Add one entry per ``(ref, data)``, all at ``ts_ns``; returns the first one's sequence number."""
        first = self._seq + 1
        self._entries.extend([(seq, ts_ns, kind, ref, data) for seq, (ref, data) in enumerate(entries, first)])
        self._seq += len(entries)
        return first

    def resume(self, seq: int) -> None:
        """Continue numbering after ``seq`` (the last entry stored before a restart)."""
        if self._entries[self._flushed :]:
            raise ValueError("resume() with unflushed entries would renumber them")
        self._seq = max(self._seq, int(seq))

    @property
    def seq(self) -> int:
        return self._seq

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[int, int, str, str, dict[str, Any]]]:
        return iter(tuple(self._entries))

    def entries(self, kind: str | None = None, ref: str | None = None) -> list[tuple[int, int, str, str, dict[str, Any]]]:
        """A copy of the entries, optionally only one kind and/or one reference (order id)."""
        return [e for e in self._entries if (kind is None or e[2] == kind) and (ref is None or e[3] == ref)]

    def unflushed(self) -> list[tuple[int, int, str, str, dict[str, Any]]]:
        """Entries not yet written out by :meth:`flush`."""
        return self._entries[self._flushed :]

    def flush(self) -> list[tuple[int, int, str, str, dict[str, Any]]]:
        """Append the new entries to the file (if any); returns them for the snapshot store."""
        new = self._entries[self._flushed :]
        if new and self._path:
            with self._path.open("a", encoding="utf-8") as fh:
                for seq, ts, kind, ref, data in new:
                    fh.write(json.dumps({"seq": seq, "ts_ns": ts, "kind": kind, "ref": ref, **data}, default=str))
                    fh.write("\n")
        self._flushed = len(self._entries)
        # keep memory bounded on long runs: what is flushed can be dropped from memory
        if len(self._entries) > 200_000:
            del self._entries[: self._flushed - 50_000]
            self._flushed = len(self._entries)
        return new
