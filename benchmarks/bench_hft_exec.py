"""HFT execution benchmarks: the OUCH order round trip over loopback, and fast-path risk checks per second.

OUCH round trip: Enter Order -> Accepted between :class:`~greekfire.hft.ouch_gateway.OuchGateway` and
:class:`~greekfire.hft.ouch_server.OuchServer` (the matching engine behind it), one order in flight, p50/p99/p99.9 of
the pool's own stamps (sent -> ack). Peers measured in the same run: a bare TCP echo of the same packet sizes
(the floor any Python protocol over this loopback reaches) and the same pool orders through the FIX path
(:class:`~greekfire.hft.gateway.FixGateway` -> FIX exchange simulator, NewOrderSingle -> ExecutionReport New).

Order management: :class:`~greekfire.hft.orders.OrderPool` order lifecycles per second beside the trading
core's ``Order`` objects doing the same moves.

Risk: :class:`~greekfire.hft.risk.FastRisk` checks per second over batches of 1, 64 and 1024 orders, beside
the trading core's :class:`~greekfire.trading.risk.RiskEngine` checking one order per call.

The row functions (``pool_rows``, ``ouch_rows``, ``risk_rows``) are what ``bench_hft`` calls; run alone this script reports
subject ``hft_exec``.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from greekfire.hft.orders import ORDER_DTYPE, OrderPool  # noqa: E402
from greekfire.hft.ouch_gateway import OuchGateway  # noqa: E402
from greekfire.hft.ouch_server import OuchServer  # noqa: E402
from greekfire.hft.risk import FastLimits, FastRisk  # noqa: E402

N_ROUND_TRIPS = 3_000
WARMUP = 300
ENTER_PACKET, ACCEPTED_PACKET = 3 + 49, 3 + 66  # SoupBinTCP header + OUCH message


def row(name: str, ours: float | None, peer: str, peer_value: float | None, unit: str, **extra: Any) -> dict[str, Any]:
    ratio = ours / peer_value if ours is not None and peer_value else None
    return {"benchmark": name, "ours": ours, "peer": peer, "peer_value": peer_value, "unit": unit, "ratio": ratio,
            **extra}


def pct_us(samples_ns: list[int] | np.ndarray) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "p99.9": float(np.percentile(a, 99.9))}


def _round_trips(
    pool: OrderPool, gw: Any, price: int, n: int, done: Callable[[int], bool], instrument: int = 0,
    wait_s: float = 0.001,
) -> list[int]:
    """``n`` IOC buys that rest nowhere (accepted, then canceled), one in flight; sent -> ack ns each. The
    gateway waits up to ``wait_s`` per poll for a reply (OUCH: in select, woken by the reply)."""
    out = []
    for _ in range(n):
        s = pool.alloc(instrument, 1, 1, price, tif=2)
        gw.enter(s)
        while pool.orders[s]["t_ack_ns"] == 0:
            gw.poll(wait_s)
        out.append(int(pool.orders[s]["t_ack_ns"] - pool.orders[s]["t_sent_ns"]))
        while not done(s):
            gw.poll(wait_s)
        pool.free(s)
    return out


def _serve(kind: str, conn: Any, stop: Any, home: str) -> None:
    """Child process: run one exchange (``ouch``, ``echo`` or ``fix``), send its port on ``conn``, serve
    until ``stop`` is set."""
    if kind == "ouch":
        srv = OuchServer("127.0.0.1", 0, symbols=["BENCH"])
        conn.send(srv.start())
        stop.wait()
        srv.stop()
    elif kind == "echo":
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        conn.send(ls.getsockname()[1])
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reply = bytes(ACCEPTED_PACKET)
        with c:
            while True:
                got = 0
                while got < ENTER_PACKET:
                    d = c.recv(4096)
                    if not d:
                        return
                    got += len(d)
                c.sendall(reply)
    else:
        from greekfire.trading.build import default_instruments
        from greekfire.trading.fixexchange import FixExchange

        ex = FixExchange(_fix_settings(home), default_instruments())
        ex.serve(stop, on_listening=conn.send)


def _fix_settings(home: str) -> Any:
    from greekfire.core.settings import load_settings

    return load_settings(overrides={"home": home, "fix.store_url": "sqlite:///fix.db", "fix.port": 0,
                                    "fix.quote_interval_ms": 1000.0})


class _Exchange:
    """An exchange in its own process (so it does not share this process's GIL): ``port`` once listening."""

    def __init__(self, kind: str) -> None:
        ctx = mp.get_context("spawn")
        self._tmp = tempfile.TemporaryDirectory()
        self.stop = ctx.Event()
        here, there = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(kind, there, self.stop, self._tmp.name), daemon=True)
        self.proc.start()
        if not here.poll(60):
            self.close()
            raise RuntimeError(f"the {kind} exchange process did not start")
        self.port: int = here.recv()

    def close(self) -> None:
        self.stop.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self._tmp.cleanup()


def ouch_round_trip(n: int = N_ROUND_TRIPS) -> dict[str, float]:
    """OUCH Enter Order -> Accepted over loopback to an OuchServer process, p50/p99/p99.9 in µs."""
    ex = _Exchange("ouch")
    try:
        pool = OrderPool(64)
        gw = OuchGateway("127.0.0.1", ex.port, pool, symbols=["BENCH"], username="BENCH")
        gw.connect()
        try:
            gc.collect()
            closed = lambda s: not pool.is_open(s)  # noqa: E731
            _round_trips(pool, gw, 100, WARMUP, closed)
            return pct_us(_round_trips(pool, gw, 100, n, closed))
        finally:
            gw.stop()
    finally:
        ex.close()


def tcp_echo_round_trip(n: int = N_ROUND_TRIPS) -> dict[str, float]:
    """The same sizes (52 bytes out, 69 back) to a bare TCP echo process over loopback, p50/p99/p99.9 in µs."""
    ex = _Exchange("echo")
    cl = socket.create_connection(("127.0.0.1", ex.port))
    cl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = bytes(ENTER_PACKET)
    out = []
    try:
        for k in range(WARMUP + n):
            t0 = time.perf_counter_ns()
            cl.sendall(msg)
            got = 0
            while got < ACCEPTED_PACKET:
                got += len(cl.recv(4096))
            if k >= WARMUP:
                out.append(time.perf_counter_ns() - t0)
    finally:
        cl.close()
        ex.close()
    return pct_us(out)


def fix_round_trip(n: int = N_ROUND_TRIPS) -> dict[str, float] | str:
    """The same pool orders over the FIX path (FixGateway -> a FIX exchange simulator process),
    p50/p99/p99.9 in µs; a string saying why when it cannot run."""
    try:
        from greekfire.hft.gateway import FixGateway
        from greekfire.trading.build import default_instruments
        from greekfire.trading.fixvenue import FixVenue
    except ImportError as e:  # pragma: no cover - a build without the FIX engine
        return f"FIX engine not importable: {e}"
    ex = _Exchange("fix")
    try:
        with tempfile.TemporaryDirectory() as home:
            pool = OrderPool(64)
            gw = FixGateway(FixVenue(_fix_settings(home), default_instruments(), port=ex.port), pool)
            gw.connect()
            try:
                price = 5_000  # half the underlying's price: an IOC buy that finds nothing
                closed = lambda s: not pool.is_open(s)  # noqa: E731
                _round_trips(pool, gw, price, WARMUP // 3, closed, instrument=1, wait_s=0.0002)
                return pct_us(_round_trips(pool, gw, price, n, closed, instrument=1, wait_s=0.0002))
            finally:
                gw.stop()
    finally:
        ex.close()


def ouch_rows(notes: list[str]) -> list[dict[str, Any]]:
    """Rows: OUCH round trip beside the TCP echo floor and the FIX path."""
    ours = ouch_round_trip()
    echo = tcp_echo_round_trip()
    fix = fix_round_trip(N_ROUND_TRIPS // 3)
    rows = [row(f"OUCH enter -> accepted {q}", ours[q], "bare TCP echo, same sizes", echo[q], "us") for q in ours]
    if isinstance(fix, dict):
        rows += [row(f"OUCH enter -> accepted {q}", ours[q], "FIX NewOrderSingle -> ER New (FixGateway)", fix[q], "us")
                 for q in ours]
    else:
        notes.append(f"FIX round trip not measured: {fix}")
    notes.append(
        f"round trips: {N_ROUND_TRIPS:,} OUCH (FIX: {N_ROUND_TRIPS // 3:,}) IOC orders one in flight after a warm-up, "
        "over loopback; each exchange (and the echo) runs in its own process (OUCH: a selector thread on the "
        "matching engine; FIX: the asyncio exchange with SQLite session stores on both sides); the OUCH "
        "gateway waits in select for each reply (poll(timeout_s)), the FIX gateway looks at its venue's queue "
        "every 0.2 ms (its session runs on a thread of this process); stamps are the pool's sent and ack "
        "(perf_counter_ns); the echo is the floor: a blocking recv and nothing decoded")
    return rows


def _orders(n: int, n_inst: int, rng: np.random.Generator) -> np.ndarray:
    a = np.zeros(n, ORDER_DTYPE)
    a["instrument"] = rng.integers(0, n_inst, n)
    a["side"] = rng.choice(np.array([-1, 1], np.int8), n)
    a["qty"] = rng.integers(1, 100, n)
    a["price_ticks"] = rng.integers(9_900, 10_100, n)
    return a


def fast_risk_rate(batch: int, seconds: float = 0.5) -> float:
    """FastRisk checks per second for batches of ``batch`` orders (all passing)."""
    n_inst = 1024
    risk = FastRisk(FastLimits(max_orders_per_s=10**12, max_position=10**12), n_inst)
    risk.ref[:] = 10_000
    a = _orders(batch, n_inst, np.random.default_rng(0))
    out = np.empty(batch, np.uint8)
    risk.check(a, 1, out)  # compile / load the kernel
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        risk.check(a, 1, out)
        n += 1
    assert not out.any()
    return n * batch / (time.perf_counter() - t0)


def trading_risk_rate(seconds: float = 0.5) -> float:
    """The trading core's RiskEngine.check, one order per call, per second (an equity order that passes)."""
    from greekfire.core.settings import RiskSettings
    from greekfire.trading.model import Instrument, InstrumentKind, Side
    from greekfire.trading.orders import Order
    from greekfire.trading.portfolio import Portfolio
    from greekfire.trading.risk import RiskEngine

    pf = Portfolio(1e12)
    pf.add_instrument(Instrument(1, "XYZ", InstrumentKind.EQUITY, tick_size=0.01))
    pf.mark(1, 100.0)
    pf.revalue(time.time_ns())
    risk = RiskEngine(RiskSettings(max_orders_per_s=10**9), pf)
    risk.refresh()
    o = Order("b1", 1, Side.BUY, 10, 10_000, strategy_id="s")
    now = time.time_ns()
    assert risk.check(o, 100.0, now) is None
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(100):
            risk.check(o, 100.0, now)
        n += 100
    return n / (time.perf_counter() - t0)


def risk_rows(notes: list[str]) -> list[dict[str, Any]]:
    """Rows: FastRisk checks/s by batch size beside RiskEngine.check."""
    peer = trading_risk_rate()
    rows = [row(f"risk checks, batch {b}", fast_risk_rate(b), "trading-core RiskEngine.check (1 per call)", peer,
                "checks/s") for b in (1, 64, 1024)]
    notes.append("FastRisk: one numba kernel per batch (kill switch, halts, qty, rate, band, LULD, notional, "
                 "position with pending), 1024 instruments; RiskEngine also runs the Greek, VaR and margin checks "
                 "an equity order goes through, so the ratio is the fast path's gain, not like for like")
    return rows


def pool_cycle_rate(seconds: float = 0.5) -> float:
    """OrderPool order lifecycles per second: alloc, risk stamp, sent, ack, two fills, free."""
    pool = OrderPool(64)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(1000):
            s = pool.alloc(3, 1, 10, 10_000, i)
            pool.stamp_risk(s, i + 1)
            pool.on_sent(s, i + 2)
            pool.on_ack(s, i + 3)
            pool.on_fill(s, 4, 10_000, i + 4)
            pool.on_fill(s, 6, 10_001, i + 5)
            pool.free(s)
        n += 1000
    return n / (time.perf_counter() - t0)


def trading_order_cycle_rate(seconds: float = 0.5) -> float:
    """The same lifecycle with the trading core's Order objects (one per order, two Fill records)."""
    from greekfire.trading.model import Fill, Side
    from greekfire.trading.orders import Order, OrderStatus

    sub, acc = OrderStatus.SUBMITTED, OrderStatus.ACCEPTED
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(1000):
            o = Order("c", 3, Side.BUY, 10, 10_000, ts_ns=i)
            o.transition(sub, i + 2)
            o.transition(acc, i + 3)
            o.apply_fill(Fill("f1", "c", 3, Side.BUY, 4, 100.0, ts_ns=i + 4))
            o.apply_fill(Fill("f2", "c", 3, Side.BUY, 6, 100.01, ts_ns=i + 5))
        n += 1000
    return n / (time.perf_counter() - t0)


def pool_rows(notes: list[str]) -> list[dict[str, Any]]:
    """Row: order lifecycles per second, the pool beside the trading core's Order objects."""
    notes.append("order lifecycle: alloc (or a new Order), sent, ack, two fills, free; the pool writes a "
                 "preallocated structured array and allocates nothing, the trading core builds an Order and "
                 "two Fill records per order")
    return [row("order lifecycles (pool)", pool_cycle_rate(), "trading-core Order + Fill objects",
                trading_order_cycle_rate(), "orders/s")]


def main() -> int:
    notes = ["single process, no torch; default allocator; wall clock on a shared machine",
             "ratio = ours / peer (round trips: below 1 is faster; checks/s: above 1 is more)"]
    t0 = time.perf_counter()
    rows = pool_rows(notes) + ouch_rows(notes) + risk_rows(notes)
    notes.append(f"whole run {time.perf_counter() - t0:.1f} s")
    report("hft_exec", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
