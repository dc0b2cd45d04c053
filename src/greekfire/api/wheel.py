"""The wheel's web dashboard: a page, JSON endpoints and a live WebSocket over a wheel position database.

``greekfire serve wheel`` runs :func:`serve_wheel`: a server of its own over the ``WheelDB`` that a wheel
run (backtest or paper) writes, so the dashboard shows a run going on in another process and keeps
working while that process restarts. :func:`mount_wheel` adds the same routes to any FastAPI app that has an
:class:`~greekfire.api.auth.Authenticator` (the trading API server can carry them).

Routes (JSON; every ``/v1/wheel`` route needs an API key with the ``read`` scope, in ``X-API-Key`` or as a
bearer token from ``POST /token``; the page asks for the key once and keeps a token in the tab)::

    GET  /wheel                          the dashboard page (static files under /wheel/static/)
    GET  /v1/wheel/positions             open positions: shares and option legs per underlying
    GET  /v1/wheel/states                the state machine of each underlying (CASH, SHORT_PUT, SHARES, SHORT_CALL)
    GET  /v1/wheel/transitions?limit=50  the newest transitions first, each with its event and reason
    GET  /v1/wheel/equity                daily snapshots: date, equity, cash (currency)
    GET  /v1/wheel/performance           performance figures of the run (returns, drawdown, premium, P&L)
    GET  /v1/wheel/runs                  the runs the database holds
    WS   /v1/wheel/stream?token=JWT      topic ``wheel``: send {"op": "subscribe", "topics": ["wheel"]}
    POST /token, GET /health, GET /metrics (serve wheel only)

Live updates: the database is polled (every ``poll_s`` seconds, 1 by default, in a worker thread): the newest
transitions by id and the states on every poll, and positions, equity and performance when a transition
arrived or every ``full_every_s`` seconds (marks and snapshots change without a transition). A change is
one message ``{"topic": "wheel", "seq": n, "pub_ns": t, "data": {"kind": "update", "transitions": [new,
oldest first], "states": [...], "positions": [...], "equity": [rows newer than the last sent],
"performance": {...}}}``; a client that subscribes first gets ``"kind": "snapshot"`` with everything, numbered
with the ``seq`` of the last update it includes. Polling
needs nothing from the writer (any process, any version) and costs two small queries a second; a writer in
the same process may call :meth:`WheelFeed.poke` to publish at once. Back-pressure as on ``/v1/stream``: a
client whose bounded queue fills is dropped (close code 1013). Each poll also refreshes the wheel's
Prometheus gauges (:func:`greekfire.strategies.wheel.metrics.update_from_db`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from greekfire.api.auth import ApiKeyStore, Authenticator, Principal
from greekfire.api.ratelimit import RateLimiter, make_limiter, rate_limited
from greekfire.api.server import ListeningServer
from greekfire.api.streams import CLOSE_POLICY, Client, TopicHub
from greekfire.api.trading_models import clean
from greekfire.core.db import db_error_reason, masked_url, resolve_url
from greekfire.core.errors import ConfigError, UnavailableError
from greekfire.core.metrics import counter, mount_metrics
from greekfire.core.settings import Settings
from greekfire.strategies.wheel import metrics as wheel_metrics

log = logging.getLogger(__name__)

STATIC = Path(str(resources.files("greekfire.api") / "static" / "wheel"))
"""The dashboard's page, script and style sheet (package data)."""
TOPIC = "wheel"
POLL_ERRORS = counter("greekfire_wheel_dashboard_poll_errors", "wheel dashboard polls of the database that failed")


def _key(row: dict[str, Any]) -> tuple[int, int]:
    """Order of a transition row: its id where the database gives one, else its time."""
    rid = row.get("id")
    return (int(rid) if isinstance(rid, int) else 0, int(row.get("ts_ns") or 0))


class WheelFeed(TopicHub):
    """Polls a ``WheelDB`` and publishes what changed on the ``wheel`` topic (see the module docstring).

    ``db``: any object with the read side ``positions(), states(), transitions(limit), equity(),
    performance()``; ``poll_s``: seconds between polls; ``full_every_s``: seconds between full reads of
    positions, equity and performance when no transition arrived."""

    topics = (TOPIC,)

    def __init__(self, db: Any, queue_size: int, poll_s: float = 1.0, full_every_s: float = 5.0) -> None:
        super().__init__(queue_size)
        if not (math.isfinite(poll_s) and poll_s > 0):
            raise ConfigError("poll_s", poll_s, "seconds > 0")
        self.db, self.poll_s, self.full_every_s = db, poll_s, full_every_s
        self.last: dict[str, Any] = {"transitions": [], "states": [], "positions": [], "equity": [], "performance": {}}
        self._last_key: tuple[int, int] | None = None
        self._last_full = -math.inf
        self._wake = asyncio.Event()
        self.polls = 0

    # -------------------------------------------------------------- the database side
    def _read(self) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Read the database and compare with :attr:`last` without changing anything (safe in a worker
        thread while the event loop reads :attr:`last`): the message to publish (or None) and the new state
        for :meth:`_commit`."""
        last = self.last
        recent = [clean(r) for r in self.db.transitions(50)]
        states = clean(self.db.states())
        newest = max((_key(r) for r in recent), default=None)
        first = self._last_key is None
        fresh = [] if self._last_key is None else [r for r in recent if _key(r) > self._last_key]
        now = time.monotonic()
        full = first or bool(fresh) or states != last["states"] or now - self._last_full >= self.full_every_s
        new = {**last, "states": states, "transitions": recent}
        out: dict[str, Any] = {}
        if full:
            positions, equity, perf = clean(self.db.positions()), clean(self.db.equity()), clean(self.db.performance())
            if positions != last["positions"]:
                out["positions"] = positions
            if equity != last["equity"]:
                n = len(last["equity"])
                start = n if equity[:n] == last["equity"] else 0
                out["equity"], out["equity_reset"] = equity[start:], start == 0
            if perf != last["performance"]:
                out["performance"] = perf
            new.update(positions=positions, equity=equity, performance=perf)
            wheel_metrics.set_book(positions, states, equity, perf)
        if states != last["states"]:
            out["states"] = states
        if fresh:
            out["transitions"] = sorted(fresh, key=_key)
        key = self._last_key if newest is None else max(newest, self._last_key or newest)
        state = {"last": new, "key": key, "full_at": now if full else self._last_full}
        if first:
            return {**self._snapshot_of(new)}, state
        return ({"kind": "update", **out} if out else None), state

    def _commit(self, state: dict[str, Any]) -> None:
        self.last, self._last_key, self._last_full = state["last"], state["key"], state["full_at"]
        self.polls += 1

    def poll(self) -> dict[str, Any] | None:
        """Read what changed since the last poll and remember it (blocking): the message's data, or None
        when nothing changed (the first poll gives the snapshot)."""
        msg, state = self._read()
        self._commit(state)
        return msg

    def snapshot(self) -> dict[str, Any]:
        """Everything known, as the first message a new subscriber gets."""
        return self._snapshot_of(self.last)

    @staticmethod
    def _snapshot_of(last: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "snapshot", "transitions": sorted(last["transitions"], key=_key), "states": last["states"],
                "positions": last["positions"], "equity": last["equity"], "equity_reset": True,
                "performance": last["performance"]}

    # -------------------------------------------------------------- the event loop side
    def subscribe(self, client: Client, topic: str) -> None:
        """Subscribe ``client`` and queue it the current snapshot (so nothing between its page load and
        its subscription is missed)."""
        super().subscribe(client, topic)
        # the seq of the last update the snapshot includes: the topic's numbering stays the same for every
        # client, without gaps (the next update is seq + 1)
        client.offer(json.dumps({"topic": topic, "seq": self.seq[topic], "pub_ns": time.time_ns(),
                                 "data": self.snapshot()}, default=str))

    def poke(self) -> None:
        """Poll now instead of at the next tick (a writer in this process has just written)."""
        self._wake.set()

    async def run(self) -> None:
        """Poll until cancelled; a failing poll is logged and counted, and the next one tries again."""
        while True:
            try:
                data, state = await asyncio.to_thread(self._read)
            except Exception as exc:  # a database that went away: keep the server up, try again
                POLL_ERRORS.inc()
                log.warning("wheel dashboard: cannot read the wheel database: %s", exc)
            else:  # on the loop: what a new subscriber's snapshot holds and the seq move together
                self._commit(state)
                if data is not None:
                    self._fan_out(TOPIC, data)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)


def wheel_router(db: Any, feed: WheelFeed, auth: Authenticator,
                 need_read: Callable[..., Awaitable[Principal]]) -> APIRouter:
    """The dashboard's routes over ``db`` (see the module docstring); ``need_read``: the dependency that
    checks the ``read`` scope (and the rate limit)."""
    router = APIRouter()

    async def read(fn: Callable[[], Any]) -> Any:
        try:
            return clean(await asyncio.to_thread(fn))
        except Exception as exc:
            log.warning("wheel dashboard: cannot read the wheel database: %s", exc)
            raise HTTPException(503, "the wheel database is unavailable; try again later") from None

    @router.get("/wheel", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/v1/wheel/positions")
    async def positions(_: Principal = Depends(need_read)) -> Any:  # noqa: B008
        """Open positions: shares and option legs per underlying (currency amounts)."""
        return await read(db.positions)

    @router.get("/v1/wheel/states")
    async def states(_: Principal = Depends(need_read)) -> Any:  # noqa: B008
        """The state of each underlying's state machine, since when, and why."""
        return await read(db.states)

    @router.get("/v1/wheel/transitions")
    async def transitions(limit: int = Query(50, ge=1, le=1000, description="newest first"),  # noqa: B008
                          _: Principal = Depends(need_read)) -> Any:  # noqa: B008
        """The newest ``limit`` transitions, newest first."""
        return await read(lambda: db.transitions(limit))

    @router.get("/v1/wheel/equity")
    async def equity(_: Principal = Depends(need_read)) -> Any:  # noqa: B008
        """Daily snapshots: date, equity, cash (currency)."""
        return await read(db.equity)

    @router.get("/v1/wheel/performance")
    async def performance(_: Principal = Depends(need_read)) -> Any:  # noqa: B008
        """Performance figures of the run (fractions for returns and drawdown, currency for P&L)."""
        return await read(db.performance)

    @router.get("/v1/wheel/runs")
    async def runs(_: Principal = Depends(need_read)) -> Any:  # noqa: B008
        """The runs the database holds."""
        return await read(db.runs)

    @router.websocket("/v1/wheel/stream")
    async def stream(ws: WebSocket) -> None:
        """Live updates: credentials in ``X-API-Key``/``Authorization`` or ``?token=<jwt>`` (1008 when missing
        or bad); then ``{"op": "subscribe", "topics": ["wheel"]}``."""
        p = await auth.authenticate_headers(ws.headers, ws.query_params.get("token"))
        await ws.accept()
        if p is None or "read" not in p.scopes:
            await ws.close(code=CLOSE_POLICY, reason="missing or invalid credentials")
            return
        client = feed.connect(ws, p.key_id)
        try:
            await client.serve()
        finally:
            feed.disconnect(client)

    return router


def mount_wheel(app: FastAPI, db: Any, auth: Authenticator, need_read: Callable[..., Awaitable[Principal]],
                *, queue_size: int = 1000, poll_s: float = 1.0) -> WheelFeed:
    """Add the dashboard to ``app``: the routes of :func:`wheel_router` and the static files. Returns the
    feed, which the app's lifespan must run (``asyncio.create_task(feed.run())``) and close."""
    feed = WheelFeed(db, queue_size, poll_s)
    app.include_router(wheel_router(db, feed, auth, need_read))
    app.mount("/wheel/static", StaticFiles(directory=STATIC), name="wheel-static")
    return feed


def build_wheel_app(settings: Settings, db: Any, *, store: ApiKeyStore | None = None,
                    limiter: RateLimiter | None = None, poll_s: float = 1.0) -> FastAPI:
    """The ``greekfire serve wheel`` app: the dashboard over ``db`` with ``POST /token``, ``/health`` and
    ``/metrics``. ``store``: the API keys (default: on ``database.url``, the keys of ``greekfire api-key``);
    ``limiter``: the rate limiter (default :func:`~greekfire.api.ratelimit.make_limiter`)."""
    api = settings.api
    if store is None:
        store = ApiKeyStore(resolve_url(settings.database.url.get_secret_value(), settings.home),
                            echo=settings.database.echo)
    auth = Authenticator(store, api.jwt_secret.get_secret_value() if api.jwt_secret else None, api.jwt_ttl_s)
    limiter = limiter or make_limiter(settings)
    limited = rate_limited(limiter, auth)
    read = auth.require("read")

    async def need_read(p: Principal = Depends(read), _: Principal = Depends(limited)) -> Principal:  # noqa: B008
        return p

    holder: dict[str, WheelFeed] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        feed = holder["feed"]
        task = asyncio.create_task(feed.run())
        try:
            yield
        finally:
            await feed.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await limiter.close()

    app = FastAPI(title="greekfire wheel dashboard", version="1", lifespan=lifespan,
                  description="Positions, states, transitions, equity and performance of the wheel.")
    holder["feed"] = feed = mount_wheel(app, db, auth, need_read, queue_size=api.ws_queue_size, poll_s=poll_s)
    app.state.feed, app.state.auth = feed, auth
    mount_metrics(app)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/wheel")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: polls of the database so far and connected clients (no credentials needed)."""
        return {"status": "ok", "polls": feed.polls, "stream_clients": len(feed.clients)}

    @app.post("/token")
    async def token(request: Request) -> Any:
        """A bearer token (``expires_in`` seconds) for ``{"api_key": ...}``; rate limited per client address."""
        host = request.client.host if request.client else "?"
        wait = await limiter.acquire(f"token:{host}")
        if wait > 0:
            raise HTTPException(429, "too many token requests", headers={"Retry-After": str(max(1, math.ceil(wait)))})
        try:
            body = await request.json()
        except ValueError:
            body = None
        key = body.get("api_key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key:
            return JSONResponse({"detail": [{"type": "missing", "loc": ["body", "api_key"], "msg": "send {\"api_key\": ...}",
                                             "input": None}]}, status_code=422)
        return await asyncio.to_thread(auth.issue_token, key)

    return app


def open_wheel_db(url: str) -> Any:
    """The ``WheelDB`` at ``url``. ConfigError (field ``--db``) for a URL SQLAlchemy cannot use,
    UnavailableError when the database does not answer; the URL's password is masked in both."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    from greekfire.strategies.wheel.db import WheelDB

    try:
        make_url(url).get_dialect()  # a URL no dialect takes is the caller's setting, not an outage
        return WheelDB(url)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise ConfigError("--db", masked_url(url), f"a SQLAlchemy database URL ({db_error_reason(exc)})") from None
    except (SQLAlchemyError, OSError) as exc:
        raise UnavailableError(masked_url(url), db_error_reason(exc)) from None


def serve_wheel(settings: Settings, db_url: str | None = None, host: str | None = None, port: int | None = None,
                poll_s: float = 1.0) -> None:
    """Serve the wheel dashboard over the ``WheelDB`` at ``db_url`` (default ``database.url``) until stopped;
    once it listens, say where on stderr: ``greekfire serve wheel: listening on http://HOST:PORT (/wheel,
    ...)``. ``host`` defaults to ``api.host``, ``port`` to ``api.wheel_port``."""
    db = open_wheel_db(resolve_url(db_url or settings.database.url.get_secret_value(), settings.home))
    app = build_wheel_app(settings, db, poll_s=poll_s)
    config = uvicorn.Config(app, host=host or settings.api.host, port=port or settings.api.wheel_port,
                            log_level="warning")
    try:
        ListeningServer(config, name="greekfire serve wheel",
                        paths="/wheel, /v1/wheel, /v1/wheel/stream, /token, /health, /metrics").run()
    finally:
        close = getattr(db, "close", None)
        if callable(close):
            close()
