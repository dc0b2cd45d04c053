"""The pipeline's Prometheus metrics on the one greekfire registry (greekfire.core.metrics): throughput,
drops, errors, stage latency, worker losses and resource use per process.

The coordinating process owns them: it folds the status it gathers from the stages into the metrics with
:func:`publish` and serves them with :func:`serve` (``hft.metrics_port``).
"""

from __future__ import annotations

import os
from typing import Any

from greekfire.core.metrics import REGISTRY, counter, gauge

_last: dict[tuple[str, ...], float] = {}


def _inc(name: str, doc: str, labels: tuple[str, ...], values: tuple[str, ...], total: float) -> None:
    """Counters from running totals: add what grew since the last call."""
    key = (name, *values)
    delta = total - _last.get(key, 0.0)
    c = counter(name, doc, labels)
    child = c.labels(*values) if labels else c  # the series exists (at 0) before anything is counted
    if delta > 0:
        child.inc(delta)
    _last[key] = max(total, _last.get(key, 0.0))


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, resident bytes) of a process from /proc; (0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0, 0
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, rss_pages * os.sysconf("SC_PAGE_SIZE")


def publish(status: dict[str, Any]) -> None:
    """Fold a pipeline status (:meth:`greekfire.hft.pipeline.Pipeline.status`) into the metrics."""
    for stage, st in status.get("stages", {}).items():
        _inc("greekfire_hft_messages", "records a pipeline stage handled", ("stage",), (stage,), st.get("messages", 0))
        _inc("greekfire_hft_drops", "records a stage lost or could not pass on", ("stage",), (stage,), st.get("drops", 0))
        _inc("greekfire_hft_errors", "bad records a stage counted and skipped", ("stage",), (stage,), st.get("errors", 0))
        if "gaps" in st:  # the feed handler: sequence gaps seen (recovered or not)
            _inc("greekfire_hft_feed_gaps", "sequence gaps the feed handler saw (missing ranges)", ("stage",), (stage,),
                 st["gaps"])
        if st.get("pid"):
            cpu_s, rss = proc_usage(int(st["pid"]))
            gauge("greekfire_hft_cpu_seconds", "CPU seconds of a stage's process", ["stage"]).labels(stage).set(cpu_s)
            gauge("greekfire_hft_rss_bytes", "resident memory of a stage's process", ["stage"]).labels(stage).set(rss)
    for stage, q in status.get("latency_us", {}).items():
        g = gauge("greekfire_hft_stage_latency_us", "stage latency percentiles, microseconds", ["stage", "quantile"])
        for k in ("p50", "p99", "p99.9"):
            if k in q:
                g.labels(stage, k).set(q[k])
    for kind, n in status.get("orders", {}).items():
        _inc("greekfire_hft_orders", "orders by outcome", ("outcome",), (kind,), n)
    _inc("greekfire_hft_worker_losses", "feature workers lost (their instruments moved)", (), (),
         len(status.get("losses", [])))
    for name, fill in status.get("rings", {}).items():
        gauge("greekfire_hft_ring_fill", "records waiting in a ring / capacity", ["ring"]).labels(name).set(fill)


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Serve ``/metrics`` of the greekfire registry on a thread; returns the port (0 picks a free one)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, host, registry=REGISTRY)
    return int(server.server_port)
