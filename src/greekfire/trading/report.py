"""What the engine reports: the summary of a run, and the Prometheus gauges refreshed on its timer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from greekfire.core.metrics import gauge
from greekfire.trading.orders import OrderStatus

if TYPE_CHECKING:
    from greekfire.trading.engine import TradingEngine

PNL = gauge("greekfire_trading_pnl",
            "P&L since start, currency; kind=fees is fees net of rebates (negative = rebates received)", ["kind"])
GREEK = gauge("greekfire_trading_greek", "portfolio Greek per underlying", ["underlying", "greek"])
INTERNAL_LATENCY = gauge(
    "greekfire_trading_internal_latency_us", "market event in -> order out, microseconds (HDR percentiles)", ["quantile"]
)


def pnl(eng: TradingEngine) -> dict[str, float]:
    """The P&L now, in currency: ``realized``, ``unrealized``, ``fees`` (net of rebates) and ``total`` (cheap
    enough for a status line once a second)."""
    return eng.portfolio.pnl()


def account(eng: TradingEngine) -> tuple[float, float]:
    """``(equity, cash)`` of the account now, in currency (a runner's end-of-day record)."""
    return eng.portfolio.equity(), eng.portfolio.cash


def summary(eng: TradingEngine) -> dict[str, Any]:
    """What happened: orders, fills, denials by reason, P&L, Greeks, latency, errors.

    Money is in currency: ``pnl`` holds ``realized``, ``unrealized``, ``fees`` (fees paid net of the maker
    rebates received: negative when the rebates were larger) and ``total`` (realized + unrealized - fees);
    ``latency_us`` is in microseconds.
    """
    statuses: dict[str, int] = {}
    rejections: dict[str, int] = {}
    for o in eng.oms.orders.values():
        statuses[o.status.value] = statuses.get(o.status.value, 0) + 1
        if o.status == OrderStatus.REJECTED:
            rejections[o.reason or "?"] = rejections.get(o.reason or "?", 0) + 1
    greeks = eng.portfolio.greeks()
    return {
        "events": eng.events, "orders": len(eng.oms.orders), "orders_out": eng.orders_out,
        "order_status": statuses, "fills": eng.fill_count, "denials": dict(eng.risk.denials),
        "venue_rejections": rejections,
        "pnl": {k: round(v, 2) for k, v in eng.portfolio.pnl().items()},
        "equity": round(eng.portfolio.equity(), 2),
        "greeks": {u: {k: round(v, 4) for k, v in g.items()} for u, g in greeks.items()},
        "var_1d": round(eng.risk.var, 2), "mc_var_1d": round(eng.risk.mc_var_value, 2),
        "trading_state": eng.risk.state.value,
        "latency_us": {k: round(v, 2) for k, v in eng.latency_us().items()},
        "latency_first_order_us": {k: round(v, 2) for k, v in eng.latency_us(first_only=True).items()},
        "venues": {n: v.summary() for n, v in eng.router.venues.items()},
        "errors": {
            "strategy_exceptions": dict(eng.bus.errors), "malformed_events": eng.malformed,
            "unknown_order_events": eng.unknown_events, "fill_problems": dict(eng.oms.fill_problems),
        },
    }


def publish_portfolio(eng: TradingEngine) -> None:
    """Greeks, cash, VaR and positions on the bus topic ``portfolio`` (a copy: subscribers must not see, or
    change, the live totals)."""
    pf = eng.portfolio
    eng.bus.publish("portfolio", {
        "greeks": {u: list(t) for u, t in pf.totals.items()}, "cash": pf.cash, "var": eng.risk.var,
        "positions": {i: p.qty for i, p in pf.positions.items() if p.qty},
    })


def publish_metrics(eng: TradingEngine) -> None:
    """P&L, Greeks per underlying, router and OMS counts, and latency percentiles to Prometheus."""
    for k, v in eng.portfolio.pnl().items():
        PNL.labels(k).set(v)
    for und, t in eng.portfolio.totals.items():
        for name, v in zip(("delta", "gamma", "vega", "theta"), t, strict=True):
            GREEK.labels(und, name).set(v)
    eng.router.publish_metrics()
    eng.oms.publish_metrics()
    lat = eng.latency_us()
    for q in ("p50", "p99", "p99.9"):
        if q in lat:
            INTERNAL_LATENCY.labels(q).set(lat[q])
