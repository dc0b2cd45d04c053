"""Per-stage latency of the pipeline in HDR histograms (feed receive -> book -> features -> signal -> order
-> ack), from the timestamps each record carries through the rings.

Stamps are ``time.perf_counter_ns()`` values (CLOCK_MONOTONIC on Linux, one clock for every process of the
machine); a stamp of 0 means "not reached" and that row is left out of the stages that need it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from hdrh.histogram import HdrHistogram

#: stage -> (start stamp, end stamp)
STAGES: dict[str, tuple[str, str]] = {
    "feed->book": ("t_rx", "t_book"),
    "book->features": ("t_book", "t_feat"),
    "features->signal": ("t_feat", "t_signal"),
    "signal->order": ("t_signal", "t_sent"),
    "order->ack": ("t_sent", "t_ack"),
    "tick->order": ("t_rx", "t_sent"),
    "tick->ack": ("t_rx", "t_ack"),
}
LOWEST_NS, HIGHEST_NS = 1, 60_000_000_000


class StageLatency:
    """One HDR histogram (ns, 3 significant digits, 1 ns .. 60 s) per stage of :data:`STAGES`."""

    def __init__(self, stages: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.stages = dict(stages or STAGES)
        self.hist = {s: HdrHistogram(LOWEST_NS, HIGHEST_NS, 3) for s in self.stages}

    def record(self, rows: np.ndarray) -> None:
        """Fold rows (a structured array holding the stamp fields, ns) into the histograms."""
        names = rows.dtype.names or ()
        for stage, (a, b) in self.stages.items():
            if a not in names or b not in names:
                continue
            t0, t1 = rows[a].astype(np.int64), rows[b].astype(np.int64)
            d = (t1 - t0)[(t0 > 0) & (t1 > 0)]
            h = self.hist[stage]
            for v in np.clip(d, LOWEST_NS, HIGHEST_NS).tolist():
                h.record_value(v)

    def record_value(self, stage: str, ns: int) -> None:
        """One sample (ns) of one stage."""
        self.hist[stage].record_value(min(max(int(ns), LOWEST_NS), HIGHEST_NS))

    def percentiles_us(self) -> dict[str, dict[str, float]]:
        """Per stage: count, p50, p99, p99.9 and max in microseconds (``{"count": 0}`` when empty)."""
        out: dict[str, dict[str, float]] = {}
        for stage, h in self.hist.items():
            n = h.get_total_count()
            if n == 0:
                out[stage] = {"count": 0}
                continue
            out[stage] = {"count": n, "p50": h.get_value_at_percentile(50) / 1e3,
                          "p99": h.get_value_at_percentile(99) / 1e3,
                          "p99.9": h.get_value_at_percentile(99.9) / 1e3, "max": h.get_max_value() / 1e3}
        return out

    def reset(self) -> None:
        """Forget every sample (a benchmark drops its warm-up)."""
        for h in self.hist.values():
            h.reset()
