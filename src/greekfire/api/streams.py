"""WebSocket topics of the trading API (``/v1/stream``) and their back-pressure.

A :class:`StreamHub` hears the engine's bus and fans messages out to the connected clients. Topics a client
may subscribe to, and the bus topics behind them:

    quotes  <- quotes.<symbol>   top of book of every instrument
    orders  <- orders            every order state change
    fills   <- fills             every fill
    pnl     <- portfolio         P&L, cash, equity, Greeks and VaR, at most ``PNL_MAX_HZ`` times a second
    risk    <- risk              denials, kill switch, breaches

Each message is ``{"topic": ..., "seq": n, "pub_ns": t, "data": {...}}``: ``seq`` counts the topic's messages
(1, 2, ...; the same number for every client), ``pub_ns`` is the wall clock (ns since the epoch) when the
engine published it. A message is encoded once and put on every subscribed client's queue.

Back-pressure: each client has a bounded :class:`asyncio.Queue` (``api.ws_queue_size`` messages). The bus
handlers only ``put_nowait`` (they run inside the engine's dispatch: they never await and never block it);
a client whose queue is full is dropped at once (its messages are discarded, the connection is closed with
code 1013, "try again later") and counted in ``greekfire_api_ws_dropped``. The hub subscribes a bus topic only
while some client wants it, so an engine without clients does not build messages nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from greekfire.core.metrics import counter, gauge
from greekfire.trading.engine import TradingEngine
from greekfire.trading.model import Fill, OrderEvent, Quote

log = logging.getLogger(__name__)

TOPICS = ("quotes", "orders", "fills", "pnl", "risk")
BUS_TOPIC = {"quotes": "quotes.*", "orders": "orders", "fills": "fills", "pnl": "portfolio", "risk": "risk"}
PNL_MAX_HZ = 10.0
CLOSE_POLICY = 1008  # policy violation: no or bad credentials
CLOSE_TRY_AGAIN = 1013  # try again later: the client fell too far behind

WS_CLIENTS = gauge("greekfire_api_ws_clients", "WebSocket clients connected to the trading API")
WS_SENT = counter("greekfire_api_ws_messages", "messages queued to WebSocket clients", ["topic"])
WS_DROPPED = counter("greekfire_api_ws_dropped", "WebSocket clients dropped because their queue was full")


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None  # NaN marks an empty side; JSON has no NaN


class Client:
    """One connected WebSocket: its topics, its bounded queue and the task that sends from it."""

    def __init__(self, hub: TopicHub, ws: WebSocket, queue_size: int, key_id: str) -> None:
        self.hub, self.ws, self.key_id = hub, ws, key_id
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.topics: set[str] = set()
        self.dropped = False
        self.sent = 0
        self._sender: asyncio.Task[None] | None = None

    def offer(self, text: str) -> None:
        """Queue one encoded message without waiting; a full queue drops the client (never blocks)."""
        if self.dropped:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.hub.drop(self)

    async def _send_loop(self) -> None:
        q, ws = self.queue, self.ws
        while True:
            text = await q.get()
            await ws.send_text(text)
            self.sent += 1

    async def serve(self) -> None:
        """Send queued messages and answer the client's ops until it goes (or is dropped)."""
        self._sender = asyncio.create_task(self._send_loop())
        try:
            while True:
                try:
                    raw = await self.ws.receive_text()
                except (WebSocketDisconnect, RuntimeError, KeyError):
                    return  # gone, or a binary frame (KeyError: no "text") after a drop
                self._op(raw)
        finally:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sender

    def _op(self, raw: str) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            self.reply_error("body", raw[:200], "not JSON")
            return
        if not isinstance(msg, dict):
            self.reply_error("body", msg, "a JSON object {op, topics}")
            return
        op, topics = msg.get("op"), msg.get("topics", [])
        if op not in ("subscribe", "unsubscribe"):
            self.reply_error("op", op, "subscribe or unsubscribe")
            return
        known = self.hub.topics
        if not isinstance(topics, list) or not topics:
            self.reply_error("topics", topics, f"a non-empty list of {', '.join(known)}")
            return
        bad = [t for t in topics if t not in known]
        if bad:
            self.reply_error("topics", bad[0], f"one of {', '.join(known)}")
            return
        for t in topics:
            (self.hub.subscribe if op == "subscribe" else self.hub.unsubscribe)(self, t)
        self.offer(json.dumps({"topic": "subscribed", "seq": 0, "pub_ns": time.time_ns(),
                               "data": {"topics": sorted(self.topics)}}))

    def reply_error(self, field: str, value: Any, msg: str) -> None:
        """Tell the client what was wrong with its last message (it stays connected)."""
        self.offer(json.dumps({"topic": "error", "seq": 0, "pub_ns": time.time_ns(),
                               "data": {"field": field, "value": value, "detail": msg}}, default=str))

    async def close(self, code: int) -> None:
        """Close the connection with ``code`` (errors of a connection already gone are ignored)."""
        if self._sender is not None:
            self._sender.cancel()
        with contextlib.suppress(Exception):
            if self.ws.application_state != WebSocketState.DISCONNECTED:
                await self.ws.close(code=code)


class TopicHub:
    """Clients of a set of WebSocket ``topics``, their bounded queues and the topics' sequence numbers: the
    part every greekfire stream shares. Runs on one event loop (no locks). A subclass publishes with
    :meth:`_fan_out` and may start and stop its source in :meth:`_first_subscriber` / :meth:`_last_unsubscribed`."""

    topics: tuple[str, ...] = ()

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.clients: set[Client] = set()
        self.subscribers: dict[str, set[Client]] = {t: set() for t in self.topics}
        self.seq: dict[str, int] = dict.fromkeys(self.topics, 0)
        self.dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- clients
    def connect(self, ws: WebSocket, key_id: str) -> Client:
        """Register an accepted WebSocket (subscribed to nothing yet)."""
        c = Client(self, ws, self.queue_size, key_id)
        self.clients.add(c)
        WS_CLIENTS.set(len(self.clients))
        return c

    def disconnect(self, client: Client) -> None:
        """Forget a client (its subscriptions go; a topic nobody wants is stopped)."""
        for t in list(client.topics):
            self.unsubscribe(client, t)
        self.clients.discard(client)
        WS_CLIENTS.set(len(self.clients))

    def subscribe(self, client: Client, topic: str) -> None:
        """Send ``topic`` to ``client`` from now on."""
        subs = self.subscribers[topic]
        if not subs:
            self._first_subscriber(topic)
        subs.add(client)
        client.topics.add(topic)

    def unsubscribe(self, client: Client, topic: str) -> None:
        """Stop sending ``topic`` to ``client``."""
        subs = self.subscribers[topic]
        if client in subs:
            subs.discard(client)
            if not subs:
                self._last_unsubscribed(topic)
        client.topics.discard(topic)

    def _first_subscriber(self, topic: str) -> None:
        """``topic`` has its first subscriber (start building its messages)."""

    def _last_unsubscribed(self, topic: str) -> None:
        """``topic`` has no subscriber left (stop building its messages)."""

    def drop(self, client: Client) -> None:
        """A client whose queue is full: stop queuing to it, discard its backlog, close it with 1013 (the
        close runs as its own task: this is called inside a bus dispatch, which must not wait)."""
        if client.dropped:
            return
        client.dropped = True
        self.dropped += 1
        WS_DROPPED.inc()
        for t in list(client.topics):
            self.unsubscribe(client, t)
        q = client.queue
        while not q.empty():
            q.get_nowait()
        log.warning("WebSocket client of key %s dropped: %d messages behind", client.key_id, self.queue_size)
        task = asyncio.get_running_loop().create_task(client.close(CLOSE_TRY_AGAIN))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Close every client (server shutdown)."""
        for c in list(self.clients):
            await c.close(1001)
            self.disconnect(c)

    def _fan_out(self, topic: str, data: dict[str, Any]) -> None:
        """Encode one message of ``topic`` once and queue it to every subscriber (never waits)."""
        subs = self.subscribers[topic]
        if not subs:
            return
        self.seq[topic] = n = self.seq[topic] + 1
        text = json.dumps({"topic": topic, "seq": n, "pub_ns": time.time_ns(), "data": data}, default=str)
        for c in tuple(subs):  # a copy: a full queue drops its client from ``subs`` while we go
            c.offer(text)
        WS_SENT.labels(topic).inc(len(subs))


class StreamHub(TopicHub):
    """Engine bus -> WebSocket clients. Runs on the engine's event loop (no locks: one thread)."""

    topics = TOPICS

    def __init__(self, engine: TradingEngine, queue_size: int) -> None:
        super().__init__(queue_size)
        self.engine = engine
        self._symbols = {i: inst.symbol for i, inst in engine.instruments.items()}
        self._handlers: dict[str, Callable[[Any], None]] = {
            "quotes": self._on_quote, "orders": self._on_order, "fills": self._on_fill,
            "pnl": self._on_portfolio, "risk": self._on_risk,
        }
        self._pnl_every_ns = int(1e9 / PNL_MAX_HZ)
        self._pnl_last_ns = 0

    def _first_subscriber(self, topic: str) -> None:
        self.engine.bus.subscribe(BUS_TOPIC[topic], self._handlers[topic], "api:stream")

    def _last_unsubscribed(self, topic: str) -> None:
        self.engine.bus.unsubscribe(BUS_TOPIC[topic], self._handlers[topic])

    # ---------------------------------------------------------------- bus -> clients
    def _on_quote(self, q: Quote) -> None:
        self._fan_out("quotes", {
            "instrument_id": q.instrument_id, "symbol": self._symbols.get(q.instrument_id), "bid": _num(q.bid),
            "ask": _num(q.ask), "bid_size": q.bid_size, "ask_size": q.ask_size, "ts_ns": q.ts_ns, "venue": q.venue,
        })

    def _on_order(self, ev: OrderEvent) -> None:
        self._fan_out("orders", {"client_id": ev.client_id, "old": ev.old, "new": ev.new, "audit_seq": ev.seq,
                                 "ts_ns": ev.ts_ns, "info": ev.info})

    def _on_fill(self, f: Fill) -> None:
        self._fan_out("fills", {
            "fill_id": f.fill_id, "client_id": f.client_id, "instrument_id": f.instrument_id,
            "symbol": self._symbols.get(f.instrument_id), "side": "buy" if f.side > 0 else "sell", "qty": f.qty,
            "price": f.price, "fee": f.fee, "liquidity": f.liquidity, "venue": f.venue, "ts_ns": f.ts_ns,
            "strategy_id": f.strategy_id,
        })

    def _on_portfolio(self, msg: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        if now - self._pnl_last_ns < self._pnl_every_ns:
            return
        self._pnl_last_ns = now
        pf = self.engine.portfolio
        self._fan_out("pnl", {**pf.pnl(), "cash": pf.cash, "equity": pf.equity(), "var": msg.get("var"),
                              "greeks": msg.get("greeks")})

    def _on_risk(self, msg: dict[str, Any]) -> None:
        self._fan_out("risk", dict(msg))
