"""Compiling the pricing kernels of ``greekfire price`` ahead of the runs that need them.

A cold torch.compile of the American kernels costs minutes (inductor's code generation and the C++
compile; measured in benchmarks/history/cold-compile.md), far longer than pricing a chain eagerly. So a
run on a machine that has not built its kernels yet prices eagerly (same results) and, when it would have
compiled something, starts this module in a background process: it prices a small synthetic chain of the
same kind (style, model, dtype, device, torch threads) with the kernels compiled, which fills the compile
cache (:mod:`greekfire.core.compile_cache`), and marks the set built. Later runs load the kernels from the
cache in seconds.

``python -m greekfire.data.compile_warmup STYLE MODEL DTYPE DEVICE THREADS`` builds one set in the
foreground (what the background process runs).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import greekfire.quant
from greekfire.core.compile_cache import (
    kernels_built,
    mark_built,
    release_build_lock,
    take_build_lock,
    use_compile_cache,
)

WARMUP_ROWS = 2_048
"""Rows of the synthetic chain: enough for every kernel of a run to cross its compile threshold."""


def _sources_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(greekfire.quant.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def kernel_set_key(style: str, model: str, dtype: str, device: torch.device, threads: int | None = None) -> str:
    """The name of the set of kernels a pricing run of this kind compiles: it changes with torch, the
    pricing code, the thread count (compiled CPU loops are built for it) and the run's options."""
    threads = torch.get_num_threads() if threads is None else threads
    raw = f"{torch.__version__}|{_sources_digest()}|{style}|{model}|{dtype}|{device.type}|{threads}"
    return f"{style}-{model}-{dtype}-{device.type}-{threads}t-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"


def synthetic_chain(rows: int = WARMUP_ROWS, seed: int = 0) -> pd.DataFrame:
    """A chain of puts and calls with market prices (from Black-Scholes at random vols) and no vol column,
    so pricing it runs both the implied-vol and the Greeks kernels."""
    from greekfire.quant import bsm_price

    rng = np.random.default_rng(seed)
    spot = np.full(rows, 100.0)
    strike = rng.uniform(60.0, 140.0, rows)
    ttm = rng.uniform(0.02, 2.0, rows)
    rate, div = rng.uniform(0.005, 0.06, rows), rng.uniform(0.0, 0.04, rows)
    vol = rng.uniform(0.1, 0.6, rows)
    right = np.where(np.arange(rows) % 2 == 0, 1.0, -1.0)
    price = bsm_price(right, spot, strike, ttm, rate, div, vol, compile=False).numpy()
    # a little above the European price and the exercise value: American prices carry a premium for both
    price = np.maximum(price * 1.01 + 0.01, np.maximum(right * (spot - strike), 0.0) + 0.05)
    return pd.DataFrame({"right": np.where(right > 0, "C", "P"), "spot": spot, "strike": strike, "ttm": ttm,
                         "rate": rate, "div_yield": div, "market_price": price})


def build_kernels(style: str, model: str, dtype: str, device: str, threads: int) -> float | None:
    """Compile the kernels of a pricing run of this kind into the compile cache and mark the set built;
    returns the seconds it took, or None when another process is building the same set."""
    from greekfire.data.pricing import engine_device, price_frame, resolve_engine

    use_compile_cache()
    torch.set_num_threads(threads)
    dev = engine_device(resolve_engine(style, model), device)
    key = kernel_set_key(style, model, dtype, dev, threads)
    if kernels_built(key) or not take_build_lock(key):
        return None
    try:
        t0 = time.perf_counter()
        price_frame(synthetic_chain(), style=style, model=model, device=device, dtype=dtype)
        seconds = time.perf_counter() - t0
        mark_built(key, seconds)
        return seconds
    finally:
        release_build_lock(key)


def start_background_build(style: str, model: str, dtype: str, device: str, log: Path) -> None:
    """Start :func:`build_kernels` for this kind of run in a detached, low-priority process (it outlives
    the caller); its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "greekfire.data.compile_warmup", style, model, dtype, device,
            str(torch.get_num_threads())]
    with open(log, "ab") as out:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                         close_fds=True)


def main(argv: list[str]) -> int:
    """``STYLE MODEL DTYPE DEVICE THREADS``: build that set of kernels (niced: it runs beside the user's work)."""
    import os

    os.nice(10)
    style, model, dtype, device, threads = argv
    seconds = build_kernels(style, model, dtype, device, int(threads))
    print(f"{' '.join(argv)}: " + ("already built or being built" if seconds is None else f"built in {seconds:.0f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
