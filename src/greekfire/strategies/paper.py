"""Paper trading run: the engine with a strategy against simulated venues, summarised."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

from greekfire.core.db import resolve_url
from greekfire.core.errors import ConfigError
from greekfire.core.settings import Settings
from greekfire.strategies import load_strategy
from greekfire.trading.build import build_engine, default_instruments
from greekfire.trading.fixvenue import fix_venues
from greekfire.trading.model import VenueEvent
from greekfire.trading.report import pnl as engine_pnl
from greekfire.trading.store import SnapshotStore
from greekfire.trading.venues import Venue

StatusHook = Callable[[dict[str, Any]], None]
"""Called with :func:`live_status` while a paper run goes on."""


def live_status(engine: Any, elapsed_s: float, duration_s: float) -> dict[str, Any]:
    """What a running engine (the one :func:`run_paper` built; typed ``Any`` because strategies may not
    import the engine module) has done so far, cheap enough to ask once a second: ``elapsed_s`` and
    ``duration_s`` (seconds), ``events``, ``orders_out``, ``fills``, ``pnl_total`` and ``fees`` (currency;
    fees are net of rebates, negative = rebates received), ``latency_p50_us`` and ``latency_p99_us``
    (market event in -> order out, microseconds; absent before the first order)."""
    pnl = engine_pnl(engine)
    lat = engine.latency_us()
    out: dict[str, Any] = {
        "elapsed_s": round(elapsed_s, 1), "duration_s": duration_s, "events": engine.events,
        "orders_out": engine.orders_out, "fills": engine.fill_count,
        "pnl_total": round(pnl["total"], 2), "fees": round(pnl["fees"], 2),
    }
    for q in ("p50", "p99"):
        if q in lat:
            out[f"latency_{q}_us"] = round(lat[q], 1)
    return out


def format_status(st: dict[str, Any]) -> str:
    """One line for a terminal or a log: ``paper 2/3 s | events 2,113 | orders out 420 | fills 12 | P&L 45.10 USD |
    fees -2.40 USD (rebate) | latency p50 70 µs p99 110 µs``."""
    lat = (f"latency p50 {st['latency_p50_us']:,.0f} µs p99 {st['latency_p99_us']:,.0f} µs"
           if "latency_p50_us" in st else "latency -")
    fees = f"fees {st['fees']:,.2f} USD" + (" (rebate)" if st["fees"] < 0 else "")
    return (f"paper {st['elapsed_s']:.0f}/{st['duration_s']:.0f} s | events {st['events']:,} | "
            f"orders out {st['orders_out']:,} | fills {st['fills']:,} | P&L {st['pnl_total']:,.2f} USD | {fees} | "
            f"{lat}")


async def _run_with_status(engine: Any, duration: float, status: StatusHook | None,
                           interval_s: float) -> None:
    """The engine's run, with ``status`` called every ``interval_s`` seconds beside it (the engine yields
    to the event loop between polls, so the status task reads a consistent engine)."""
    if status is None:
        await engine.run(duration)
        return
    t0 = time.perf_counter()

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval_s)
            status(live_status(engine, time.perf_counter() - t0, duration))

    ticker = asyncio.create_task(tick())
    try:
        await engine.run(duration)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


def wind_down(engine: Any, venue: Venue, timeout_s: float = 3.0) -> int:
    """End a run on a real venue with nothing resting there: cancel every open order, apply what the venue
    answers (fills that raced the cancels included) until the venue holds none of ours or ``timeout_s``
    passes, and snapshot again. Returns the orders still open at the venue (0 normally). A simulated venue
    ends with the process, so its runs skip this."""
    engine.cancel_all()
    t_end = time.monotonic() + timeout_s
    while True:
        events = [e for e in venue.poll(time.time_ns()) if type(e) is VenueEvent]
        for ev in events:
            engine.on_venue_event(ev)
        if events:
            engine.end_batch()
        still_open = sum(1 for o in venue.report()[0] if o.open)
        if not still_open or time.monotonic() >= t_end:
            break
        time.sleep(0.005)
    engine.snapshot()
    return still_open


def engine_on_venues(
    settings: Settings, strategies: list[Any], store: SnapshotStore, venues: int | str | None = None,
    engine_id: str = "paper", *, instruments: list[Any] | None = None, market: Any = None,
    clock_ns: Callable[[], int] | None = None,
) -> tuple[Any, Any]:
    """The engine with ``strategies`` on ``venues`` simulated venues (default ``trading.venues``) and their
    synthetic market, or on the FIX venue of ``fix.host:fix.port`` for ``venues="fix"`` (logged on; no
    synthetic market: quotes come over FIX). State in ``store``, resumed. ``instruments`` (default
    :func:`default_instruments`), ``market`` (a :class:`SyntheticMarket` on them; simulated venues only) and
    ``clock_ns`` (default the wall clock) go to :func:`build_engine`. Returns ``(engine, fix venue or
    None)``; ConfigError naming ``venues`` for anything else, UnavailableError when the exchange does not
    answer."""
    use_fix = isinstance(venues, str)
    if use_fix and str(venues).strip().lower() != "fix":
        raise ConfigError("venues", venues, 'a number of simulated venues, or "fix"')
    if venues is not None and not use_fix:
        ts = settings.trading
        settings = settings.model_copy(update={"trading": ts.model_copy(update={"venues": venues})})
    if not use_fix:
        return build_engine(settings, instruments=instruments, strategies=strategies, store=store, restore=True,
                            engine_id=engine_id, market=market, clock_ns=clock_ns), None
    instruments = instruments or default_instruments()
    fix_venue: Any = fix_venues(settings, instruments)[0]
    try:
        engine = build_engine(settings, instruments=instruments, venues=[fix_venue], strategies=strategies,
                              store=store, restore=True, engine_id=engine_id, clock_ns=clock_ns)
    except BaseException:
        fix_venue.stop()
        raise
    return engine, fix_venue


def run_paper(
    settings: Settings,
    duration_s: float | None = None,
    strategy: str | None = None,
    venues: int | str | None = None,
    *,
    fresh: bool = True,
    database_url: str | None = None,
    status: StatusHook | None = None,
    status_interval_s: float = 1.0,
) -> dict[str, Any]:
    """Run ``strategy`` (default ``settings.trading.strategy``) for ``duration_s`` seconds on ``venues``
    simulated venues and return the engine summary (orders, fills, denials, P&L, Greeks, latency).

    ``venues="fix"`` trades through one FIX venue against a ``greekfire fix exchange`` at ``fix.host:fix.port``
    instead (no synthetic market in the trader: quotes come over FIX); the summary then has a ``"fix"`` entry
    with the session's counters (sent, received, resent, gaps). UnavailableError when the exchange does not
    answer.

    ``fresh`` clears this paper engine's previous state in the database first (a paper run starts flat).
    ``status``, when given, is called every ``status_interval_s`` seconds with :func:`live_status` (the
    command line draws it as a status line).
    """
    ts = settings.trading
    duration = float(duration_s if duration_s is not None else ts.duration_s)
    if not (math.isfinite(duration) and duration > 0):  # a negative or NaN run length would end at once
        raise ConfigError("duration_s", duration_s, "a positive number of seconds (--duration)")
    strat = load_strategy(strategy or ts.strategy)
    store = SnapshotStore(resolve_url(database_url or settings.database.url.get_secret_value(), settings.home), "paper")
    if fresh:
        store.clear()
    engine, fix_venue = engine_on_venues(settings, [strat], store, venues)
    t0 = time.perf_counter()
    try:
        asyncio.run(_run_with_status(engine, duration, status, status_interval_s))
        if fix_venue is not None:
            wind_down(engine, fix_venue)
    finally:
        if fix_venue is not None:
            fix_venue.stop()
    out = engine.summary()
    out["strategy"] = strat.name
    out["duration_s"] = round(time.perf_counter() - t0, 2)
    out["database"] = engine.store.url.split("://", 1)[0] if engine.store else None
    out["snapshots"] = engine.store.snapshots if engine.store else 0
    if fix_venue is not None:
        counters = fix_venue.counters()
        out["fix"] = {k: counters[k] for k in ("sent", "received", "resent", "gaps", "rejected", "logons")}
    if engine.market is not None:
        out["underlying_spot"] = round(engine.market.spot, 4)
    if engine.store is not None:
        engine.store.close()
    return out
