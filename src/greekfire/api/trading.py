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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal, Optional
from urllib.parse import parse_qs

import torch
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from greekfire.api.auth import SCOPES, ApiKeyStore, Authenticator, Principal
from greekfire.api.ratelimit import RateLimiter, make_limiter, rate_limited
from greekfire.api.server import ListeningServer
from greekfire.api.streams import CLOSE_POLICY, StreamHub
from greekfire.core.db import resolve_url
from greekfire.core.errors import ConfigError, DataError
from greekfire.core.metrics import counter, mount_metrics
from greekfire.core.settings import RiskSettings, Settings
from greekfire.quant import scenario_grid
from greekfire.trading.engine import TradingEngine
from greekfire.trading.model import Instrument, OrderType, Side, TimeInForce
from greekfire.trading.orders import TRANSITIONS, Order, OrderStatus
from greekfire.trading.strategy import Strategy

log = logging.getLogger(__name__)

API_STRATEGY = "api"
"""Strategy id of the orders entered through the API (their fills are also on the bus as ``fills.api``)."""

REQUESTS = counter("greekfire_api_trading_requests", "trading API answers by route and status", ["route", "status"])

_SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password", "authorization")
_AMENDABLE = frozenset(s for s, nxt in TRANSITIONS.items() if OrderStatus.PENDING_REPLACE in nxt)
_TIFS = {"GTC": TimeInForce.GTC, "DAY": TimeInForce.DAY, "IOC": TimeInForce.IOC, "FOK": TimeInForce.FOK}
_MAX_QTY = 1_000_000_000


# ---------------------------------------------------------------------------------------------- helpers
def _clean(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN), tuples lists, enums their value."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [_clean(v) for v in x]
    if isinstance(x, bool | int | str) or x is None:
        return x
    return str(x)


def _redact(x: Any) -> Any:
    """A copy of a request body with every secret-looking field replaced by ``"***"``."""
    if isinstance(x, dict):
        return {k: ("***" if any(w in str(k).lower() for w in _SECRET_WORDS) else _redact(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [_redact(v) for v in x]
    return x


def _unprocessable(where: str, field: str, value: Any, msg: str) -> RequestValidationError:
    """A 422 like FastAPI's own, naming ``where`` (body, query, path), the field and the value."""
    return RequestValidationError([{"type": "value_error", "loc": (where, *field.split(".")), "msg": msg,
                                    "input": _clean(value)}])


def _conflict(reason: str, values: dict[str, Any], message: str) -> HTTPException:
    return HTTPException(409, {"reason": reason, "values": _clean(values), "message": message})


def _fnum(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# ---------------------------------------------------------------------------------------------- models
class Health(BaseModel):
    status: str = Field(description="ok")
    engine_running: bool
    trading_state: str = Field(description="ACTIVE, REDUCING or HALTED")
    events: int = Field(description="events the engine has handled")
    stream_clients: int = Field(description="WebSocket clients connected")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"api_key": "gfk_1a2b3c_..."}]})
    api_key: str = Field(min_length=1, max_length=512, description="an API key (gfk_<key id>_<secret>)")


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = Field(description="bearer")
    expires_in: int = Field(description="seconds")


class OrderRequest(BaseModel):
    """A new order. ``instrument_id`` or ``symbol``; a limit ``price`` in currency (on the tick grid), or
    ``market: true`` for a market order."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"symbol": "GFX", "side": "buy", "qty": 10, "price": 100.05, "tif": "GTC"},
        {"instrument_id": 4, "side": "sell", "qty": 1, "market": True, "tif": "IOC"},
    ]})
    instrument_id: int | None = Field(None, ge=0, le=2**31, description="see GET /v1/instruments")
    symbol: str | None = Field(None, min_length=1, max_length=64, description="instead of instrument_id")
    side: Literal["buy", "sell"]
    qty: int = Field(gt=0, le=_MAX_QTY, description="contracts or shares (a multiple of the lot size)")
    price: float | None = Field(None, gt=0, allow_inf_nan=False, description="limit price, currency")
    market: bool = Field(False, description="a market order (no price)")
    tif: Literal["GTC", "DAY", "IOC", "FOK"] = Field("GTC", description="time in force")


class AmendRequest(BaseModel):
    """New total quantity and/or limit price (currency) of a working order."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"qty": 20, "price": 100.1}]})
    qty: int | None = Field(None, gt=0, le=_MAX_QTY, description="new total quantity")
    price: float | None = Field(None, gt=0, allow_inf_nan=False, description="new limit price, currency")


class OrderOut(BaseModel):
    """An order as the engine holds it (prices in currency)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "client_id": "serve.1.7", "instrument_id": 1, "symbol": "GFX", "side": "buy", "qty": 10, "price": 100.05,
        "ord_type": "LIMIT", "tif": "GTC", "status": "ACCEPTED", "filled_qty": 0, "leaves_qty": 10, "avg_px": 0.0,
        "fees": 0.0, "venue": "SIM1", "strategy_id": "api", "parent_id": "", "reason": "", "ts_init_ns": 0,
        "ts_last_ns": 0, "children": []}]})
    client_id: str
    instrument_id: int
    symbol: str | None
    side: Literal["buy", "sell"]
    qty: int
    price: float | None = Field(description="limit, currency (None: market)")
    ord_type: str
    tif: str
    status: str = Field(description="an order status; SWEPT: the order was split into `children` over venues")
    filled_qty: int
    leaves_qty: int
    avg_px: float | None = Field(description="average fill price, currency")
    fees: float | None = Field(description="currency, negative is a rebate")
    venue: str
    strategy_id: str
    parent_id: str
    reason: str
    ts_init_ns: int
    ts_last_ns: int
    children: list[OrderOut] = Field(default_factory=list, description="orders a sweep sent in this one's place")


class DenialOut(BaseModel):
    reason: str = Field(description="a risk reason code (greekfire.trading.denials.Reason), or NOT_AMENDABLE, "
                                    "NOT_CANCELABLE, NO_CHANGE")
    values: dict[str, Any]
    message: str


class ConflictOut(BaseModel):
    detail: DenialOut


class CancelAllOut(BaseModel):
    canceled: int = Field(description="cancel requests sent")


class PositionOut(BaseModel):
    instrument_id: int
    symbol: str
    qty: int
    avg_cost: float | None = Field(description="currency per unit")
    mark: float | None = Field(description="currency per unit")
    realized_pnl: float | None
    unrealized_pnl: float | None
    fees: float | None
    fill_count: int


class PnlOut(BaseModel):
    realized: float | None
    unrealized: float | None
    fees: float | None
    total: float | None = Field(description="realized + unrealized - fees, currency")
    cash: float | None
    equity: float | None
    starting_cash: float | None


class ScenariosOut(BaseModel):
    spot_shocks: list[float] = Field(description="relative spot moves (0.05 = +5%)")
    vol_shocks: list[float] = Field(description="absolute vol moves (0.02 = +2 vol points)")
    pnl: dict[str, list[list[float | None]]] = Field(description="per underlying [spot][vol] P&L, currency")
    total: list[list[float | None]]


class RiskStateOut(BaseModel):
    trading_state: str
    killed: bool
    kill_reason: str
    var_1d: float | None
    denials: dict[str, int]


class KillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "desk halt"}]})
    reason: str = Field("api", min_length=1, max_length=200)


class StrategyOut(BaseModel):
    name: str
    cls: str = Field(description="module:Class")
    running: bool
    parameters: dict[str, Any]


class ParametersRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"parameters": {"half_width_ticks": 6}}]})
    parameters: dict[str, Any] = Field(description="parameter -> new value (see GET .../parameters)")


class ParametersOut(BaseModel):
    name: str
    parameters: dict[str, Any]


class InstrumentOut(BaseModel):
    instrument_id: int
    symbol: str
    kind: Literal["equity", "option"]
    underlying: str
    strike: float | None
    expiry: str | None = Field(description="ISO 8601, UTC")
    right: Literal["C", "P"] | None
    multiplier: float
    tick_size: float
    lot_size: int
    bid: float | None
    ask: float | None
    mark: float | None


_RISK_FIELDS = RiskSettings.model_fields
_OPTIONAL_LIMITS: dict[str, Any] = {k: (Optional[f.annotation], Field(None, description=f.description))  # noqa: UP045
                                    for k, f in _RISK_FIELDS.items()}
RiskLimitsPatch = create_model(  # type: ignore[call-overload]  # every limit optional: a PUT names only what changes
    "RiskLimitsPatch", __config__=ConfigDict(extra="forbid", json_schema_extra={"examples": [{"max_order_qty": 200}]}),
    **_OPTIONAL_LIMITS,
)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or bad credentials"}, 403: {"description": "the key lacks the scope"},
    429: {"description": "over the rate limit (Retry-After)"},
}


# ---------------------------------------------------------------------------------------------- views
def _order_out(engine: TradingEngine, o: Order, status: str | None = None,
               children: Iterable[Order] = ()) -> OrderOut:
    inst = engine.instruments.get(o.instrument_id)
    price = None
    if o.price_ticks is not None:
        price = inst.from_ticks(o.price_ticks) if inst else None
    return OrderOut(
        client_id=o.client_id, instrument_id=o.instrument_id, symbol=inst.symbol if inst else None,
        side="buy" if o.side > 0 else "sell", qty=o.qty, price=_fnum(price), ord_type=o.ord_type.name,
        tif=o.tif.name, status=status or o.status.value, filled_qty=o.filled_qty, leaves_qty=o.leaves_qty,
        avg_px=_fnum(o.avg_px), fees=_fnum(o.fees), venue=o.venue, strategy_id=o.strategy_id, parent_id=o.parent_id,
        reason=o.reason, ts_init_ns=o.ts_init_ns, ts_last_ns=o.ts_last_ns,
        children=[_order_out(engine, c) for c in children],
    )


def _instrument_out(engine: TradingEngine, i: Instrument) -> InstrumentOut:
    q = engine.last_quotes.get(i.instrument_id)
    expiry = datetime.fromtimestamp(i.expiry_ns / 1e9, UTC).isoformat() if i.is_option else None
    return InstrumentOut(
        instrument_id=i.instrument_id, symbol=i.symbol, kind="option" if i.is_option else "equity",
        underlying=i.underlying, strike=i.strike if i.is_option else None, expiry=expiry,
        right=("C" if i.right > 0 else "P") if i.is_option else None, multiplier=i.multiplier, tick_size=i.tick_size,
        lot_size=i.lot_size, bid=_fnum(q.bid) if q else None, ask=_fnum(q.ask) if q else None,
        mark=_fnum(engine.ref_price(i.instrument_id)),
    )


def scenarios(engine: TradingEngine, spot_shocks: list[float], vol_shocks: list[float]) -> dict[str, Any]:
    """Full-revaluation P&L (currency) of the engine's book over a grid of relative spot moves and absolute vol
    moves, per underlying and in total (Black-Scholes-Merton at the engine's pricing inputs)."""
    pf, pricing = engine.portfolio, engine.pricing
    now = engine.clock_ns()
    ns, nv = len(spot_shocks), len(vol_shocks)
    by_und: dict[str, torch.Tensor] = {}
    ds = torch.tensor(spot_shocks, dtype=torch.float64)
    for und in pf.totals:
        grid = torch.zeros(ns, nv, dtype=torch.float64)
        spot = pf.spots.get(und)
        held = [(engine.instruments[i], p.qty) for i, p in pf.positions.items()
                if p.qty and engine.instruments[i].underlying == und]
        if spot and spot > 0 and held:
            opts = [(i, q) for i, q in held if i.is_option]
            for i, q in held:
                if not i.is_option:  # linear: qty x multiplier x spot x move, whatever the vol
                    grid += (q * i.multiplier * spot * ds).reshape(-1, 1)
            if opts:
                grid += scenario_grid(
                    [i.right for i, _ in opts], float(spot), [i.strike for i, _ in opts],
                    [max(i.ttm(now), 1.0 / (365 * 24 * 60)) for i, _ in opts], pricing.rate, pricing.div_yield,
                    [pricing.vol(i.instrument_id) for i, _ in opts], [float(q) for _, q in opts],
                    [i.multiplier for i, _ in opts], spot_shocks, vol_shocks,
                ).to(torch.float64).cpu()
        by_und[und] = grid
    total = sum(by_und.values(), torch.zeros(ns, nv, dtype=torch.float64))
    return {"spot_shocks": spot_shocks, "vol_shocks": vol_shocks,
            "pnl": {u: _clean(g.tolist()) for u, g in by_und.items()}, "total": _clean(total.tolist())}


# ---------------------------------------------------------------------------------------------- strategies
_HOOKS = (("quotes.*", "on_quote"), ("trades.*", "on_trade"), ("books.*", "on_book"), ("timers", "on_timer"))


class StrategyControl:
    """Start, stop and re-parameterise the engine's strategies while it runs.

    Stopping a strategy leaves the bus (its hooks no longer hear anything), cancels its timers and its open
    orders and calls its ``on_stop``. Starting one attaches a fresh instance built from its class and
    parameters (so it starts from a clean state) and calls its ``on_start``. Parameters are the strategy's
    public scalar attributes (int, float, bool, str); a change is checked by building a new instance with it
    (its constructor's checks apply) and then set on the running one.
    """

    def __init__(self, engine: TradingEngine) -> None:
        self.engine = engine
        self.running: dict[str, bool] = {s.name: True for s in engine.strategies}  # they start with the engine

    def get(self, name: str) -> Strategy:
        """The strategy called ``name``; HTTP 404 when there is none."""
        for s in self.engine.strategies:
            if s.name == name:
                return s
        raise HTTPException(404, f"no strategy {name!r} (have: {', '.join(self.running) or 'none'})")

    @staticmethod
    def parameters(s: Strategy) -> dict[str, Any]:
        """Public scalar attributes of a strategy: what GET/PUT .../parameters show and change."""
        return {k: v for k, v in vars(s).items()
                if not k.startswith("_") and k not in ("name", "ctx", "params")
                and isinstance(v, bool | int | float | str) and not (isinstance(v, float) and not math.isfinite(v))}

    def describe(self, s: Strategy) -> dict[str, Any]:
        cls = type(s)
        return {"name": s.name, "cls": f"{cls.__module__}:{cls.__qualname__}", "running": self.running.get(s.name, False),
                "parameters": self.parameters(s)}

    def _isolated(self, s: Strategy, hook: str) -> None:
        try:
            getattr(s, hook)()
        except Exception:  # a strategy's own bug must not fail the request that stopped or started it
            self.engine.bus.errors[f"strategy:{s.name}"] += 1
            log.exception("strategy %s failed in %s", s.name, hook)

    def stop(self, name: str) -> dict[str, Any]:
        """Detach ``name`` from the engine (idempotent); returns its description plus ``canceled`` orders."""
        s = self.get(name)
        n = 0
        if self.running.get(name):
            eng, owner = self.engine, f"strategy:{name}"
            for topic, hook in (*_HOOKS, (f"fills.{name}", "on_fill")):
                eng.bus.unsubscribe(topic, getattr(s, hook))
            for _due, tid, who, _fn, _every in list(eng.timers.heap):
                if who == owner:
                    eng.timers.cancel(tid)
            n = eng.cancel_all(strategy_id=name)
            self._isolated(s, "on_stop")
            self.running[name] = False
        return {**self.describe(s), "canceled": n}

    def start(self, name: str) -> dict[str, Any]:
        """Attach a fresh instance of ``name`` (idempotent: a running one is left as it is)."""
        s = self.get(name)
        if not self.running.get(name):
            fresh = type(s)(name=s.name, **s.params)
            idx = self.engine.strategies.index(s)
            self.engine.strategies.pop(idx)
            self.engine.add_strategy(fresh)  # appended, subscribed, given its context
            self.engine.strategies.insert(idx, self.engine.strategies.pop())
            self.running[name] = True
            self._isolated(fresh, "on_start")
            s = fresh
        return {**self.describe(s), "canceled": 0}

    def set_parameters(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Check and apply parameter changes; HTTP 422 naming ``parameters.<name>`` and the value when bad."""
        s = self.get(name)
        current = self.parameters(s)
        for k, v in changes.items():
            if k not in current:
                raise _unprocessable("body", f"parameters.{k}", v, f"not a parameter of {name} "
                                     f"(one of {', '.join(sorted(current))})")
            old = current[k]
            ok = (type(v) is bool) if type(old) is bool else (
                isinstance(v, int) and not isinstance(v, bool) if type(old) is int else
                (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)) if type(old) is float
                else isinstance(v, str))
            if not ok:
                raise _unprocessable("body", f"parameters.{k}", v, f"must be a {type(old).__name__} like {old!r}")
        merged = {**s.params, **changes}
        try:
            trial = type(s)(name=s.name, **merged)
        except (ConfigError, DataError) as exc:
            field = getattr(exc, "field", "parameters").rsplit(".", 1)[-1]
            raise _unprocessable("body", f"parameters.{field}", getattr(exc, "value", None), str(exc)) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unprocessable("body", "parameters", changes, str(exc)) from None
        trial_params = self.parameters(trial)
        for k in changes:
            if k in trial_params and trial_params[k] != changes[k] and k not in s.params:
                # the constructor ignores this one as a keyword: it is derived state, not a parameter
                raise _unprocessable("body", f"parameters.{k}", changes[k], f"{name} does not take {k} as a parameter")
        for k, v in changes.items():
            setattr(s, k, trial_params.get(k, v))
        s.params.update(changes)  # a restart builds the fresh instance with them
        return {"name": name, "parameters": self.parameters(s)}


# ---------------------------------------------------------------------------------------------- the app
def build_app(
    settings: Settings, engine: TradingEngine, *, store: ApiKeyStore | None = None,
    limiter: RateLimiter | None = None, run_engine: bool = True,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    """The trading API over ``engine``.

    ``store``: the API keys (default: an :class:`ApiKeyStore` on ``settings.database.url``); ``limiter``: the
    rate limiter (default :func:`~greekfire.api.ratelimit.make_limiter`: Redis when ``api.redis_url`` is set).
    With ``run_engine`` the app's lifespan runs the engine loop as a task on the server's event loop (the
    engine's strategies start with it) and stops it, with a last snapshot, at shutdown; ``on_shutdown`` runs
    after that (a FIX venue's wind-down). Without it the caller drives the engine on the same loop.
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
        try:
            yield
        finally:
            await hub.close()
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

    need: dict[str, Callable[..., Awaitable[Principal]]] = {}
    for scope in SCOPES:
        req = auth.require(scope)

        async def guard(p: Principal = Depends(req), _: Principal = Depends(limited)) -> Principal:  # noqa: B008
            return p  # the scope is checked first (403), then the rate limit (429)

        need[scope] = guard

    def audit(p: Principal, request: Request, body: Any, status: int) -> None:
        route = request.scope.get("route")
        path = getattr(route, "path", request.url.path)
        engine.audit.append(engine.clock_ns(), "api", p.key_id, {
            "key_id": p.key_id, "name": p.name, "method": request.method, "route": path,
            "path_params": dict(request.path_params), "body": _clean(_redact(body)), "status": status,
        })
        REQUESTS.labels(path, str(status)).inc()

    @app.exception_handler(DataError)
    async def _data_error(_: Request, exc: DataError) -> JSONResponse:
        err = {"type": "value_error", "loc": ["body", *exc.field.split(".")], "msg": exc.reason, "input": _clean(exc.value)}
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
            raise _unprocessable("body", "body", None, "not JSON (send {\"api_key\": ...} or a form)") from None
        try:
            req = TokenRequest.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"]), "input": _clean(_redact(e.get("input")))}
                 for e in exc.errors(include_url=False, include_context=False)]) from None
        out = auth.issue_token(req.api_key)
        parts = req.api_key.split("_")
        engine.audit.append(engine.clock_ns(), "api", parts[1] if len(parts) >= 3 else "?",
                            {"route": "/token", "method": "POST", "body": {"api_key": "***"}, "status": 200})
        return out

    # ------------------------------------------------------------------ orders
    def _instrument(body: OrderRequest) -> Instrument:
        if (body.instrument_id is None) == (body.symbol is None):
            raise _unprocessable("body", "instrument_id", body.instrument_id, "send exactly one of instrument_id or symbol")
        if body.symbol is not None:
            inst = engine.by_symbol.get(body.symbol)
            if inst is None:
                raise _unprocessable("body", "symbol", body.symbol, "unknown symbol (see GET /v1/instruments)")
            return inst
        inst = engine.instruments.get(int(body.instrument_id or 0))
        if inst is None:
            raise _unprocessable("body", "instrument_id", body.instrument_id, "unknown instrument (see GET /v1/instruments)")
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
            raise _unprocessable("body", "price", body.price, "a market order has no price")
        if not body.market and body.price is None:
            raise _unprocessable("body", "price", None, "a limit order needs a price (or market: true)")
        ticks = None if body.market else inst.ticks(float(body.price or 0.0), "price")
        order = engine.new_order(inst.instrument_id, Side.BUY if body.side == "buy" else Side.SELL, body.qty, ticks,
                                 OrderType.MARKET if body.market else OrderType.LIMIT, _TIFS[body.tif],
                                 strategy_id=API_STRATEGY)
        created = engine.submit(order)
        first = created[0]
        if first.status == OrderStatus.DENIED:
            d = last_denial.pop(order.client_id, None) or {}
            audit(p, request, body.model_dump(), 409)
            raise _conflict(first.reason, d.get("values", {}), d.get("message", f"denied: {first.reason}"))
        audit(p, request, body.model_dump(), 201)
        if len(created) == 1 and first is order:
            return _order_out(engine, order)
        swept[order.client_id] = [c.client_id for c in created]
        return _order_out(engine, order, status="SWEPT", children=created)

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
                raise _unprocessable("query", "symbol", symbol, "unknown symbol (see GET /v1/instruments)")
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
            out.append(_order_out(engine, o))
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
                return _order_out(engine, parent, status="SWEPT", children=kids)
        return _order_out(engine, _find(client_id))

    @app.patch("/v1/orders/{client_id:path}", response_model=OrderOut,
               responses={**ERRORS, **conflict, 404: {"description": "unknown order"}})
    async def amend(body: AmendRequest, request: Request, client_id: str = Path(max_length=200),
                    p: Principal = Depends(need["trade"])) -> OrderOut:  # noqa: B008
        """Amend a working order's total quantity and/or limit price (risk-checked); 409 when denied or when
        the order is no longer working (closed, or a cancel/replace pending)."""
        o = _find(client_id)
        if body.qty is None and body.price is None:
            raise _unprocessable("body", "qty", None, "send qty and/or price")
        inst = engine.instruments[o.instrument_id]
        ticks = o.price_ticks if body.price is None else inst.ticks(body.price, "price")
        if ticks is None:
            raise _unprocessable("body", "price", None, "a market order has no price to keep: send one")
        qty = o.qty if body.qty is None else body.qty
        if o.status not in _AMENDABLE:
            audit(p, request, body.model_dump(), 409)
            raise _conflict("NOT_AMENDABLE", {"status": o.status.value}, f"order {client_id} is {o.status.value}")
        denial = engine.amend(client_id, qty, ticks)
        if denial is not None:
            audit(p, request, body.model_dump(), 409)
            raise _conflict(denial.reason.value, denial.values, denial.message)
        audit(p, request, body.model_dump(), 200)
        return _order_out(engine, o)

    @app.delete("/v1/orders/{client_id:path}", response_model=OrderOut,
                responses={**ERRORS, **conflict, 404: {"description": "unknown order"}})
    async def cancel(request: Request, client_id: str = Path(max_length=200),
                     p: Principal = Depends(need["trade"])) -> OrderOut:  # noqa: B008
        """Request a cancel (the order goes PENDING_CANCEL, then CANCELED when the venue confirms); 409 when
        the order is already closed."""
        o = _find(client_id)
        if not engine.cancel(client_id):
            audit(p, request, None, 409)
            raise _conflict("NOT_CANCELABLE", {"status": o.status.value}, f"order {client_id} is {o.status.value}")
        audit(p, request, None, 200)
        return _order_out(engine, o)

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
                instrument_id=iid, symbol=inst.symbol, qty=pos.qty, avg_cost=_fnum(pos.avg_cost), mark=_fnum(mark),
                realized_pnl=_fnum(pos.realized_pnl),
                unrealized_pnl=_fnum(pos.unrealized(mark if mark is not None else pos.avg_cost, inst.multiplier)),
                fees=_fnum(pos.fees), fill_count=pos.fill_count))
        return out

    @app.get("/v1/pnl", response_model=PnlOut, responses=ERRORS)
    async def pnl(_: Principal = Depends(need["read"])) -> PnlOut:  # noqa: B008
        """P&L since the start, cash and equity (currency)."""
        pf = engine.portfolio
        return PnlOut(**{k: _fnum(v) for k, v in pf.pnl().items()}, cash=_fnum(pf.cash), equity=_fnum(pf.equity()),
                      starting_cash=_fnum(pf.starting_cash))

    @app.get("/v1/greeks", response_model=dict[str, dict[str, float | None]], responses=ERRORS)
    async def greeks(_: Principal = Depends(need["read"])) -> Any:  # noqa: B008
        """Greek totals per underlying (delta in shares, gamma per 1.00 spot, vega per 1.00 vol, theta per
        year, delta_cash and gamma_cash in currency) and a TOTAL row of the cash forms."""
        return _clean(engine.portfolio.greeks())

    @app.get("/v1/greeks/scenarios", response_model=ScenariosOut, responses=ERRORS)
    async def greek_scenarios(
        spot_shocks: list[float] = Query([-0.1, -0.05, 0.0, 0.05, 0.1], description="relative, -0.99..1"),  # noqa: B008
        vol_shocks: list[float] = Query([-0.05, 0.0, 0.05], description="absolute vol points, -1..1"),  # noqa: B008
        _: Principal = Depends(need["read"]),  # noqa: B008
    ) -> Any:
        """P&L of the book, fully revalued, over a spot x vol shock grid (at most 41 x 41)."""
        for name, vals, lo, hi in (("spot_shocks", spot_shocks, -0.99, 1.0), ("vol_shocks", vol_shocks, -1.0, 1.0)):
            if not 1 <= len(vals) <= 41:
                raise _unprocessable("query", name, len(vals), "between 1 and 41 values")
            for v in vals:
                if not (math.isfinite(v) and lo <= v <= hi):
                    raise _unprocessable("query", name, v, f"each value finite, {lo} to {hi}")
        return scenarios(engine, spot_shocks, vol_shocks)

    @app.get("/v1/instruments", response_model=list[InstrumentOut], responses=ERRORS)
    async def instruments(_: Principal = Depends(need["read"])) -> list[InstrumentOut]:  # noqa: B008
        """Every tradable instrument with its last quote and mark (currency)."""
        return [_instrument_out(engine, i) for i in engine.instruments.values()]

    # ------------------------------------------------------------------ risk
    @app.get("/v1/risk", response_model=RiskStateOut, responses=ERRORS)
    async def risk_state(_: Principal = Depends(need["read"])) -> RiskStateOut:  # noqa: B008
        """Trading state, the kill switch, 1-day VaR (currency) and denials by reason so far."""
        r = engine.risk
        return RiskStateOut(trading_state=r.state.value, killed=r.killed, kill_reason=r.kill_reason,
                            var_1d=_fnum(r.var), denials=dict(r.denials))

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
                raise _unprocessable("body", k, v, "must be finite")
        try:
            RiskSettings.model_validate({**engine.risk.limits.model_dump(), **changes})
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
            ) from None
        try:
            engine.risk.set_limits(**changes)
        except ConfigError as exc:
            raise _unprocessable("body", exc.field.rsplit(".", 1)[-1], exc.value, exc.allowed) from None
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
    from greekfire.trading.build import build_engine, default_instruments
    from greekfire.trading.fixvenue import fix_venues
    from greekfire.trading.store import SnapshotStore

    ts = settings.trading
    use_fix = isinstance(venues, str)
    if use_fix and str(venues).strip().lower() != "fix":
        raise ConfigError("venues", venues, 'a number of simulated venues, or "fix"')
    if venues is not None and not use_fix:
        settings = settings.model_copy(update={"trading": ts.model_copy(update={"venues": venues})})
    name = (ts.strategy or "").strip()
    strats = [] if name.lower() in ("", "none") else [load_strategy(name)]
    store = SnapshotStore(resolve_url(settings.database.url.get_secret_value(), settings.home), "serve",
                          echo=settings.database.echo)
    if not use_fix:
        return build_engine(settings, strategies=strats, store=store, engine_id="serve"), None
    instruments = default_instruments()
    fix_venue: Any = fix_venues(settings, instruments)[0]
    try:
        engine = build_engine(settings, instruments=instruments, venues=[fix_venue], strategies=strats, store=store,
                              engine_id="serve")
    except BaseException:
        fix_venue.stop()
        raise
    return engine, fix_venue


def serve_trading(settings: Settings, host: str | None = None, port: int | None = None,
                  venues: int | str | None = None) -> None:
    """Build the engine (:func:`build_trading_engine`) and serve the trading API over it with uvicorn until
    stopped; once it listens, say where on stderr: ``greekfire serve trading: listening on http://HOST:PORT
    (/v1, /v1/stream, /token, /health, /metrics, /docs)``. ``host`` defaults to ``api.host``, ``port`` to
    ``api.trading_port``. On a FIX venue, shutdown cancels what is open there first."""
    engine, fix_venue = build_trading_engine(settings, venues)

    def shutdown() -> None:
        if fix_venue is not None:
            from greekfire.strategies.paper import wind_down

            try:
                wind_down(engine, fix_venue)
            finally:
                fix_venue.stop()
        if engine.store is not None:
            engine.store.close()

    app = build_app(settings, engine, on_shutdown=shutdown)
    config = uvicorn.Config(app, host=host or settings.api.host, port=port or settings.api.trading_port,
                            log_level="warning")
    ListeningServer(config, name="greekfire serve trading",
                    paths="/v1, /v1/stream, /token, /health, /metrics, /docs").run()

