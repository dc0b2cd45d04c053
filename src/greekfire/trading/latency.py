"""Latency of the engine's internal path: market event in -> order handed to a venue.

The loop starts the clock (``t0 = perf_counter_ns()``) when it takes a market event off its batch and
clears it when the event is done; every order sent meanwhile records one sample (:meth:`record`). Samples
go into growing arrays on the hot path and are folded into HDR histograms only when read, so recording
costs an append.

Two histograms (ns): every order (an event that moves a whole chain of quotes reports each of its orders,
the last one having waited for all before it), and the first order of each event (the reaction time).
"""

from __future__ import annotations

import time
from array import array

from hdrh.histogram import HdrHistogram

_DRAIN_AT = 1_000_000  # samples kept raw before they are folded into the histograms


class LatencyRecorder:
    """Samples and histograms of event -> order latency (ns). ``t0``: perf_counter_ns of the market event
    being handled, 0 when none (orders sent outside a market event are not timed)."""

    def __init__(self) -> None:
        self.t0 = 0
        self.first_pending = False  # the current event has not sent an order yet
        self.samples = array("q")  # every order, not yet in the histogram
        self.first_samples = array("q")  # first order of each event, not yet in the histogram
        self._every = HdrHistogram(100, 10_000_000_000, 3)
        self._first = HdrHistogram(100, 10_000_000_000, 3)

    def start(self) -> None:
        """A market event is being handled from now."""
        self.t0 = time.perf_counter_ns()
        self.first_pending = True

    def record(self, n: int = 1) -> None:
        """``n`` orders handed over by the venue call that just returned (a mass quote: one sample each)."""
        dt = time.perf_counter_ns() - self.t0
        if n == 1:
            self.samples.append(dt)
        else:
            self.samples.extend([dt] * n)
        if self.first_pending:
            self.first_samples.append(dt)
            self.first_pending = False
        if len(self.samples) >= _DRAIN_AT:
            self.drain()

    def drain(self) -> None:
        """Fold the raw samples into the histograms."""
        for buf, hist in ((self.samples, self._every), (self.first_samples, self._first)):
            for v in buf:
                hist.record_value(max(100, v))
            del buf[:]

    @property
    def every(self) -> HdrHistogram:
        """HDR histogram (ns) of market event in -> order out, every order."""
        self.drain()
        return self._every

    @property
    def first(self) -> HdrHistogram:
        """HDR histogram (ns) of market event in -> first order out, one value per event that ordered."""
        self.drain()
        return self._first

    def reset(self) -> None:
        """Forget the latencies measured so far (benchmarks drop their warm-up)."""
        self.drain()
        self._every.reset()
        self._first.reset()

    def percentiles_us(self, first_only: bool = False) -> dict[str, float]:
        """count, p50, p99, p99.9 and max in microseconds (``{"count": 0}`` before any sample)."""
        h = self.first if first_only else self.every
        if h.get_total_count() == 0:
            return {"count": 0}
        return {
            "count": h.get_total_count(),
            "p50": h.get_value_at_percentile(50) / 1000.0,
            "p99": h.get_value_at_percentile(99) / 1000.0,
            "p99.9": h.get_value_at_percentile(99.9) / 1000.0,
            "max": h.get_max_value() / 1000.0,
        }
