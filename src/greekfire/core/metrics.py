"""Metrics: one Prometheus registry for the process, and helpers to serve ``/metrics``.

Every greekfire metric is registered on :data:`REGISTRY` through :func:`counter`, :func:`gauge` and
:func:`histogram`, which return the existing collector when called twice with the same name (modules
can declare their metrics at import time or lazily without fighting over registration).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_lock = threading.Lock()
_made: dict[str, MetricWrapperBase] = {}

M = TypeVar("M", bound=MetricWrapperBase)


def _get_or_make(kind: type[M], name: str, doc: str, labels: Sequence[str], **kw: Any) -> M:
    with _lock:
        existing = _made.get(name)
        if existing is not None:
            if not isinstance(existing, kind):
                raise ValueError(f"metric {name} already registered as {type(existing).__name__}")
            return existing
        metric = kind(name, doc, labelnames=tuple(labels), registry=REGISTRY, **kw)
        _made[name] = metric
        return metric


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
    """A counter on the greekfire registry (``name`` without the ``_total`` suffix)."""
    return _get_or_make(Counter, name, doc, labels)


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
    """A gauge on the greekfire registry."""
    return _get_or_make(Gauge, name, doc, labels)


def histogram(name: str, doc: str, labels: Sequence[str] = (), buckets: Sequence[float] | None = None) -> Histogram:
    """A histogram on the greekfire registry (seconds unless the name says otherwise)."""
    kw: dict[str, Any] = {}
    if buckets is not None:
        kw["buckets"] = tuple(buckets)
    return _get_or_make(Histogram, name, doc, labels, **kw)


def summary(name: str, doc: str, labels: Sequence[str] = ()) -> Summary:
    """A summary on the greekfire registry."""
    return _get_or_make(Summary, name, doc, labels)


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The registry in Prometheus text format and its content type."""
    return generate_latest(registry or REGISTRY), CONTENT_TYPE_LATEST


def mount_metrics(app: Any, path: str = "/metrics", registry: CollectorRegistry | None = None) -> None:
    """Add ``GET /metrics`` to a FastAPI (or Starlette) app, serving :data:`REGISTRY`."""
    from starlette.responses import Response

    async def metrics_endpoint(*_: Any) -> Response:
        body, ctype = render(registry)
        return Response(content=body, media_type=ctype)

    app.add_route(path, metrics_endpoint, methods=["GET"], include_in_schema=False)


def sample_value(name: str, labels: dict[str, str] | None = None) -> float | None:
    """Current value of one sample on the registry (for tests and summaries); None if absent."""
    return REGISTRY.get_sample_value(name, labels or {})
