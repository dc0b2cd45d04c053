"""The HFT pipeline: processes pinned to cores and joined by shared-memory rings.

::

    feed handler --ticks (broadcast)--> book/feature workers --sig{k}--> strategy --orders--> gateway (risk)
        --> exchange simulator --> gateway --reports--> coordinator (latency, fills, status)

* **feed** (greekfire.hft.stages.feed_main): ITCH 5.0 over MoldUDP64 multicast (greekfire.hft.feed's
  FeedHandler), or the file itself (``source="file"``); each book message becomes a
  :data:`~greekfire.hft.cluster.TICK_DTYPE` record with its sequence number and receive stamp, logged in the
  replay log and published to every worker.
* **workers** (greekfire.hft.cluster): books and features of their instruments, a decision record per
  decision point.
* **strategy** (greekfire.hft.stages.strategy_main): :class:`~greekfire.hft.strategy.ImbalanceTaker`.
* **gateway** (greekfire.hft.stages.gateway_main): fast pre-trade risk (greekfire.hft.risk) and the kill
  switch, then the venue: ``sim`` is the exchange simulator process on rings
  (:class:`~greekfire.hft.venues.ExchangeSim`), ``ouch`` the OUCH 4.2 gateway to the OUCH exchange simulator.
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
    SIG_DTYPE,
    TICK_DTYPE,
    BookFeatures,
    ClusterControl,
    ReplayLog,
    max_orders_for,
    plan_devices,
    reassign,
    worker_main,
)
from greekfire.hft.config import feature_params, stage_cpus
from greekfire.hft.latency import StageLatency
from greekfire.hft.stages import (
    C_DROPS,
    C_ERRS,
    C_GAPS,
    C_KILLED,
    C_MSGS,
    C_RECOVERED,
    C_STALLS,
    DONE,
    GO,
    StageStats,
    as_order_records,
    exchange_main,
    feed_main,
    gateway_main,
    make_risk,
    ouch_exchange_main,
    settle,
    strategy_main,
)
from greekfire.hft.strategy import (
    ORD_DTYPE,
    REJECTED,
    STATUS_NAMES,
    ImbalanceTaker,
)
from greekfire.hft.venues import ExchangeSim, itch_ticks, match_against, seed_liquidity
from greekfire.market import itch

DEPTH_LEVELS = 10


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
    risk = make_risk(cfg)
    codes = risk.check(as_order_records(orders))
    orders["reason"] = codes
    orders["status"][codes != 0] = REJECTED
    passed = codes == 0
    if cfg.gateway == "ouch":
        done = match_against(orders[passed], seed_liquidity(data, cfg.n_locates, framing))
    else:
        done = ExchangeSim(data, cfg.n_locates, framing).execute(orders[passed])
    settle(risk, done)
    orders[passed] = done
    return RunResult(bf.books.depth_array(DEPTH_LEVELS), np.sort(orders, order="order_id"), bf.engine.state,
                     stats={"decisions": len(sig), "ticks": len(ticks)})



# ------------------------------------------------------------------------------------------- coordinator
class Pipeline:
    """Starts the stages, watches them, and collects the outcome.

    ``itch``: the file the exchange simulator knows (and the feed replays with ``source="file"``);
    ``source``: ``multicast`` (the feed handler joins ``hft.feed_group:feed_port``; ``serve=True`` starts a
    FeedServer replaying ``itch`` at ``rate`` msgs/s once the handler listens) or ``file`` (the feed stage
    reads ``itch`` itself at ``rate``). ``venue``: (host, port) of an OUCH venue to trade with (``hft.gateway``
    ouch) instead of our own exchange simulator. ``drop``: sequence numbers our feed server never multicasts (the
    handler gets them from the re-request server: loss on purpose, for tests and demos).

    Example::

        cfg = load_hft(overrides={"workers": 2})
        result = Pipeline(cfg, itch=Path("day.itch"), source="file").run(timeout_s=120)
        result.summary()["orders"]
    """

    def __init__(self, cfg: HftSettings, *, itch: Path, source: str = "multicast", rate: float = 0.0,
                 serve: bool = True, framing: str = "length", on_status: Any = None, drop: tuple[int, ...] = (),
                 venue: tuple[str, int] | None = None) -> None:
        if cfg.gateway not in ("sim", "ouch"):
            raise ConfigError("hft.gateway", cfg.gateway, "sim or ouch (the FIX venue is not wired into the pipeline)")
        if source not in ("multicast", "file"):
            raise ConfigError("source", source, "multicast or file")
        if not Path(itch).is_file():
            raise DataError("itch", str(itch), "an existing ITCH 5.0 file")
        self.cfg, self.itch, self.source, self.rate, self.serve, self.framing = cfg, Path(itch), source, rate, serve, framing
        self.on_status = on_status
        self.drop = tuple(drop)  # sequence numbers our feed server never multicasts (re-sent on request): tests
        if venue is not None and cfg.gateway != "ouch":
            raise ConfigError("hft.gateway", cfg.gateway, "ouch, to trade with an OUCH venue at "
                              f"{venue[0]}:{venue[1]}")
        self.venue = venue
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
        self.stage_names = ["feed", *[f"worker{k}" for k in range(w)], "strategy", "gateway"]
        if self.venue is None:
            self.stage_names.append("exchange")
        self.stats = StageStats.create(len(self.stage_names))
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
            ctx.set_forkserver_preload(["greekfire.hft.pipeline", "greekfire.hft.stages", "greekfire.hft.risk"])
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
                                          framing=self.framing, drop=self.drop)
                rereq = tuple(self._server.rerequest_address)
            src = {"kind": "multicast", "group": cfg.feed_group, "port": cfg.feed_port, "iface": cfg.feed_iface,
                   "session": cfg.feed_session, "expect": self.n_messages, "rerequest": rereq}
        slot = self.stage_names.index
        specs: list[tuple[str, Any, tuple[Any, ...]]] = []
        if self.venue is None:  # our own exchange simulator
            names["venue"] = "own"
            exchange_fn = ouch_exchange_main if cfg.gateway == "ouch" else exchange_main
            specs.append(("exchange", exchange_fn, (cfg, names, str(self.itch), self.framing, self.cpus["exchange"],
                                                    slot("exchange"), n, self.q)))
        else:  # an OUCH venue somewhere else
            names["venue"] = f"{self.venue[0]}:{self.venue[1]}"
        specs += [(f"worker{k}", worker_main, (k, cfg, names, self.devices[k], self.cpus[f"worker{k}"], self.q))
                  for k in range(self.n_workers)]
        specs += [("strategy", strategy_main, (cfg, names, self.cpus["strategy"], slot("strategy"), n, self.q)),
                  ("gateway", gateway_main, (cfg, names, self.cpus["gateway"], slot("gateway"), n, self.q)),
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
        want = {f"worker{k}" for k in self.ctl.living()} | {"feed", "strategy", "gateway"}
        if self.venue is None:
            want.add("exchange")
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

