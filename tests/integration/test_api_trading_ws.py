"""The trading API's WebSocket stream on loopback, with the `websockets` client: credentials (1008), topics,
an order's updates and fills in order after a REST submit, and back-pressure: a client that never reads is
dropped with 1013 while the engine keeps its pace."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_api_trading import TradingServer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from conftest import poll_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TradingServer]:
    # a busy market (the slow client's backlog grows fast); no keepalive pings (the slow client never answers)
    with TradingServer(tmp_path_factory.mktemp("ws"), overrides={"api.ws_queue_size": 64, "trading.background_rate_hz": 1500.0},
                       uvicorn_kw={"ws_ping_interval": None}) as s:
        yield s


def _ws_url(srv: TradingServer, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{srv.port}/v1/stream" + (f"?token={token}" if token else "")


async def _closed_with(url: str, **kw: Any) -> int | None:
    async with connect(url, **kw) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code


def test_missing_or_bad_credentials_close_with_1008(srv: TradingServer) -> None:
    assert asyncio.run(_closed_with(_ws_url(srv))) == 1008
    assert asyncio.run(_closed_with(_ws_url(srv, "not.a.jwt"))) == 1008
    assert asyncio.run(_closed_with(_ws_url(srv), additional_headers={"X-API-Key": "gfk_bad_bad"})) == 1008


async def _next(ws: ClientConnection, topic: str, timeout: float = 10.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, end - time.monotonic())))
        if msg["topic"] == topic:
            return msg


def test_token_query_subscribe_quotes_and_a_bad_op(srv: TradingServer) -> None:
    with srv.client(None) as http:
        token = http.post("/token", json={"api_key": srv.keys["read"]}).json()["access_token"]

    async def go() -> None:
        async with connect(_ws_url(srv, token)) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topics": ["quotes", "weather"]}))
            err = await _next(ws, "error")
            assert err["data"]["field"] == "topics" and err["data"]["value"] == "weather"
            await ws.send("{not json")
            assert (await _next(ws, "error"))["data"]["field"] == "body"
            await ws.send(json.dumps({"op": "subscribe", "topics": ["quotes"]}))
            assert (await _next(ws, "subscribed"))["data"]["topics"] == ["quotes"]
            q1, q2 = await _next(ws, "quotes"), await _next(ws, "quotes")
            assert q2["seq"] > q1["seq"] >= 1
            assert {"instrument_id", "symbol", "bid", "ask"} <= set(q1["data"])
            await ws.send(json.dumps({"op": "unsubscribe", "topics": ["quotes"]}))
            assert (await _next(ws, "subscribed"))["data"]["topics"] == []

    asyncio.run(go())


def test_order_updates_and_fill_arrive_in_order_after_a_rest_submit(srv: TradingServer) -> None:
    async def go() -> tuple[str, list[dict[str, Any]]]:
        async with connect(_ws_url(srv), additional_headers={"X-API-Key": srv.keys["trade"]}) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topics": ["orders", "fills"]}))
            await _next(ws, "subscribed")
            async with httpx.AsyncClient(base_url=srv.url, headers={"X-API-Key": srv.keys["trade"]}) as http:
                ask = None
                while ask is None:
                    ask = next(i["ask"] for i in (await http.get("/v1/instruments")).json() if i["symbol"] == "GFX")
                r = await http.post("/v1/orders", json={"symbol": "GFX", "side": "buy", "qty": 1,
                                                        "price": round(ask + 0.05, 2), "tif": "IOC"})
                assert r.status_code == 201, r.text
                cid = r.json()["client_id"]
            mine: list[dict[str, Any]] = []
            closed = filled = False
            end = time.monotonic() + 15
            while time.monotonic() < end and not (closed and filled):
                msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
                d = msg["data"]
                if d.get("client_id") == cid:
                    mine.append(msg)
                    closed = closed or (msg["topic"] == "orders" and d["new"] in ("FILLED", "CANCELED", "REJECTED"))
                    filled = filled or msg["topic"] == "fills"
            return cid, mine

    cid, mine = asyncio.run(go())
    orders = [m for m in mine if m["topic"] == "orders"]
    fills = [m for m in mine if m["topic"] == "fills"]
    assert orders and fills, mine
    states = [m["data"]["new"] for m in orders]
    assert states[0] == "SUBMITTED" and states[-1] == "FILLED", states
    assert [m["data"]["old"] for m in orders[1:]] == states[:-1]  # each update continues from the last
    seqs = [m["seq"] for m in orders]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert sum(f["data"]["qty"] for f in fills) == 1 and fills[0]["data"]["side"] == "buy"
    # the fill comes after the order reached its venue
    assert mine.index(fills[0]) > mine.index(orders[0])


def _events_per_s(srv: TradingServer, seconds: float) -> float:
    e0, t0 = srv.engine.events, time.perf_counter()
    time.sleep(seconds)
    return (srv.engine.events - e0) / (time.perf_counter() - t0)


class RawSlowClient:
    """A WebSocket client on a plain socket that reads nothing until asked: once the kernel's buffers are full
    the server's sends back up (a library client would keep reading into its own buffers)."""

    def __init__(self, port: int, api_key: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"X-API-Key: {api_key}\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        assert len(data) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes([0x81, 0x80 | len(data)]) + mask + masked)

    def read_until_close(self, timeout_s: float = 30.0) -> tuple[int | None, int]:
        """Read every frame; returns (the close code, data frames read before it)."""
        self.sock.settimeout(timeout_s)
        buf, pos, frames = bytearray(self.buf), 0, 0
        while True:
            have = len(buf) - pos
            off = n = -1
            if have >= 2:
                n, off = buf[pos + 1] & 0x7F, 2
                if n == 126:
                    n, off = (struct.unpack_from("!H", buf, pos + 2)[0], 4) if have >= 4 else (-1, -1)
                elif n == 127:
                    n, off = (struct.unpack_from("!Q", buf, pos + 2)[0], 10) if have >= 10 else (-1, -1)
            if off < 0 or have < off + n:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return None, frames
                del buf[:pos]
                pos = 0
                buf += chunk
                continue
            opcode, payload = buf[pos] & 0x0F, bytes(buf[pos + off:pos + off + n])
            pos += off + n
            if opcode == 0x8:
                return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None), frames
            frames += 1

    def close(self) -> None:
        self.sock.close()


def test_a_client_that_never_reads_is_dropped_with_1013_and_the_engine_keeps_its_pace(srv: TradingServer) -> None:
    hub = srv.app.state.hub
    dropped0 = hub.dropped
    baseline = _events_per_s(srv, 2.0)
    assert baseline > 0
    slow = RawSlowClient(srv.port, srv.keys["read"])
    try:
        slow.send_text(json.dumps({"op": "subscribe", "topics": ["quotes", "orders", "fills", "pnl", "risk"]}))
        e0, t0 = srv.engine.events, time.perf_counter()
        assert poll_until(lambda: hub.dropped > dropped0, 60, 0.05), "the slow client was never dropped"
        rate = (srv.engine.events - e0) / (time.perf_counter() - t0)
        code, frames = slow.read_until_close()
    finally:
        slow.close()
    assert code == 1013, f"closed with {code} after {frames} messages"
    assert frames >= 1
    assert hub.dropped == dropped0 + 1
    assert rate > baseline / 5, f"engine {rate:.0f} events/s with the slow client vs {baseline:.0f} without"

    async def again() -> dict[str, Any]:  # the server is fine afterwards: a new client gets quotes
        async with connect(_ws_url(srv), additional_headers={"X-API-Key": srv.keys["read"]}) as ws:
            await ws.send(json.dumps({"op": "subscribe", "topics": ["quotes"]}))
            return await _next(ws, "quotes")

    assert asyncio.run(again())["topic"] == "quotes"
