"""The wheel in paper trading: :class:`WheelStrategy` on the trading engine with simulated venues (or FIX
venues), on an exchange calendar, every step persisted in the position database, resumable after a crash.

Time: on simulated venues the run keeps its own market clock, ``time_scale`` times faster than the wall clock
(default: one market day in three seconds), starting at the next session open of the calendar and, after a
restart, where the last run left it. Sessions of the calendar decide when the strategy's daily ``cycle`` runs
(``cycle_offset_s`` after the open) and when weekly options expire (the week's last session close). The
engine settles expiries and assignments itself (``trading.expiry``); the strategy hears them in
``on_settlement``. The synthetic market keeps ``weeks`` weekly expiries listed: each session close lists the
ones missing, with strikes around that day's spot, so a run of any length finds contracts to write. Over FIX
the wall clock is the market's (no compression) and the exchange's instruments are traded.

Persistence: the engine's own state (orders, fills, portfolio, audit) is snapshotted in the same database
as the wheel's tables (engine id ``wheel-<account>``); about once a second, and at every session close, the
runner snapshots the engine and copies what it holds into the wheel's tables: each fill once (by fill id),
each settlement once (with the shares it delivered), the positions and option legs, the market clock and
the account's daily snapshot. So the wheel's positions always equal the sum of its stored trades, and after a
kill the restarted run resumes from the engine's last snapshot, copies what the killed one had not, and
repairs the state machine (``WheelStrategy.reconcile``) before its first cycle.

Errors: a missing quote or spot (a data gap) before a cycle is logged with its reason and the cycle retried
with back-off (doubling, within the session); an order rejected by a venue or denied by risk is logged with
its reason and the cycle retried likewise (the strategy decides again on fresh quotes); an order still
unfilled at the session close is canceled and logged, and the next session decides again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from greekfire.core.db import resolve_url
from greekfire.core.errors import ConfigError, DataError
from greekfire.core.settings import Settings
from greekfire.strategies.paper import StatusHook, _run_with_status, engine_on_venues, wind_down
from greekfire.strategies.wheel import metrics as wheel_metrics
from greekfire.strategies.wheel.calendar import Sessions
from greekfire.strategies.wheel.config import WheelConfig, target_dte
from greekfire.strategies.wheel.db import DEFAULT_URL, SqlJournal, WheelDB
from greekfire.strategies.wheel.strategy import WheelStrategy
from greekfire.trading import report
from greekfire.trading.build import chain_id, chain_key, list_instruments, option_chain
from greekfire.trading.model import Instrument, InstrumentStats, option
from greekfire.trading.store import SnapshotStore
from greekfire.trading.strategy import StrategyContext
from greekfire.trading.synthetic import SyntheticMarket

log = logging.getLogger(__name__)

NS = 10**9
DAY_S = 86_400.0


class MarketClock:
    """ns since the epoch that run ``scale`` times faster than the wall clock from ``start_ns``."""

    def __init__(self, start_ns: int, scale: float) -> None:
        self.start_ns, self.scale, self._wall0 = int(start_ns), float(scale), time.time_ns()

    def now_ns(self) -> int:
        return self.start_ns + int((time.time_ns() - self._wall0) * self.scale)


def strike_grid(spot: float, width: float = 0.20, step: float = 5.0) -> list[float]:
    """Strikes every ``step`` (currency) within ``spot x (1 ± width)``."""
    lo, hi = math.ceil(spot * (1 - width) / step), math.floor(spot * (1 + width) / step)
    return [k * step for k in range(max(lo, 1), hi + 1)]


def expiries_ahead(sessions: Sessions, now_ns: int, weeks: int) -> list[datetime]:
    """The next ``weeks`` weekly expiries after ``now_ns`` (ns since the epoch; aware UTC datetimes)."""
    return [e for e in sessions.weekly_expiries(now_ns, weeks + 1) if e.timestamp() * NS > now_ns][:weeks]


def wheel_chain(symbol: str, spot: float, sessions: Sessions, now_ns: int, weeks: int,
                held: Iterable[int] = ()) -> list[Instrument]:
    """The instruments of a paper run: ``symbol`` (id 1), puts and calls around ``spot`` for the weekly
    expiries of ``weeks`` weeks from ``now_ns``, and every option id in ``held`` (the ones the saved engine
    state and the database refer to, expired ones included), rebuilt from its stable id, so a restarted run
    finds each position and order again."""
    chain = option_chain(symbol, expiries_ahead(sessions, now_ns, weeks), strike_grid(spot))
    have = {i.instrument_id for i in chain}
    for iid in sorted(set(held) - have):
        key = chain_key(iid)
        if key is None:
            continue
        day, strike, right = key
        inst = option(iid, symbol, strike, sessions.close_of(day), right, multiplier=100.0, tick_size=0.01)
        if chain_id(datetime.fromtimestamp(inst.expiry_ns / 1e9, UTC), strike, right) != iid:
            raise DataError("instrument_id", iid, "a saved option id this chain cannot list again")
        chain.append(inst)
    return chain


def model_open_interest(instruments: Iterable[Instrument], spot: float, peak: int = 5_000, floor: int = 100,
                        width: float = 0.10) -> dict[int, InstrumentStats]:
    """Open interest of a synthetic chain (contracts): ``peak`` at the money, falling as a Gaussian in
    log-moneyness of ``width`` to ``floor`` far out, so a wheel's liquidity filters see the synthetic market as
    a real chain looks (the volume comes from the prints the engine sees)."""
    out = {}
    for i in instruments:
        if i.is_option:
            x = math.log(i.strike / spot) / width
            out[i.instrument_id] = InstrumentStats(i.instrument_id, floor + int(round((peak - floor) * math.exp(-x * x))))
    return out


def saved_instrument_ids(store: SnapshotStore, db: WheelDB) -> set[int]:
    """Every instrument the engine's saved state (positions, closed ones included, and orders) and the
    database's positions refer to."""
    ids = {int(r["instrument_id"]) for r in db.positions()}
    snap = store.load()
    if snap is not None:
        ids |= {int(p["instrument_id"]) for p in snap["state"].get("portfolio", {}).get("positions", [])}
        ids |= {int(o["instrument_id"]) for o in snap["orders"]}
    return ids


def _position_rows(ctx: StrategyContext) -> list[dict[str, Any]]:
    """The account's open positions as the strategy's context shows them, one row each."""
    rows = []
    for iid, qty in ctx.positions.items():
        if not qty:
            continue
        p = ctx.position(iid)
        inst = ctx.instruments[iid]
        kind = "stock" if not inst.is_option else ("call" if inst.right > 0 else "put")
        rows.append({"instrument_id": iid, "instrument": inst.symbol, "symbol": inst.underlying, "kind": kind,
                     "strike": inst.strike, "expiry_ns": inst.expiry_ns, "multiplier": inst.multiplier,
                     "qty": p.qty, "avg_cost": p.avg_cost, "realized_pnl": p.realized_pnl, "fees": p.fees,
                     "mark": ctx.marks.get(iid)})
    return rows


class WheelRunner:
    """Drives one paper run on the engine's loop (a poll hook): cycles on the calendar, session closes,
    the copy into the database, retries. ``engine`` is typed ``Any``: strategies do not import the engine."""

    def __init__(self, engine: Any, strategy: WheelStrategy, db: WheelDB, journal: SqlJournal, sessions: Sessions,
                 run_id: str, *, symbols: Iterable[str] | None = None, cycle_offset_s: float = 1800.0,
                 sync_interval_s: float = 1.0, backoff_s: float = 600.0, weeks: int = 0) -> None:
        self.engine, self.strategy, self.db, self.journal, self.sessions = engine, strategy, db, journal, sessions
        self.weeks = weeks  # weekly expiries kept listed ahead on a synthetic market (0: what was listed stays)
        self.listed: list[str] = []  # the expiries listed during the run (ISO dates)
        self.symbols = list(symbols) if symbols is not None else list(strategy.config.symbols)
        self.run_id = run_id
        self.cycle_offset_ns = int(cycle_offset_s * NS)
        self.sync_interval_s = sync_interval_s
        self.backoff_ns = int(backoff_s * NS)
        self.next_cycle = 0
        self.cycle_close = 0  # the close of the session the next cycle belongs to (retries stop there)
        self.close_at = 0  # the next session close to process (snapshot of the day)
        self._retry_ns = self.backoff_ns
        self._last_sync = 0.0
        self.cycles = 0
        self.retries: list[str] = []
        self.rejections: list[str] = []
        self.repairs: list[str] = []
        self.db_repairs: list[str] = []
        self.errors = 0
        self._in_cycle = False
        self._retry_after_cycle: str | None = None
        engine.bus.subscribe("orders", self._on_order, "wheel-runner")

    # ---------------------------------------------------------------- schedule
    def schedule(self, now_ns: int) -> None:
        """The next cycle: this session's open + offset if still ahead (or under way), else the next session's.
        The first call also sets the first session close to process."""
        _, o, c = self.sessions.current_or_next(now_ns)
        if not self.close_at:
            self.close_at = c
        if now_ns >= c - self.cycle_offset_ns // 4:
            _, o, c = self.sessions.current_or_next(self.sessions.next_open(now_ns))
        self.next_cycle = max(o + self.cycle_offset_ns, now_ns)
        self.cycle_close = c
        self._retry_ns = self.backoff_ns

    def _retry(self, now_ns: int, why: str) -> None:
        at = now_ns + self._retry_ns
        if at >= self.cycle_close:
            msg = f"{why}: no retry before the close, next session decides"
            self.schedule(self.cycle_close + 1)
        else:
            msg = f"{why}: retry in {self._retry_ns / NS / 60:.0f} market minutes"
            self.next_cycle = at
            self._retry_ns *= 2
        log.warning("wheel: %s", msg)
        self.retries.append(msg)

    def _on_order(self, ev: Any) -> None:
        if str(ev.new).lower() not in ("rejected", "denied"):
            return
        o = self.strategy.ctx.order(ev.client_id)  # None unless the wheel's own
        if o is None:
            return
        inst = self.engine.instruments.get(o.instrument_id)
        msg = f"order {ev.client_id} ({inst.symbol if inst else o.instrument_id}) {str(ev.new).lower()}: {o.reason or '?'}"
        self.rejections.append(msg)
        if str(ev.new).lower() == "denied":
            wheel_metrics.record_denial(str(o.reason or ""))  # a risk reason code
        if self._in_cycle:  # the cycle under way schedules the retry when it ends
            if str(ev.new).lower() == "rejected":  # a denial counts only if the strategy gave up (strategy.denials)
                self._retry_after_cycle = msg
        elif self.next_cycle > ev.ts_ns + self._retry_ns:  # a venue's late reject: retry unless one comes sooner
            self._retry(ev.ts_ns, msg)

    # ---------------------------------------------------------------- the poll hook
    def on_poll(self, now_ns: int) -> None:
        """Called by the engine before each poll with its clock (ns)."""
        try:
            if self.close_at and now_ns >= self.close_at:
                self.close_session(now_ns)
            if self.next_cycle and now_ns >= self.next_cycle:
                self.cycle(now_ns)
            if time.monotonic() - self._last_sync >= self.sync_interval_s:
                self.sync(now_ns)
        except Exception:  # the run goes on; the next poll tries again
            self.errors += 1
            log.exception("wheel runner failed at %s", datetime.fromtimestamp(now_ns / 1e9, UTC).isoformat())

    def data_gap(self) -> str | None:
        """Why the strategy cannot decide now (no spot, no two-sided option quote), or None."""
        ctx = self.strategy.ctx
        for sym in self.symbols:
            if sym not in ctx.spots:
                return f"data gap: no spot of {sym} yet"
            quoted = any(q.bid == q.bid and q.bid > 0 and q.ask == q.ask for iid, q in ctx.quotes.items()
                         if ctx.instruments[iid].is_option and ctx.instruments[iid].underlying == sym)
            if not quoted:
                return f"data gap: no two-sided option quote of {sym}"
        return None

    def cycle(self, now_ns: int) -> None:
        """Once per session: reconcile, then the strategy's cycle; a data gap or an error is retried."""
        gap = self.data_gap()
        if gap is not None:
            self._retry(now_ns, gap)
            return
        self.sync(now_ns)
        self.check_db(now_ns)
        repaired = self.strategy.reconcile()
        if repaired:
            log.warning("wheel: reconcile repaired %s", repaired)
            self.repairs.extend(repaired)
            wheel_metrics.record_reconcile(repaired)
        self._in_cycle, self._retry_after_cycle = True, None
        denied = len(self.strategy.denials)
        try:
            self.strategy.cycle(now_ns)
        except Exception as exc:
            self.errors += 1
            log.exception("wheel: cycle failed")
            self._retry(now_ns, f"cycle failed: {type(exc).__name__}: {exc}")
            return
        finally:
            self._in_cycle = False
        if len(self.strategy.denials) > denied and self._retry_after_cycle is None:  # not one the wheel resized
            self._retry_after_cycle = self.rejections[-1] if self.rejections else "an order was denied"
        self.cycles += 1
        wheel_metrics.record_cycle(now_ns)
        self.engine.end_batch()
        if self._retry_after_cycle is not None:
            self._retry(now_ns, self._retry_after_cycle)
        else:
            self.schedule(self.cycle_close + 1)

    def close_session(self, now_ns: int) -> None:
        """The session closed: cancel what is unfilled, end the day on the engine, copy, snapshot the day."""
        eng = self.engine
        for o in self.strategy.ctx.open_orders():
            inst = eng.instruments.get(o.instrument_id)
            msg = f"order {o.client_id} ({inst.symbol if inst else o.instrument_id}) unfilled at the close: canceled"
            log.info("wheel: %s", msg)
            self.retries.append(msg)
        eng.cancel_all(self.strategy.name)
        eng.end_of_day()
        self.sync(now_ns)
        day = datetime.fromtimestamp(self.close_at / 1e9, UTC).date()
        equity, cash = report.account(eng)
        self.journal.snapshot(day, equity, cash, {r["instrument"]: r["qty"] for r in _position_rows(self.strategy.ctx)})
        self.close_at = self.sessions.current_or_next(now_ns)[2]  # after a close: the next session's
        if self.close_at <= now_ns:
            self.close_at = self.sessions.current_or_next(self.sessions.next_open(now_ns))[2]
        if self.next_cycle <= now_ns:  # a cycle due in a closed market (it never ran): the next session's
            self.schedule(now_ns)
        self.list_expiries(now_ns)

    def list_expiries(self, now_ns: int) -> list[Instrument]:
        """Keep ``weeks`` weekly expiries listed ahead of ``now_ns`` on a synthetic market, as an exchange lists
        a new weekly each week: each missing expiry is listed with strikes around today's spot, on the engine,
        its simulated venues and the market. Over FIX the exchange lists. Returns the new options."""
        market = self.engine.market
        if market is None or self.weeks <= 0:
            return []
        new: list[Instrument] = []
        for sym in self.symbols:
            have = {i.expiry_ns for i in self.engine.instruments.values() if i.is_option and i.underlying == sym}
            missing = [e for e in expiries_ahead(self.sessions, now_ns, self.weeks) if int(e.timestamp() * NS) not in have]
            if not missing:
                continue
            listed = list_instruments(self.engine, option_chain(sym, missing, strike_grid(market.spot)), now_ns)
            self.engine.instrument_stats.update(model_open_interest(listed, market.spot))
            days = [e.date().isoformat() for e in missing]
            self.listed.extend(days)
            log.info("wheel: listed %s expiries %s (%d options, strikes around %.2f)", sym, ", ".join(days),
                     len(listed), market.spot)
            new.extend(listed)
        return new

    # ---------------------------------------------------------------- the database
    def sync(self, now_ns: int) -> None:
        """Snapshot the engine, then copy its fills, settlements, positions and clock into the wheel's tables
        (idempotent: each trade once by id)."""
        eng = self.engine
        self._last_sync = time.monotonic()
        eng.snapshot(now_ns)
        store = eng.store
        insts = eng.instruments
        fills = []
        for f in store.fills():
            inst = insts.get(f["instrument_id"])
            fills.append({"trade_id": f["fill_id"], "ts_ns": f["ts_ns"], "symbol": inst.underlying if inst else "?",
                          "instrument": inst.symbol if inst else str(f["instrument_id"]),
                          "instrument_id": f["instrument_id"], "side": f["side"], "qty": f["qty"],
                          "price": f["price"], "fee": f["fee"], "kind": "fill"})
        self.db.record_trades(self.run_id, fills, "fill")
        settled = []
        for e in store.audit_entries("settlement"):
            d = e["data"]
            inst = insts.get(d["instrument_id"])
            name = inst.symbol if inst else e["ref"]
            base = f"settle:{d['instrument_id']}:{d['ts_ns']}"
            settled.append({"trade_id": base, "ts_ns": d["ts_ns"], "symbol": d["underlying"], "instrument": name,
                            "instrument_id": d["instrument_id"], "side": 1 if d["qty"] < 0 else -1,
                            "qty": abs(d["qty"]), "price": 0.0, "fee": 0.0, "kind": d["kind"]})
            if d["underlying_qty"]:
                settled.append({"trade_id": base + ":delivery", "ts_ns": d["ts_ns"], "symbol": d["underlying"],
                                "instrument": d["underlying"], "instrument_id": d["underlying_id"],
                                "side": 1 if d["underlying_qty"] > 0 else -1, "qty": abs(d["underlying_qty"]),
                                "price": d["price"], "fee": 0.0, "kind": d["kind"]})
        self.db.record_trades(self.run_id, settled, "settlement")
        self.db.set_positions(_position_rows(self.strategy.ctx), now_ns)
        market = eng.market
        self.db.save_account_state({"clock_ns": now_ns, "spot": market.spot if market is not None else None,
                                    "run_id": self.run_id})

    def check_db(self, now_ns: int) -> list[str]:
        """The database's positions against the engine's (they must agree after a copy); a difference is logged
        and repaired by copying again."""
        want = {iid: qty for iid, qty in self.strategy.ctx.positions.items() if qty}
        have = {r["instrument_id"]: r["qty"] for r in self.db.positions()}
        diffs = [f"instrument {i}: database {have.get(i, 0)}, engine {want.get(i, 0)}"
                 for i in sorted(set(want) | set(have)) if want.get(i, 0) != have.get(i, 0)]
        if diffs:
            log.warning("wheel: positions in the database differ from the engine's: %s (copied again)", diffs)
            self.db_repairs.extend(diffs)
            self.sync(now_ns)
        return diffs


def _paper_settings(settings: Settings, scale: float) -> Settings:
    """The trading settings on a clock ``scale`` times faster: timers, snapshots and the synthetic flow keep
    their wall-clock pace."""
    ts = settings.trading
    upd = {"timer_interval_s": ts.timer_interval_s * scale, "snapshot_interval_s": ts.snapshot_interval_s * scale,
           "background_rate_hz": ts.background_rate_hz / scale}
    return settings.model_copy(update={"trading": ts.model_copy(update=upd)})


def run_wheel_paper(
    settings: Settings, config: WheelConfig, db_url: str | None = None, duration_s: float | None = None,
    venues: int | str | None = None, *, account: str = "paper", time_scale: float = DAY_S / 3.0, weeks: int | None = None,
    calendar: str = "XNYS", spot: float = 100.0, fresh: bool = False, status: StatusHook | None = None,
    status_interval_s: float = 1.0,
) -> dict[str, Any]:
    """Paper-trade the wheel for ``duration_s`` wall seconds (default ``trading.duration_s``) and return a
    summary: the engine's (orders, fills, P&L...) plus ``wheel``: run id, market clock start/end (ISO),
    cycles, settlements, states, positions (instrument symbol -> qty, the engine's and the database's),
    retries, rejections and reconcile repairs.

    ``db_url``: the position database (default ``sqlite:///.greekfire/wheel.db`` under ``settings.home``);
    ``venues``: simulated venues (a number; default ``trading.venues``) or ``"fix"``; ``account``: whose
    positions (a restart with the same account resumes them); ``time_scale``: market seconds per wall second
    (simulated venues); ``weeks``: weekly expiries kept listed ahead (default: six, or enough to reach ``wheel.dte``;
    each session close lists the next ones, strikes around that day's spot); ``spot``: the synthetic underlying's first price
    (currency; a resumed run continues from its saved one); ``fresh``: forget the account first.
    ConfigError for a bad duration, venues or calendar; UnavailableError when the database cannot be used.
    """
    duration = float(duration_s if duration_s is not None else settings.trading.duration_s)
    if not (math.isfinite(duration) and duration > 0):
        raise ConfigError("duration_s", duration_s, "a positive number of seconds (--duration)")
    if not (math.isfinite(time_scale) and time_scale >= 1):
        raise ConfigError("time_scale", time_scale, "market seconds per wall second, >= 1")
    if not config.symbols:
        raise ConfigError("wheel.symbols", config.symbols, "at least one symbol")
    use_fix = isinstance(venues, str)
    symbol = next(iter(config.symbols))
    if len(config.symbols) > 1 and not use_fix:
        log.warning("wheel paper: the synthetic market has one underlying; trading %s only (not %s)", symbol,
                    ", ".join(list(config.symbols)[1:]))
        config = config.model_copy(update={"symbols": {symbol: config.symbols[symbol]}})
    url = resolve_url(db_url or DEFAULT_URL, settings.home)
    db = WheelDB(url, account=account, echo=settings.database.echo)
    store = SnapshotStore(url, f"wheel-{account}", echo=settings.database.echo)
    if fresh:
        db.clear()
        store.clear()
    db.ensure_account(settings.trading.starting_cash)
    interrupted = db.interrupt_runs()
    saved = db.account_state()
    sessions = Sessions(calendar)
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    journal = db.journal(run_id)
    strategy = WheelStrategy(config, journal, name="wheel")
    start: int | None = None
    if use_fix:
        clock_ns, scale, market, instruments = None, 1.0, None, None
        tsettings = settings
    else:
        scale = float(time_scale)
        start = int(saved.get("clock_ns") or sessions.current_or_next(time.time_ns())[1])
        clock = MarketClock(start, scale)
        clock_ns = clock.now_ns
        s0 = float(saved.get("spot") or spot)
        if weeks is None:  # enough weekly expiries that the configured days to expiry can be written
            weeks = max(6, target_dte(config, symbol)[0] // 7 + 2)
        instruments = wheel_chain(symbol, s0, sessions, start, weeks, saved_instrument_ids(store, db))
        tsettings = _paper_settings(settings, scale)
        market = SyntheticMarket(instruments, spot=s0, time_scale=1.0, step_ms=20.0 * scale,
                                 seed=settings.trading.seed + len(interrupted) + len(db.runs()), now_ns=start)
    db.start_run(run_id, "paper", {"config": config.model_dump(mode="json"), "venues": venues, "time_scale": scale,
                                   "calendar": calendar, "resumed_after": interrupted})
    engine, fix_venue = engine_on_venues(tsettings, [strategy], store, venues, engine_id=f"wheel-{account}",
                                         instruments=instruments, market=market, clock_ns=clock_ns)
    engine.expiry.rules = dataclasses.replace(engine.expiry.rules, early=True)  # equity options are American
    engine.executions.latency_scale = scale  # venue latencies in wall-clock microseconds, not market time
    if market is not None:
        engine.instrument_stats.update(model_open_interest(instruments or (), market.spot))
    runner = WheelRunner(engine, strategy, db, journal, sessions, run_id, symbols=config.symbols, cycle_offset_s=1800.0,
                         weeks=weeks or 0)
    now = engine.clock_ns()
    start = start if start is not None else now
    start_diffs = runner.check_db(now)  # what the last run had not copied (a kill between snapshot and copy)
    wheel_metrics.start_run(config.symbols)
    repaired = strategy.reconcile()
    runner.repairs.extend(repaired)
    wheel_metrics.record_reconcile(repaired)
    if repaired:
        log.warning("wheel: reconcile at start repaired %s", repaired)
    runner.schedule(now)
    engine.poll_hooks.append(runner.on_poll)
    t0 = time.perf_counter()
    status_fn = None
    if status is not None:
        def status_fn(st: dict[str, Any]) -> None:
            st["market_time"] = datetime.fromtimestamp(engine.clock_ns() / 1e9, UTC).isoformat(timespec="minutes")
            st["states"] = {k: str(v) for k, v in journal.states().items()}
            status(st)
    ok = False
    try:
        asyncio.run(_run_with_status(engine, duration, status_fn, status_interval_s))
        if fix_venue is not None:
            wind_down(engine, fix_venue)
        runner.sync(engine.clock_ns())
        summary = _summary(engine, runner, journal, start, run_id, start_diffs, t0)
        if fix_venue is not None:
            counters = fix_venue.counters()
            summary["fix"] = {k: counters[k] for k in ("sent", "received", "resent", "gaps", "rejected", "logons")}
        db.end_run(run_id, "finished", {k: summary[k] for k in ("fills", "pnl", "equity", "wheel")})
        ok = True
    finally:
        if fix_venue is not None:
            fix_venue.stop()
        if not ok:
            with contextlib.suppress(Exception):
                db.end_run(run_id, "failed")
        store.close()
        db.close()
    return summary


def _summary(engine: Any, runner: WheelRunner, journal: SqlJournal, start_ns: int | None,
             run_id: str, start_diffs: list[str], t0: float) -> dict[str, Any]:
    out = engine.summary()
    insts = engine.instruments
    out["duration_s"] = round(time.perf_counter() - t0, 2)
    out["wheel"] = {
        "run_id": run_id, "account": runner.db.account, "database": runner.db.url.split("://", 1)[0].split("+")[0],
        "market_start": datetime.fromtimestamp((start_ns or 0) / 1e9, UTC).isoformat(timespec="minutes"),
        "market_end": datetime.fromtimestamp(engine.clock_ns() / 1e9, UTC).isoformat(timespec="minutes"),
        "cycles": runner.cycles, "expiries_listed": runner.listed,
        "settlements": [{"instrument": insts[s.instrument_id].symbol, "kind": s.kind.value, "qty": s.qty,
                         "shares": s.underlying_qty, "early": s.early, "reason": s.reason}
                        for s in engine.expiry.settlements],
        "states": {k: str(v) for k, v in journal.states().items()},
        "positions": {insts[i].symbol: q for i, q in sorted(runner.strategy.ctx.positions.items()) if q},
        "positions_by_id": {str(i): q for i, q in sorted(runner.strategy.ctx.positions.items()) if q},
        "db_positions": {r["instrument"]: r["qty"] for r in runner.db.positions()},
        "premium": round(journal.premium(), 2),
        "retries": runner.retries[-20:], "rejections": runner.rejections[-20:],
        "reconcile_repairs": runner.repairs, "db_repairs_at_start": start_diffs, "errors": runner.errors,
    }
    if engine.market is not None:
        out["underlying_spot"] = round(engine.market.spot, 4)
    return out
