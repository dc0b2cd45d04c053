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
WARMUP_S = 1.0
MEASURE_S = 4.0


SCENARIOS = {
    # name: (preset, overrides, rows per request)
    "mlp 4x100": ("liu_mlp", ["data.n_samples=2000"], 4),
    "lstm 2x64, 20 days": ("lstm_tiny", ["data.n_samples=500", "data.window=20", "data.seq_features=15",
                                         "model.proj_dim=32", "model.lstm_hidden=64", "model.lstm_layers=2",
                                         "model.attn_heads=4", "model.head_hidden=[64,64]"], 1),
}


def _checkpoint(folder: Path, preset: str, overrides: list[str]) -> Path:
    cfg = compose_experiment(preset, overrides)
    torch.manual_seed(0)
    module = module_for(cfg, load_pricing_data(cfg.data))
    path = folder / f"{preset}.ckpt"
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
    # one torch thread: the clients share these cores, and spinning OpenMP workers would fight them
    env = dict(os.environ, GREEKFIRE_TRAINING__SERVE_MAX_WAIT_MS="2", GREEKFIRE_TRAINING__TORCH_THREADS="1")
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


async def _load(url: str, rows_per_request: int) -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(1)
    health = httpx.get(f"{url}/health").json()
    n_c, window, n_s = len(health["contract_features"]), health["window"], len(health["seq_features"])
    bodies = []
    for _ in range(64):
        body: dict[str, object] = {"contract": rng.uniform(0.1, 1.0, (rows_per_request, n_c)).tolist()}
        if window:
            body["seq"] = rng.normal(size=(rows_per_request, window, n_s)).tolist()
        bodies.append(body)
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
                    rows += rows_per_request
                i += 1

        await asyncio.gather(*(worker(k) for k in range(CONCURRENCY)))
    return rows / MEASURE_S, np.array(latencies)


def measure(ckpt: Path, batching: bool, rows_per_request: int) -> tuple[float, np.ndarray]:
    port = _free_port()
    proc = _start_server(ckpt, port, batching)
    try:
        return asyncio.run(_load(f"http://127.0.0.1:{port}", rows_per_request))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    rows = []
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (preset, overrides, per_request) in SCENARIOS.items():
            ckpt = _checkpoint(Path(tmp), preset, overrides)
            b_rps, b_lat = measure(ckpt, True, per_request)
            s_rps, s_lat = measure(ckpt, False, per_request)
            p99_b, p99_s = float(np.percentile(b_lat, 99)) * 1e3, float(np.percentile(s_lat, 99)) * 1e3
            p50_b, p50_s = float(np.percentile(b_lat, 50)) * 1e3, float(np.percentile(s_lat, 50)) * 1e3
            peer = "one forward per request"
            rows += [
                {"benchmark": f"{name}: rows/s, {CONCURRENCY} clients x {per_request} row(s)", "ours": b_rps,
                 "peer": peer, "peer_value": s_rps, "unit": "rows/s", "ratio": b_rps / s_rps},
                {"benchmark": f"{name}: p99 latency", "ours": p99_b, "peer": peer, "peer_value": p99_s,
                 "unit": "ms", "ratio": p99_s / p99_b},
                {"benchmark": f"{name}: p50 latency", "ours": p50_b, "peer": peer, "peer_value": p50_s,
                 "unit": "ms", "ratio": p50_s / p50_b},
            ]
            notes.append(f"{name}: {len(b_lat)} batched vs {len(s_lat)} single requests in {MEASURE_S:.0f} s")
    report("inference", rows, notes=[
        "server: `greekfire serve pricing` under uvicorn on loopback, CPU; micro-batch window 2 ms",
        "clients (httpx, one process) and server share the machine's cores",
        "ratio: ours/peer for rows/s, peer/ours for latency (> 1: micro-batching better)",
        *notes,
    ])


if __name__ == "__main__":
    main()
