"""HFT pipeline benchmark: tick-to-order latency (feed receive -> order handed to the venue) through the whole
multi-process pipeline -- multicast feed on loopback, book/feature worker, strategy, gateway with risk,
exchange simulator -- at 100k and 1M synthetic ITCH messages per second, p50/p99/p99.9 in µs.

Peer, measured in the same run on the same messages at the same rate: the same stages in ONE process
(books, features, strategy, risk and the exchange simulator called in turn on each batch of arrived
messages; no rings, no processes, no sockets). It is the floor the pipeline's inter-process hops add to.

Under overload (the rate the pipeline cannot keep up with) latency grows with the queue; what is lost is
counted, never silent: feed drops and gaps (the socket's), ring stalls (a stage waiting for room).

``python benchmarks/bench_hft_pipeline.py [MESSAGES] [WAIT]`` (default 200,000 per rate; the wait strategy
of the stages: ``busy`` or ``yield`` where each stage has a core of its own, ``block`` -- the default on a
machine with fewer than 8 CPUs -- where they share a few).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hdrh.histogram import HdrHistogram

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from greekfire.hft.cluster import BookFeatures, max_orders_for  # noqa: E402
from greekfire.hft.config import feature_params, load_hft  # noqa: E402
from greekfire.hft.pipeline import bench_settings, bench_tick_to_order  # noqa: E402
from greekfire.hft.stages import as_order_records, make_risk  # noqa: E402
from greekfire.hft.strategy import ImbalanceTaker  # noqa: E402
from greekfire.hft.venues import ExchangeSim, itch_ticks  # noqa: E402
from greekfire.market import synth  # noqa: E402

RATES = (100_000, 1_000_000)
N_STOCKS = 64


def single_process(cfg, rate: float, messages: int) -> dict:
    """The peer: every stage in one loop, fed the messages as they 'arrive' at ``rate``; latency from a
    message's arrival time to the order that followed it."""
    cfg = bench_settings(cfg, N_STOCKS)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.itch"
        path.write_bytes(synth.synthetic_stream(messages, N_STOCKS, seed=11))
        ticks, _ = itch_ticks(path)
        ex = ExchangeSim(path, cfg.n_locates)
    bf = BookFeatures(cfg.n_locates, max_orders_for(ticks), feature_params(cfg), decide_every=cfg.decide_every)
    taker = ImbalanceTaker(cfg.n_locates, cfg.order_qty, cfg.max_position)
    risk = make_risk(cfg)
    hist = HdrHistogram(1, 60_000_000_000, 3)
    seq = ticks["seq"]
    t0 = time.perf_counter_ns() + 1_000_000
    arrival = t0 + (seq * 1e9 / rate).astype(np.int64)
    pos, n = 0, len(ticks)
    while pos < n:
        now = time.perf_counter_ns()
        if now < arrival[pos]:
            continue
        end = min(int(np.searchsorted(arrival, now, side="right")), pos + cfg.batch, n)
        end = max(end, pos + 1)
        batch = ticks[pos:end].copy()
        batch["t_rx"] = arrival[pos:end]
        orders = taker.on_signals(bf.process(batch))
        if len(orders):
            ok = risk.check(as_order_records(orders)) == 0
            sent = time.perf_counter_ns()
            for v in (sent - orders["t_rx"][ok]).tolist():
                hist.record_value(max(v, 1))
            ex.execute(orders[ok])
        pos = end
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    return {"orders": hist.get_total_count(), "achieved_rate": round(messages / elapsed),
            "p50_us": hist.get_value_at_percentile(50) / 1e3, "p99_us": hist.get_value_at_percentile(99) / 1e3,
            "p99.9_us": hist.get_value_at_percentile(99.9) / 1e3}


def main(argv: list[str]) -> None:
    messages = int(argv[0]) if argv else 200_000
    wait = argv[1] if len(argv) > 1 else ("yield" if (os.cpu_count() or 1) >= 8 else "block")
    cfg = load_hft(overrides={"workers": 1, "wait": wait})
    rows, notes = [], []
    for rate in RATES:
        ours = bench_tick_to_order(cfg, rate=rate, messages=messages, n_stocks=N_STOCKS)
        peer = single_process(cfg, rate, messages)
        for q in ("p50_us", "p99_us", "p99.9_us"):
            rows.append({"benchmark": f"tick-to-order {q[:-3]} @ {rate / 1e3:,.0f}k msgs/s", "ours": ours[q],
                         "peer": "same stages, one process", "peer_value": peer[q], "unit": "µs",
                         "ratio": ours[q] / peer[q] if peer[q] else float("nan"), "orders": ours["orders"],
                         "peer_orders": peer["orders"]})
        notes.append(f"@ {rate:,.0f} msgs/s: achieved {ours['achieved_rate']:,} msgs/s (one process: "
                     f"{peer['achieved_rate']:,}), feed drops {ours['feed_drops']}, gaps {ours['feed_gaps']}, ring "
                     f"stalls {ours['stalls']}; p99 per stage µs {ours['stages_us']}")
    notes.append(f"{messages:,} synthetic ITCH messages per rate, {N_STOCKS} stocks; 1 feature worker (numba back "
                 f"end, torch not used on the hot path: 1 thread); wait strategy {wait}; {os.cpu_count()} CPUs; "
                 "numpy preallocated pools, no allocator switch")
    report("hft_pipeline", rows, notes)


if __name__ == "__main__":
    main(sys.argv[1:])
