"""Trading API server under load: WebSocket fan-out while the market maker trades, and REST order submits.

The server is ``greekfire.api.trading.build_app`` over a paper engine (two simulated venues, the sample options
market maker), run by uvicorn in its own process exactly as ``greekfire serve trading`` runs it; the clients run
in this process on one asyncio loop.

1. ``N_CLIENTS`` WebSocket clients subscribe to ``quotes`` and ``fills`` for ``WS_SECONDS``: messages delivered
   per second (all clients together) and the delivery latency, from the server's ``pub_ns`` stamp (taken when the
   engine publishes, before encoding and fan-out) to the client's receipt (same machine, same wall clock). The
   clients only find ``pub_ns`` in the text (no full JSON parse), so they cost as little as a Python client can.
   Clients dropped for falling ``api.ws_queue_size`` messages behind are counted, and the engine's event rate
   (``/health`` events) is reported beside. A second, light run (``FEW_CLIENTS``) shows the latency when the
   clients keep up.
2. REST: ``REST_CONCURRENCY`` concurrent httpx clients submit resting limit orders for ``REST_SECONDS`` each,
   once with a bearer token and once with the API key in ``X-API-Key`` (the key's hash is checked on every
   request); auth and rate limiting on, the limit raised above what the run can send.

Bounded: about 45 s in all. Run: ``python benchmarks/bench_api.py``.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402

N_CLIENTS = 500
WS_SECONDS = 10.0
REST_SECONDS = 4.0
REST_CONCURRENCY = 16
WARMUP_S = 2.0
FEW_CLIENTS = 20  # a second, light run: the server's own share of the latency, with clients that keep up
FEW_SECONDS = 4.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(port: int, home: str, out: Any) -> None:
    """The server process: engine + app under uvicorn; sends its keys and settings, then serves until killed."""
    import uvicorn

    from greekfire.api.auth import ApiKeyStore
    from greekfire.api.trading import build_app
    from greekfire.core.settings import load_settings
    from greekfire.strategies import load_strategy
    from greekfire.trading.build import build_engine

    settings = load_settings(overrides={
        "home": home, "database.url": f"sqlite:///{home}/api.db", "api.rate_limit_per_s": 1e6,
        "api.rate_limit_burst": 1_000_000,
    })
    engine = build_engine(settings, strategies=[load_strategy("market_maker")], store=False)
    store = ApiKeyStore(f"sqlite:///{home}/keys.db")
    _, key = store.create("bench", ["admin"])
    app = build_app(settings, engine, store=store)
    import torch

    out.put({"key": key, "ws_queue_size": settings.api.ws_queue_size, "torch_threads": torch.get_num_threads()})
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", ws_ping_interval=None,
                                  backlog=4096)).run()


async def _ws_phase(port: int, key: str, n_clients: int, seconds: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    hist = HdrHistogram(1, 60_000_000, 3)  # microseconds
    counts = {"msgs": 0, "closed_1013": 0, "closed_other": 0}
    measuring = asyncio.Event()
    stop = asyncio.Event()

    async def client() -> None:
        try:
            async with connect(f"ws://127.0.0.1:{port}/v1/stream", additional_headers={"X-API-Key": key},
                               max_queue=None, open_timeout=60) as ws:
                await ws.send('{"op": "subscribe", "topics": ["quotes", "fills"]}')
                while not stop.is_set():
                    try:
                        text = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    now = time.time_ns()
                    i = text.find('"pub_ns": ')
                    if i < 0 or not measuring.is_set():
                        continue
                    j = text.find(",", i)
                    counts["msgs"] += 1
                    hist.record_value(max(1, (now - int(text[i + 10:j])) // 1000))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            counts["closed_1013" if code == 1013 else "closed_other"] += 1

    t_connect = time.perf_counter()
    tasks = [asyncio.create_task(client()) for _ in range(n_clients)]
    await asyncio.sleep(WARMUP_S)
    connect_s = time.perf_counter() - t_connect
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        e0 = (await http.get("/health")).json()["events"]
        measuring.set()
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        measuring.clear()
        elapsed = time.perf_counter() - t0
        e1 = (await http.get("/health")).json()["events"]
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"msgs": counts["msgs"], "seconds": elapsed, "hist": hist, "dropped": counts["closed_1013"],
            "other_closes": counts["closed_other"], "warmup_s": connect_s, "engine_events_per_s": (e1 - e0) / elapsed}


async def _rest_phase(port: int, headers: dict[str, str]) -> dict[str, Any]:
    import httpx

    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30.0,
                                 limits=httpx.Limits(max_connections=REST_CONCURRENCY)) as http:
        ask = None
        while ask is None:
            ask = next(i["ask"] for i in (await http.get("/v1/instruments")).json() if i["symbol"] == "GFX")
        price = round(ask * 0.97, 2)  # rests: inside the price band, below the market
        codes: dict[int, int] = {}
        hist = HdrHistogram(1, 60_000_000, 3)
        t_end = time.perf_counter() + REST_SECONDS

        async def worker() -> None:
            while time.perf_counter() < t_end:
                t = time.perf_counter_ns()
                r = await http.post("/v1/orders", json={"symbol": "GFX", "side": "buy", "qty": 1, "price": price})
                hist.record_value(max(1, (time.perf_counter_ns() - t) // 1000))
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(REST_CONCURRENCY)))
        elapsed = time.perf_counter() - t0
        await http.delete("/v1/orders", params={"strategy_id": "api"})
    return {"codes": codes, "seconds": elapsed, "hist": hist}


def main() -> int:
    port = _free_port()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as home:
        proc = ctx.Process(target=_serve, args=(port, home, q), daemon=True)
        proc.start()
        try:
            info = q.get(timeout=120)
            t_wait = time.monotonic() + 60
            while time.monotonic() < t_wait:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; server: 1 process, uvicorn, one event "
                  f"loop for engine + API, torch threads {info['torch_threads']}, allocator "
                  f"{os.environ.get('LD_PRELOAD') or 'glibc default'} (MALLOC_ARENA_MAX="
                  f"{os.environ.get('MALLOC_ARENA_MAX', 'unset')}); clients: this process, one asyncio loop")
            key = info["key"]
            ws = asyncio.run(_ws_phase(port, key, N_CLIENTS, WS_SECONDS))
            ws_few = asyncio.run(_ws_phase(port, key, FEW_CLIENTS, FEW_SECONDS))

            import httpx

            token = httpx.post(f"http://127.0.0.1:{port}/token", json={"api_key": key}).json()["access_token"]
            rest_jwt = asyncio.run(_rest_phase(port, {"Authorization": f"Bearer {token}"}))
            rest_key = asyncio.run(_rest_phase(port, {"X-API-Key": key}))
        finally:
            proc.kill()
            proc.join(10)

    rows: list[dict[str, Any]] = []
    for n, r in ((N_CLIENTS, ws), (FEW_CLIENTS, ws_few)):
        h: HdrHistogram = r["hist"]
        rows.append({"benchmark": f"WebSocket messages delivered ({n} clients, quotes + fills)",
                     "ours": r["msgs"] / r["seconds"], "peer": "", "peer_value": None, "unit": "msgs/s", "ratio": None})
        for q_ in (50.0, 99.0):
            rows.append({"benchmark": f"WebSocket delivery latency p{q_:g} ({n} clients, publish -> client)",
                         "ours": h.get_value_at_percentile(q_) / 1000.0 if h.get_total_count() else None,
                         "peer": "", "peer_value": None, "unit": "ms", "ratio": None})
        rows.append({"benchmark": f"engine events while {n} clients stream", "ours": r["engine_events_per_s"],
                     "peer": "", "peer_value": None, "unit": "events/s", "ratio": None})
    for label, r in (("bearer token", rest_jwt), ("API key", rest_key)):
        ok = r["codes"].get(201, 0)
        rows.append({"benchmark": f"REST order submits, {label} ({REST_CONCURRENCY} concurrent)",
                     "ours": ok / r["seconds"], "peer": "", "peer_value": None, "unit": "orders/s", "ratio": None,
                     "codes": r["codes"]})
        rows.append({"benchmark": f"REST order submit latency p99, {label}",
                     "ours": r["hist"].get_value_at_percentile(99.0) / 1000.0, "peer": "", "peer_value": None,
                     "unit": "ms", "ratio": None})
    notes = [
        f"WebSocket: {ws['msgs']:,} messages in {ws['seconds']:.1f} s after {ws['warmup_s']:.1f} s of connecting; "
        f"{ws['dropped']} clients dropped with 1013 (queue of {info['ws_queue_size']}), {ws['other_closes']} other "
        "closes",
        "REST answers by status: " + "; ".join(f"{lab} {r['codes']}" for lab, r in
                                               (("bearer", rest_jwt), ("key", rest_key))),
        f"{FEW_CLIENTS} clients: {ws_few['msgs']:,} messages in {ws_few['seconds']:.1f} s, {ws_few['dropped']} dropped",
        "server and clients share this machine's cores; the Python clients are part of what is measured (they "
        "read without a bound on their own buffer, so a client that falls behind shows as latency, not as a drop)",
    ]
    report("api", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
