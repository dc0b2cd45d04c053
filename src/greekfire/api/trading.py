"""The trading API server: REST and WebSocket access to a running trading engine.

``greekfire serve trading`` runs :func:`serve_trading`: it builds the engine the way a paper run does
(simulated venues, or ``venues="fix"`` for the FIX venue; the strategy of ``trading.strategy``) and serves
:func:`build_app` over it with uvicorn. The engine's loop runs as a task on uvicorn's event loop (started and
stopped by the app's lifespan); every handler is ``async`` and calls the engine on that loop, so the engine
stays single-threaded.

Routes (JSON; all but ``/health``, ``/metrics``, ``/docs``, ``/openapi.json`` and ``POST /token`` need an API
key in ``X-API-Key`` or a bearer token from ``POST /token``; scopes: ``read`` for GETs, ``trade`` for orders,
``admin`` for risk limits, the kill switch and strategies)::

    POST   /token                                 {"api_key": ...} (JSON or form) -> bearer token
    POST   /v1/orders                             new order -> 201; a risk denial -> 409 {reason, values}
    GET    /v1/orders[?status=&instrument_id=&symbol=&limit=]
    GET    /v1/orders/{client_id}                 404 when unknown
    PATCH  /v1/orders/{client_id}                 amend {qty, price}
    DELETE /v1/orders/{client_id}                 cancel
    DELETE /v1/orders                             cancel every open order
    GET    /v1/positions | /v1/pnl | /v1/greeks | /v1/greeks/scenarios?spot_shocks=..&vol_shocks=..
    GET    /v1/risk                               trading state, kill switch, VaR, denials by reason
    GET|PUT /v1/risk/limits                       limits of trading.risk (PUT: the fields to change)
    POST|DELETE /v1/risk/kill                     trip / reset the kill switch
    GET    /v1/strategies; POST /v1/strategies/{name}/start|stop; GET|PUT /v1/strategies/{name}/parameters
    GET    /v1/instruments
    WS     /v1/stream                             topics quotes, orders, fills, pnl, risk (see greekfire.api.streams)

Prices are in currency (converted to the instrument's ticks exactly: a price off the tick grid is a 422).
Errors: 401 no or bad credentials, 403 missing scope, 404 unknown order or strategy, 409 a risk denial or an
order that can no longer be changed (``{"reason": CODE, "values": {...}, "message": ...}``), 422 a bad body or
query naming the field and the value, 429 over the rate limit (``Retry-After``). Every mutating call is written
to the engine's audit log (kind ``api``: key id, route, request body without secrets, answer status).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal
from urllib.parse import parse_qs

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from greekfire.api.auth import SCOPES, ApiKeyStore, Authenticator, Principal, key_id_of
from greekfire.api.ratelimit import RateLimiter, make_limiter, rate_limited
from greekfire.api.server import ListeningServer
from greekfire.api.streams import CLOSE_POLICY, StreamHub
from greekfire.api.tracing import add_request_ids
from greekfire.api.trading_control import StrategyControl
from greekfire.api.trading_models import (
    AMENDABLE,
    ERRORS,
    TIFS,
    AmendRequest,
    CancelAllOut,
    ConflictOut,
    Health,
    InstrumentOut,
    KillRequest,
    OrderOut,
    OrderRequest,
    ParametersOut,
    ParametersRequest,
    PnlOut,
    PositionOut,
    RiskLimitsPatch,
    RiskStateOut,
    ScenariosOut,
    StrategyOut,
    TokenRequest,
    TokenResponse,
    clean,
    conflict_error,
    finite_or_none,
    instrument_out,
    order_out,
    redact,
    scenarios,
    unprocessable,
)
from greekfire.core.db import resolve_url
from greekfire.core.errors import ConfigError, DataError
from greekfire.core.logging import current_trace_id
from greekfire.core.metrics import counter, mount_metrics
from greekfire.core.settings import RiskSettings, Settings
from greekfire.trading.engine import TradingEngine
from greekfire.trading.model import Instrument, OrderType, Side
from greekfire.trading.orders import Order, OrderStatus

log = logging.getLogger(__name__)

API_STRATEGY = "api"
"""Strategy id of the orders entered through the API (their fills are also on the bus as ``fills.api``)."""

REQUESTS = counter("greekfire_api_trading_requests", "trading API answers by route and status", ["route", "status"])



# ---------------------------------------------------------------------------------------------- the app
def build_app(
    settings: Settings, engine: TradingEngine, *, store: ApiKeyStore | None = None,
    limiter: RateLimiter | None = None, run_engine: bool = True,
    on_shutdown: Callable[[], None] | None = None, wheel_db: Any | None = None,
) -> FastAPI:
    """The trading API over ``engine``.

    ``store``: the API keys (default: an :class:`ApiKeyStore` on ``settings.database.url``); ``limiter``: the
    rate limiter (default :func:`~greekfire.api.ratelimit.make_limiter`: Redis when ``api.redis_url`` is set).
    With ``run_engine`` the app's lifespan runs the engine loop as a task on the server's event loop (the
    engine's strategies start with it) and stops it, with a last snapshot, at shutdown; ``on_shutdown`` runs
    after that (a FIX venue's wind-down). Without it the caller drives the engine on the same loop.
    ``wheel_db``: a wheel position database (``WheelDB``) whose dashboard this server also serves (``/wheel``,
    ``/v1/wheel/*``, ``/v1/wheel/stream``; see :mod:`greekfire.api.wheel`).
    """
    api = settings.api
    if store is None:
        store = ApiKeyStore(resolve_url(settings.database.url.get_secret_value(), settings.home),
                            echo=settings.database.echo)
    secret = api.jwt_secret.get_secret_value() if api.jwt_secret is not None else None
    auth = Authenticator(store, secret, api.jwt_ttl_s)
    limiter = limiter or make_limiter(settings)
    limited = rate_limited(limiter, auth)
    hub = StreamHub(engine, api.ws_queue_size)
    strategies = StrategyControl(engine)
    last_denial: dict[str, dict[str, Any]] = {}
    swept: dict[str, list[str]] = {}  # a swept parent's id -> its children's ids (the OMS forgets the parent)

    def note_denial(msg: Any) -> None:
        if isinstance(msg, dict) and msg.get("event") == "denied":
            last_denial.clear()  # only the newest matters: submit() reads it right after its own check
            last_denial[str(msg.get("client_id"))] = msg

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.bus.subscribe("risk", note_denial, "api")
        task: asyncio.Task[None] | None = None
        if run_engine:
            task = asyncio.create_task(engine.run(math.inf))
            task.add_done_callback(_engine_done)
        wheel_task = asyncio.create_task(wheel_feed.run()) if wheel_feed is not None else None
        try:
            yield
        finally:
            await hub.close()
            if wheel_feed is not None and wheel_task is not None:
                await wheel_feed.close()
                wheel_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await wheel_task
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            engine.bus.unsubscribe("risk", note_denial)
            await limiter.close()
            if on_shutdown is not None:
                on_shutdown()

    def _engine_done(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("the trading engine stopped: %r", t.exception())

    app = FastAPI(title="greekfire trading API", version="1", lifespan=lifespan,
                  description="Orders, positions, P&L, Greeks, risk and strategies of a running trading engine.")
    app.state.engine, app.state.hub, app.state.auth, app.state.limiter = engine, hub, auth, limiter
    app.state.strategies = strategies
    mount_metrics(app)
    add_request_ids(app)  # X-Request-ID in and out; the request's log lines carry it as trace_id

    need: dict[str, Callable[..., Awaitable[Principal]]] = {}
    for scope in SCOPES:
        req = auth.require(scope)

        async def guard(p: Principal = Depends(req), _: Principal = Depends(limited)) -> Principal:  # noqa: B008
            return p  # the scope is checked first (403), then the rate limit (429)

        need[scope] = guard

    wheel_feed = None
    if wheel_db is not None:
        from greekfire.api.wheel import mount_wheel

        wheel_feed = mount_wheel(app, wheel_db, auth, need["read"], queue_size=api.ws_queue_size)

    def audit(p: Principal, request: Request, body: Any, status: int) -> None:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        engine.audit.append(engine.clock_ns(), "api", p.key_id, {
            "key_id": p.key_id, "name": p.name, "method": request.method, "route": path,
            "path_params": dict(request.path_params), "body": clean(redact(body)), "status": status,
        })
        REQUESTS.labels(path, str(status)).inc()

    @app.exception_handler(DataError)
    async def _data_error(_: Request, exc: DataError) -> JSONResponse:
        err = {"type": "value_error", "loc": ["body", *exc.field.split(".")], "msg": exc.reason, "input": clean(exc.value)}
        return JSONResponse({"detail": [err]}, status_code=422)

    # ------------------------------------------------------------------ public
    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness: the engine's state (no credentials needed)."""
        return Health(status="ok", engine_running=engine.running, trading_state=engine.risk.state.value,
                      events=engine.events, stream_clients=len(hub.clients))

    @app.post("/token", response_model=TokenResponse, responses={
        401: ERRORS[401], 429: ERRORS[429], 422: {"description": "no api_key"}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": TokenRequest.model_json_schema()},
            "application/x-www-form-urlencoded": {"schema": TokenRequest.model_json_schema()}}}})
    async def token(request: Request) -> dict[str, Any]:
        """A bearer token (``expires_in`` seconds) for an API key sent as JSON or as a form field
        ``api_key``; rate limited per client address."""
        host = request.client.host if request.client else "?"
        wait = await limiter.acquire(f"token:{host}")
        if wait > 0:
            raise HTTPException(429, "too many token requests", headers={"Retry-After": str(max(1, math.ceil(wait)))})
        raw = await request.body()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype == "application/x-www-form-urlencoded":
                form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
                data: Any = {k: v[0] for k, v in form.items()}
            else:
                data = json.loads(raw or b"null")
        except ValueError:
            raise unprocessable("body", "body", None, "not JSON (send {\"api_key\": ...} or a form)") from None
        try:
            req = TokenRequest.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"]), "input": clean(redact(e.get("input")))}
                 for e in exc.errors(include_url=False, include_context=False)]) from None
        out = auth.issue_token(req.api_key)
        engine.audit.append(engine.clock_ns(), "api", key_id_of(req.api_key) or "?",
                            {"route": "/token", "method": "POST", "body": {"api_key": "***"}, "status": 200})
        return out

    # ------------------------------------------------------------------ orders
    def _instrument(body: OrderRequest) -> Instrument:
        if (body.instrument_id is None) == (body.symbol is None):
            raise unprocessable("body", "instrument_id", body.instrument_id, "send exactly one of instrument_id or symbol")
        if body.symbol is not None:
            inst = engine.by_symbol.get(body.symbol)
            if inst is None:
                raise unprocessable("body", "symbol", body.symbol, "unknown symbol (see GET /v1/instruments)")
            return inst
        inst = engine.instruments.get(int(body.instrument_id or 0))
        if inst is None:
            raise unprocessable("body", "instrument_id", body.instrument_id, "unknown instrument (see GET /v1/instruments)")
        return inst

    def _find(client_id: str) -> Order:
        o = engine.oms.get(client_id)
        if o is None:
            raise HTTPException(404, f"no order {client_id!r}")
        return o

    conflict: dict[int | str, dict[str, Any]] = {409: {"model": ConflictOut, "description": "a risk denial, or an order that cannot change"}}

    @app.post("/v1/orders", status_code=201, response_model=OrderOut, responses={**ERRORS, **conflict})
    async def submit(body: OrderRequest, request: Request, p: Principal = Depends(need["trade"])) -> OrderOut:  # noqa: B008
        """Risk-check, route and send a new order; 201 with the order (a sweep over venues: status SWEPT and
        the child orders), 409 ``{reason, values, message}`` when risk denies it."""
        inst = _instrument(body)
        if body.market and body.price is not None:
            raise unprocessable("body", "price", body.price, "a market order has no price")
        if not body.market and body.price is None:
            raise unprocessable("body", "price", None, "a limit order needs a price (or market: true)")
        ticks = None if body.market else inst.ticks(float(body.price or 0.0), "price")
        order = engine.new_order(inst.instrument_id, Side.BUY if body.side == "buy" else Side.SELL, body.qty, ticks,
                                 OrderType.MARKET if body.market else OrderType.LIMIT, TIFS[body.tif],
                                 strategy_id=API_STRATEGY, trace_id=current_trace_id())
        log.info("POST /v1/orders: %s %s %d %s from key %s", order.client_id, body.side, body.qty, inst.symbol,
                 p.key_id, extra={"client_id": order.client_id, "key_id": p.key_id})
        created = engine.submit(order)
        first = created[0]
        if first.status == OrderStatus.DENIED:
            d = last_denial.pop(order.client_id, None) or {}
            audit(p, request, body.model_dump(), 409)
            raise conflict_error(first.reason, d.get("values", {}), d.get("message", f"denied: {first.reason}"))
        audit(p, request, body.model_dump(), 201)
        if len(created) == 1 and first is order:
            return order_out(engine, order)
        swept[order.client_id] = [c.client_id for c in created]
        return order_out(engine, order, status="SWEPT", children=created)

    @app.get("/v1/orders", response_model=list[OrderOut], responses=ERRORS)
    async def list_orders(
        status: OrderStatus | Literal["open"] | None = Query(None, description="a status, or `open`"),  # noqa: B008
        instrument_id: int | None = Query(None, ge=0, le=2**31),  # noqa: B008
        symbol: str | None = Query(None, max_length=64),  # noqa: B008
        strategy_id: str | None = Query(None, max_length=64, description="e.g. api, market_maker"),  # noqa: B008
        limit: int = Query(100, ge=1, le=10_000, description="newest first"),  # noqa: B008
        _: Principal = Depends(need["read"]),  # noqa: B008
    ) -> list[OrderOut]:
        """Orders the engine knows (open and recent), newest first, optionally filtered."""
        iid = instrument_id
        if symbol is not None:
            inst = engine.by_symbol.get(symbol)
            if inst is None:
                raise unprocessable("query", "symbol", symbol, "unknown symbol (see GET /v1/instruments)")
            iid = inst.instrument_id
        out: list[OrderOut] = []
        for o in reversed(engine.oms.orders.values()):
            if iid is not None and o.instrument_id != iid:
                continue
            if strategy_id is not None and o.strategy_id != strategy_id:
                continue
            if status == "open":
                if not o.is_open:
                    continue
            elif status is not None and o.status != status:
                continue
            out.append(order_out(engine, o))
            if len(out) >= limit:
                break
        return out

    @app.get("/v1/orders/{client_id:path}", response_model=OrderOut,
             responses={**ERRORS, 404: {"description": "unknown order"}})
    async def get_order(client_id: str = Path(max_length=200), _: Principal = Depends(need["read"])) -> OrderOut:  # noqa: B008
        """One order by client id (a swept parent: status SWEPT with its children)."""
        if client_id in swept:
            kids = [c for c in (engine.oms.get(k) for k in swept[client_id]) if c is not None]
            parent = Order(client_id, kids[0].instrument_id, kids[0].side, sum(k.qty for k in kids),
                           kids[0].price_ticks, kids[0].ord_type, kids[0].tif, strategy_id=kids[0].strategy_id) \
                if kids else None
            if parent is not None:
                return order_out(engine, parent, status="SWEPT", children=kids)
        return order_out(engine, _find(client_id))

    @app.patch("/v1/orders/{client_id:path}", response_model=OrderOut,
               responses={**ERRORS, **conflict, 404: {"description": "unknown order"}})
    async def amend(body: AmendRequest, request: Request, client_id: str = Path(max_length=200),
                    p: Principal = Depends(need["trade"])) -> OrderOut:  # noqa: B008
        """Amend a working order's total quantity and/or limit price (risk-checked); 409 when denied or when
        the order is no longer working (closed, or a cancel/replace pending)."""
        o = _find(client_id)
        if body.qty is None and body.price is None:
            raise unprocessable("body", "qty", None, "send qty and/or price")
        inst = engine.instruments[o.instrument_id]
        ticks = o.price_ticks if body.price is None else inst.ticks(body.price, "price")
        if ticks is None:
            raise unprocessable("body", "price", None, "a market order has no price to keep: send one")
        qty = o.qty if body.qty is None else body.qty
        if o.status not in AMENDABLE:
            audit(p, request, body.model_dump(), 409)
            raise conflict_error("NOT_AMENDABLE", {"status": o.status.value}, f"order {client_id} is {o.status.value}")
        denial = engine.amend(client_id, qty, ticks)
        if denial is not None:
            audit(p, request, body.model_dump(), 409)
            raise conflict_error(denial.reason.value, denial.values, denial.message)
        audit(p, request, body.model_dump(), 200)
        return order_out(engine, o)

    @app.delete("/v1/orders/{client_id:path}", response_model=OrderOut,
                responses={**ERRORS, **conflict, 404: {"description": "unknown order"}})
    async def cancel(request: Request, client_id: str = Path(max_length=200),
                     p: Principal = Depends(need["trade"])) -> OrderOut:  # noqa: B008
        """Request a cancel (the order goes PENDING_CANCEL, then CANCELED when the venue confirms); 409 when
        the order is already closed."""
        o = _find(client_id)
        if not engine.cancel(client_id):
            audit(p, request, None, 409)
            raise conflict_error("NOT_CANCELABLE", {"status": o.status.value}, f"order {client_id} is {o.status.value}")
        audit(p, request, None, 200)
        return order_out(engine, o)

    @app.delete("/v1/orders", response_model=CancelAllOut, responses=ERRORS)
    async def cancel_all(
        request: Request, instrument_id: int | None = Query(None, ge=0, le=2**31),  # noqa: B008
        strategy_id: str | None = Query(None, max_length=64),  # noqa: B008
        p: Principal = Depends(need["trade"]),  # noqa: B008
    ) -> CancelAllOut:
        """Cancel every open order (optionally one instrument's or one strategy's)."""
        n = engine.cancel_all(strategy_id, instrument_id)
        audit(p, request, {"instrument_id": instrument_id, "strategy_id": strategy_id}, 200)
        return CancelAllOut(canceled=n)

    # ------------------------------------------------------------------ book
    @app.get("/v1/positions", response_model=list[PositionOut], responses=ERRORS)
    async def positions(_: Principal = Depends(need["read"])) -> list[PositionOut]:  # noqa: B008
        """Open positions (and closed ones with realized P&L), currency amounts."""
        pf = engine.portfolio
        out = []
        for iid, pos in pf.positions.items():
            inst = engine.instruments[iid]
            mark = pf.marks.get(iid)
            out.append(PositionOut(
                instrument_id=iid, symbol=inst.symbol, qty=pos.qty, avg_cost=finite_or_none(pos.avg_cost), mark=finite_or_none(mark),
                realized_pnl=finite_or_none(pos.realized_pnl),
                unrealized_pnl=finite_or_none(pos.unrealized(mark if mark is not None else pos.avg_cost, inst.multiplier)),
                fees=finite_or_none(pos.fees), fill_count=pos.fill_count))
        return out

    @app.get("/v1/pnl", response_model=PnlOut, responses=ERRORS)
    async def pnl(_: Principal = Depends(need["read"])) -> PnlOut:  # noqa: B008
        """P&L since the start, cash and equity (currency)."""
        pf = engine.portfolio
        return PnlOut(**{k: finite_or_none(v) for k, v in pf.pnl().items()}, cash=finite_or_none(pf.cash), equity=finite_or_none(pf.equity()),
                      starting_cash=finite_or_none(pf.starting_cash))

    @app.get("/v1/greeks", response_model=dict[str, dict[str, float | None]], responses=ERRORS)
    async def greeks(_: Principal = Depends(need["read"])) -> Any:  # noqa: B008
        """Greek totals per underlying (delta in shares, gamma per 1.00 spot, vega per 1.00 vol, theta per
        year, delta_cash and gamma_cash in currency) and a TOTAL row of the cash forms."""
        return clean(engine.portfolio.greeks())

    @app.get("/v1/greeks/scenarios", response_model=ScenariosOut, responses=ERRORS)
    async def greek_scenarios(
        spot_shocks: list[float] = Query([-0.1, -0.05, 0.0, 0.05, 0.1], description="relative, -0.99..1"),  # noqa: B008
        vol_shocks: list[float] = Query([-0.05, 0.0, 0.05], description="absolute vol points, -1..1"),  # noqa: B008
        _: Principal = Depends(need["read"]),  # noqa: B008
    ) -> Any:
        """P&L of the book, fully revalued, over a spot x vol shock grid (at most 41 x 41)."""
        for name, vals, lo, hi in (("spot_shocks", spot_shocks, -0.99, 1.0), ("vol_shocks", vol_shocks, -1.0, 1.0)):
            if not 1 <= len(vals) <= 41:
                raise unprocessable("query", name, len(vals), "between 1 and 41 values")
            for v in vals:
                if not (math.isfinite(v) and lo <= v <= hi):
                    raise unprocessable("query", name, v, f"each value finite, {lo} to {hi}")
        return scenarios(engine, spot_shocks, vol_shocks)

    @app.get("/v1/instruments", response_model=list[InstrumentOut], responses=ERRORS)
    async def instruments(_: Principal = Depends(need["read"])) -> list[InstrumentOut]:  # noqa: B008
        """Every tradable instrument with its last quote and mark (currency)."""
        return [instrument_out(engine, i) for i in engine.instruments.values()]

    # ------------------------------------------------------------------ risk
    @app.get("/v1/risk", response_model=RiskStateOut, responses=ERRORS)
    async def risk_state(_: Principal = Depends(need["read"])) -> RiskStateOut:  # noqa: B008
        """Trading state, the kill switch, 1-day VaR (currency) and denials by reason so far."""
        r = engine.risk
        return RiskStateOut(trading_state=r.state.value, killed=r.killed, kill_reason=r.kill_reason,
                            var_1d=finite_or_none(r.var), denials=dict(r.denials))

    @app.get("/v1/risk/limits", response_model=RiskSettings, responses=ERRORS)
    async def get_limits(_: Principal = Depends(need["admin"])) -> RiskSettings:  # noqa: B008
        """The risk limits in force (units as in the settings: trading.risk)."""
        return engine.risk.limits

    @app.put("/v1/risk/limits", response_model=RiskSettings, responses={**ERRORS, 422: {"description": "bad value"}})
    async def put_limits(body: RiskLimitsPatch, request: Request,  # type: ignore[valid-type]
                         p: Principal = Depends(need["admin"])) -> RiskSettings:  # noqa: B008
        """Change some limits at once (all or none): only the fields sent change; a bad value is a 422 naming
        the field and the value."""
        changes = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}  # type: ignore[attr-defined]
        for k, v in changes.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise unprocessable("body", k, v, "must be finite")
        try:
            RiskSettings.model_validate({**engine.risk.limits.model_dump(), **changes})
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
            ) from None
        try:
            engine.risk.set_limits(**changes)
        except ConfigError as exc:
            raise unprocessable("body", exc.field.rsplit(".", 1)[-1], exc.value, exc.allowed) from None
        audit(p, request, changes, 200)
        return engine.risk.limits

    @app.post("/v1/risk/kill", response_model=RiskStateOut, responses=ERRORS)
    async def kill(request: Request, body: KillRequest | None = None,
                   p: Principal = Depends(need["admin"])) -> RiskStateOut:  # noqa: B008
        """Trip the kill switch: HALTED, every open order canceled, new orders denied (KILL_SWITCH/HALTED)."""
        reason = (body.reason if body else "api")
        engine.kill(f"api: {reason}")
        audit(p, request, body.model_dump() if body else None, 200)
        return await risk_state(p)

    @app.delete("/v1/risk/kill", response_model=RiskStateOut, responses=ERRORS)
    async def reset_kill(request: Request, p: Principal = Depends(need["admin"])) -> RiskStateOut:  # noqa: B008
        """Reset the kill switch: trading ACTIVE again."""
        engine.reset_kill()
        audit(p, request, None, 200)
        return await risk_state(p)

    # ------------------------------------------------------------------ strategies
    not_found: dict[int | str, dict[str, Any]] = {404: {"description": "unknown strategy"}}

    @app.get("/v1/strategies", response_model=list[StrategyOut], responses=ERRORS)
    async def list_strategies(_: Principal = Depends(need["read"])) -> list[dict[str, Any]]:  # noqa: B008
        """The engine's strategies, whether each runs, and their parameters."""
        return [strategies.describe(s) for s in engine.strategies]

    @app.post("/v1/strategies/{name}/start", response_model=StrategyOut, responses={**ERRORS, **not_found})
    async def start_strategy(request: Request, name: str = Path(max_length=100),
                             p: Principal = Depends(need["admin"])) -> dict[str, Any]:  # noqa: B008
        """Start a stopped strategy (a fresh instance with its current parameters)."""
        out = strategies.start(name)
        audit(p, request, None, 200)
        return out

    @app.post("/v1/strategies/{name}/stop", response_model=StrategyOut, responses={**ERRORS, **not_found})
    async def stop_strategy(request: Request, name: str = Path(max_length=100),
                            p: Principal = Depends(need["admin"])) -> dict[str, Any]:  # noqa: B008
        """Stop a strategy: it hears nothing more, its timers and open orders are canceled."""
        out = strategies.stop(name)
        audit(p, request, None, 200)
        return out

    @app.get("/v1/strategies/{name}/parameters", response_model=ParametersOut, responses={**ERRORS, **not_found})
    async def get_parameters(name: str = Path(max_length=100), _: Principal = Depends(need["read"])) -> dict[str, Any]:  # noqa: B008
        """A strategy's parameters (its public scalar attributes)."""
        return {"name": name, "parameters": strategies.parameters(strategies.get(name))}

    @app.put("/v1/strategies/{name}/parameters", response_model=ParametersOut,
             responses={**ERRORS, **not_found, 422: {"description": "unknown parameter or bad value"}})
    async def put_parameters(body: ParametersRequest, request: Request, name: str = Path(max_length=100),
                             p: Principal = Depends(need["admin"])) -> dict[str, Any]:  # noqa: B008
        """Change parameters of a strategy (checked by its constructor; they apply from its next decision)."""
        out = strategies.set_parameters(name, body.parameters)
        audit(p, request, body.model_dump(), 200)
        return out

    # ------------------------------------------------------------------ stream
    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        """Push topics to a client: credentials in ``X-API-Key``/``Authorization`` or ``?token=<jwt>`` (1008
        when missing or bad); then ``{"op": "subscribe"|"unsubscribe", "topics": [...]}``."""
        p = auth.principal_from_headers(ws.headers, ws.query_params.get("token"))
        await ws.accept()
        if p is None or "read" not in p.scopes:
            await ws.close(code=CLOSE_POLICY, reason="missing or invalid credentials")
            return
        client = hub.connect(ws, p.key_id)
        try:
            await client.serve()
        finally:
            hub.disconnect(client)

    return app


# ---------------------------------------------------------------------------------------------- serve
def build_trading_engine(settings: Settings, venues: int | str | None = None) -> tuple[TradingEngine, Any]:
    """The engine ``serve_trading`` runs: ``venues`` simulated venues (default ``trading.venues``) with their
    synthetic market, or ``"fix"`` for the FIX venue of ``fix.host:fix.port``; the strategy of
    ``trading.strategy`` (``none`` or empty: no strategy); its state kept in ``database.url`` under the engine id
    ``serve`` and resumed at start. Returns the engine and the FIX venue (None for simulated venues)."""
    from greekfire.strategies import load_strategy
    from greekfire.strategies.paper import engine_on_venues
    from greekfire.trading.store import SnapshotStore

    name = (settings.trading.strategy or "").strip()
    strats = [] if name.lower() in ("", "none") else [load_strategy(name)]
    store = SnapshotStore(resolve_url(settings.database.url.get_secret_value(), settings.home), "serve",
                          echo=settings.database.echo)
    engine, fix_venue = engine_on_venues(settings, strats, store, venues, engine_id="serve")
    return engine, fix_venue


def serve_trading(settings: Settings, host: str | None = None, port: int | None = None,
                  venues: int | str | None = None, wheel_db_url: str | None = None) -> None:
    """Build the engine (:func:`build_trading_engine`) and serve the trading API over it with uvicorn until
    stopped; once it listens, say where on stderr: ``greekfire serve trading: listening on http://HOST:PORT
    (/v1, /v1/stream, /token, /health, /metrics, /docs)``. ``host`` defaults to ``api.host``, ``port`` to
    ``api.trading_port``. On a FIX venue, shutdown cancels what is open there first. With ``wheel_db_url`` the
    server also serves the wheel dashboard over that wheel position database."""
    engine, fix_venue = build_trading_engine(settings, venues)
    wheel_db = None
    if wheel_db_url:
        from greekfire.api.wheel import open_wheel_db

        wheel_db = open_wheel_db(resolve_url(wheel_db_url, settings.home))

    def shutdown() -> None:
        if fix_venue is not None:
            from greekfire.strategies.paper import wind_down

            try:
                wind_down(engine, fix_venue)
            finally:
                fix_venue.stop()
        if engine.store is not None:
            engine.store.close()
        if wheel_db is not None and callable(getattr(wheel_db, "close", None)):
            wheel_db.close()

    app = build_app(settings, engine, on_shutdown=shutdown, wheel_db=wheel_db)
    config = uvicorn.Config(app, host=host or settings.api.host, port=port or settings.api.trading_port,
                            log_level="warning")
    ListeningServer(config, name="greekfire serve trading",
                    paths="/v1, /v1/stream, /token, /health, /metrics, /docs" + (", /wheel" if wheel_db else "")).run()

