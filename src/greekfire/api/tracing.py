"""Request ids for the HTTP servers: every request runs with a trace id that its log lines carry.

:class:`RequestIdMiddleware` takes the request's ``X-Request-ID`` (when it is a plausible id: 1-128 letters,
digits and ``.-_:``) or makes one, sets it as the trace id of the request's context
(:func:`greekfire.core.logging.trace_context`) and returns it in the response's ``X-Request-ID`` header. The
logging filter of :mod:`greekfire.core.logging` then writes it as ``trace_id`` on every JSON log line made
while the request is handled; work handed to another thread carries it itself (an order's ``trace_id``).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from greekfire.core.logging import trace_context

HEADER = "X-Request-ID"
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(scope: Scope) -> str:
    """The request's ``X-Request-ID`` if it is a plausible id, else a new random one (32 hex digits)."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """ASGI middleware: each HTTP or WebSocket request runs in :func:`trace_context` of its request id, and
    HTTP responses carry it back in ``X-Request-ID``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with its trace id set; add the id to the response headers."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        with trace_context(rid):
            await self.app(scope, receive, send_with_id)


def add_request_ids(app: Any) -> None:
    """Install :class:`RequestIdMiddleware` on a FastAPI (or Starlette) app."""
    app.add_middleware(RequestIdMiddleware)
