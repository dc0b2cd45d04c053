"""Demo stage "trading": the sample market maker against two simulated venues for a few seconds."""

from __future__ import annotations

from typing import Any

from greekfire.core.settings import Settings
from greekfire.strategies.paper import run_paper

DEMO_SECONDS = 8.0


def run_demo(settings: Settings) -> dict[str, Any]:
    """Paper-trade for ``DEMO_SECONDS`` and return the headline figures of the run."""
    out = run_paper(settings, DEMO_SECONDS, "market_maker", 2)
    lat = out["latency_us"]
    total = out["greeks"]["TOTAL"]
    return {
        "events": out["events"],
        "orders sent (incl. amends)": out["orders_out"],
        "fills": out["fills"],
        "denials": out["denials"] or "none",
        "P&L total": out["pnl"]["total"],
        "delta cash / vega": f"{total['delta_cash']:,.0f} / {total['vega']:,.0f}",
        "internal latency p50/p99 us": f"{lat.get('p50', 0):.0f} / {lat.get('p99', 0):.0f}",
        "errors": sum(out["errors"]["strategy_exceptions"].values()) + out["errors"]["malformed_events"],
        "database": out["database"],
    }
