"""The HFT kill switch: tripped by a signal, an HTTP request or a file, read by the trading loop every iteration.

:class:`KillSwitch` sets ``tripped`` (a plain attribute: reading it costs one attribute load) when

* the process receives one of ``signals`` (SIGUSR1 by default; ``kill -USR1 <pid>``),
* someone sends ``POST /kill`` to its HTTP endpoint (``curl -X POST http://127.0.0.1:PORT/kill -d 'reason'``;
  ``GET /status`` answers ``{"tripped": ..., "reason": ..., "tripped_ns": ...}``), bound to ``http_host``
  (loopback by default: anyone who can reach the port can trip it, nobody can reset it there),
* the file ``file`` exists (``touch /path/KILL``): :meth:`KillSwitch.poll` checks it with one ``os.access``
  call, about a microsecond, so the loop calls it every iteration. A file already there at start trips it.

:func:`guard_loop` is the loop shape that honours it: check, then one step; once tripped, ``on_kill`` (cancel
every order, stop the gateway) runs before any further step, so at most the step that was running when the
switch tripped completes. A tripped switch stays tripped until :meth:`KillSwitch.reset`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("greekfire.hft.kill")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        if self.path.rstrip("/") != "/kill":
            self._reply(404, {"error": f"no such endpoint {self.path}; POST /kill or GET /status"})
            return
        n = int(self.headers.get("Content-Length") or 0)
        text = self.rfile.read(min(n, 4096)).decode("utf-8", "replace").strip() if n > 0 else ""
        ks = self.server.kill
        ks.trip(f"http: {text or 'POST /kill'} from {self.client_address[0]}")
        self._reply(200, ks.status())

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/status":
            self._reply(404, {"error": f"no such endpoint {self.path}; POST /kill or GET /status"})
            return
        self._reply(200, self.server.kill.status())

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        log.debug("kill switch http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    kill: KillSwitch


class KillSwitch:
    """A kill switch (see the module docstring). ``file``: a path whose existence trips it; ``http_port``: the
    port of the HTTP endpoint (0: any free port, see :attr:`http_port` after :meth:`start`; None: no endpoint);
    ``signals``: signal numbers that trip it (installed by :meth:`start`, only possible in the main thread:
    elsewhere the reason is in :attr:`problems`)."""

    def __init__(
        self,
        file: Path | str | None = None,
        http_port: int | None = None,
        signals: Sequence[int] = (signal.SIGUSR1,),
        *,
        http_host: str = "127.0.0.1",
    ) -> None:
        self.file = None if file is None else os.fspath(file)
        self.http_host, self.http_port = http_host, http_port
        self.signals = tuple(signals)
        self.tripped = False
        self.reason = ""
        self.tripped_ns = 0
        self.problems: list[str] = []
        self._old: dict[int, Any] = {}
        self._http: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> KillSwitch:
        """Install the signal handlers, start the HTTP endpoint, look at the file once; returns self."""
        for sig in self.signals:
            try:
                self._old[sig] = signal.signal(sig, self._on_signal)
            except ValueError as e:  # not the main thread
                self.problems.append(f"signal {signal.Signals(sig).name} not installed: {e}")
                log.warning("kill switch: signal %s not installed: %s", signal.Signals(sig).name, e)
        if self.http_port is not None:
            srv = _Server((self.http_host, self.http_port), _Handler)
            srv.kill = self
            self.http_port = srv.server_address[1]
            self._http = srv
            self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                                            name="greekfire-kill-http", daemon=True)
            self._thread.start()
        self.poll()
        return self

    def stop(self) -> None:
        """Put the previous signal handlers back and stop the HTTP endpoint (the tripped state stays)."""
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
        self._old.clear()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    def __enter__(self) -> KillSwitch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- state
    def trip(self, reason: str = "manual") -> None:
        """Trip it (the first reason is kept)."""
        with self._lock:
            if self.tripped:
                return
            self.reason = reason
            self.tripped_ns = time.time_ns()
            self.tripped = True
        log.error("kill switch tripped: %s", reason)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # a signal handler runs between two bytecodes of the main thread: no lock, no logging here
        if not self.tripped:
            self.reason = f"signal {signal.Signals(signum).name}"
            self.tripped_ns = time.time_ns()
            self.tripped = True

    def poll(self) -> bool:
        """``tripped``, after checking the kill file (one ``os.access``); call it once per loop iteration."""
        if not self.tripped and self.file is not None and os.access(self.file, os.F_OK):
            self.trip(f"file {self.file}")
        return self.tripped

    def reset(self) -> None:
        """Clear it (a kill file still present trips it again at the next poll)."""
        with self._lock:
            self.tripped, self.reason, self.tripped_ns = False, "", 0

    def status(self) -> dict[str, Any]:
        """{"tripped", "reason", "tripped_ns", "pid"}."""
        return {"tripped": self.tripped, "reason": self.reason, "tripped_ns": self.tripped_ns, "pid": os.getpid()}


def guard_loop(
    step: Callable[[], object], kill: KillSwitch, on_kill: Callable[[], object], max_iterations: int | None = None,
) -> int:
    """Run ``step`` until the kill switch trips (checked before every step) or ``max_iterations`` steps ran;
    on a trip call ``on_kill`` once, before any further step. Returns the number of steps that ran."""
    n = 0
    poll = kill.poll
    while max_iterations is None or n < max_iterations:
        if poll():
            on_kill()
            return n
        step()
        n += 1
    return n
