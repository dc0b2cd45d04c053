"""Wheel benchmarks.

Strike scoring: contracts scored per second by ``greekfire.strategies.wheel.select.select`` (deltas from the
pricing registry's closed-form engine, every filter, the score and the best contract per symbol and right,
in one tensor computation) beside ``select_pandas``, the same rules applied row by row with
``DataFrame.apply``, on the same candidate rows in the same run; both pick the same contracts (checked
here). 10k, 100k and 1M candidates over 50 symbols, on the CPU (torch at one thread and at every core) and
on CUDA when ``choose_device("auto")`` gives a GPU. Deltas are European on both sides (``exercise:
european``): the pandas twin has no American engine to call per row. pandas at 1M rows is extrapolated
from its 100k rate (its cost is linear in rows: one Python call per row), and the row says so.

Run: ``python benchmarks/bench_wheel.py`` (or ``python benchmarks/run.py wheel``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, report  # noqa: E402

from greekfire.gpu.device import choose_device  # noqa: E402
from greekfire.strategies.wheel.config import WheelConfig  # noqa: E402
from greekfire.strategies.wheel.select import Candidates, select, select_pandas, synthetic_candidates  # noqa: E402

SIZES = (10_000, 100_000, 1_000_000)
PANDAS_MAX = 100_000  # rows pandas runs for real; above, its 100k rate is extrapolated
SYMBOLS = 50
ALL_CORES = torch.get_num_threads()
CFG = WheelConfig(exercise="european", min_open_interest=10, dte=30, max_dte=120)


def strike_scoring() -> tuple[list[dict[str, object]], list[str]]:
    rows: list[dict[str, object]] = []
    notes: list[str] = []
    pandas_rate: dict[int, float] = {}
    gpu = choose_device("auto")
    for n in SIZES:
        frame = synthetic_candidates(n, SYMBOLS, seed=n, config=CFG)
        if n <= PANDAS_MAX:
            t0 = time.perf_counter()
            ref = select_pandas(frame, CFG)
            pandas_rate[n] = n / (time.perf_counter() - t0)
            peer, extrapolated = pandas_rate[n], False
        else:
            ref = None
            peer, extrapolated = pandas_rate[PANDAS_MAX], True

        def ours(dev: torch.device, frame=frame) -> object:
            sel = select(Candidates.from_frame(frame), CFG, dev)  # the frame -> tensors step is timed too
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return sel

        targets = [("cpu, 1 thread", torch.device("cpu"), 1), (f"cpu, {ALL_CORES} threads", torch.device("cpu"), ALL_CORES)]
        if gpu.type == "cuda":
            targets.append((f"{gpu} ({torch.cuda.get_device_name(gpu)})", gpu, ALL_CORES))
        for label, dev, threads in targets:
            torch.set_num_threads(threads)
            picked = ours(dev)  # warm-up; and the picks, checked against pandas
            if ref is not None:
                assert picked.best == ref, f"{n} rows on {label}: tensor and pandas picks differ"  # type: ignore[attr-defined]
            secs = best_of(lambda dev=dev: ours(dev), repeat=3)
            torch.set_num_threads(ALL_CORES)
            rows.append({
                "benchmark": f"strike scoring {n:,} rows, {label}", "ours": n / secs,
                "peer": "pandas row by row" + (" (extrapolated from 100k)" if extrapolated else ""),
                "peer_value": peer, "unit": "contracts/s", "ratio": n / secs / peer, "rows": n,
                "device": str(dev), "threads": threads, "same_picks": ref is not None,
            })
    notes.append(f"torch threads: 1 or {ALL_CORES} as each row says; allocator: torch's default caching allocator "
                 f"(CUDA), glibc malloc (CPU); {SYMBOLS} symbols; exercise european on both sides")
    notes.append(f"pandas at 1,000,000 rows extrapolated from its 100,000-row rate ({pandas_rate[PANDAS_MAX]:,.0f} rows/s)")
    if gpu.type != "cuda":
        notes.append("no CUDA device offered by choose_device('auto'): CPU rows only")
    return rows, notes


def main() -> None:
    rows, notes = strike_scoring()
    report("wheel", rows, notes)


if __name__ == "__main__":
    main()
