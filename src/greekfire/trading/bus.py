"""The engine's message bus: topics, synchronous dispatch, isolated handlers.

Publishing calls every handler subscribed to the topic right away, in subscription order, on the caller's
stack (no queue hop: the hot path stays one function call deep per handler). A handler that raises is
logged, counted under its ``owner`` and skipped; the other handlers and the publisher carry on.

Topics are dotted names (``quotes.SPY``, ``orders``, ``fills``, ``risk``, ``timers``). A subscription to
``quotes.*`` receives every topic that starts with ``quotes.``.
"""

from __future__ import annotations

import logging
from collections import Counter as _Counter
from collections.abc import Callable
from typing import Any

from greekfire.core.metrics import counter

log = logging.getLogger(__name__)

Handler = Callable[[Any], None]

HANDLER_ERRORS = counter(
    "greekfire_trading_handler_errors", "exceptions raised by bus handlers (isolated)", ["owner"]
)
MALFORMED = counter("greekfire_trading_malformed_events", "events rejected as malformed", ["topic"])


class MessageBus:
    """Topic -> handlers, dispatched synchronously. ``errors`` counts isolated exceptions by owner."""

    def __init__(self) -> None:
        self._exact: dict[str, list[tuple[Handler, str]]] = {}
        self._prefix: list[tuple[str, Handler, str]] = []
        self._resolved: dict[str, tuple[tuple[Handler, str], ...]] = {}
        self.errors: _Counter[str] = _Counter()
        self.published = 0

    def subscribe(self, topic: str, handler: Handler, owner: str = "") -> None:
        """Call ``handler(msg)`` for every message on ``topic`` (``prefix.*`` matches a whole family)."""
        if topic.endswith(".*"):
            self._prefix.append((topic[:-1], handler, owner))
        else:
            self._exact.setdefault(topic, []).append((handler, owner))
        self._resolved.clear()

    def unsubscribe(self, topic: str, handler: Handler) -> None:
        """Remove one subscription (no error when absent)."""
        if topic.endswith(".*"):
            self._prefix = [p for p in self._prefix if not (p[0] == topic[:-1] and p[1] == handler)]
        else:
            self._exact[topic] = [h for h in self._exact.get(topic, []) if h[0] != handler]
        self._resolved.clear()

    def _resolve(self, topic: str) -> tuple[tuple[Handler, str], ...]:
        handlers = list(self._exact.get(topic, ()))
        handlers += [(h, o) for p, h, o in self._prefix if topic.startswith(p)]
        out = tuple(handlers)
        self._resolved[topic] = out
        return out

    def publish(self, topic: str, msg: Any) -> None:
        """Deliver ``msg`` to every handler of ``topic`` now; a raising handler is isolated and counted."""
        self.published += 1
        handlers = self._resolved.get(topic)
        if handlers is None:
            handlers = self._resolve(topic)
        for handler, owner in handlers:
            try:
                handler(msg)
            except Exception:
                self.errors[owner or "?"] += 1
                HANDLER_ERRORS.labels(owner or "?").inc()
                log.exception("handler of %s failed", topic, extra={"topic": topic, "owner": owner})

    def has_subscribers(self, topic: str) -> bool:
        """True when publishing on ``topic`` would reach at least one handler."""
        handlers = self._resolved.get(topic)
        if handlers is None:
            handlers = self._resolve(topic)
        return bool(handlers)
