"""Pricing inference server: rows/s and latency under concurrent clients, micro-batching vs one forward per request.

Both servers are the real command (`greekfire serve pricing`) under uvicorn on loopback, serving the same
4x100 MLP checkpoint; the load is the same set of concurrent httpx clients (small requests, as an online
pricer sees them). The peer is the same server with `--no-batching` (one forward pass per request),
measured in the same run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from greekfire.ml.config import compose_experiment  # noqa: E402
from greekfire.ml.data import load_pricing_data  # noqa: E402
from greekfire.ml.module import module_for  # noqa: E402

CONCURRENCY = 32
ROWS_PER_REQUEST = 4
WARMUP_S = 1.0
MEASURE_S = 5.0


def _checkpoint(folder: Path) -> Path:
    cfg = compose_experiment("liu_mlp", ["data.n_samples=2000"])
    torch.manual_seed(0)
    module = module_for(cfg, load_pricing_data(cfg.data))
    path = folder / "mlp_4x100.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(ckpt: Path, port: int, batching: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "greekfire.cli", "serve", "pricing", "--model", str(ckpt), "--port", str(port),
           "--device", "cpu"]
    if not batching:
        cmd.append("--no-batching")
    env = dict(os.environ, GREEKFIRE_TRAINING__SERVE_MAX_WAIT_MS="2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


async def _load(url: str) -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(1)
    bodies = [
        {"contract": np.column_stack([rng.uniform(0.5, 1.5, ROWS_PER_REQUEST), rng.uniform(0.2, 1.1, ROWS_PER_REQUEST),
                                      rng.uniform(0.02, 0.1, ROWS_PER_REQUEST), rng.uniform(0.05, 0.9, ROWS_PER_REQUEST)
                                      ]).tolist()}
        for _ in range(64)
    ]
    latencies: list[float] = []
    rows = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        t_start = time.perf_counter()
        t_measure = t_start + WARMUP_S
        t_end = t_measure + MEASURE_S

        async def worker(k: int) -> None:
            nonlocal rows
            i = k
            while True:
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                r = await client.post("/v1/price", json=bodies[i % len(bodies)])
                t1 = time.perf_counter()
                r.raise_for_status()
                if t0 >= t_measure:
                    latencies.append(t1 - t0)
                    rows += ROWS_PER_REQUEST
                i += 1

        await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    return rows / MEASURE_S, np.array(latencies)


def measure(ckpt: Path, batching: bool) -> tuple[float, np.ndarray]:
    port = _free_port()
    proc = _start_server(ckpt, port, batching)
    try:
        return asyncio.run(_load(f"http://127.0.0.1:{port}"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(Path(tmp))
        batched_rps, batched_lat = measure(ckpt, batching=True)
        single_rps, single_lat = measure(ckpt, batching=False)
    p99_b, p99_s = float(np.percentile(batched_lat, 99)) * 1e3, float(np.percentile(single_lat, 99)) * 1e3
    p50_b, p50_s = float(np.percentile(batched_lat, 50)) * 1e3, float(np.percentile(single_lat, 50)) * 1e3
    rows = [
        {"benchmark": f"rows/s, {CONCURRENCY} clients x {ROWS_PER_REQUEST} rows", "ours": batched_rps,
         "peer": "one forward per request", "peer_value": single_rps, "unit": "rows/s",
         "ratio": batched_rps / single_rps},
        {"benchmark": "p99 latency", "ours": p99_b, "peer": "one forward per request", "peer_value": p99_s,
         "unit": "ms (lower is better)", "ratio": p99_s / p99_b},
        {"benchmark": "p50 latency", "ours": p50_b, "peer": "one forward per request", "peer_value": p50_s,
         "unit": "ms (lower is better)", "ratio": p50_s / p50_b},
    ]
    report("inference", rows, notes=[
        "model: 4x100 MLP (liu_mlp preset shape) on CPU; server: `greekfire serve pricing` under uvicorn",
        f"micro-batch window 2 ms; {len(batched_lat)} vs {len(single_lat)} requests measured over {MEASURE_S:.0f} s",
        "clients and server share the machine's cores; ratio for latency rows is peer/ours (>1: ours faster)",
    ])


if __name__ == "__main__":
    main()
