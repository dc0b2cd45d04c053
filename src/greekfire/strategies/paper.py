"""Paper trading run: the engine with a strategy against simulated venues, summarised."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from greekfire.core.errors import ConfigError
from greekfire.core.settings import Settings
from greekfire.strategies import load_strategy
from greekfire.trading.build import build_engine
from greekfire.trading.store import SnapshotStore, resolve_url


def run_paper(
    settings: Settings,
    duration_s: float | None = None,
    strategy: str | None = None,
    venues: int | None = None,
    *,
    fresh: bool = True,
    database_url: str | None = None,
) -> dict[str, Any]:
    """Run ``strategy`` (default ``settings.trading.strategy``) for ``duration_s`` seconds on ``venues``
    simulated venues and return the engine summary (orders, fills, denials, P&L, Greeks, latency).

    ``fresh`` clears this paper engine's previous state in the database first (a paper run starts flat).
    """
    ts = settings.trading
    if venues is not None:
        settings = settings.model_copy(update={"trading": ts.model_copy(update={"venues": venues})})
    duration = float(duration_s if duration_s is not None else ts.duration_s)
    if not (math.isfinite(duration) and duration > 0):  # a negative or NaN run length would end at once
        raise ConfigError("duration_s", duration_s, "a positive number of seconds (--duration)")
    strat = load_strategy(strategy or ts.strategy)
    store = SnapshotStore(resolve_url(database_url or settings.database.url.get_secret_value(), settings.home), "paper")
    if fresh:
        store.clear()
    engine = build_engine(settings, strategies=[strat], store=store, restore=True)
    t0 = time.perf_counter()
    asyncio.run(engine.run(duration))
    out = engine.summary()
    out["strategy"] = strat.name
    out["duration_s"] = round(time.perf_counter() - t0, 2)
    out["database"] = engine.store.url.split("://", 1)[0] if engine.store else None
    out["snapshots"] = engine.store.snapshots if engine.store else 0
    if engine.market is not None:
        out["underlying_spot"] = round(engine.market.spot, 4)
    if engine.store is not None:
        engine.store.close()
    return out
