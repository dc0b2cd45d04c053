"""STAND-IN kill switch with the real module's interface, without the HTTP endpoint (replaced at merge)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class KillSwitch:
    def __init__(self, file: Path | str | None = None, http_port: int | None = None,
                 signals: Sequence[int] = (signal.SIGUSR1,), *, http_host: str = "127.0.0.1") -> None:
        self.file = None if file is None else os.fspath(file)
        self.http_port = http_port
        self.signals = tuple(signals)
        self.tripped = False
        self.reason = ""
        self._old: dict[int, Any] = {}

    def start(self) -> KillSwitch:
        for sig in self.signals:
            with contextlib.suppress(ValueError):
                self._old[sig] = signal.signal(sig, lambda s, f: self.trip(f"signal {signal.Signals(s).name}"))
        self.poll()
        return self

    def stop(self) -> None:
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)

    def trip(self, reason: str = "manual") -> None:
        if not self.tripped:
            self.tripped, self.reason = True, reason

    def poll(self) -> bool:
        if not self.tripped and self.file is not None and os.access(self.file, os.F_OK):
            self.trip(f"file {self.file}")
        return self.tripped
