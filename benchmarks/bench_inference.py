"""Pricing inference server: rows/s and latency under concurrent clients, micro-batching vs one forward per request.

Both servers are the real command (`greekfire serve pricing`) under uvicorn on loopback, serving the same
4x100 MLP checkpoint (and a small LSTM); the load is the same set of client processes, each holding many
keep-alive connections with a request in flight (small requests, as an online pricer sees them), so the
clients are not the bottleneck. Ours: micro-batching with the network traced by TorchScript
(`training.serve_compile=script`); the peer: the same server with `--no-batching` and the eager network
(one forward pass per request), measured in the same run, the servers taking the load in turn; batched-eager
is shown to separate the effects.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import lightning as L
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from greekfire.ml.config import compose_experiment  # noqa: E402
from greekfire.ml.data import load_pricing_data  # noqa: E402
from greekfire.ml.module import module_for  # noqa: E402

PROCESSES = 2  # load-generator processes
CONNECTIONS = 32  # keep-alive connections per process, each with one request in flight
WARMUP_S = 1.0
MEASURE_S = 2.0  # one slice of load
SLICES = 3  # each server takes the load this many times, the three servers in turn


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


def _start_server(ckpt: Path, port: int, batching: bool, compile_mode: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "greekfire.cli", "serve", "pricing", "--model", str(ckpt), "--port", str(port),
           "--device", "cpu"]
    if not batching:
        cmd.append("--no-batching")
    # one torch thread: the clients share these cores, and spinning OpenMP workers would fight them
    env = dict(os.environ, GREEKFIRE_TRAINING__SERVE_MAX_WAIT_MS="2", GREEKFIRE_TRAINING__TORCH_THREADS="1",
               GREEKFIRE_TRAINING__SERVE_COMPILE=compile_mode)
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


def _bodies(url: str, rows_per_request: int) -> list[bytes]:
    """64 different JSON request bodies of the server's input shape."""
    rng = np.random.default_rng(1)
    health = httpx.get(f"{url}/health").json()
    n_c, window, n_s = len(health["contract_features"]), health["window"], len(health["seq_features"])
    bodies = []
    for _ in range(64):
        body: dict[str, object] = {"contract": rng.uniform(0.1, 1.0, (rows_per_request, n_c)).tolist()}
        if window:
            body["seq"] = rng.normal(size=(rows_per_request, window, n_s)).tolist()
        bodies.append(json.dumps(body).encode())
    return bodies


async def _client_loop(port: int, bodies: list[bytes], t_measure: float, t_end: float,
                       lat: list[float], k: int) -> None:
    """One keep-alive connection, closed loop: send a pre-encoded request, read the whole response, repeat."""
    reqs = [b"POST /v1/price HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = k
    try:
        while True:
            t0 = time.time()
            if t0 >= t_end:
                return
            writer.write(reqs[i % len(reqs)])
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"server answered {head[:40]!r}")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            t1 = time.time()
            if t0 >= t_measure:
                lat.append(t1 - t0)
            i += 1
    finally:
        writer.close()


def _client_process(port: int, bodies: list[bytes], connections: int, go: Any, out: Any) -> None:
    """A load-generator process: ``connections`` concurrent keep-alive connections on one event loop."""
    lat: list[float] = []
    out.put("ready")
    t_measure, t_end = go.get()

    async def run() -> None:
        await asyncio.gather(*(_client_loop(port, bodies, t_measure, t_end, lat, k) for k in range(connections)))

    asyncio.run(run())
    out.put(lat)


def _load(port: int, rows_per_request: int) -> tuple[float, np.ndarray]:
    """Rows/s and request latencies (s) under PROCESSES x CONNECTIONS closed-loop clients."""
    bodies = _bodies(f"http://127.0.0.1:{port}", rows_per_request)
    ctx = mp.get_context("fork")  # the clients use no torch: a fork starts at once
    out, go = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_client_process, args=(port, bodies, CONNECTIONS, go, out))
             for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    for _ in procs:
        out.get(timeout=60)
    t_measure = time.time() + WARMUP_S  # wall-clock: shared by the processes (perf_counter is not)
    t_end = t_measure + MEASURE_S
    for _ in procs:
        go.put((t_measure, t_end))
    lats = [out.get(timeout=MEASURE_S + 60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    latencies = np.array([x for lat in lats for x in lat])
    return len(latencies) * rows_per_request / MEASURE_S, latencies


#: the servers measured: one forward per request (the peer), micro-batched eager, micro-batched TorchScript
CONFIGS = {"single": (False, "none"), "eager": (True, "none"), "script": (True, "script")}


def measure(ckpt: Path, rows_per_request: int) -> dict[str, tuple[float, np.ndarray]]:
    """Rows/s and request latencies (s) of each server of CONFIGS. The three run side by side and take the
    load in turn, SLICES slices of MEASURE_S seconds each, starting with a different one every slice: the
    machine's drift over the minute is shared by all three instead of falling on whichever ran last."""
    ports = {k: _free_port() for k in CONFIGS}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for k, (batching, compile_mode) in CONFIGS.items():
            procs.append(_start_server(ckpt, ports[k], batching, compile_mode))
        lats: dict[str, list[np.ndarray]] = {k: [] for k in CONFIGS}
        keys = list(CONFIGS)
        for i in range(SLICES):
            for k in keys[i % len(keys):] + keys[: i % len(keys)]:
                lats[k].append(_load(ports[k], rows_per_request)[1])
        return {k: (sum(len(x) for x in v) * rows_per_request / (SLICES * MEASURE_S), np.concatenate(v))
                for k, v in lats.items()}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    rows = []
    notes = []
    peer = "one forward per request, eager"
    clients = f"{PROCESSES}x{CONNECTIONS} clients"
    with tempfile.TemporaryDirectory() as tmp:
        for name, (preset, overrides, per_request) in SCENARIOS.items():
            ckpt = _checkpoint(Path(tmp), preset, overrides)
            m = measure(ckpt, per_request)
            (s_rps, s_lat), (e_rps, e_lat), (b_rps, b_lat) = m["single"], m["eager"], m["script"]
            p99 = {k: float(np.percentile(v, 99)) * 1e3 for k, v in (("b", b_lat), ("e", e_lat), ("s", s_lat))}
            p50 = {k: float(np.percentile(v, 50)) * 1e3 for k, v in (("b", b_lat), ("e", e_lat), ("s", s_lat))}
            rows += [
                {"benchmark": f"{name}: rows/s, batched+TorchScript, {clients} x {per_request} row(s)",
                 "ours": b_rps, "peer": peer, "peer_value": s_rps, "unit": "rows/s", "ratio": b_rps / s_rps},
                {"benchmark": f"{name}: rows/s, batched eager", "ours": e_rps, "peer": peer,
                 "peer_value": s_rps, "unit": "rows/s", "ratio": e_rps / s_rps},
                {"benchmark": f"{name}: p99 latency, batched+TorchScript", "ours": p99["b"], "peer": peer,
                 "peer_value": p99["s"], "unit": "ms", "ratio": p99["s"] / p99["b"]},
                {"benchmark": f"{name}: p50 latency, batched+TorchScript", "ours": p50["b"], "peer": peer,
                 "peer_value": p50["s"], "unit": "ms", "ratio": p50["s"] / p50["b"]},
            ]
            notes.append(f"{name}: {len(b_lat)} batched+TorchScript, {len(e_lat)} batched eager, {len(s_lat)} "
                         f"single requests in {SLICES} x {MEASURE_S:.0f} s each")
    report("inference", rows, notes=[
        "server: `greekfire serve pricing` under uvicorn on loopback, CPU, torch threads 1, default allocator; "
        "micro-batch window 2 ms; the three servers run side by side and take the load in turn "
        f"({SLICES} slices of {MEASURE_S:.0f} s each, after {WARMUP_S:.0f} s of load unmeasured)",
        f"load: {PROCESSES} client processes x {CONNECTIONS} keep-alive connections (asyncio streams, "
        "pre-encoded requests, closed loop); clients and server share the machine's cores",
        "ratio: ours/peer for rows/s, peer/ours for latency (> 1: ours better)",
        *notes,
    ])


if __name__ == "__main__":
    main()
