"""The HFT pipeline: processes pinned to cores and joined by shared-memory rings.

::

    feed handler --ticks (broadcast)--> book/feature workers --sig{k}--> strategy --orders--> gateway (risk)
        --> exchange simulator --> gateway --reports--> coordinator (latency, fills, status)

* **feed** (:func:`feed_main`): ITCH 5.0 over MoldUDP64 multicast (greekfire.hft.feed's FeedHandler), or the
  file itself (``source="file"``); each book message becomes a :data:`~greekfire.hft.cluster.TICK_DTYPE`
  record with its sequence number and receive stamp, logged in the replay log and published to every worker.
* **workers** (greekfire.hft.cluster): books and features of their instruments, a decision record per
  decision point.
* **strategy** (:func:`strategy_main`): :class:`~greekfire.hft.strategy.ImbalanceTaker`.
* **gateway** (:func:`gateway_main`): fast pre-trade risk (greekfire.hft.risk), then the venue: ``sim`` is the
  exchange simulator process on rings (:class:`ExchangeSim`).
* **coordinator** (:class:`Pipeline`, the calling process): starts and watches the stages, moves a dead
  worker's instruments, folds the stamps into HDR histograms, writes the status file and the metrics.

Every record carries perf_counter-ns stamps (receive, book, features, signal, risk, sent, ack), so the
latency of each stage comes from the records themselves (greekfire.hft.latency).

:func:`reference_run` computes the same thing in one process, in order, for comparison.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from greekfire.core.errors import ConfigError, DataError, UnavailableError
from greekfire.core.settings import HftSettings
from greekfire.hft.cluster import (
    END_KIND,
    SIG_DTYPE,
    TICK_DTYPE,
    BookFeatures,
    ClusterControl,
    Idle,
    ReplayLog,
    max_orders_for,
    plan_devices,
    reassign,
    worker_main,
)
from greekfire.hft.config import feature_params, stage_cpus
from greekfire.hft.latency import StageLatency
from greekfire.hft.strategy import (
    CANCELED,
    FILLED,
    ORD_DTYPE,
    PARTIAL,
    REJECTED,
    STATUS_NAMES,
    ImbalanceTaker,
)
from greekfire.market import itch
from greekfire.market.book import OrderBooks

# per-stage counters in shared memory: messages handled, drops, errors, stalls (waits on a full ring)
C_MSGS, C_DROPS, C_ERRS, C_STALLS, C_GAPS, C_RECOVERED, C_KILLED = range(7)
DEPTH_LEVELS = 10
VENUE_REJECT = 255  # reason code of an order the venue refused (greekfire.hft.orders.VENUE_REJECT)


# ------------------------------------------------------------------------------------------- ticks
def itch_ticks(data: Any, framing: str = "length") -> tuple[np.ndarray, int]:
    """The book messages of an ITCH buffer or file as ticks (sequence number = the message's 1-based
    position in the stream), and the number of messages in the stream."""
    msgs = itch.scan(data, framing)
    ev, idx = itch.book_events(msgs)
    t = np.zeros(len(ev), TICK_DTYPE)
    t["ev"] = ev
    t["seq"] = idx + 1
    return t, len(msgs)


def messages_to_ticks(msgs: list[bytes], first_seq: int) -> np.ndarray:
    """Raw ITCH messages (in sequence order, the first numbered ``first_seq``) as ticks."""
    scanned = itch.scan(np.frombuffer(itch.frame(msgs), np.uint8), sniff=False)
    ev, idx = itch.book_events(scanned)
    t = np.zeros(len(ev), TICK_DTYPE)
    t["ev"] = ev
    t["seq"] = idx + first_seq
    return t


# ------------------------------------------------------------------------------------------- exchange
class ExchangeSim:
    """The exchange simulator: it publishes the feed, so it knows every book at every sequence number. An
    order decided at sequence number ``seq`` is an immediate-or-cancel limit order against the book of its
    instrument as of ``seq``: a buy at or above the best ask fills min(qty, ask size) at the ask, a sell
    likewise at the bid; the rest is canceled. Our fills do not change the public book (the feed's)."""

    def __init__(self, data: Any, n_instruments: int, framing: str = "length") -> None:
        ticks, _ = itch_ticks(data, framing)
        ok = ticks["ev"]["book"] < n_instruments
        ticks = ticks[ok]
        self.events = np.ascontiguousarray(ticks["ev"])
        self.seq = ticks["seq"]
        order = np.argsort(self.events["book"], kind="stable")
        self._order = order
        self._starts = np.searchsorted(self.events["book"][order], np.arange(n_instruments + 1))
        self._ptr = self._starts[:-1].copy()
        self.books = OrderBooks(n_instruments, max_orders_for(self.events), 256)
        self._status = np.zeros(len(self.events), np.int8)
        self.n_instruments = n_instruments

    def _advance(self, b: int, seq: int) -> None:
        lo, hi = int(self._ptr[b]), int(self._starts[b + 1])
        idx = self._order[lo:hi]
        upto = lo + int(np.searchsorted(self.seq[idx], seq, side="right"))
        if upto > lo:
            self.books.apply_fast(self.events[self._order[lo:upto]], self._status[: upto - lo])
            self._ptr[b] = upto

    def execute(self, orders: np.ndarray) -> np.ndarray:
        """Fill ``orders`` (:data:`ORD_DTYPE`, each instrument's in sequence order); returns them with
        status, filled and fill_px set."""
        out = orders.copy()
        for i in range(len(out)):
            o = out[i]
            b = int(o["instrument"])
            if not 0 <= b < self.n_instruments:
                o["status"], o["reason"] = REJECTED, VENUE_REJECT
                continue
            self._advance(b, int(o["seq"]))
            side = int(o["side"])
            top = self.books.best_ask(b) if side > 0 else self.books.best_bid(b)
            px = int(o["price"])
            if top is not None and (px >= top[0] if side > 0 else px <= top[0]):
                q = min(int(o["qty"]), int(top[1]))
                o["filled"], o["fill_px"] = q, top[0]
                o["status"] = FILLED if q == int(o["qty"]) else PARTIAL
            else:
                o["status"] = CANCELED
        return out


def symbol_of(instrument: int) -> str:
    """The OUCH symbol of an instrument (its ITCH stock locate): ``L00042``."""
    return f"L{instrument:05d}"


def seed_liquidity(data: Any, n_instruments: int, framing: str = "length", levels: int = 64
                   ) -> dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
    """The resting orders of the OUCH exchange simulator: each instrument's book at the end of the file,
    ``levels`` levels a side, (price ticks, qty) -- liquidity the strategy's orders trade against."""
    ex = ExchangeSim(data, n_instruments, framing)
    out = {}
    for b in range(n_instruments):
        ex._advance(b, np.iinfo(np.int64).max)
        bids, asks = ex.books.depth(b, levels)
        if bids or asks:
            out[b] = (bids, asks)
    return out


def match_against(orders: np.ndarray, seed: dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]]
                  ) -> np.ndarray:
    """What the OUCH exchange simulator does with ``orders`` (each instrument's in sequence order): one
    matching engine per instrument (greekfire.market.matching, as the OUCH server runs) holding ``seed``,
    immediate-or-cancel limit orders; returns the orders with status, filled and the average fill price."""
    from greekfire.market.matching import MatchingEngine, Side, TimeInForce

    books: dict[int, Any] = {}
    out = orders.copy()
    next_id = 1
    for i in range(len(out)):
        o = out[i]
        b = int(o["instrument"])
        if b not in books:
            eng = books[b] = MatchingEngine(b)
            for side, levels in ((Side.BUY, seed.get(b, ([], []))[0]), (Side.SELL, seed.get(b, ([], []))[1])):
                for px, q in levels:
                    eng.submit(next_id, 0, side, q, px)
                    next_id += 1
        reports = books[b].submit(next_id, 1, Side(int(o["side"])), int(o["qty"]), int(o["price"]),
                                  tif=TimeInForce.IOC)
        mine = [r for r in reports if r.order_id == next_id and r.kind.name == "TRADE"]
        next_id += 1
        filled = sum(r.qty for r in mine)
        o["filled"] = filled
        o["fill_px"] = round(sum(r.qty * r.price for r in mine) / filled) if filled else 0
        o["status"] = FILLED if filled == int(o["qty"]) else PARTIAL if filled else CANCELED
    return out


# ------------------------------------------------------------------------------------------- results
@dataclass
class RunResult:
    """What a run leaves: final books (``[n_instruments, 2, 10, 2]``, as OrderBooks.depth_array), every order
    with its outcome (:data:`ORD_DTYPE`, by order id), the final per-instrument feature state, worker losses,
    stage latency (µs percentiles) and counters."""

    depth: np.ndarray
    orders: np.ndarray
    state: np.ndarray | None
    losses: list[dict[str, Any]] = field(default_factory=list)
    latency_us: dict[str, dict[str, float]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def fills(self) -> list[tuple[int, int, int, int, int, int, int, int]]:
        """(order id, instrument, side, qty, status, reason, filled, fill price) of every order, by order id."""
        o = np.sort(self.orders, order="order_id")
        return [(int(r["order_id"]), int(r["instrument"]), int(r["side"]), int(r["qty"]), int(r["status"]),
                 int(r["reason"]), int(r["filled"]), int(r["fill_px"])) for r in o]

    def summary(self) -> dict[str, Any]:
        """Plain data for JSON: order outcomes, losses, latency, counters."""
        counts = {STATUS_NAMES[k]: int(np.count_nonzero(self.orders["status"] == k)) for k in STATUS_NAMES}
        return {"orders": counts, "filled_shares": int(self.orders["filled"].sum()), "losses": self.losses,
                "latency_us": self.latency_us, "stats": self.stats}


def _risk(cfg: HftSettings, kill: Any = None) -> Any:
    """The gateway's fast pre-trade checks (greekfire.hft.risk) with the ``hft.risk`` limits; ``kill``: a kill
    switch whose trip denies every order (KILL_SWITCH)."""
    from greekfire.hft.risk import FastLimits, FastRisk

    r = cfg.risk
    return FastRisk(FastLimits(max_order_qty=r.max_order_qty, max_notional=r.max_notional, max_position=r.max_position,
                               max_orders_per_s=r.max_orders_per_s, tick_size=r.tick_size, multiplier=1.0),
                    cfg.n_locates, kill=kill)


def _settle(risk: Any, done: np.ndarray) -> None:
    """Executions back into the risk state: fills move pending into the position, the rest is released."""
    for o in done:
        inst, side, qty, filled = int(o["instrument"]), int(o["side"]), int(o["qty"]), int(o["filled"])
        if filled:
            risk.on_fill(inst, side, filled, int(o["fill_px"]))
        if qty > filled:
            risk.release(inst, side, qty - filled)


def _as_order_records(orders: np.ndarray) -> np.ndarray:
    from greekfire.hft.orders import ORDER_DTYPE

    rec = np.zeros(len(orders), ORDER_DTYPE)
    for name, src in (("order_id", "order_id"), ("instrument", "instrument"), ("side", "side"), ("qty", "qty"),
                      ("price_ticks", "price"), ("t_signal_ns", "t_signal")):
        rec[name] = orders[src]
    return rec


def reference_run(data: Any, cfg: HftSettings, framing: str = "length") -> RunResult:
    """The whole pipeline in one process, in sequence order: books, features, strategy, risk, the venue of
    ``hft.gateway`` (``sim``: :class:`ExchangeSim`; ``ouch``: :func:`match_against` the seeded books). What
    the multi-process run must equal."""
    ticks, _ = itch_ticks(data, framing)
    ticks = ticks[ticks["ev"]["book"] < cfg.n_locates]
    bf = BookFeatures(cfg.n_locates, max_orders_for(ticks), feature_params(cfg), decide_every=cfg.decide_every,
                      backend=cfg.feature_backend, device="cpu")
    sig = bf.process(ticks)
    orders = ImbalanceTaker(cfg.n_locates, cfg.order_qty, cfg.max_position).on_signals(sig)
    risk = _risk(cfg)
    codes = risk.check(_as_order_records(orders))
    orders["reason"] = codes
    orders["status"][codes != 0] = REJECTED
    passed = codes == 0
    if cfg.gateway == "ouch":
        done = match_against(orders[passed], seed_liquidity(data, cfg.n_locates, framing))
    else:
        done = ExchangeSim(data, cfg.n_locates, framing).execute(orders[passed])
    _settle(risk, done)
    orders[passed] = done
    return RunResult(bf.books.depth_array(DEPTH_LEVELS), np.sort(orders, order="order_id"), bf.engine.state,
                     stats={"decisions": len(sig), "ticks": len(ticks)})


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


class _Stats:
    """Per-stage counters in shared memory ``[n_stages, 8]`` int64."""

    def __init__(self, shm: Any, n: int, owner: bool) -> None:
        self._shm, self.name, self._owner = shm, shm.name, owner
        self.arr = np.ndarray((n, 8), np.int64, shm.buf, 0)

    @classmethod
    def create(cls, n: int) -> _Stats:
        from multiprocessing import shared_memory

        s = cls(shared_memory.SharedMemory(create=True, size=n * 64), n, True)
        s.arr[:] = 0
        return s

    @classmethod
    def attach(cls, name: str, n: int) -> _Stats:
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
    st = _Stats.attach(names["stats"], n_stages)
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
    st = _Stats.attach(names["stats"], n_stages)
    stats = st.arr[slot]
    taker = ImbalanceTaker(ctl.n_instruments, cfg.order_qty, cfg.max_position)
    ended: set[int] = set()
    idle = Idle(cfg.wait)
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
    venue: _OuchVenue | None = None
    if cfg.gateway == "ouch":  # our own OUCH exchange simulator (its port in the control table) or hft.venue_*
        ctl = ClusterControl.attach(names["control"])
        deadline = time.monotonic() + 60
        while names.get("venue") == "own" and not ctl.head[VENUE] and time.monotonic() < deadline:
            time.sleep(0.005)
        port = int(ctl.head[VENUE]) if names.get("venue") == "own" else cfg.venue_port
        ctl.close()
        venue = _OuchVenue(cfg, cfg.venue_host if names.get("venue") != "own" else "127.0.0.1", port)
    st = _Stats.attach(names["stats"], n_stages)
    stats = st.arr[slot]
    from greekfire.hft.killswitch import KillSwitch

    # the kill switch: SIGUSR1 to this process (the coordinator forwards its own), the file, the HTTP port
    kill = KillSwitch(cfg.killswitch_file, cfg.killswitch_port).start()
    risk = _risk(cfg, kill)
    rejected = 0
    sent_end = False
    killed = False
    wait = Idle(cfg.wait)
    risk.check(_as_order_records(np.zeros(0, ORD_DTYPE)))
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
                    codes = risk.check(_as_order_records(body))
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
                    _settle(risk, acks)
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
                _settle(risk, acks[acks["end"] == 0])
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
    st = _Stats.attach(names["stats"], n_stages)
    stats = st.arr[slot]
    sim.books.apply_fast(sim.events[:1], np.zeros(1, np.int8))  # the kernels, loaded before the first order
    sim.books = OrderBooks(sim.n_instruments, sim.books.max_orders, 256)
    out_q.put(("ready", "exchange"))
    idle = Idle(cfg.wait)
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
    """The exchange simulator over OUCH 4.2 (greekfire.hft.ouch.OuchServer, the market core's matching engine
    per symbol) holding :func:`seed_liquidity`; its port goes into the control table for the gateway."""
    from greekfire.hft.ouch import OuchServer
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


def _ouch_outcome(pool: Any, slot: int, rec: np.void) -> bool:
    """Fill ``rec`` from pool order ``slot`` when that order is closed; True then."""
    from greekfire.hft.orders import STATUS
    from greekfire.trading.orders import OrderStatus

    st = STATUS[int(pool.orders[slot]["status"])]
    if st not in (OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED,
                  OrderStatus.DENIED):
        return False
    filled = int(pool.orders[slot]["filled"])
    rec["filled"] = filled
    rec["fill_px"] = round(float(pool.orders[slot]["avg_px"])) if filled else 0
    if st == OrderStatus.REJECTED or st == OrderStatus.DENIED:
        rec["status"], rec["reason"] = REJECTED, int(pool.orders[slot]["reason"]) or VENUE_REJECT
    else:
        rec["status"] = FILLED if filled == int(rec["qty"]) else PARTIAL if filled else CANCELED
    return True


class _OuchVenue:
    """The gateway's side of OUCH: pool orders through greekfire.hft.gateway's OUCH gateway, outcomes back as
    order records."""

    def __init__(self, cfg: HftSettings, host: str, port: int) -> None:
        from greekfire.hft.gateway import open_gateway
        from greekfire.hft.orders import OrderPool

        self.pool = OrderPool(1 << 16)
        self.gw = open_gateway("ouch", self.pool, host=host, port=port,
                               symbols={i: symbol_of(i) for i in range(cfg.n_locates)}, tick_size=cfg.risk.tick_size)
        self.meta = np.zeros(self.pool.capacity, ORD_DTYPE)
        self.live: set[int] = set()

    def send(self, orders: np.ndarray) -> None:
        for o in orders:
            slot = self.pool.alloc(int(o["instrument"]), int(o["side"]), int(o["qty"]), int(o["price"]),
                                   int(o["t_signal"]), 2)  # immediate or cancel
            now = time.perf_counter_ns()
            self.meta[slot] = o
            self.meta[slot]["t_sent"] = now
            self.gw.enter(slot, now)
            self.live.add(slot)

    def poll(self) -> np.ndarray:
        events = self.gw.poll(0.0)
        done = []
        for slot in {e.slot for e in events if e.slot >= 0} & self.live:
            rec = self.meta[slot].copy()
            if _ouch_outcome(self.pool, slot, rec):
                done.append(rec)
                self.live.discard(slot)
                self.pool.free(slot)
        return np.array(done, ORD_DTYPE) if done else np.zeros(0, ORD_DTYPE)

    def close(self) -> None:
        self.gw.stop()


# ------------------------------------------------------------------------------------------- coordinator
class Pipeline:
    """Starts the stages, watches them, and collects the outcome.

    ``itch``: the file the exchange simulator knows (and the feed replays with ``source="file"``);
    ``source``: ``multicast`` (the feed handler joins ``hft.feed_group:feed_port``; ``serve=True`` starts a
    FeedServer replaying ``itch`` at ``rate`` msgs/s once the handler listens) or ``file`` (the feed stage
    reads ``itch`` itself at ``rate``).

    Example::

        cfg = load_hft(overrides={"workers": 2})
        result = Pipeline(cfg, itch=Path("day.itch"), source="file").run(timeout_s=120)
        result.summary()["orders"]
    """

    def __init__(self, cfg: HftSettings, *, itch: Path, source: str = "multicast", rate: float = 0.0,
                 serve: bool = True, framing: str = "length", on_status: Any = None) -> None:
        if cfg.gateway not in ("sim", "ouch"):
            raise ConfigError("hft.gateway", cfg.gateway, "sim or ouch (the FIX venue is not wired into the pipeline)")
        if source not in ("multicast", "file"):
            raise ConfigError("source", source, "multicast or file")
        if not Path(itch).is_file():
            raise DataError("itch", str(itch), "an existing ITCH 5.0 file")
        self.cfg, self.itch, self.source, self.rate, self.serve, self.framing = cfg, Path(itch), source, rate, serve, framing
        self.on_status = on_status
        self.devices = plan_devices(cfg.workers, cfg.device)
        self.n_workers = len(self.devices)
        self.cpus = stage_cpus(cfg.model_copy(update={"workers": self.n_workers}))
        self.procs: dict[str, Any] = {}
        self.losses: list[dict[str, Any]] = []
        self.latency = StageLatency()
        self._reports: list[np.ndarray] = []
        self._res: list[Any] = []
        self._started = 0.0
        self._server: Any = None

    # -- resources
    def _create(self) -> None:
        from greekfire.hft.ring import BroadcastRing, Ring

        c, w = self.cfg.ring_capacity, self.n_workers
        self.rings: dict[str, Any] = {"ticks": BroadcastRing.create(TICK_DTYPE, c, w)}
        for k in range(w):
            self.rings[f"sig{k}"] = Ring.create(SIG_DTYPE, c)
        for n in ("orders", "to_exchange", "from_exchange", "reports"):
            self.rings[n] = Ring.create(ORD_DTYPE, c)
        self.ctl = ClusterControl.create(w, self.cfg.n_locates)
        n_msgs = itch.scan(self.itch, self.framing)
        self.n_messages = len(n_msgs)
        self.log = ReplayLog.create(max(self.n_messages + 16, 1024))
        self.stage_names = ["feed", *[f"worker{k}" for k in range(w)], "strategy", "gateway", "exchange"]
        self.stats = _Stats.create(len(self.stage_names))
        self.store = tempfile.mkdtemp(prefix="greekfire-hft-")
        self.names = {k: r.name for k, r in self.rings.items()}
        self.names.update(control=self.ctl.name, log=self.log.name, stats=self.stats.name, store=self.store)

    def _release(self) -> None:
        for r in getattr(self, "rings", {}).values():
            r.close()
            r.unlink()
        for x in ("ctl", "log", "stats"):
            if hasattr(self, x):
                getattr(self, x).close()
        if getattr(self, "store", None):
            shutil.rmtree(self.store, ignore_errors=True)

    # -- processes
    def start(self) -> None:
        """Create the rings and start every stage (returns once the feed and the exchange are ready)."""
        self._create()
        ctx = mp.get_context("forkserver")
        with contextlib.suppress(ValueError):
            ctx.set_forkserver_preload(["greekfire.hft.pipeline", "greekfire.hft.risk"])
        self.q = ctx.Queue()
        n, cfg, names = len(self.stage_names), self.cfg, self.names
        if self.source == "file":
            src: dict[str, Any] = {"kind": "file", "path": str(self.itch), "rate": self.rate, "framing": self.framing}
        else:
            rereq = (cfg.rerequest_host, cfg.rerequest_port) if cfg.rerequest_port else None
            if self.serve:  # our own feed server: its re-request socket is bound now, it sends after go
                from greekfire.hft.feed import FeedServer

                self._server = FeedServer(self.itch, cfg.feed_group, cfg.feed_port, rate=self.rate,
                                          session=cfg.feed_session, rerequest_port=cfg.rerequest_port,
                                          framing=self.framing)
                rereq = tuple(self._server.rerequest_address)
            src = {"kind": "multicast", "group": cfg.feed_group, "port": cfg.feed_port, "iface": cfg.feed_iface,
                   "session": cfg.feed_session, "expect": self.n_messages, "rerequest": rereq}
        names["venue"] = "own"
        exchange_fn = ouch_exchange_main if cfg.gateway == "ouch" else exchange_main
        specs: list[tuple[str, Any, tuple[Any, ...]]] = [("exchange", exchange_fn,
                                                          (cfg, names, str(self.itch), self.framing, self.cpus["exchange"], n - 1, n, self.q))]
        specs += [(f"worker{k}", worker_main, (k, cfg, names, self.devices[k], self.cpus[f"worker{k}"], self.q))
                  for k in range(self.n_workers)]
        specs += [("strategy", strategy_main, (cfg, names, self.cpus["strategy"], n - 3, n, self.q)),
                  ("gateway", gateway_main, (cfg, names, self.cpus["gateway"], n - 2, n, self.q)),
                  ("feed", feed_main, (cfg, names, src, self.cpus["feed"], 0, n, self.q))]
        # the fork server would run the main script again to rebuild __main__ (a launcher without a main guard
        # would start a second pipeline): every stage lives in a greekfire module, so it needs no __main__
        main = sys.modules.get("__main__")
        main_file = main.__dict__.pop("__file__", None) if main is not None else None
        try:
            for name, fn, args in specs:
                p = ctx.Process(target=fn, args=args, name=f"greekfire-hft-{name}", daemon=True)
                p.start()
                self.procs[name] = p
        finally:
            if main is not None and main_file is not None:
                main.__file__ = main_file
        self._started = time.time()
        ready: set[str] = set()
        deadline = time.monotonic() + 120
        while ready | {f"worker{loss['worker']}" for loss in self.losses} != set(self.stage_names):
            self._check_stages()
            try:
                msg = self.q.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise UnavailableError("hft pipeline", "stages did not start within 120 s") from None
                continue
            if msg[0] == "ready":
                ready.add(msg[1])
            else:
                self._res.append(msg)
        self._forward_kill_signal()
        self.ctl.head[GO] = 1
        self.t_go = time.perf_counter()
        if self._server is not None:
            self._server.start()

    def _forward_kill_signal(self) -> None:
        """SIGUSR1 to the coordinator (the process a user knows) trips the gateway's kill switch too."""
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        gw = self.procs["gateway"].pid

        def forward(signum: int, _frame: Any) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(gw, signum)

        self._old_usr1 = signal.signal(signal.SIGUSR1, forward)

    @property
    def pids(self) -> dict[str, int]:
        """Process id of each stage."""
        return {k: int(p.pid) for k, p in self.procs.items() if p.pid}

    def _check_stages(self) -> None:
        for name, p in self.procs.items():
            if p.exitcode is None or p.exitcode == 0:
                continue
            if name.startswith("worker"):
                k = int(name.removeprefix("worker"))
                if self.ctl.alive[k]:
                    self._lose_worker(k, p)
            else:
                raise UnavailableError(f"hft {name} stage", f"process {p.pid} ended with exit code {p.exitcode}")

    def _lose_worker(self, k: int, p: Any) -> None:
        self.ctl.alive[k] = 0
        living = self.ctl.living()
        moved = reassign(self.ctl.owner, k, living)
        self.ctl.head[ClusterControl.GEN] += 1
        self.rings["ticks"].retire(k)  # its cursor must not hold the feed back
        loss = {"worker": k, "pid": p.pid, "exit_code": p.exitcode, "acked_seq": int(self.ctl.acked[k]),
                "moved_to": {f"worker{w}": n for w, n in moved.items()}, "generation": self.ctl.generation,
                "at": time.time()}
        self.losses.append(loss)
        logging.getLogger("greekfire.hft").warning(
            "hft worker%d (pid %s) died with exit code %s: %d instruments moved to %s; events after sequence "
            "number %d replayed to the new owners", k, p.pid, p.exitcode, sum(moved.values()),
            ", ".join(f"worker{w}" for w in moved), loss["acked_seq"])

    def _coordinate(self) -> None:
        living = self.ctl.living()
        if not self.ctl.final and living and all(self.ctl.reached_end[k] for k in living) and \
                all(self.ctl.seen_gen[k] == self.ctl.generation for k in living):
            self.ctl.head[ClusterControl.FINAL] = 1

    def status(self) -> dict[str, Any]:
        """The running pipeline as plain data (what the status file and `greekfire hft status` show)."""
        st = self.stats.arr
        stages = {}
        for i, name in enumerate(self.stage_names):
            p = self.procs.get(name)
            stages[name] = {"pid": p.pid if p else None, "alive": bool(p and p.is_alive()),
                            "messages": int(st[i, C_MSGS]), "drops": int(st[i, C_DROPS]),
                            "errors": int(st[i, C_ERRS]), "stalls": int(st[i, C_STALLS])}
        stages["feed"].update(gaps=int(st[0, C_GAPS]), recovered=int(st[0, C_RECOVERED]))
        stages["gateway"]["kill_switch_tripped"] = bool(st[self.stage_names.index("gateway"), C_KILLED])
        rep = np.concatenate(self._reports) if self._reports else np.zeros(0, ORD_DTYPE)
        orders = {STATUS_NAMES[k]: int(np.count_nonzero(rep["status"] == k)) for k in STATUS_NAMES}
        rings = {k: round(r.available() / r.capacity, 4) for k, r in self.rings.items() if k != "ticks"}
        return {"state": "running", "pid": os.getpid(), "started": self._started, "updated": time.time(),
                "workers": {f"worker{k}": {"device": self.devices[k], "alive": bool(self.ctl.alive[k]),
                                           "instruments": int(np.count_nonzero(self.ctl.owner == k)),
                                           "acked_seq": int(self.ctl.acked[k])} for k in range(self.n_workers)},
                "stages": stages, "orders": orders, "losses": self.losses, "rings": rings,
                "latency_us": self.latency.percentiles_us()}

    def _write_status(self, state: str = "running") -> dict[str, Any]:
        s = self.status()
        s["state"] = state
        from greekfire.hft import metrics

        metrics.publish(s)
        path = Path(self.cfg.status_file)
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(s, default=str))
            tmp.replace(path)
        if self.on_status is not None:
            self.on_status(s)
        return s

    def wait(self, timeout_s: float = 600.0) -> RunResult:
        """Run the coordinator loop until the stream ends (or ``timeout_s``: UnavailableError)."""
        reports = self.rings["reports"]
        deadline = time.monotonic() + timeout_s
        next_status = time.monotonic()
        done = False
        while not done:
            view = reports.consume(4096)
            n = len(view)
            if n:
                r = view.copy()
                reports.release(n)
                end = r["end"] != 0
                body = r[~end]
                self._reports.append(body)
                self.latency.record(body)
                done = bool(end.any())
                if done:
                    self.t_end = time.perf_counter()
                continue
            self._check_stages()
            self._coordinate()
            if time.monotonic() >= next_status:
                self._write_status()
                next_status = time.monotonic() + self.cfg.status_interval_s
            if time.monotonic() > deadline:
                raise UnavailableError("hft pipeline", f"the stream did not end within {timeout_s:.0f} s "
                                       f"(status: {json.dumps(self.status()['stages'], default=str)})")
            time.sleep(0.0005)
        return self._collect(deadline)

    def _collect(self, deadline: float) -> RunResult:
        self.ctl.head[DONE] = 1  # the stream is over: an exchange that serves until told stops now
        want = {f"worker{k}" for k in self.ctl.living()} | {"feed", "strategy", "gateway", "exchange"}
        got: dict[str, Any] = {}
        for msg in self._res:
            if msg[0] == "stage":
                got[msg[1]] = msg[2]
        while not want <= set(got):
            try:
                msg = self.q.get(timeout=0.2)
            except queue.Empty:
                self._check_stages()
                if time.monotonic() > deadline:
                    raise UnavailableError("hft pipeline", f"no final report from {sorted(want - set(got))}") from None
                continue
            if msg[0] == "stage":
                got[msg[1]] = msg[2]
        depth = np.zeros((self.cfg.n_locates, 2, DEPTH_LEVELS, 2), np.int64)
        state = None
        for k in self.ctl.living():
            w = got[f"worker{k}"]
            depth[w["instruments"]] = w["depth"]
            if w["state"] is not None:
                state = w["state"]
        for p in self.procs.values():
            p.join(10)
        if self._server is not None:
            self._server.stop()
        orders = np.concatenate(self._reports) if self._reports else np.zeros(0, ORD_DTYPE)
        final = self._write_status("done")
        stats: dict[str, Any] = {"stages": final["stages"], "workers": {k: {x: v for x, v in got[k].items()
                                                              if x in ("messages", "bad_events", "replayed")}
                                                          for k in got if k.startswith("worker")},
                 **{k: got[k] for k in ("feed", "strategy", "gateway", "exchange") if k in got}}
        return RunResult(depth, np.sort(orders, order="order_id"), state, list(self.losses),
                         self.latency.percentiles_us(), stats)

    def run(self, timeout_s: float = 600.0) -> RunResult:
        """start(), wait(), stop(): the whole run."""
        try:
            self.start()
            return self.wait(timeout_s)
        finally:
            self.stop()

    def stop(self) -> None:
        """End every stage still running and free the shared memory."""
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.stop()
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
        for p in self.procs.values():
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(2)
        if getattr(self, "_old_usr1", None) is not None:
            import signal

            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGUSR1, self._old_usr1)
            self._old_usr1 = None
        self._release()


# ------------------------------------------------------------------------------------------- benchmark
def bench_settings(cfg: HftSettings, n_stocks: int) -> HftSettings:
    """The benchmark's strategy: a decision every 16 messages, a low threshold and no position cap, so that
    the run sends orders all along (about one per 60 messages on the synthetic day)."""
    return cfg.model_copy(update={
        "n_locates": n_stocks + 1, "max_orders": 1 << 18, "decide_every": 16, "enter": 0.2, "max_position": 1 << 40,
        "order_qty": 1, "risk": cfg.risk.model_copy(update={"max_position": 1 << 40})})


def bench_tick_to_order(cfg: HftSettings, *, rate: float, messages: int = 200_000, n_stocks: int = 64,
                        source: str = "multicast", timeout_s: float = 600.0) -> dict[str, Any]:
    """Tick-to-order latency (feed receive -> order handed to the venue) through the whole pipeline on a
    synthetic ITCH day of ``messages`` messages replayed at ``rate`` msgs/s, with :func:`bench_settings`.
    Returns the rate asked and achieved, orders, p50/p99/p99.9 (µs), and what overload cost: feed drops and
    gaps (the socket's), ring stalls (a stage waiting for room)."""
    import socket

    from greekfire.market import synth

    with tempfile.TemporaryDirectory(prefix="greekfire-hft-bench-") as d:
        path = Path(d) / "bench.itch"
        path.write_bytes(synth.synthetic_stream(messages, n_stocks, seed=11))
        with socket.socket() as s:  # a free port, so that two benches never share a feed
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        run_cfg = bench_settings(cfg, n_stocks).model_copy(update={
            "feed_port": port, "status_file": Path(d) / "status.json"})
        pipe = Pipeline(run_cfg, itch=path, source=source, rate=rate)
        res = pipe.run(timeout_s)
        elapsed = max(getattr(pipe, "t_end", 0.0) - getattr(pipe, "t_go", 0.0), 1e-9)
    lat = res.latency_us.get("tick->order", {"count": 0})
    stages = res.stats["stages"]
    return {"rate": rate, "messages": messages, "workers": pipe.n_workers, "wait": cfg.wait, "source": source,
            "achieved_rate": round(stages["feed"]["messages"] / elapsed), "orders": int(lat.get("count", 0)),
            "p50_us": lat.get("p50", float("nan")), "p99_us": lat.get("p99", float("nan")),
            "p99.9_us": lat.get("p99.9", float("nan")), "feed_drops": stages["feed"]["drops"],
            "feed_gaps": stages["feed"].get("gaps", 0), "stalls": sum(v["stalls"] for v in stages.values()),
            "stages_us": {k: v.get("p99") for k, v in res.latency_us.items()}}
