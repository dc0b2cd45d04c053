"""GPU manager benchmarks (CPU-only machine; the figures are about our overhead, not GPU speed).

1. OOM backoff overhead: ``run_with_oom_backoff`` over 200k rows of a row-wise tensor function, starting
   from a batch that is too large, against the peer: a plain hand-written loop already using the batch
   size the backoff ends at (what a person would write knowing the answer in advance).
2. Status latency: ``greekfire gpu status --json`` in a fresh process, against the peer: the usual
   ``python -c "import torch; torch.cuda.is_available()"`` probe, also in a fresh process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import best_of, report  # noqa: E402

from greekfire.gpu.memory import run_with_oom_backoff  # noqa: E402

ROWS, COLS, FIT = 200_000, 8, 4096


def work(batch: torch.Tensor) -> torch.Tensor:
    """Row-wise work; raises OOM for batches over FIT rows (stands in for a device that is too small)."""
    if len(batch) > FIT:
        raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(batch) * COLS * 8} bytes")
    return torch.sqrt(batch * batch + 1.0).sum(dim=1)


def plain_loop(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([work(x[i : i + size]) for i in range(0, len(x), size)])


def fresh_process_seconds(code: list[str], repeat: int = 5) -> float:
    """Best wall seconds of ``code`` in a fresh process, after one untimed run that leaves the modules'
    bytecode cached, as an installed package has it: in a shell with PYTHONDONTWRITEBYTECODE set, every
    start would compile each module from source again, and a larger package would be timed for that."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(code, check=True, capture_output=True, timeout=120, env=env)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(code, check=True, capture_output=True, timeout=120, env=env)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    torch.set_num_threads(1)
    logging.getLogger("greekfire").setLevel(logging.ERROR)  # each backoff logs a warning; keep the table readable
    x = torch.randn(ROWS, COLS, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = plain_loop(x, FIT)
    assert torch.equal(run_with_oom_backoff(work, x, 65_536), expected)
    ours = best_of(lambda: run_with_oom_backoff(work, x, 65_536), repeat=5)
    peer = best_of(lambda: plain_loop(x, FIT), repeat=5)
    rows = [{
        "benchmark": f"OOM backoff, {ROWS} rows, 65536 -> {FIT} batch", "ours": ROWS / ours,
        "peer": "plain batched loop at the final size", "peer_value": ROWS / peer, "unit": "rows/s",
        "ratio": peer / ours,
    }]
    status = fresh_process_seconds([sys.executable, "-c", "from greekfire.cli import app; app()", "gpu", "status", "--json"])
    probe = fresh_process_seconds([sys.executable, "-c", "import torch; torch.cuda.is_available()"])
    rows.append({
        "benchmark": "gpu status --json, fresh process", "ours": status, "peer": "import torch; cuda.is_available()",
        "peer_value": probe, "unit": "s (lower is better)", "ratio": probe / status,
    })
    report("gpu", rows, notes=[
        "ratio > 1 means ours is faster (rows/s: ours/peer; seconds: peer/ours)",
        "no GPU on this machine: NVML is absent, so status shows the CPU device and the reason",
        "fresh-process rows: best of 5 starts after one untimed start (bytecode cached, as installed)",
    ])


if __name__ == "__main__":
    main()
