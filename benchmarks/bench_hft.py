"""HFT engine benchmarks: ring hops between two processes (single records, batches of 64, hop latency
p50/p99) beside multiprocessing.Queue and faster-fifo measured in the same run, and the cost of one
acquire load + release store from Python through the ring's compiled helper beside the ``atomics`` package
and a numba intrinsic.

``python benchmarks/bench_hft.py [seconds per row]`` (default 1.0); results in benchmarks/results/hft.json.
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from greekfire.hft import _native  # noqa: E402
from greekfire.hft.ringbench import ring_bench  # noqa: E402

GOAL_BATCHED = 4e6  # records/s
GOAL_P99_US = 20.0


def row(name: str, ours: float | None, peer: str, peer_value: float | None, unit: str, **extra: Any) -> dict:
    ratio = ours / peer_value if ours and peer_value else None
    return {"benchmark": name, "ours": ours, "peer": peer, "peer_value": peer_value, "unit": unit,
            "ratio": ratio, **extra}


# ------------------------------------------------------------------------------ the sequence counters
def _numba_pair() -> tuple[Any, Any]:
    """Acquire load and release store as numba intrinsics (llvmlite's atomic load/store)."""
    import numba as nb
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _ld(typingctx, ptr):  # type: ignore[no-untyped-def]
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            return builder.load_atomic(builder.inttoptr(args[0], ir.IntType(64).as_pointer()), "acquire", 8)
        return types.uint64(types.uintp), codegen

    @intrinsic
    def _st(typingctx, ptr, v):  # type: ignore[no-untyped-def]
        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            builder.store_atomic(args[1], builder.inttoptr(args[0], ir.IntType(64).as_pointer()), "release", 8)
            return context.get_dummy_value()
        return types.void(types.uintp, types.uint64), codegen

    @nb.njit
    def load(p):  # type: ignore[no-untyped-def]
        return _ld(p)

    @nb.njit
    def store(p, v):  # type: ignore[no-untyped-def]
        _st(p, v)

    return load, store


def counter_costs(n: int = 200_000) -> dict[str, Any]:
    """ns per (acquire load + release store) called from Python on a shared-memory word, best of 5."""
    import ctypes
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=4096)
    out: dict[str, Any] = {}
    anchor = ctypes.c_char.from_buffer(shm.buf)
    addr = ctypes.addressof(anchor)
    try:
        lib = _native.lib()
        a, b = addr + 128, addr + 256

        def helper() -> None:
            ld, st = lib.gf_load, lib.gf_store
            for i in range(n):
                ld(a)
                st(b, i)

        out["helper"] = helper
        try:
            load, store = _numba_pair()
            load(a)
            store(b, 1)

            def nb_pair() -> None:
                for i in range(n):
                    load(a)
                    store(b, i)

            out["numba"] = nb_pair
        except Exception as exc:  # numba without llvmlite's atomics
            out["numba"] = f"{type(exc).__name__}: {exc}"
        try:
            import atomics

            views = [atomics.atomicview(buffer=shm.buf[o : o + 8], atype=atomics.UINT) for o in (384, 512)]
            h, t = (v.__enter__() for v in views)
            m = max(n // 20, 1000)  # it is slow: fewer calls

            def at_pair() -> None:
                for i in range(m):
                    h.load()
                    t.store(i)

            out["atomics"] = (at_pair, m, views)
        except ImportError as exc:
            out["atomics"] = f"not installed ({exc})"
        res: dict[str, Any] = {}
        for k, v in out.items():
            if isinstance(v, str):
                res[k] = v
                continue
            fn, calls = (v[0], v[1]) if isinstance(v, tuple) else (v, n)
            res[k] = min(timeit.repeat(fn, number=1, repeat=5)) / calls * 1e9
        if isinstance(out.get("atomics"), tuple):
            for view in out["atomics"][2]:
                view.__exit__(None, None, None)
        return res
    finally:
        del anchor
        shm.close()
        shm.unlink()


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 1.0
    torch.set_num_threads(1)  # no torch work here; stated like the other benches
    t0 = time.perf_counter()
    res = ring_bench(seconds)
    costs = counter_costs()
    tp, lat = res["throughput"], res["latency_us"]
    rows: list[dict] = []
    peers = {"mp_queue": "multiprocessing.Queue", "faster_fifo": "faster-fifo Queue"}

    def tput(name: str, key: str) -> float | None:
        v = tp.get(name, {}).get(key)
        return float(v) if isinstance(v, (int, float)) else None

    def lat_of(name: str, key: str) -> float | None:
        v = lat.get(name, {}).get(key)
        return float(v) if isinstance(v, (int, float)) else None

    for key, label in (("single", "1 record"), ("batch64", "batch 64")):
        for peer, pname in peers.items():
            why = tp.get(peer, {}).get("error")
            rows.append(row(f"ring hops, {label}", tput("ring", key), pname, tput(peer, key), "rec/s",
                            **({"peer_error": why} if why else {})))
    for q in ("p50_us", "p99_us"):
        for ours in ("ring_busy", "ring_block"):
            for peer, pname in peers.items():
                rows.append(row(f"hop {q[:-3]}, ring {ours[5:]}", lat_of(ours, q), pname, lat_of(peer, q), "us",
                                p999_us=lat_of(ours, "p999_us"), peer_p999_us=lat_of(peer, "p999_us")))
    for peer in ("atomics", "numba"):
        v = costs.get(peer)
        rows.append(row("load+store pair", costs["helper"], "atomics pkg" if peer == "atomics" else "numba intrinsic",
                        v if isinstance(v, float) else None, "ns", **({"peer_error": v} if isinstance(v, str) else {})))
    batched = tput("ring", "batch64") or 0.0
    p99 = lat_of("ring_busy", "p99_us")
    notes = [
        f"{seconds:g} s per row; producer and consumer forked, pinned to CPUs {res['cores']} (None: not pinned, "
        "fewer than 4 CPUs); 64-byte event records; a queue carries a batch as one message holding a numpy "
        "array of 64 records (pickled); latency rows: one record every "
        f"{1e6 / res['latency_rate_per_s']:.0f} us stamped with time.perf_counter_ns (CLOCK_MONOTONIC, one "
        "clock across processes), the ring's consumer busy-polling or blocked on its futex, the queues' "
        "consumers in a blocking get(); p99.9 in the JSON",
        f"goals: >= {GOAL_BATCHED / 1e6:g}M records/s batched: {'met' if batched >= GOAL_BATCHED else 'NOT met'} "
        f"({batched / 1e6:.2f}M); p99 hop < {GOAL_P99_US:g} us (busy-wait): "
        f"{'met' if p99 is not None and p99 < GOAL_P99_US else 'NOT met'} ({p99 if p99 is None else round(p99, 1)} us)",
        "load+store pair: one acquire load + one release store on a shared-memory word called from Python "
        "(the ring's compiled helper, cffi API mode, beside the atomics package and a numba intrinsic); for "
        "ns and us rows lower is better (ratio < 1: ours is faster)",
        f"torch threads {torch.get_num_threads()} (no torch work in these rows), default glibc allocator; "
        f"total {time.perf_counter() - t0:.0f} s",
    ]
    report("hft", rows, notes)


if __name__ == "__main__":
    main(sys.argv[1:])
