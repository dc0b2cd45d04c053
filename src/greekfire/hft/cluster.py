"""The cluster of book/feature workers: instruments partitioned across devices, one worker process per device,
results aggregated over a process group (gloo on CPUs, NCCL between GPUs), and no silent gap when a worker
dies.

Every worker reads the whole tick stream from one :class:`~greekfire.hft.ring.BroadcastRing` (its own cursor)
and keeps the books and features of the instruments the ownership table gives it. It publishes one
:data:`SIG_DTYPE` record per decision point (a book message whose sequence number is a multiple of
``hft.decide_every``) to its own ring, then acknowledges the sequence number in :class:`ClusterControl`.

When a worker dies (the coordinator sees its process end), :func:`reassign` moves its instruments to the
living workers and bumps the generation; each new owner rebuilds those books from the :class:`ReplayLog`
(every tick the feed published, in order) up to where it stands and publishes their decision records again
from the start: the strategy drops the ones it has already seen (per instrument, by sequence number), so the
events the dead worker had not acknowledged reach the strategy exactly once. The loss is reported
(:meth:`ClusterControl.losses` on the coordinator side: worker, exit code, last acknowledged sequence, where its
instruments went).

At the end of the stream the living workers form a process group and all-reduce their per-instrument feature
state into one tensor, which rank 0 hands to the coordinator with the final books.
"""

from __future__ import annotations

import contextlib
import os
import time
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np

from greekfire.core.errors import ConfigError
from greekfire.market.book import ADD, EVENT_DTYPE, L_QTY, REPLACE, OrderBooks, apply_events

#: a tick on the rings: the market core's 64-byte event (book = stock locate), the feed's sequence number,
#: the receive and publish stamps (perf_counter ns)
TICK_DTYPE = np.dtype([("ev", EVENT_DTYPE), ("seq", "i8"), ("t_rx", "i8"), ("t_pub", "i8"), ("pad", "i8")])
END_KIND = 255  # ev.kind of the end-of-stream tick
N_FEATURES = 8
#: a decision record, worker -> strategy: features (greekfire.hft.features.FEATURES), top of book, stamps
SIG_DTYPE = np.dtype([
    ("seq", "i8"), ("instrument", "i4"), ("worker", "i2"), ("end", "i2"), ("f", "f8", (N_FEATURES,)),
    ("bid_px", "i8"), ("bid_qty", "i8"), ("ask_px", "i8"), ("ask_qty", "i8"),
    ("t_rx", "i8"), ("t_book", "i8"), ("t_feat", "i8"),
])
MAX_WORKERS = 64
_H = 8 + 4 * MAX_WORKERS  # control header words


def _attach_shm(name: str) -> shared_memory.SharedMemory:
    shm = shared_memory.SharedMemory(name=name)
    return shm


class Idle:
    """How a stage waits while its rings are empty (``hft.wait``): ``busy`` spins, ``yield`` gives the core to
    another runnable thread (sched_yield), ``block`` yields for a while and then sleeps 50 µs at a time
    (latency traded for a free core: what a shared machine needs)."""

    # how often (idle rounds) a stage looks whether the process that started the run is still there
    OWNER_CHECK_EVERY = 1 << 12

    def __init__(self, strategy: str, owner_pid: int = 0) -> None:
        self.strategy = strategy
        self.n = 0
        self.owner_pid = owner_pid

    def __call__(self) -> None:
        self.n += 1
        if self.owner_pid and not self.n % self.OWNER_CHECK_EVERY and not _alive(self.owner_pid):
            # the coordinator is gone (killed, or its test timed out): a stage must not spin on without it
            raise SystemExit(f"hft stage: the coordinator (pid {self.owner_pid}) is gone")
        if self.strategy == "busy":
            return
        if self.strategy == "yield" or self.n < 64:
            os.sched_yield()
            return
        time.sleep(50e-6)

    def reset(self) -> None:
        """Work arrived: start over from spinning."""
        self.n = 0


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (signal 0 probes without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------- control
class ClusterControl:
    """Shared state of the cluster: generation, final flag, per-worker acknowledged sequence number, end
    reached, generation seen, alive flag; and the owner (worker index) of every instrument."""

    GEN, FINAL, NW = 0, 1, 2
    OWNER_PID = 7  # header word: pid of the process that created the table (the run's coordinator)

    def __init__(self, shm: shared_memory.SharedMemory, n_instruments: int, owner: bool = False) -> None:
        self._shm = shm
        self.name = shm.name
        self._owner = owner
        self.head = np.ndarray((_H,), np.int64, shm.buf, 0)
        self.n_instruments = n_instruments
        self.owner = np.ndarray((n_instruments,), np.int16, shm.buf, _H * 8)
        w = MAX_WORKERS
        self.acked = self.head[8 : 8 + w]
        self.reached_end = self.head[8 + w : 8 + 2 * w]
        self.seen_gen = self.head[8 + 2 * w : 8 + 3 * w]
        self.alive = self.head[8 + 3 * w : 8 + 4 * w]

    @classmethod
    def create(cls, n_workers: int, n_instruments: int) -> ClusterControl:
        """A fresh table: instruments dealt round robin (``locate % n_workers``), every worker alive."""
        if not 1 <= n_workers <= MAX_WORKERS:
            raise ConfigError("hft.workers", n_workers, f"1..{MAX_WORKERS}")
        shm = shared_memory.SharedMemory(create=True, size=_H * 8 + 2 * n_instruments)
        c = cls(shm, n_instruments, owner=True)
        c.head[:] = 0
        c.head[cls.NW] = n_workers
        c.head[3] = n_instruments
        c.head[cls.OWNER_PID] = os.getpid()
        c.alive[:n_workers] = 1
        c.owner[:] = partition(n_instruments, n_workers)
        return c

    @classmethod
    def attach(cls, name: str) -> ClusterControl:
        shm = _attach_shm(name)
        n = int(np.ndarray((_H,), np.int64, shm.buf, 0)[3])
        return cls(shm, n)

    @property
    def n_workers(self) -> int:
        return int(self.head[self.NW])

    @property
    def generation(self) -> int:
        return int(self.head[self.GEN])

    @property
    def final(self) -> bool:
        return bool(self.head[self.FINAL])

    def living(self) -> list[int]:
        """Indexes of the workers still alive."""
        return [k for k in range(self.n_workers) if self.alive[k]]

    def close(self) -> None:
        self.head = self.owner = self.acked = self.reached_end = self.seen_gen = self.alive = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):
            self._shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


def partition(n_instruments: int, n_workers: int) -> np.ndarray:
    """Owner of each instrument: ``instrument % n_workers`` (int16)."""
    return (np.arange(n_instruments) % n_workers).astype(np.int16)


def reassign(owner: np.ndarray, dead: int, living: list[int]) -> dict[int, int]:
    """Move the instruments of worker ``dead`` to ``living`` workers round robin (in place); returns how many
    went to each. ConfigError when nobody is left."""
    if not living:
        raise ConfigError("hft.workers", dead, "a living worker to take the instruments over (all died)")
    idx = np.flatnonzero(owner == dead)
    to = np.asarray(living, np.int16)[np.arange(idx.size) % len(living)]
    owner[idx] = to
    return {int(k): int(np.count_nonzero(to == k)) for k in living}


def plan_devices(n_workers: int, device: str = "cpu") -> list[str]:
    """One torch device per worker. ``cpu``: every worker on the CPU. Otherwise each eligible GPU (healthy,
    with headroom, through greekfire.gpu.placement's round robin) gets one worker; no eligible GPU: CPU workers
    (``n_workers`` of them)."""
    if device == "cpu":
        return ["cpu"] * n_workers
    if device.startswith("cuda:"):
        return [device] * n_workers
    from greekfire.gpu.discovery import discover
    from greekfire.gpu.placement import Placer

    inv = discover()
    placer = Placer("round_robin", min_free_mb=0)
    ok, _ = placer.eligible(inv.devices)
    if not ok:
        return ["cpu"] * n_workers
    return [placer.choose(inv.devices).device.torch_device for _ in ok]


# ------------------------------------------------------------------------------------------- replay log
class ReplayLog:
    """Every tick the feed published, in order, in shared memory (the recovery source for a worker that
    takes over instruments). ``capacity`` ticks; past it the log stops and :attr:`overflow` says so."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool = False) -> None:
        self._shm = shm
        self.name = shm.name
        self._owner = owner
        self._head = np.ndarray((8,), np.int64, shm.buf, 0)
        self.capacity = int(self._head[1])
        self._data = np.ndarray((self.capacity,), TICK_DTYPE, shm.buf, 64)

    @classmethod
    def create(cls, capacity: int) -> ReplayLog:
        shm = shared_memory.SharedMemory(create=True, size=64 + capacity * TICK_DTYPE.itemsize)
        head = np.ndarray((8,), np.int64, shm.buf, 0)
        head[:] = 0
        head[1] = capacity
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> ReplayLog:
        return cls(_attach_shm(name))

    @property
    def count(self) -> int:
        return int(self._head[0])

    @property
    def overflow(self) -> int:
        """Ticks that did not fit."""
        return int(self._head[2])

    def append(self, ticks: np.ndarray) -> None:
        n0 = int(self._head[0])
        k = min(len(ticks), self.capacity - n0)
        if k > 0:
            self._data[n0 : n0 + k] = ticks[:k]
            self._head[0] = n0 + k
        if k < len(ticks):
            self._head[2] += len(ticks) - max(k, 0)

    def view(self) -> np.ndarray:
        """The ticks logged so far (a view)."""
        return self._data[: self.count]

    def close(self) -> None:
        self._head = self._data = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):
            self._shm.close()
        if self._owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()


# ------------------------------------------------------------------------------------------- book kernel
@nb.njit(cache=True)
def _apply_and_snap(ev, seq, every, status, levels, snap, snap_idx, ords, lvls, keys, lids, nlev, htab, o_free,
                    l_free, meta, bstats):
    """Apply events in order; after each decision event (seq % every == 0) copy its book's top ``levels``
    into ``snap[n]`` and its index into ``snap_idx[n]``. Returns the number of decisions."""
    n = 0
    nbooks = nlev.shape[0]
    for i in range(ev.shape[0]):
        apply_events(ev[i : i + 1], status[i : i + 1], ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta,
                     bstats)
        b = np.int64(ev[i].book)
        if seq[i] % every != 0 or b >= nbooks:
            continue
        for s in range(2):
            sign = 1 if s == 0 else -1
            m = nlev[b, s]
            for j in range(levels):
                if j < m:
                    snap[n, s, j, 0] = keys[b, s, m - 1 - j] * sign
                    snap[n, s, j, 1] = lvls[lids[b, s, m - 1 - j], L_QTY]
                else:
                    snap[n, s, j, 0] = 0
                    snap[n, s, j, 1] = 0
        snap_idx[n] = i
        n += 1
    return n


class BookFeatures:
    """Books and features of the instruments one worker (or the single-process reference) owns: ticks in,
    decision records (:data:`SIG_DTYPE`) out."""

    def __init__(self, n_instruments: int, max_orders: int, params: Any, *, decide_every: int, backend: str = "numba",
                 device: str = "cpu", max_levels: int = 256, worker: int = 0) -> None:
        from greekfire.hft.features import FeatureEngine

        self.books = OrderBooks(n_instruments, max_orders, max_levels)
        self.engine = FeatureEngine(n_instruments, params, backend=backend, device=device)
        self.levels = max(int(params.levels), 1)
        self.every = int(decide_every)
        self.worker = worker
        self.bad_events = 0
        self.messages = 0
        self._cap = 0
        self._grow(4096)

    def _grow(self, n: int) -> None:
        if n > self._cap:
            self._cap = max(n, 2 * self._cap)
            self._snap = np.zeros((self._cap, 2, self.levels, 2), np.int64)
            self._idx = np.zeros(self._cap, np.int64)
            self._status = np.zeros(self._cap, np.int8)

    def process(self, ticks: np.ndarray, t_rx: np.ndarray | None = None) -> np.ndarray:
        """Apply ``ticks`` (:data:`TICK_DTYPE`, all of this owner's instruments) and return the decision records."""
        n = len(ticks)
        if n == 0:
            return np.zeros(0, SIG_DTYPE)
        self._grow(n)
        ev = np.ascontiguousarray(ticks["ev"])
        seq = np.ascontiguousarray(ticks["seq"])
        status = self._status[:n]
        status[:] = 0
        k = int(_apply_and_snap(ev, seq, self.every, status, self.levels, self._snap, self._idx,
                                *self.books._state()))
        t_book = time.perf_counter_ns()
        self.messages += n
        self.bad_events += int(np.count_nonzero(status))
        out = np.zeros(k, SIG_DTYPE)
        if k == 0:
            return out
        idx = self._idx[:k]
        inst = ev["book"][idx].astype(np.int64)
        snap = self._snap[:k]
        out["f"] = self.engine.update(inst, snap)
        out["t_feat"] = time.perf_counter_ns()
        out["seq"] = seq[idx]
        out["instrument"] = inst
        out["worker"] = self.worker
        out["bid_px"], out["bid_qty"] = snap[:, 0, 0, 0], snap[:, 0, 0, 1]
        out["ask_px"], out["ask_qty"] = snap[:, 1, 0, 0], snap[:, 1, 0, 1]
        out["t_rx"] = ticks["t_rx"][idx]
        out["t_book"] = t_book
        return out

    def forget(self, instruments: np.ndarray) -> None:
        """Empty the books and the feature state of ``instruments`` (before they are rebuilt)."""
        for b in instruments:
            self.books.clear(int(b))
        self.engine.reset(instruments)


def warm_up(params: Any, decide_every: int, backend: str, device: str) -> None:
    """Load the compiled kernels (numba's cache) with one fake tick, so that the first real batch does not
    pay for it."""
    bf = BookFeatures(2, 1024, params, decide_every=decide_every, backend=backend, device=device, max_levels=8)
    t = np.zeros(1, TICK_DTYPE)
    t["ev"]["kind"], t["ev"]["book"], t["ev"]["side"], t["ev"]["order_id"] = ADD, 1, 1, 1
    t["ev"]["price"], t["ev"]["qty"], t["seq"] = 100, 100, decide_every
    bf.process(t)


def max_orders_for(ticks_or_events: np.ndarray) -> int:
    """Order slots enough for every add and replace of a stream (ticks or events)."""
    ev = ticks_or_events["ev"] if "ev" in (ticks_or_events.dtype.names or ()) else ticks_or_events
    return max(int(np.count_nonzero((ev["kind"] == ADD) | (ev["kind"] == REPLACE))), 1024)


# ------------------------------------------------------------------------------------------- worker process
def worker_main(k: int, cfg: Any, names: dict[str, str], device: str, cpu: int | None, out_q: Any) -> None:
    """One book/feature worker (a process): ticks from the broadcast ring (consumer ``k``), decision records to
    its own ring ``sig{k}``, final books and feature state to ``out_q`` at the end."""
    from greekfire.hft.config import feature_params
    from greekfire.hft.cpu import gc_frozen, pin
    from greekfire.hft.ring import BroadcastRing, Ring

    pin(cpu)
    if cfg.feature_backend == "torch":
        import torch

        torch.set_num_threads(1)
    ticks_ring = BroadcastRing.attach(names["ticks"], TICK_DTYPE, k)
    sig_ring = Ring.attach(names[f"sig{k}"], SIG_DTYPE)
    ctl = ClusterControl.attach(names["control"])
    log = ReplayLog.attach(names["log"])
    stats_shm = _attach_shm(names["stats"])
    stats = np.ndarray((8,), np.int64, stats_shm.buf, (1 + k) * 64)  # the pipeline's counters of this stage
    bf = BookFeatures(ctl.n_instruments, cfg.max_orders, feature_params(cfg), decide_every=cfg.decide_every,
                      backend=cfg.feature_backend, device=device, worker=k)
    mine = ctl.owner == k
    gen = ctl.generation
    ctl.seen_gen[k] = gen
    last_seq = 0
    ended = False
    replayed = 0
    idle = Idle(cfg.wait, int(ctl.head[ctl.OWNER_PID]))
    warm_up(bf.engine.params, cfg.decide_every, cfg.feature_backend, device)
    out_q.put(("ready", f"worker{k}"))

    def publish(recs: np.ndarray) -> None:
        pos = 0
        while pos < len(recs):
            pos += sig_ring.publish_batch(recs[pos:])
            if pos < len(recs):
                os.sched_yield()

    with gc_frozen():
        while True:
            if ctl.generation != gen:  # instruments moved: take over the new ones, rebuilt from the log
                gen = ctl.generation
                new = (ctl.owner == k) & ~mine
                if new.any():
                    inst = np.flatnonzero(new)
                    bf.forget(inst)
                    hist = log.view()
                    hist = hist[hist["seq"] <= last_seq]
                    hb = hist["ev"]["book"]
                    hist = hist[(hb < ctl.n_instruments) & new[np.minimum(hb, ctl.n_instruments - 1)]
                                & (hist["ev"]["kind"] != END_KIND)]
                    publish(bf.process(hist))
                    replayed += len(hist)
                    mine |= new
                ctl.seen_gen[k] = gen
            if ended:
                ctl.reached_end[k] = 1
                if ctl.final and ctl.generation == gen:
                    break
                time.sleep(0.001)
                continue
            view = ticks_ring.consume(cfg.batch)
            n = len(view)
            if n == 0:
                idle()
                continue
            idle.reset()
            kinds = view["ev"]["kind"]
            books = view["ev"]["book"]
            ok = (books < ctl.n_instruments) & (kinds != END_KIND)
            sel = ok & mine[np.minimum(books, ctl.n_instruments - 1)]
            ended = bool((kinds == END_KIND).any())
            last_seq = int(view["seq"][kinds != END_KIND].max(initial=last_seq))
            ticks = view[sel]  # a copy: the slots go back at once
            ticks_ring.release(n)
            if len(ticks):
                bad0 = bf.bad_events
                publish(bf.process(ticks))
                stats[0] += len(ticks)
                stats[2] += bf.bad_events - bad0
            ctl.acked[k] = last_seq
    # the end: the final books of this worker's instruments, the feature state aggregated over the group
    owned = np.flatnonzero(mine)
    depth = bf.books.depth_array(10)[owned]
    state = aggregate_state(k, ctl, bf.engine.state, mine, names, device)
    end = np.zeros(1, SIG_DTYPE)
    end["end"] = 1
    end["worker"] = k
    end["seq"] = last_seq
    publish(end)
    out_q.put(("stage", f"worker{k}", {"worker": k, "instruments": owned, "depth": depth, "state": state,
                                        "messages": bf.messages, "bad_events": bf.bad_events, "replayed": replayed,
                                        "pid": os.getpid()}))
    for r in (ticks_ring, sig_ring):
        r.close()
    ctl.close()
    log.close()
    del stats
    with contextlib.suppress(BufferError):
        stats_shm.close()


def aggregate_state(k: int, ctl: ClusterControl, state: np.ndarray, mine: np.ndarray, names: dict[str, str],
                    device: str) -> np.ndarray | None:
    """All-reduce the living workers' feature state (each contributes its own instruments' rows) over a
    process group: NCCL when the workers are on GPUs, gloo otherwise. Returns the whole table on rank 0,
    None on the others."""
    living = ctl.living()
    if k not in living:
        return None
    rank, world = living.index(k), len(living)
    nan = np.isnan(state)
    rows = np.zeros((state.shape[0], state.shape[1] + 1), np.float64)
    rows[:, :-1] = np.where(nan, 0.0, state)
    rows[:, -1] = nan[:, 4]
    rows[~mine] = 0.0
    if world == 1:
        total = rows
    else:  # torch is imported only here: a single worker never pays for it
        import torch
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        store = dist.FileStore(str(Path(names["store"]) / f"gen{ctl.generation}"), world)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world)
        try:
            t = torch.as_tensor(rows, device=device if backend == "nccl" else "cpu")
            dist.all_reduce(t)
            total = t.cpu().numpy()
        finally:
            dist.destroy_process_group()
    if rank != 0:
        return None
    out = total[:, :-1].copy()
    out[:, 4] = np.where(total[:, -1] > 0, np.nan, out[:, 4])
    return out
