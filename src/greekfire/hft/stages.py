"""The stages of the HFT pipeline, each the body of one process: the feed (:func:`feed_main`), the strategy
(:func:`strategy_main`), the gateway with risk and the kill switch (:func:`gateway_main`) and the exchange
simulators (:func:`exchange_main` on rings, :func:`ouch_exchange_main` over OUCH). The book/feature workers
are in greekfire.hft.cluster; the coordinator that starts them all is greekfire.hft.pipeline.Pipeline.

Every stage attaches the rings and the shared tables by name, counts what it does in its row of the
stage counters (:class:`StageStats`) and says ``("ready", name)`` on the coordinator's queue once it can
take records without a first-call delay.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from greekfire.core.settings import HftSettings
from greekfire.hft.cluster import END_KIND, SIG_DTYPE, TICK_DTYPE, ClusterControl, Idle, ReplayLog
from greekfire.hft.strategy import ORD_DTYPE, REJECTED, ImbalanceTaker
from greekfire.hft.venues import (
    ExchangeSim,
    OuchVenue,
    itch_ticks,
    messages_to_ticks,
    seed_liquidity,
    symbol_of,
)
from greekfire.market import itch
from greekfire.market.book import OrderBooks

# per-stage counters in shared memory: messages handled, drops, errors, stalls (waits on a full ring), feed
# gaps and recovered messages, the kill switch's trip time (ns)
C_MSGS, C_DROPS, C_ERRS, C_STALLS, C_GAPS, C_RECOVERED, C_KILLED = range(7)


def make_risk(cfg: HftSettings, kill: Any = None) -> Any:
    """The gateway's fast pre-trade checks (greekfire.hft.risk) with the ``hft.risk`` limits; ``kill``: a kill
    switch whose trip denies every order (KILL_SWITCH)."""
    from greekfire.hft.risk import FastLimits, FastRisk

    r = cfg.risk
    return FastRisk(FastLimits(max_order_qty=r.max_order_qty, max_notional=r.max_notional, max_position=r.max_position,
                               max_orders_per_s=r.max_orders_per_s, tick_size=r.tick_size, multiplier=1.0),
                    cfg.n_locates, kill=kill)


def settle(risk: Any, done: np.ndarray) -> None:
    """Executions back into the risk state: fills move pending into the position, the rest is released."""
    for o in done:
        inst, side, qty, filled = int(o["instrument"]), int(o["side"]), int(o["qty"]), int(o["filled"])
        if filled:
            risk.on_fill(inst, side, filled, int(o["fill_px"]))
        if qty > filled:
            risk.release(inst, side, qty - filled)


def as_order_records(orders: np.ndarray) -> np.ndarray:
    from greekfire.hft.orders import ORDER_DTYPE

    rec = np.zeros(len(orders), ORDER_DTYPE)
    for name, src in (("order_id", "order_id"), ("instrument", "instrument"), ("side", "side"), ("qty", "qty"),
                      ("price_ticks", "price"), ("t_signal_ns", "t_signal")):
        rec[name] = orders[src]
    return rec




# ------------------------------------------------------------------------------------------- stage helpers
def _publish_all(ring: Any, recs: np.ndarray, stats: np.ndarray | None = None) -> None:
    """Publish every record, waiting while the ring is full (counted as stalls)."""
    pos = 0
    while pos < len(recs):
        pos += ring.publish_batch(recs[pos:])
        if pos < len(recs):
            if stats is not None:
                stats[C_STALLS] += 1
            os.sched_yield()


class StageStats:
    """Per-stage counters in shared memory ``[n_stages, 8]`` int64."""

    def __init__(self, shm: Any, n: int, owner: bool) -> None:
        self._shm, self.name, self._owner = shm, shm.name, owner
        self.arr = np.ndarray((n, 8), np.int64, shm.buf, 0)

    @classmethod
    def create(cls, n: int) -> StageStats:
        from multiprocessing import shared_memory

        s = cls(shared_memory.SharedMemory(create=True, size=n * 64), n, True)
        s.arr[:] = 0
        return s

    @classmethod
    def attach(cls, name: str, n: int) -> StageStats:
        from greekfire.hft.cluster import _attach_shm

        return cls(_attach_shm(name), n, False)

    def close(self) -> None:
        self.arr = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):
            self._shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


def _stage_setup(cpu: int | None) -> None:
    from greekfire.hft.cpu import pin

    pin(cpu)


GO = 4  # ClusterControl header word: every stage is ready, the feed may start
VENUE = 5  # ClusterControl header word: port of the OUCH exchange simulator once it listens
DONE = 6  # ClusterControl header word: the run is over (the OUCH exchange simulator may stop)


def _coordinator_pid(names: dict[str, str]) -> int:
    """The pid of the process that started the run (stages stop when it is gone)."""
    ctl = ClusterControl.attach(names["control"])
    try:
        return int(ctl.head[ctl.OWNER_PID])
    finally:
        ctl.close()


def _wait_go(names: dict[str, str]) -> None:
    ctl = ClusterControl.attach(names["control"])
    while not ctl.head[GO]:
        time.sleep(0.001)
    ctl.close()


# ------------------------------------------------------------------------------------------- feed stage
def feed_main(cfg: HftSettings, names: dict[str, str], source: dict[str, Any], cpu: int | None, slot: int,
              n_stages: int, out_q: Any) -> None:
    """The feed stage: ITCH messages in (multicast or file), ticks out to the broadcast ring and the log."""
    from greekfire.hft.cpu import gc_frozen
    from greekfire.hft.ring import BroadcastRing

    _stage_setup(cpu)
    ring = BroadcastRing.attach(names["ticks"], TICK_DTYPE, 0)
    log = ReplayLog.attach(names["log"])
    st = StageStats.attach(names["stats"], n_stages)
    stats = st.arr[slot]
    end_tick = np.zeros(1, TICK_DTYPE)
    end_tick["ev"]["kind"] = END_KIND
    feed_stats: dict[str, Any] = {}
    with gc_frozen():
        if source["kind"] == "file":
            ticks, _ = itch_ticks(Path(source["path"]), source.get("framing", "length"))
            out_q.put(("ready", "feed"))
            _wait_go(names)
            rate = float(source.get("rate", 0.0))
            batch = cfg.batch
            t0 = time.perf_counter()
            for a in range(0, len(ticks), batch):
                if rate > 0:
                    due = t0 + int(ticks["seq"][a]) / rate
                    ahead = due - time.perf_counter()
                    if ahead > 200e-6:
                        time.sleep(ahead - 100e-6)
                    while time.perf_counter() < due:
                        pass
                chunk = ticks[a : a + batch].copy()
                chunk["t_rx"] = time.perf_counter_ns()
                log.append(chunk)
                chunk["t_pub"] = time.perf_counter_ns()
                _publish_all(ring, chunk, stats)
                stats[C_MSGS] += len(chunk)
        else:
            from greekfire.hft.feed import FeedHandler, UdpMulticast

            transport = UdpMulticast(source["group"], int(source["port"]), source.get("iface", "127.0.0.1"))
            handler = FeedHandler(transport, source.get("rerequest"), source.get("session"))
            # the decoder's compiled kernels, loaded now rather than with the first packet (~0.5 s)
            messages_to_ticks([itch.encode_message("A", stock_locate=1, order_ref=1, side=b"B", shares=1, price=1)], 1)
            out_q.put(("ready", "feed"))
            expect = int(source.get("expect", 0))
            idle_s = float(source.get("idle_s", 5.0))
            seq = 1
            last = time.monotonic()
            offset = time.time_ns() - time.perf_counter_ns()  # receive stamps (wall clock) -> perf clock
            while True:
                msgs, rx = handler.poll(0.005)
                if msgs:
                    last = time.monotonic()
                    now = time.perf_counter_ns()
                    nxt = handler.stats.get("next_seq")  # MoldUDP64 numbers messages from 1, as the file does
                    if nxt:
                        seq = int(nxt) - len(msgs)
                    ticks = messages_to_ticks(msgs, seq)
                    rx_a = np.asarray(rx, np.int64)
                    idx = (ticks["seq"] - seq).astype(np.int64)
                    stamp = rx_a[idx] - offset if len(rx_a) else np.full(len(idx), now)
                    ticks["t_rx"] = np.where((stamp > 0) & (stamp <= now), stamp, now)
                    seq += len(msgs)
                    log.append(ticks)
                    ticks["t_pub"] = time.perf_counter_ns()
                    _publish_all(ring, ticks, stats)
                    stats[C_MSGS] += len(msgs)
                hs = handler.stats
                stats[C_GAPS] = int(hs.get("gaps", 0))
                stats[C_RECOVERED] = int(hs.get("recovered", 0))
                stats[C_DROPS] = int(hs.get("unrecovered", 0)) + int(hs.get("drops", 0))
                done = bool(getattr(handler, "complete", getattr(handler, "ended", False))) or \
                    bool(expect and seq - 1 >= expect)
                if done or (seq > 1 and time.monotonic() - last > idle_s):
                    break
            feed_stats = dict(handler.stats)
            handler.close()
    _publish_all(ring, end_tick)
    out_q.put(("stage", "feed", {"log_overflow": log.overflow, "feed": feed_stats}))
    ring.close()
    log.close()
    st.close()


# ------------------------------------------------------------------------------------------- strategy stage
def strategy_main(cfg: HftSettings, names: dict[str, str], cpu: int | None, slot: int, n_stages: int,
                  out_q: Any) -> None:
    """The strategy stage: decision records from every worker in, orders out."""
    from greekfire.hft.cpu import gc_frozen
    from greekfire.hft.ring import Ring

    _stage_setup(cpu)
    ctl = ClusterControl.attach(names["control"])
    sigs = [Ring.attach(names[f"sig{k}"], SIG_DTYPE) for k in range(ctl.n_workers)]
    orders_ring = Ring.attach(names["orders"], ORD_DTYPE)
    st = StageStats.attach(names["stats"], n_stages)
    stats = st.arr[slot]
    taker = ImbalanceTaker(ctl.n_instruments, cfg.order_qty, cfg.max_position)
    ended: set[int] = set()
    idle = Idle(cfg.wait, int(ctl.head[ctl.OWNER_PID]))
    ImbalanceTaker(2, 1, 1).on_signals(np.zeros(1, SIG_DTYPE))
    out_q.put(("ready", "strategy"))
    with gc_frozen():
        while True:
            got = 0
            for k, r in enumerate(sigs):
                view = r.consume(cfg.batch)
                n = len(view)
                if not n:
                    continue
                got += n
                recs = view.copy()
                r.release(n)
                ends = recs["end"] != 0
                if ends.any():
                    ended.add(k)
                    recs = recs[~ends]
                stats[C_MSGS] += len(recs)
                orders = taker.on_signals(recs)
                if len(orders):
                    _publish_all(orders_ring, orders, stats)
            if not got:
                if ended and set(ctl.living()) <= ended:
                    break
                idle()
            else:
                idle.reset()
    end = np.zeros(1, ORD_DTYPE)
    end["end"] = 1
    _publish_all(orders_ring, end)
    out_q.put(("stage", "strategy", {"decisions": taker.decisions, "duplicates_skipped": taker.duplicates}))
    for r in (*sigs, orders_ring):
        r.close()
    ctl.close()
    st.close()


# ------------------------------------------------------------------------------------------- gateway stage
def gateway_main(cfg: HftSettings, names: dict[str, str], cpu: int | None, slot: int, n_stages: int,
                 out_q: Any) -> None:
    """The gateway stage: orders in, fast risk, the venue, outcomes out to the coordinator."""
    from greekfire.hft.cpu import gc_frozen
    from greekfire.hft.ring import Ring

    _stage_setup(cpu)
    orders_ring = Ring.attach(names["orders"], ORD_DTYPE)
    to_ex = Ring.attach(names["to_exchange"], ORD_DTYPE)
    from_ex = Ring.attach(names["from_exchange"], ORD_DTYPE)
    reports = Ring.attach(names["reports"], ORD_DTYPE)
    venue: OuchVenue | None = None
    if cfg.gateway == "ouch":  # our own OUCH exchange simulator (its port in the control table) or hft.venue_*
        ctl = ClusterControl.attach(names["control"])
        deadline = time.monotonic() + 60
        while names.get("venue") == "own" and not ctl.head[VENUE] and time.monotonic() < deadline:
            time.sleep(0.005)
        if names.get("venue") == "own":
            host, port = "127.0.0.1", int(ctl.head[VENUE])
        else:
            host, _, p = names["venue"].rpartition(":")
            port = int(p)
        ctl.close()
        venue = OuchVenue(cfg, host, port)
    st = StageStats.attach(names["stats"], n_stages)
    stats = st.arr[slot]
    from greekfire.hft.killswitch import KillSwitch

    # the kill switch: SIGUSR1 to this process (the coordinator forwards its own), the file, the HTTP port
    kill = KillSwitch(cfg.killswitch_file, cfg.killswitch_port).start()
    risk = make_risk(cfg, kill)
    rejected = 0
    sent_end = False
    killed = False
    wait = Idle(cfg.wait, _coordinator_pid(names))
    risk.check(as_order_records(np.zeros(0, ORD_DTYPE)))
    out_q.put(("ready", "gateway"))
    with gc_frozen():
        while True:
            idle = True
            if not killed and kill.poll():  # one access() a loop; once tripped every order is denied
                killed = True
                stats[C_KILLED] = time.perf_counter_ns()
                logging.getLogger("greekfire.hft").warning("hft kill switch tripped (%s): the gateway denies "
                                                           "every order from now on", kill.reason)
            view = orders_ring.consume(cfg.batch) if not sent_end else orders_ring.consume(0)
            n = len(view)
            if n:
                idle = False
                o = view.copy()
                orders_ring.release(n)
                end = o["end"] != 0
                body = o[~end]
                if len(body):
                    codes = risk.check(as_order_records(body))
                    now = time.perf_counter_ns()
                    body["t_risk"] = now
                    bad = codes != 0
                    if bad.any():
                        r = body[bad]
                        r["reason"], r["status"] = codes[bad], REJECTED
                        rejected += len(r)
                        _publish_all(reports, r, stats)
                    ok = body[~bad]
                    if venue is not None:
                        venue.send(ok)
                    else:
                        ok["t_sent"] = time.perf_counter_ns()
                        _publish_all(to_ex, ok, stats)
                    stats[C_MSGS] += len(body)
                if end.any():
                    if venue is None:
                        _publish_all(to_ex, o[end][:1])
                    sent_end = True
            if venue is not None:
                acks = venue.poll()
                if len(acks):
                    idle = False
                    acks["t_ack"] = time.perf_counter_ns()
                    _publish_all(reports, acks, stats)
                    settle(risk, acks)
                if sent_end and not venue.live:
                    end_rec = np.zeros(1, ORD_DTYPE)
                    end_rec["end"] = 1
                    _publish_all(reports, end_rec)
                    break
                if idle:
                    wait()
                else:
                    wait.reset()
                continue
            view = from_ex.consume(cfg.batch)
            n = len(view)
            if n:
                idle = False
                acks = view.copy()
                from_ex.release(n)
                acks["t_ack"] = time.perf_counter_ns()
                _publish_all(reports, acks, stats)
                settle(risk, acks[acks["end"] == 0])
                if (acks["end"] != 0).any():
                    break
            if idle:
                wait()
            else:
                wait.reset()
    kill.stop()
    if venue is not None:
        venue.close()
    out_q.put(("stage", "gateway", {"risk_rejected": rejected, "killed": killed, "kill_reason": kill.reason,
                                    "killed_ns": int(stats[C_KILLED])}))
    for r in (orders_ring, to_ex, from_ex, reports):
        r.close()
    st.close()


def exchange_main(cfg: HftSettings, names: dict[str, str], itch_path: str, framing: str, cpu: int | None,
                  slot: int, n_stages: int, out_q: Any) -> None:
    """The exchange simulator stage (:class:`ExchangeSim`): orders in, executions out."""
    from greekfire.hft.ring import Ring

    _stage_setup(cpu)
    sim = ExchangeSim(Path(itch_path), cfg.n_locates, framing)
    to_ex = Ring.attach(names["to_exchange"], ORD_DTYPE)
    from_ex = Ring.attach(names["from_exchange"], ORD_DTYPE)
    st = StageStats.attach(names["stats"], n_stages)
    stats = st.arr[slot]
    sim.books.apply_fast(sim.events[:1], np.zeros(1, np.int8))  # the kernels, loaded before the first order
    sim.books = OrderBooks(sim.n_instruments, sim.books.max_orders, 256)
    out_q.put(("ready", "exchange"))
    idle = Idle(cfg.wait, _coordinator_pid(names))
    while True:
        view = to_ex.consume(cfg.batch)
        n = len(view)
        if not n:
            idle()
            continue
        idle.reset()
        o = view.copy()
        to_ex.release(n)
        end = o["end"] != 0
        done = sim.execute(o[~end])
        _publish_all(from_ex, done, stats)
        stats[C_MSGS] += len(done)
        if end.any():
            _publish_all(from_ex, o[end][:1])
            break
    out_q.put(("stage", "exchange", {}))
    for r in (to_ex, from_ex):
        r.close()
    st.close()


def ouch_exchange_main(cfg: HftSettings, names: dict[str, str], itch_path: str, framing: str, cpu: int | None,
                       slot: int, n_stages: int, out_q: Any) -> None:
    """The exchange simulator over OUCH 4.2 (greekfire.hft.ouch_server.OuchServer, the market core's matching engine
    per symbol) holding :func:`seed_liquidity`; its port goes into the control table for the gateway."""
    from greekfire.hft.ouch_server import OuchServer
    from greekfire.market.matching import Side

    _stage_setup(cpu)
    ctl = ClusterControl.attach(names["control"])
    seed = seed_liquidity(Path(itch_path), cfg.n_locates, framing)
    srv = OuchServer("127.0.0.1", 0, tick_size=cfg.risk.tick_size)
    port = srv.start()
    for b, (bids, asks) in seed.items():
        for side, levels in ((Side.BUY, bids), (Side.SELL, asks)):
            for px, q in levels:
                srv.rest(symbol_of(b), side, q, px)
    ctl.head[VENUE] = port
    out_q.put(("ready", "exchange"))
    while not ctl.head[DONE]:
        time.sleep(0.01)
    counters = dict(srv.counters)
    srv.stop()
    out_q.put(("stage", "exchange", counters))
    ctl.close()


