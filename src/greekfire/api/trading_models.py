"""Request and response models of the trading API, and the views that turn engine objects into them."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, Optional

import torch
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, create_model

from greekfire.core.settings import RiskSettings
from greekfire.quant import scenario_grid
from greekfire.trading.engine import TradingEngine
from greekfire.trading.model import Instrument, TimeInForce
from greekfire.trading.orders import TRANSITIONS, Order, OrderStatus

SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password", "authorization")
AMENDABLE = frozenset(s for s, nxt in TRANSITIONS.items() if OrderStatus.PENDING_REPLACE in nxt)
TIFS = {"GTC": TimeInForce.GTC, "DAY": TimeInForce.DAY, "IOC": TimeInForce.IOC, "FOK": TimeInForce.FOK}
MAX_QTY = 1_000_000_000


def clean(x: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN), tuples lists, enums their value."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [clean(v) for v in x]
    if isinstance(x, bool | int | str) or x is None:
        return x
    return str(x)


def redact(x: Any) -> Any:
    """A copy of a request body with every secret-looking field replaced by ``"***"``."""
    if isinstance(x, dict):
        return {k: ("***" if any(w in str(k).lower() for w in SECRET_WORDS) else redact(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [redact(v) for v in x]
    return x


def unprocessable(where: str, field: str, value: Any, msg: str) -> RequestValidationError:
    """A 422 like FastAPI's own, naming ``where`` (body, query, path), the field and the value."""
    return RequestValidationError([{"type": "value_error", "loc": (where, *field.split(".")), "msg": msg,
                                    "input": clean(value)}])


def conflict_error(reason: str, values: dict[str, Any], message: str) -> HTTPException:
    return HTTPException(409, {"reason": reason, "values": clean(values), "message": message})


def finite_or_none(x: float | None) -> float | None:
    """``x`` for JSON: None when missing or not finite; rounded to 10 decimals (a mid of 100.04 and 100.06 is
    100.05, not 100.05000000000001)."""
    return None if x is None or not math.isfinite(x) else round(float(x), 10)


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
    qty: int = Field(gt=0, le=MAX_QTY, description="contracts or shares (a multiple of the lot size)")
    price: float | None = Field(None, gt=0, allow_inf_nan=False, description="limit price, currency")
    market: bool = Field(False, description="a market order (no price)")
    tif: Literal["GTC", "DAY", "IOC", "FOK"] = Field("GTC", description="time in force")


class AmendRequest(BaseModel):
    """New total quantity and/or limit price (currency) of a working order."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"qty": 20, "price": 100.1}]})
    qty: int | None = Field(None, gt=0, le=MAX_QTY, description="new total quantity")
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
def order_out(engine: TradingEngine, o: Order, status: str | None = None,
               children: Iterable[Order] = ()) -> OrderOut:
    inst = engine.instruments.get(o.instrument_id)
    price = None
    if o.price_ticks is not None:
        price = inst.from_ticks(o.price_ticks) if inst else None
    return OrderOut(
        client_id=o.client_id, instrument_id=o.instrument_id, symbol=inst.symbol if inst else None,
        side="buy" if o.side > 0 else "sell", qty=o.qty, price=finite_or_none(price), ord_type=o.ord_type.name,
        tif=o.tif.name, status=status or o.status.value, filled_qty=o.filled_qty, leaves_qty=o.leaves_qty,
        avg_px=finite_or_none(o.avg_px), fees=finite_or_none(o.fees), venue=o.venue, strategy_id=o.strategy_id, parent_id=o.parent_id,
        reason=o.reason, ts_init_ns=o.ts_init_ns, ts_last_ns=o.ts_last_ns,
        children=[order_out(engine, c) for c in children],
    )


def instrument_out(engine: TradingEngine, i: Instrument) -> InstrumentOut:
    q = engine.last_quotes.get(i.instrument_id)
    expiry = datetime.fromtimestamp(i.expiry_ns / 1e9, UTC).isoformat() if i.is_option else None
    return InstrumentOut(
        instrument_id=i.instrument_id, symbol=i.symbol, kind="option" if i.is_option else "equity",
        underlying=i.underlying, strike=i.strike if i.is_option else None, expiry=expiry,
        right=("C" if i.right > 0 else "P") if i.is_option else None, multiplier=i.multiplier, tick_size=i.tick_size,
        lot_size=i.lot_size, bid=finite_or_none(q.bid) if q else None, ask=finite_or_none(q.ask) if q else None,
        mark=finite_or_none(engine.ref_price(i.instrument_id)),
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
            "pnl": {u: clean(g.tolist()) for u, g in by_und.items()}, "total": clean(total.tolist())}


