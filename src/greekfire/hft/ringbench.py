"""Ring hops between two processes, beside multiprocessing.Queue and faster-fifo measured in the same run.

:func:`ring_bench` is what ``greekfire hft bench --json`` and ``benchmarks/bench_hft.py`` run. Each row is
one producer process and one consumer process (forked), pinned to two different CPUs when this process may
use at least four:

- throughput, single records: the producer sends one 64-byte event record per call as fast as it can;
  the consumer takes one per call; records per second at the consumer, first to last record. Where the
  ring is empty the consumer waits with ``yield`` and where it is full the producer yields (the queues'
  ``get``/``put`` block there), so neither spins against the other on a shared machine;
- throughput, batches of 64: one call sends or takes 64 records (for the queues: one message holding a
  numpy array of 64 records, pickled, the way those queues carry a batch);
- hop latency: the producer sends one record every ``1/rate`` seconds (sleeping most of the gap, so it
  does not hold a core), stamped with
  ``time.perf_counter_ns()`` (CLOCK_MONOTONIC, one clock for all processes of a machine); the consumer
  takes the difference on arrival; p50/p99/p99.9 in microseconds. The ring's consumer busy-polls (and,
  in a second row, blocks on the futex); the queues' ``get`` blocks, as they are used.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from greekfire.hft import cpu
from greekfire.hft.ring import Ring
from greekfire.market.book import EVENT_DTYPE

yield_cpu = getattr(os, "sched_yield", lambda: time.sleep(0))
STOP = 255  # the kind of the record that ends a run
LATENCY_RATE = 5_000  # records per second in the latency rows (no queue is saturated at this rate)
SPIN_NS = 100_000  # the producer sleeps until this close to its next send, then spins


def _pace(nxt: int) -> None:
    """Return at ``nxt`` (perf_counter_ns): sleep most of the way, spin the rest."""
    left = nxt - time.perf_counter_ns()
    if left > SPIN_NS + 50_000:
        time.sleep((left - SPIN_NS) / 1e9)
    while time.perf_counter_ns() < nxt:
        pass


def _pin(which: int | None) -> None:
    if which is not None:
        cpu.pin(which)


# ------------------------------------------------------------------------------------------ the ring
def _ring_producer(name: str, seconds: float, batch: int, rate: float, core: int | None, ready: Any) -> None:
    _pin(core)
    ring = Ring.attach(name, EVENT_DTYPE)
    ready.wait(60)  # the consumer is attached and polling
    recs = np.zeros(batch, EVENT_DTYPE)
    recs["kind"] = 1
    one = recs[0]
    end = time.perf_counter() + seconds
    if rate:
        period = int(1e9 / rate)
        nxt = time.perf_counter_ns()
        while nxt < end * 1e9:
            nxt += period
            _pace(nxt)
            one["ts"] = time.perf_counter_ns()
            while not ring.publish(one):
                yield_cpu()
    elif batch == 1:
        publish = ring.publish
        while time.perf_counter() < end:
            for _ in range(256):
                while not publish(one):
                    yield_cpu()  # full: let the consumer run (the queues' put blocks here)
    else:
        publish_batch = ring.publish_batch
        while time.perf_counter() < end:
            for _ in range(16):
                k = publish_batch(recs)
                while k < batch:
                    yield_cpu()
                    k += publish_batch(recs[k:])
    one["kind"] = STOP
    while not ring.publish(one):
        yield_cpu()
    ring.close()


def _ring_consumer(name: str, batch: int, strategy: str, latency: bool, core: int | None, out: Any,
                   ready: Any) -> None:
    _pin(core)
    ring = Ring.attach(name, EVENT_DTYPE)
    ready.set()
    n, t0, lats = 0, 0, []
    consume, release, wait = ring.consume, ring.release, ring.wait
    done = False
    while not done:
        view = consume(batch)
        k = len(view)
        if not k:  # nothing there: wait (the strategy under test), then take what came
            wait(1, strategy, 1.0)
            continue
        now = time.perf_counter_ns()
        if not t0:
            t0 = now
        if view[k - 1]["kind"] == STOP:
            done = True
            k -= 1
        if latency and k:
            lats.append(now - int(view[0]["ts"]))
        n += k
        release(len(view))
    out.send((n, time.perf_counter_ns() - t0, lats))
    ring.close()


def _run_ring(seconds: float, batch: int, rate: float, strategy: str, cores: list[int | None]) -> tuple:
    ring = Ring.create(EVENT_DTYPE, 1 << 14)
    try:
        return _pair(lambda out, ready: (_ring_producer, (ring.name, seconds, batch, rate, cores[0], ready)),
                     lambda out, ready: (_ring_consumer, (ring.name, batch, strategy, bool(rate), cores[1], out, ready)),
                     seconds)
    finally:
        ring.close()
        ring.unlink()


# ---------------------------------------------------------------------------------------- the queues
def _make_queue(kind: str) -> Any:
    if kind == "mp_queue":
        return mp.get_context("fork").Queue(maxsize=1 << 14)
    from faster_fifo import Queue  # the optional peer: ImportError says why the row is missing

    return Queue(max_size_bytes=64 << 20)


def _queue_producer(q: Any, seconds: float, batch: int, rate: float, core: int | None, ready: Any) -> None:
    _pin(core)
    ready.wait(60)
    recs = np.zeros(batch, EVENT_DTYPE)
    recs["kind"] = 1
    end = time.perf_counter() + seconds
    if rate:
        period = int(1e9 / rate)
        nxt = time.perf_counter_ns()
        while nxt < end * 1e9:
            nxt += period
            _pace(nxt)
            q.put((1, time.perf_counter_ns()))
    elif batch == 1:
        rec = tuple(recs[0].tolist())
        while time.perf_counter() < end:
            for _ in range(256):
                q.put(rec)
    else:
        while time.perf_counter() < end:
            for _ in range(16):
                q.put(recs)
    q.put(None)


def _queue_consumer(q: Any, batch: int, latency: bool, core: int | None, out: Any, ready: Any) -> None:
    _pin(core)
    ready.set()
    n, t0, lats = 0, 0, []
    while True:
        msg = q.get()
        now = time.perf_counter_ns()
        if not t0:
            t0 = now
        if msg is None:
            break
        if latency:
            lats.append(now - msg[1])
        n += batch
    out.send((n, time.perf_counter_ns() - t0, lats))


def _run_queue(kind: str, seconds: float, batch: int, rate: float, cores: list[int | None]) -> tuple:
    q = _make_queue(kind)
    return _pair(lambda out, ready: (_queue_producer, (q, seconds, batch, rate, cores[0], ready)),
                 lambda out, ready: (_queue_consumer, (q, batch, bool(rate), cores[1], out, ready)), seconds)


# ------------------------------------------------------------------------------------------- driving
def _pair(producer: Callable[[Any, Any], tuple], consumer: Callable[[Any, Any], tuple], seconds: float) -> tuple:
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    ready = ctx.Event()
    fc, ac = consumer(send, ready)
    fp, ap = producer(send, ready)
    c = ctx.Process(target=fc, args=ac, daemon=True)
    p = ctx.Process(target=fp, args=ap, daemon=True)
    c.start()
    p.start()
    try:
        if not recv.poll(seconds * 4 + 10):
            raise TimeoutError("the consumer did not report")
        return recv.recv()  # type: ignore[no-any-return]
    finally:
        for proc in (p, c):
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def _percentiles(lats: list[int]) -> dict[str, float]:
    a = np.asarray(lats, dtype=np.float64)[len(lats) // 20 :] / 1e3  # the first 5%: warm-up
    if not len(a):
        return {"n": 0}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {"n": int(len(a)), "p50_us": float(p50), "p99_us": float(p99), "p999_us": float(p999)}


def choose_cores() -> list[int | None]:
    """Two CPUs for the producer and the consumer: the last two this process may use (CPU 0 usually takes
    the most interrupts); none (the scheduler places them) with fewer than 4 CPUs, where pinning both
    busy processes would leave the rest of the machine nowhere to run but under them."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return [allowed[-2], allowed[-1]] if len(allowed) >= 4 else [None, None]


def ring_bench(seconds: float = 1.0, *, latency_rate: float = LATENCY_RATE) -> dict[str, Any]:
    """Run every row for ``seconds`` each (about 9 rows); returns plain data for JSON:
    ``throughput[transport][single|batch64]`` in records/s (or ``{"error": why}``) and
    ``latency_us[transport]`` with n, p50_us, p99_us, p999_us."""
    cores = choose_cores()
    out: dict[str, Any] = {"seconds_per_row": seconds, "record_bytes": EVENT_DTYPE.itemsize, "cores": cores,
                           "latency_rate_per_s": latency_rate, "clock": "time.perf_counter_ns (CLOCK_MONOTONIC)",
                           "throughput": {}, "latency_us": {}}
    runs: dict[str, Callable[[int, float, str], tuple]] = {
        "ring": lambda b, r, s: _run_ring(seconds, b, r, s, cores),
        "mp_queue": lambda b, r, s: _run_queue("mp_queue", seconds, b, r, cores),
        "faster_fifo": lambda b, r, s: _run_queue("faster_fifo", seconds, b, r, cores),
    }
    for name, run in runs.items():
        tp: dict[str, Any] = {}
        try:
            for label, b in (("single", 1), ("batch64", 64)):
                n, ns, _ = run(b, 0.0, "yield")
                tp[label] = n / (ns / 1e9) if ns else 0.0
            strategies = ("busy", "block") if name == "ring" else ("get",)
            for s in strategies:
                _, _, lats = run(1, latency_rate, s if name == "ring" else "busy")
                out["latency_us"][name if name != "ring" else f"ring_{s}"] = _percentiles(lats)
        except Exception as exc:  # a peer that is not installed or fails: the row says why
            tp = {"error": f"{type(exc).__name__}: {exc}"}
            out["latency_us"].setdefault(name, {"error": tp["error"]})
        out["throughput"][name] = tp
    return out
