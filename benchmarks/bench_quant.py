"""Pricing core benchmarks: greekfire beside py_vollib_vectorized and QuantLib, measured in one run.

1. European price + Greeks, 1,000,000 options, float64, CPU (and float32, and CUDA when present):
   options/s for greekfire (fused with torch.compile; compile time reported apart; eager too) computing
   STANDARD_GREEKS (value, delta, gamma, vega, theta, rho, epsilon; all 11 outputs in a note),
   py_vollib_vectorized (price + get_all_greeks: delta, gamma, theta, rho, vega) and QuantLib's analytic
   engine in a Python loop (NPV, delta, gamma, vega, theta, rho, dividendRho; a sample, scaled, object
   set-up included).
2. Implied vol, 1,000,000 quotes: quotes/s and worst errors for greekfire and py_vollib_vectorized.
3. American: qdfp (accurate scheme), bs2002, baw, crr-200 batched vs QuantLib per option, and the peak
   memory of one 65,536-row American Greeks chunk (``python benchmarks/bench_quant.py american-memory``).
4. Cold start: ``greekfire price --style american`` on a real chain with market prices, first run on a fresh
   compile cache against a run once the kernels are built (``python benchmarks/bench_quant.py cold-compile``;
   goal: cold at most 2x warm; options measured in benchmarks/history/cold-compile.md).

torch runs on one thread except in the rows marked "N threads", which use torch's default (one thread per
core, what a user gets). Both peers are single-threaded whatever the machine.

Run: ``python benchmarks/bench_quant.py`` (or ``make bench``). Results: benchmarks/results/quant.json.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import platform
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, paired_rates, report  # noqa: E402

from greekfire.quant import (  # noqa: E402
    ACCURATE,
    HIGH_PRECISION,
    STANDARD_GREEKS,
    baw_price,
    bs2002_price,
    bsm_greeks,
    bsm_price,
    crr_price,
    implied_vol,
    qdfp_price,
)

N = 1_000_000
QL_SAMPLE = 1000
# best of this many calls for ours in the European rows (about 25-80 ms each): on a shared 2-core machine
# a best of 5 on two threads ranged 30-48M options/s between processes, a best of 30 36-50M (mostly 48M)
ROW_CALLS = 30
QL_PASSES = 7  # best of this many passes of the QuantLib sample (about 70 ms each)
MEMORY_CHUNK_ROWS = 65_536  # rows of the American Greeks chunk whose peak memory is measured
# torch's own default (one thread per core), read before main() pins the process to one thread
ALL_CORES = torch.get_num_threads()
AMERICAN_N = 4000
QL_AMERICAN_SAMPLE = 100
PAIRED_ROUNDS = 5  # American rows: ours and QuantLib's loop timed back to back this many times


def grid(n: int, seed: int, device: str = "cpu", dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def u(a: float, b: float) -> torch.Tensor:
        return a + (b - a) * torch.rand(n, generator=g, dtype=torch.float64)

    w = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, 1.0, -1.0).double()
    S = u(50.0, 150.0)
    T = u(7 / 365, 2.0)
    v = u(0.1, 0.6)
    K = S * torch.exp(0.3 * torch.randn(n, generator=g, dtype=torch.float64) * torch.sqrt(T))
    out = {"w": w, "S": S, "K": K, "T": T, "r": u(0.0, 0.05), "q": u(0.0, 0.03), "v": v}
    return {k: t.to(device=device, dtype=dtype) for k, t in out.items()}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (a compiled kernel is specialised to the count: the first call
    under a new count compiles again, and the timings here are best-of after that call)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6") if platform.libc_ver()[0] == "glibc" else None


def give_back_freed_memory() -> None:
    """glibc's ``malloc_trim(0)``: every free page of the heap goes back to the kernel, so the next call's
    outputs are faulted in afresh (nothing off glibc)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def given_back_hook(given_back: bool) -> Callable[[], None] | None:
    """The untimed ``before`` hook of :func:`best_of` for a "memory given back" row (None: glibc as it is).
    With glibc's defaults a process keeps freed 8 MB outputs or gives them back depending on its heap's
    layout, so a plain best-of lands in either mode from one process to the next (1.7x apart,
    benchmarks/history/house-rework-old-vs-new.md); the hook fixes the mode to "given back" on both sides."""
    return give_back_freed_memory if given_back else None


def time_greeks(
    g: dict[str, torch.Tensor], compile: bool, device: str, names: tuple[str, ...] | None = None,
    given_back: bool = False, repeat: int = 5,
) -> tuple[float, float]:
    """(options/s, first-call seconds) for the value and the Greeks ``names`` (None: all 11 outputs), best of
    ``repeat`` calls; ``given_back``: freed memory goes back to the kernel before each timed call."""
    args = (g["w"], g["S"], g["K"], g["T"], g["r"], g["q"], g["v"])
    t0 = time.perf_counter()
    bsm_greeks(*args, names=names, compile=compile)
    sync(device)
    first = time.perf_counter() - t0

    def run() -> None:
        bsm_greeks(*args, names=names, compile=compile)
        sync(device)

    return len(g["w"]) / best_of(run, repeat=repeat, before=given_back_hook(given_back)), first


def ql_option(ql: Any, today: Any, dc: Any, row: tuple[float, ...], american: bool) -> tuple[Any, Any]:
    """QuantLib's process and option for one ``(w, S, K, T, r, q, v)`` row, built as a per-option user
    would (the set-up is part of what the QuantLib rows time)."""
    w, S, K, T, r, q, v = row
    proc = ql.BlackScholesMertonProcess(
        ql.QuoteHandle(ql.SimpleQuote(S)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, q, dc)),
        ql.YieldTermStructureHandle(ql.FlatForward(today, r, dc)),
        ql.BlackVolTermStructureHandle(ql.BlackConstantVol(today, ql.NullCalendar(), v, dc)),
    )
    expiry = today + max(1, round(T * 365))
    exercise = ql.AmericanExercise(today, expiry) if american else ql.EuropeanExercise(expiry)
    return proc, ql.VanillaOption(ql.PlainVanillaPayoff(ql.Option.Call if w > 0 else ql.Option.Put, K), exercise)


def ql_european_rate(g: dict[str, torch.Tensor], n: int, given_back: bool = False) -> float:
    import QuantLib as ql

    today = ql.Date(15, 6, 2021)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    rows = [tuple(float(g[k][i]) for k in ("w", "S", "K", "T", "r", "q", "v")) for i in range(n)]

    def run() -> None:
        for row in rows:
            proc, opt = ql_option(ql, today, dc, row, american=False)
            opt.setPricingEngine(ql.AnalyticEuropeanEngine(proc))
            opt.NPV(), opt.delta(), opt.gamma(), opt.vega(), opt.theta(), opt.rho(), opt.dividendRho()

    # best of QL_PASSES passes: one pass of a small sample is noisy
    return n / best_of(run, repeat=QL_PASSES, before=given_back_hook(given_back))


def vollib_greeks_rate(g: dict[str, torch.Tensor], given_back: bool = False) -> float:
    import py_vollib_vectorized as pvv

    flag = np.where(g["w"].cpu().numpy() > 0, "c", "p")
    a = [g[k].cpu().numpy() for k in ("S", "K", "T", "r", "v", "q")]

    def run() -> None:
        pvv.vectorized_black_scholes_merton(flag, a[0], a[1], a[2], a[3], a[4], a[5], return_as="numpy")
        pvv.get_all_greeks(flag, a[0], a[1], a[2], a[3], a[4], a[5], model="black_scholes_merton", return_as="dict")

    return len(flag) / best_of(run, repeat=3, before=given_back_hook(given_back))


def european_rows(notes: list[str]) -> list[dict[str, Any]]:
    rows = []
    g = grid(N, seed=1)
    std = STANDARD_GREEKS
    eager, _ = time_greeks(g, compile=False, device="cpu", names=std)
    compiled, first = time_greeks(g, compile=True, device="cpu", names=std, given_back=True, repeat=ROW_CALLS)
    compiled_all, _ = time_greeks(g, compile=True, device="cpu")
    compiled32, first32 = time_greeks({k: t.float() for k, t in g.items()}, compile=True, device="cpu", names=std)
    vollib = vollib_greeks_rate(g, given_back=True)
    ql_rate = ql_european_rate(g, QL_SAMPLE, given_back=True)
    with torch_threads(ALL_CORES):
        compiled_all_cores, _ = time_greeks(g, compile=True, device="cpu", names=std, given_back=True,
                                            repeat=ROW_CALLS)
    notes.append(f"european: ours computes {', '.join(std)}; py_vollib_vectorized price + delta, gamma, theta, rho, "
                 "vega; QuantLib NPV, delta, gamma, vega, theta, rho, dividendRho; both peers are single-threaded "
                 "(py_vollib_vectorized's numba kernels are not parallel; QuantLib is a Python loop), so the rows "
                 f"show ours on 1 thread and on torch's default of {ALL_CORES} (one per core)")
    notes.append(f"european: compile/warm-up {first:.1f}s (float64), {first32:.1f}s (float32), paid once per "
                 f"process above the size threshold; eager float64 {eager:,.0f} options/s")
    notes.append(f"european: float32 compiled {compiled32:,.0f} options/s; all 11 outputs (adds theta_per_day, "
                 f"vanna, volga, charm) float64 {compiled_all:,.0f} options/s (1 thread; these two and eager with "
                 "glibc's defaults as they fall)")
    notes.append("european (memory given back) rows: glibc's defaults keep freed 8 MB outputs in some processes "
                 "and give them back in others, by the heap's layout, so these rows give freed memory back "
                 "(malloc_trim) before each timed call, ours and the peers alike: every call faults its outputs "
                 "in afresh. The memory kept rows are the other end; a process with glibc's defaults lands "
                 "between the two")
    for label, ours in (("1 thread", compiled), (f"{ALL_CORES} threads", compiled_all_cores)):
        rows.append({"benchmark": f"european price+greeks 1M f64 CPU, {label}, memory given back", "ours": ours,
                     "peer": "py_vollib_vectorized", "peer_value": vollib, "unit": "options/s",
                     "ratio": ours / vollib, "goal_ratio": 100})
        rows.append({"benchmark": f"european price+greeks f64 CPU, {label}, memory given back", "ours": ours,
                     "peer": "QuantLib loop (sample)", "peer_value": ql_rate, "unit": "options/s",
                     "ratio": ours / ql_rate, "goal_ratio": 2000})
    rows += european_malloc_rows(notes)
    return rows


# glibc gives freed blocks of this size back to the kernel, so fresh 8 MB outputs of a 1M batch are
# faulted in again, page by page. greekfire.core.allocator.keep_freed_memory() (which every `greekfire`
# command applies; PyTorch's CPU tuning guide makes the same point about the allocator) keeps freed memory
# in the process. It cannot be undone in a process, so those rows run in a child, where the peers run
# under it too.
def european_malloc_child() -> None:
    """In a child that calls keep_freed_memory(): ours on 1 and ALL_CORES threads, py_vollib_vectorized
    and QuantLib, one JSON line."""
    from greekfire.core.allocator import keep_freed_memory

    status = keep_freed_memory()
    g = grid(N, seed=1)
    compiled, _ = time_greeks(g, compile=True, device="cpu", names=STANDARD_GREEKS, repeat=ROW_CALLS)
    with torch_threads(ALL_CORES):
        compiled_all, _ = time_greeks(g, compile=True, device="cpu", names=STANDARD_GREEKS, repeat=ROW_CALLS)
    print("RESULT " + json.dumps({"status": status, "ours": compiled, "ours_all": compiled_all,
                                  "vollib": vollib_greeks_rate(g), "quantlib": ql_european_rate(g, QL_SAMPLE)}))


def european_malloc_rows(notes: list[str]) -> list[dict[str, Any]]:
    """The European rows again in a child process whose glibc keeps freed memory (both sides under it)."""
    proc = subprocess.run([sys.executable, __file__, "european-malloc"], capture_output=True, text=True, timeout=900)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        notes.append(f"european with glibc keeping freed memory: not measured (exit {proc.returncode}: "
                     f"{proc.stderr.strip()[-300:]})")
        return []
    r = json.loads(line.removeprefix("RESULT "))
    if r["status"] != "ok":
        notes.append(f"european (memory kept) rows: keep_freed_memory() changed nothing here ({r['status']})")
    notes.append("european (memory kept) rows: the same measurement in a child process that called "
                 "greekfire.core.allocator.keep_freed_memory() first, as every `greekfire` command does; the peers "
                 "run under the same setting")
    rows = []
    for label, ours in (("1 thread", r["ours"]), (f"{ALL_CORES} threads", r["ours_all"])):
        rows.append({"benchmark": f"european price+greeks 1M f64 CPU, {label}, memory kept", "ours": ours,
                     "peer": "py_vollib_vectorized", "peer_value": r["vollib"], "unit": "options/s",
                     "ratio": ours / r["vollib"], "goal_ratio": 100})
        rows.append({"benchmark": f"european price+greeks f64 CPU, {label}, memory kept", "ours": ours,
                     "peer": "QuantLib loop (sample)", "peer_value": r["quantlib"], "unit": "options/s",
                     "ratio": ours / r["quantlib"], "goal_ratio": 2000})
    return rows


def vollib_iv_run(g: dict[str, torch.Tensor], price: torch.Tensor) -> Callable[[], np.ndarray]:
    """A call of py_vollib_vectorized's implied vol on the grid ``g``'s quotes ``price`` (CPU arrays)."""
    import py_vollib_vectorized as pvv

    flag = np.where(g["w"].cpu().numpy() > 0, "c", "p")
    a = [g[k].cpu().numpy() for k in ("S", "K", "T", "r", "q")]
    p_np = price.cpu().numpy()

    def run() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pvv.vectorized_implied_volatility(p_np, a[0], a[1], a[2], a[3], flag, q=a[4],
                                                     model="black_scholes_merton", return_as="numpy")

    return run


def iv_rows(notes: list[str]) -> list[dict[str, Any]]:
    g = grid(N, seed=2)
    args = (g["w"], g["S"], g["K"], g["T"], g["r"], g["q"])
    price = bsm_price(*args, g["v"])
    t0 = time.perf_counter()
    res = implied_vol(price, *args, compile=True)
    first = time.perf_counter() - t0
    ours = N / best_of(lambda: implied_vol(price, *args, compile=True), repeat=15)
    with torch_threads(ALL_CORES):
        implied_vol(price, *args, compile=True)
        ours_all = N / best_of(lambda: implied_vol(price, *args, compile=True), repeat=15)
    ok = res.code == 0
    repriced = bsm_price(*args, res.vol)
    rel = ((repriced - price).abs() / price)[ok]
    run_vollib = vollib_iv_run(g, price)
    theirs = N / best_of(run_vollib, repeat=3)
    their_iv = run_vollib()
    their_err = np.nanmax(np.abs(their_iv - g["v"].numpy()))
    their_nan = int(np.isnan(their_iv).sum())
    our_vol_err = (res.vol - g["v"]).abs()[ok].max().item()
    notes.append(f"iv: compile/warm-up {first:.1f}s; {int(ok.sum()):,}/{N:,} solved; worst repricing error "
                 f"{rel.max().item():.1e} relative, {(rel > 1e-12).sum().item()} above 1e-12; worst vol error "
                 f"{our_vol_err:.1e}")
    notes.append(f"iv: py_vollib_vectorized worst vol error {their_err:.2g}, {their_nan} NaN")
    return [{"benchmark": f"implied vol 1M f64 CPU, {label}", "ours": rate, "peer": "py_vollib_vectorized",
             "peer_value": theirs, "unit": "quotes/s", "ratio": rate / theirs, "goal_ratio": 10,
             "ours_max_reprice_rel": rel.max().item(), "peer_max_vol_err": float(their_err)}
            for label, rate in (("1 thread", ours), (f"{ALL_CORES} threads", ours_all))]


def american_rows(notes: list[str]) -> list[dict[str, Any]]:
    import QuantLib as ql

    # one thread like QuantLib's loop (OpenMP threads that spin on a shared machine can slow small
    # batches down by orders of magnitude); the qdfp goal row is measured again on all cores
    with torch_threads(1):
        return _american_rows(notes, ql)


def _american_rows(notes: list[str], ql: Any) -> list[dict[str, Any]]:

    g = grid(AMERICAN_N, seed=3)
    args = tuple(g[k] for k in ("w", "S", "K", "T", "r", "q", "v"))
    rows = []
    hp = qdfp_price(*args, scheme=HIGH_PRECISION)
    t0 = time.perf_counter()
    ours_acc = qdfp_price(*args, scheme=ACCURATE, compile=True)
    qdfp_first = time.perf_counter() - t0
    acc_err = ((ours_acc - hp).abs() / hp.clamp(min=1e-2)).max().item()
    acc_err_k = ((ours_acc - hp).abs() / torch.maximum(hp, 1e-8 * g["K"])).max().item()
    today = ql.Date(15, 6, 2021)
    ql.Settings.instance().evaluationDate = today
    dc = ql.Actual365Fixed()
    sample = [tuple(float(g[k][i]) for k in ("w", "S", "K", "T", "r", "q", "v")) for i in range(QL_AMERICAN_SAMPLE)]

    def ql_rate(make_engine: Any) -> float:
        t0 = time.perf_counter()
        for row in sample:
            proc, opt = ql_option(ql, today, dc, row, american=True)
            opt.setPricingEngine(make_engine(proc))
            opt.NPV()
        return len(sample) / (time.perf_counter() - t0)

    engines = [
        ("qdfp accurate", lambda: qdfp_price(*args, scheme=ACCURATE, compile=True),
         lambda p: ql.QdFpAmericanEngine(p, ql.QdFpAmericanEngine.accurateScheme()), 20),
        ("bs2002", lambda: bs2002_price(*args), lambda p: ql.BjerksundStenslandApproximationEngine(p), None),
        ("baw", lambda: baw_price(*args), lambda p: ql.BaroneAdesiWhaleyApproximationEngine(p), None),
        ("crr-200", lambda: crr_price(*args, steps=200), lambda p: ql.BinomialVanillaEngine(p, "crr", 200), None),
    ]
    for name, ours_fn, ql_engine, goal in engines:
        def ours_rate(fn: Any = ours_fn) -> float:
            return AMERICAN_N / best_of(fn, repeat=2)

        def peer_rate(make: Any = ql_engine) -> float:
            return max(ql_rate(make) for _ in range(3))  # best of 3: one pass of a small sample is noisy

        # ours and the peer back to back, PAIRED_ROUNDS times; the ratio is the median of the rounds' ratios
        ours, peer, ratio = paired_rates(ours_rate, peer_rate, PAIRED_ROUNDS)
        row = {"benchmark": f"american {name} ({AMERICAN_N:,} batched)", "ours": ours,
               "peer": f"QuantLib {name} loop", "peer_value": peer, "unit": "options/s", "ratio": ratio}
        if goal:
            row["goal_ratio"] = goal
        rows.append(row)
        if goal:  # the goal's row also with torch's default thread count (QuantLib's loop stays single-threaded)
            with torch_threads(ALL_CORES):
                ours_fn()
                ours_all, peer_all, ratio_all = paired_rates(ours_rate, peer_rate, PAIRED_ROUNDS)
            rows.append({**row, "benchmark": f"american {name} ({AMERICAN_N:,} batched), {ALL_CORES} threads",
                         "ours": ours_all, "peer_value": peer_all, "ratio": ratio_all})
    notes.append(f"american: qdfp accurate scheme worst error vs our high-precision scheme {acc_err_k:.1e} relative "
                 f"(floor 1e-8 x strike; {acc_err:.1e} with a floor of 0.01 in price); first (compiling) call "
                 f"{qdfp_first:.1f} s; each American row times ours (best of 2 calls) and QuantLib's loop (best "
                 f"of 3 passes of {QL_AMERICAN_SAMPLE} options) back to back {PAIRED_ROUNDS} times: the figures are "
                 f"the medians, the ratio the median of the {PAIRED_ROUNDS} ratios; American rows run torch on 1 "
                 f"thread, like QuantLib's loop, and the qdfp row "
                 f"again on torch's default {ALL_CORES} threads")
    notes.append("american: bs2002 is compared with QuantLib's BjerksundStensland engine, which implements the 1993 "
                 "version (same family, cheaper); see docs/quant.md for the accuracy gap")
    return rows


def cuda_rows(notes: list[str]) -> list[dict[str, Any]]:
    """The same kernels on the GPU (eager and fused by torch.compile, which emits Triton there), at 1M and
    10M options, beside py_vollib_vectorized measured on this machine's CPU in the same run."""
    if not torch.cuda.is_available():
        notes.append("cuda: not available on this machine; GPU rows skipped")
        return []
    dev = "cuda"
    notes.append(f"cuda: {torch.cuda.get_device_name(0)}, torch {torch.__version__}; compile time is the first "
                 "call of a compiled kernel (Triton code generation), reported apart from the timed calls")
    try:
        vollib: float | None = vollib_greeks_rate(grid(N, seed=1))
        g_cpu = grid(N, seed=2)
        vollib_iv: float | None = N / best_of(vollib_iv_run(g_cpu, bsm_price(*(g_cpu[k] for k in "wSKTrqv"),
                                                                            compile=False)),
                                              repeat=2)
    except Exception as exc:  # not installed, or its numba kernels fail here: our rows still count
        vollib = vollib_iv = None
        notes.append(f"cuda: py_vollib_vectorized not measured here ({type(exc).__name__}: {exc}); the CUDA rows "
                     "have no ratio")
    rows: list[dict[str, Any]] = []

    def row(name: str, ours: float, unit: str, peer_value: float | None, peer: str = "py_vollib_vectorized "
            "(this machine's CPU)") -> None:
        rows.append({"benchmark": name, "ours": ours, "peer": peer if peer_value else "", "peer_value": peer_value,
                     "unit": unit, "ratio": ours / peer_value if peer_value else None})

    for n, label in ((N, "1M"), (10 * N, "10M")):
        g = grid(n, seed=1, device=dev)
        eager, _ = time_greeks(g, compile=False, device=dev, names=STANDARD_GREEKS)
        fused, first = time_greeks(g, compile=True, device=dev, names=STANDARD_GREEKS)
        fused32, first32 = time_greeks({k: t.float() for k, t in g.items()}, compile=True, device=dev,
                                       names=STANDARD_GREEKS)
        row(f"european price+greeks {label} f64 CUDA, eager", eager, "options/s", vollib)
        row(f"european price+greeks {label} f64 CUDA, compiled", fused, "options/s", vollib)
        row(f"european price+greeks {label} f32 CUDA, compiled", fused32, "options/s", vollib)
        notes.append(f"cuda european {label}: first compiled call {first:.1f} s (f64), {first32:.1f} s (f32)")
    for n, label in ((N, "1M"), (10 * N, "10M")):
        g = grid(n, seed=2, device=dev)
        args = (g["w"], g["S"], g["K"], g["T"], g["r"], g["q"])
        price = bsm_price(*args, g["v"], compile=False)
        for compile in (False, True):
            t0 = time.perf_counter()
            res = implied_vol(price, *args, compile=compile)
            torch.cuda.synchronize()
            first = time.perf_counter() - t0

            def run_iv(price: torch.Tensor = price, args: tuple[torch.Tensor, ...] = args,
                       compile: bool = compile) -> None:
                implied_vol(price, *args, compile=compile)
                torch.cuda.synchronize()

            ok = res.code == 0
            rel = ((bsm_price(*args, res.vol, compile=False) - price).abs() / price)[ok]
            kind = "compiled" if compile else "eager"
            row(f"implied vol {label} f64 CUDA, {kind}", n / best_of(run_iv), "quotes/s", vollib_iv)
            notes.append(f"cuda implied vol {label} {kind}: first call {first:.1f} s; worst repricing error "
                         f"{rel.max().item():.1e} relative over {int(ok.sum()):,} valid quotes")
    for n in (AMERICAN_N, 100_000):
        ga = grid(n, seed=3, device=dev)
        am_args = tuple(ga[k] for k in ("w", "S", "K", "T", "r", "q", "v"))

        def run_qdfp(am_args: tuple[torch.Tensor, ...] = am_args) -> None:
            qdfp_price(*am_args, scheme=ACCURATE, compile=False)
            torch.cuda.synchronize()

        run_qdfp()
        row(f"american qdfp accurate {n:,} f64 CUDA, eager", n / best_of(run_qdfp), "options/s", None)
    return rows


def american_memory_child(max_rows: int) -> None:
    """In a child process: peak memory and rate of one 65,536-row American Greeks chunk (qdfp, every bump
    Greek, CPU float64, bumped copies priced ``max_rows`` at a time), one JSON line."""
    import resource

    from greekfire.quant import BUMP_GREEKS, qdfp_price
    from greekfire.quant.american import bump_greeks

    g = grid(MEMORY_CHUNK_ROWS, seed=8)
    args = (g["w"], g["S"], g["K"], g["T"], g["r"], g["q"], g["v"])
    bump_greeks(qdfp_price, *(a[:512] for a in args), names=BUMP_GREEKS)  # warm: layouts, kernels
    before_kb = _rss_kb()
    # the peak of the chunk alone: a cold torch.compile in the warm-up (inductor's code generation, gcc)
    # can peak higher than the chunk itself, and is paid once per machine, not per chunk. Writing 5 to
    # clear_refs resets the kernel's high-water mark (VmHWM); where that is refused, ru_maxrss (whole life)
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    bump_greeks(qdfp_price, *args, names=BUMP_GREEKS, max_rows=max_rows)
    seconds = time.perf_counter() - t0
    peak_kb = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    print("RESULT " + json.dumps({"peak_mb": peak_kb / 1024, "added_mb": (peak_kb - before_kb) / 1024,
                                  "rate": MEMORY_CHUNK_ROWS / seconds}))


def _status_kb(field: str) -> int:
    """A memory field of this process's /proc status (VmRSS now, VmHWM its peak), KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _rss_kb() -> int:
    """Resident set size of this process now, KiB (Linux /proc)."""
    return _status_kb("VmRSS")


def _reset_peak_rss() -> bool:
    """Reset this process's peak resident memory (VmHWM) to what it holds now; False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") <= _rss_kb() + 1024


def american_memory_rows(notes: list[str]) -> list[dict[str, Any]]:
    """Peak resident memory of one 65,536-row American Greeks chunk (qdfp, CPU), each in a fresh child
    process: bumped copies priced in calls of BUMP_CHUNK_ROWS (what pricing does) and all in one call."""
    from greekfire.quant.american import BUMP_CHUNK_ROWS

    rows = []
    for label, max_rows in (("split", BUMP_CHUNK_ROWS), ("one call", 1 << 40)):
        proc = subprocess.run([sys.executable, __file__, "american-memory-child", str(max_rows)],
                              capture_output=True, text=True, timeout=900)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            notes.append(f"american memory ({label}): not measured (exit {proc.returncode}: {proc.stderr.strip()[-300:]})")
            continue
        r = json.loads(line.removeprefix("RESULT "))
        name = f"american greeks chunk {MEMORY_CHUNK_ROWS:,} rows qdfp f64 CPU, {label}"
        if label == "split":  # what pricing does, against the goal; "one call" shows what the split saves
            rows.append({"benchmark": f"{name}: peak RSS", "ours": r["peak_mb"], "peer": "goal: at most",
                         "peer_value": 1024.0, "unit": "MB", "ratio": r["peak_mb"] / 1024.0, "goal": 1024})
        else:
            rows.append({"benchmark": f"{name}: peak RSS", "ours": r["peak_mb"], "unit": "MB"})
        rows.append({"benchmark": f"{name}: RSS added by the chunk", "ours": r["added_mb"], "unit": "MB"})
        rows.append({"benchmark": f"{name}: rate", "ours": r["rate"], "unit": "options/s"})
    notes.append("american memory rows: peak resident memory of a fresh process while it prices one chunk of "
                 "every bump Greek (value ... charm), interpreter and torch included; the peak is reset (VmHWM, "
                 "/proc/self/clear_refs) after a warm-up whose kernel compile is a one-time cost, else it is the "
                 "process's whole-life ru_maxrss; 'added' is over the process before the chunk")
    return rows


COLD_ROWS = 4_096
SPX_CHAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "options" / "SPX_2018.csv"


def cold_chain(path: Path) -> str:
    """Write the American chain of the cold-start rows to ``path``: the first COLD_ROWS quotes of the real
    SPX_2018 file with a positive mid (mid as market_price; rate 1.5%, yield 1.8%), else a synthetic chain."""
    import pandas as pd

    if SPX_CHAIN.is_file():
        df = pd.read_csv(SPX_CHAIN, encoding="utf-8-sig")
        df.columns = [c.strip() for c in df.columns]
        chain = pd.DataFrame({
            "right": df["type"].str[0].str.upper(), "spot": df["underlying_last"], "strike": df["strike"],
            "expiry": pd.to_datetime(df["expiration"], format="%m/%d/%Y").dt.strftime("%Y-%m-%d"),
            "quote_date": pd.to_datetime(df["quotedate"], format="%m/%d/%Y").dt.strftime("%Y-%m-%d"),
            "rate": 0.015, "div_yield": 0.018, "market_price": (df["bid"] + df["ask"]) / 2,
        })
        chain = chain[chain["market_price"] > 0].head(COLD_ROWS)
        label = f"SPX 2018, {len(chain):,} rows"
    else:
        from greekfire.data.compile_warmup import synthetic_chain

        chain, label = synthetic_chain(COLD_ROWS), f"synthetic, {COLD_ROWS:,} rows"
    chain.to_csv(path, index=False)
    return label


def cold_compile_rows(notes: list[str]) -> list[dict[str, Any]]:
    """Wall time of ``greekfire price --style american`` (a subprocess, torch's default threads) on a fresh
    compile cache, then, once the kernels it starts building in the background are built, again (warm)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        chain = Path(tmp) / "chain.csv"
        label = cold_chain(chain)
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "cache")}
        argv = [sys.executable, "-m", "greekfire.cli", "price", str(chain), "-o", str(Path(tmp) / "out.csv"),
                "--style", "american", "--json"]

        def run() -> float:
            t0 = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
            if proc.returncode:
                raise RuntimeError(proc.stderr.strip()[-300:])
            return time.perf_counter() - t0

        cold = run()
        built = Path(tmp) / "cache" / "greekfire"
        if not (built / "build.log").exists():
            notes.append("cold-compile rows: the first run compiled nothing and started no build")
            return []
        deadline = time.monotonic() + 1800
        while not list(built.glob("*.built")) or list(built.glob("*.lock")):
            if time.monotonic() > deadline:
                notes.append("cold-compile rows: the background build did not finish within 30 min")
                return []
            time.sleep(2)
        build_s = json.loads(next(built.glob("*.built")).read_text())["seconds"]
        warm = [run() for _ in range(2)]
    name = f"price --style american, {label} ({ALL_CORES} threads)"
    notes.append("cold-compile rows: wall time of the whole command in a fresh process; 'first run' on an empty "
                 "compile cache (it prices eagerly and builds the kernels in a background process), 'warm' the "
                 "first and second runs once that build is done (they take the cached kernels after 10 s of a "
                 "run; before this scheme a first run compiled in the foreground: 213 s against 44 s warm on "
                 "14,423 rows, benchmarks/history/cold-compile.md)")
    return [
        {"benchmark": f"{name}: first run, fresh compile cache", "ours": cold, "peer": "goal: 2x warm",
         "peer_value": 2 * warm[0], "unit": "s", "ratio": cold / (2 * warm[0])},
        {"benchmark": f"{name}: warm run (kernels cached)", "ours": warm[0], "peer": "second warm run",
         "peer_value": warm[1], "unit": "s", "ratio": warm[0] / warm[1]},
        {"benchmark": f"{name}: background kernel build", "ours": float(build_s), "unit": "s"},
    ]


def main() -> int:
    # one thread by default: the peers run single-threaded, and on a shared machine two OpenMP threads that
    # spin while another process holds a core made every figure 3-50x worse and erratic; the goal rows are
    # measured again with torch's default (ALL_CORES, one thread per core), which is what a user gets
    torch.set_num_threads(1)
    notes: list[str] = [f"torch {torch.__version__}, {torch.get_num_threads()} thread"]
    # ``python benchmarks/bench_quant.py american`` runs the American section alone
    if sys.argv[1:] == ["european-malloc"]:  # the child of european_malloc_rows
        european_malloc_child()
        return 0
    if sys.argv[1:2] == ["american-memory-child"]:  # the child of american_memory_rows
        american_memory_child(int(sys.argv[2]))
        return 0
    if sys.argv[1:] == ["american"]:
        rows = american_rows(notes) + american_memory_rows(notes)
    elif sys.argv[1:] == ["american-memory"]:  # the peak memory of one American Greeks chunk alone
        rows = american_memory_rows(notes)
    elif sys.argv[1:] == ["cold-compile"]:  # first run on a fresh compile cache against a warm run
        rows = cold_compile_rows(notes)
    elif sys.argv[1:] == ["cuda"]:  # the GPU rows alone (py_vollib_vectorized is their only peer)
        rows = cuda_rows(notes)
    elif sys.argv[1:] == ["european"]:  # the European and implied-vol sections alone
        rows = european_rows(notes) + iv_rows(notes)
    else:
        rows = (european_rows(notes) + iv_rows(notes) + american_rows(notes) + american_memory_rows(notes)
                + cold_compile_rows(notes) + cuda_rows(notes))
    sections = (["american"], ["european"], ["cuda"], ["american-memory"], ["cold-compile"])
    report(f"quant_{sys.argv[1]}" if sys.argv[1:] in sections else "quant", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
