"""The wheel: backtest speed (simulated years per second of the 20-year S&P 500 run, 1999-2018).

Rows: the whole backtest (``run_backtest`` on the default market: arch's S&P 500 and the VIX file beside the
project); the market alone (every day's model chain, priced 64 days per tensor call); the PUT-index
replica. Peer, measured in the same run: the same daily chains priced option by option with py_vollib's
Black-Scholes-Merton value and delta (the row-by-row way), on a sample of days, in simulated years per
second. CPU only, torch on one thread (the chains are priced on one thread in any case); the default
glibc allocator.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from greekfire.strategies.wheel.market import default_vol_path, load_market  # noqa: E402
from greekfire.strategies.wheel.putindex import put_replica, tbill_rates  # noqa: E402

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


def main() -> None:
    torch.set_num_threads(1)
    notes = []
    if not default_vol_path().is_file():
        print("the VIX file ../shared/data/vix/vix-daily.csv is absent: no wheel backtest rows")
        return
    from greekfire.strategies.wheel.backtest import run_backtest
    from greekfire.strategies.wheel.config import WheelConfig

    rows = []
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
    report("wheel", rows, notes)


if __name__ == "__main__":
    main()
