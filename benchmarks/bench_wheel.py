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

Backtest speed: simulated years per second of the 20-year S&P 500 run (1999-2018): the whole backtest
(``run_backtest`` on the default market: arch's S&P 500 and the VIX file beside the project), the market
alone (every day's model chain), and the PUT-index replica. Peer, measured in the same run: the same daily
chains priced option by option with py_vollib's Black-Scholes-Merton value and delta, on a sample of days.
Torch on one thread there; the default glibc allocator.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, report  # noqa: E402

from greekfire.gpu.device import choose_device  # noqa: E402
from greekfire.strategies.wheel.config import WheelConfig  # noqa: E402
from greekfire.strategies.wheel.market import default_vol_path, load_market  # noqa: E402
from greekfire.strategies.wheel.putindex import put_replica, tbill_rates  # noqa: E402
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


SAMPLE_DAYS = 40  # days of the peer's row-by-row pricing (it takes seconds a day)


def harness_name() -> str:
    """Which ``run_backtest`` is measured: the strategy's harness, or the stand-in that sells one put a month."""
    mod = importlib.import_module("greekfire.strategies.wheel.backtest")
    return "stand-in (one ~0.30-delta put a month)" if "STAND-IN" in (mod.__doc__ or "") else "WheelStrategy harness"


def years(market) -> float:  # noqa: ANN001
    return (market.index[-1] - market.index[0]).days / 365.25


def best(fn, repeat: int = 2) -> float:  # noqa: ANN001
    out = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def peer_day(market, i: int) -> None:  # noqa: ANN001
    """Day ``i``'s chain priced option by option with py_vollib (value and delta)."""
    from py_vollib.black_scholes_merton import black_scholes_merton
    from py_vollib.black_scholes_merton.greeks.analytical import delta

    c = market.day(i).chain  # the same contracts and vols (their pricing is not counted: see below)
    for right, s, k, t, r, q, v in zip(c["right"].tolist(), c["spot"].tolist(), c["strike"].tolist(),
                                       c["ttm"].tolist(), c["rate"].tolist(), c["q"].tolist(), c["vol"].tolist(),
                                       strict=True):
        if t <= 0:
            continue
        flag = "c" if right > 0 else "p"
        black_scholes_merton(flag, s, k, t, r, v, q)
        delta(flag, s, k, t, r, v, q)


def backtest_speed() -> tuple[list[dict[str, object]], list[str]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    notes: list[str] = []
    if not default_vol_path().is_file():
        torch.set_num_threads(threads)
        return [], ["the VIX file ../shared/data/vix/vix-daily.csv is absent: no wheel backtest rows"]
    from greekfire.strategies.wheel.backtest import run_backtest

    rows: list[dict[str, object]] = []
    market = load_market(rates=tbill_rates())
    yrs = years(market)
    n_days = len(market)

    def whole() -> None:
        run_backtest(WheelConfig(symbols={"SPX": 1.0}), load_market(rates=tbill_rates()))

    def chains() -> None:
        m = load_market(rates=tbill_rates())
        for i in range(len(m)):
            m.day(i)

    # the peer: time SAMPLE_DAYS days spread over the run, row by row, minus the time to build those chains
    picks = np.linspace(0, n_days - 1, SAMPLE_DAYS).astype(int).tolist()
    t0 = time.perf_counter()
    for i in picks:
        peer_day(market, i)
    t_peer = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in picks:
        market.day(i)
    t_build = time.perf_counter() - t0
    peer_per_day = max(t_peer - t_build, 1e-9) / SAMPLE_DAYS
    peer_years_s = yrs / (peer_per_day * n_days)
    t_market = best(chains)
    t_whole = best(whole)
    t_put = best(lambda: put_replica(market))
    name = harness_name()
    rows.append({"benchmark": f"backtest speed: 20-year S&P 500 run ({n_days:,} days), {name}", "ours": yrs / t_whole,
                 "peer": "py_vollib row by row (chains only)", "peer_value": peer_years_s, "unit": "simulated years/s",
                 "ratio": (yrs / t_whole) / peer_years_s})
    rows.append({"benchmark": "market: every day's model chain (about 3,000 options a day)", "ours": yrs / t_market,
                 "peer": "py_vollib row by row", "peer_value": peer_years_s, "unit": "simulated years/s",
                 "ratio": (yrs / t_market) / peer_years_s})
    rows.append({"benchmark": "PUT-index replica, 20 years", "ours": yrs / t_put, "peer": "-", "peer_value": None,
                 "unit": "simulated years/s", "ratio": None})
    notes.append(f"run_backtest measured: {name}; best of 2 runs, each loading the files (about 0.2 s)")
    notes.append(f"peer: py_vollib value + delta per option on {SAMPLE_DAYS} days spread over the run, scaled to "
                 f"{n_days:,} days (the time to build those chains subtracted); ratio > 1: ours is faster")
    notes.append(f"torch threads {torch.get_num_threads()}, default allocator, CPU")
    torch.set_num_threads(threads)
    return rows, notes



def main() -> None:
    rows, notes = strike_scoring()
    more, more_notes = backtest_speed()
    report("wheel", rows + more, notes + more_notes)


if __name__ == "__main__":
    main()
