"""Logging: Rich console for people, JSON lines for machines, an optional rotating file.

Call :func:`configure_logging` once at process start (the CLI does). Libraries only do
``log = logging.getLogger(__name__)`` and pass context as ``extra={...}``; the JSON formatter writes
those extra fields as keys.

A trace id follows one request through the processes' log lines: whoever starts the work (the trading API's
middleware, from the request's ``X-Request-ID``) sets it with :func:`trace_context`, and the
:class:`TraceIdFilter` on every greekfire handler adds it to each record as ``trace_id``. Work that leaves
the context (another thread, a queue) carries the id itself and passes ``extra={"trace_id": ...}``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime", "taskName"}


TRACE_ID: ContextVar[str | None] = ContextVar("greekfire_trace_id", default=None)
"""The trace id of the work in progress (None outside a traced request)."""


def current_trace_id() -> str | None:
    """The trace id of the current context (a request's ``X-Request-ID``), or None."""
    return TRACE_ID.get()


@contextmanager
def trace_context(trace_id: str) -> Iterator[str]:
    """Log records made inside the block (in this context) carry ``trace_id``; the previous id comes back
    after it."""
    token = TRACE_ID.set(trace_id)
    try:
        yield trace_id
    finally:
        TRACE_ID.reset(token)


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` (from :data:`TRACE_ID`) to records that have none; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.trace_id`` from the context unless the caller passed one; always True."""
        if getattr(record, "trace_id", None) is None:
            tid = TRACE_ID.get()
            if tid is not None:
                record.trace_id = tid
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO-8601), level, logger, msg, any ``extra`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _PlainHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler for output that is not a terminal. With no stream given it writes to whatever
    ``sys.stderr`` is at each record, so a caller that swaps it for a while (typer's CliRunner, pytest's
    capture) does not leave the handler on a closed file."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)  # with None it stores sys.stderr through the setter below: undone next
        self._fixed = stream

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ and setStream assign it
        self._fixed = value


def configure_logging(
    level: str = "INFO",
    json_format: bool = False,
    file: str | Path | None = None,
    max_bytes: int = 10_000_000,
    backup_count: int = 5,
    stream: Any = None,
) -> logging.Logger:
    """Configure the root logger (idempotent: earlier greekfire handlers are replaced).

    ``file`` adds a rotating file handler (always JSON lines) rotating at ``max_bytes`` bytes and keeping
    ``backup_count`` files. Returns the ``greekfire`` logger.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_greekfire", False):
            root.removeHandler(h)
            h.close()
    handler: logging.Handler
    if json_format:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        # with no stream given, the console looks sys.stderr up at each write, so a caller that swaps it
        # for a while (typer's CliRunner, pytest's capture) does not leave the handler on a closed file
        console = Console(file=stream) if stream is not None else Console(stderr=True)
        if console.is_terminal:
            handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:  # a pipe or a file: one plain line per record, never wrapped at 80 columns or padded
            handler = _PlainHandler(stream)
            handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)-8s %(message)s", "%x %X"))
    setattr(handler, "_greekfire", True)  # noqa: B010 - marks our handlers for replacement
    handler.addFilter(TraceIdFilter())
    root.addHandler(handler)
    if file:
        path = Path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count)
        fh.setFormatter(JsonFormatter())
        fh.addFilter(TraceIdFilter())
        setattr(fh, "_greekfire", True)  # noqa: B010
        root.addHandler(fh)
    root.setLevel(level.upper())
    return logging.getLogger("greekfire")
