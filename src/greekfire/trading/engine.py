"""The trading engine: one event loop, one message bus, and the path market event -> decision -> risk ->
router -> venue -> fills -> positions, P&L and Greeks.

This module is the loop; each other job is a part of its own: order entry and mass quotes (``entry``), held
stops (``stops``), venue events (``executions``), latency (``latency``), recovery (``recovery``), limits the
engine enforces itself (``guard``), option expiry and assignment (``expiry``), reports (``report``), the
strategies' contexts (``context``) and timers (``timers``). Strategies hear the bus (``quotes.<symbol>``,
``trades.<symbol>``, ``books.<symbol>``, ``fills.<strategy>``, ``settlements``, ``timers``) and act through
their context. Dispatch is synchronous inside the loop, so the latency of the internal path (market event
in -> order handed to the venue) is measured exactly.
Build it with :func:`greekfire.trading.build_engine` so tests run what production runs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from hdrh.histogram import HdrHistogram

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter
from greekfire.core.settings import Settings
from greekfire.trading import guard, recovery, report
from greekfire.trading.audit import AuditLog
from greekfire.trading.bus import MALFORMED, MessageBus
from greekfire.trading.context import attach
from greekfire.trading.denials import Denial
from greekfire.trading.entry import OrderEntry
from greekfire.trading.executions import ExecutionHandler
from greekfire.trading.expiry import ExpirySettler
from greekfire.trading.latency import LatencyRecorder
from greekfire.trading.model import (
    BookUpdate,
    Instrument,
    InstrumentStats,
    OrderType,
    Quote,
    Side,
    TimeInForce,
    TradeTick,
    VenueEvent,
)
from greekfire.trading.oms import OMS
from greekfire.trading.orders import Order
from greekfire.trading.portfolio import Portfolio
from greekfire.trading.pricing import PricingInputs
from greekfire.trading.risk import RiskEngine
from greekfire.trading.router import SmartOrderRouter, VenueStats
from greekfire.trading.store import SnapshotStore
from greekfire.trading.strategy import Strategy
from greekfire.trading.timers import Timers
from greekfire.trading.venues import Venue

log = logging.getLogger(__name__)

STRATEGY_ERRORS = counter("greekfire_trading_strategy_errors", "exceptions raised by strategies", ["strategy"])


class TradingEngine:
    """Kernel of the trading system. ``clock_ns`` gives the time (default: the wall clock, ns since epoch)."""

    def __init__(
        self, settings: Settings, *, instruments: Iterable[Instrument], venues: Iterable[Venue],
        strategies: Iterable[Strategy] = (), store: SnapshotStore | None = None,
        clock_ns: Callable[[], int] | None = None, engine_id: str = "paper",
    ) -> None:
        ts = settings.trading
        self.settings = settings
        self.engine_id = engine_id
        self.clock_ns = clock_ns or time.time_ns
        self.bus = MessageBus()
        self.audit = AuditLog(ts.audit_file)
        self.pricing = PricingInputs()
        self.portfolio = Portfolio(ts.starting_cash, pricing=self.pricing)
        self.oms = OMS(self.bus, self.audit)
        self.risk = RiskEngine(ts.risk, self.portfolio, on_kill=self._on_kill)
        self.router = SmartOrderRouter()
        self.store = store
        self.instruments: dict[int, Instrument] = {}
        self.by_symbol: dict[str, Instrument] = {}
        self.last_quotes: dict[int, Quote] = {}
        self.instrument_stats: dict[int, InstrumentStats] = {}  # open interest / volume, where a source reports them
        self._spot_of: dict[int, str] = {}  # instrument id of an underlying -> its name
        self._quote_topic: dict[int, str] = {}; self._trade_topic: dict[int, str] = {}  # noqa: E702
        self._book_topic: dict[int, str] = {}
        self.venues: dict[str, Venue] = {}
        self._venue_tops: dict[str, dict[int, Quote]] = {}  # each venue's last quote per instrument
        self.venue_quotes: dict[str, Mapping[int, Quote]] = {}  # the same, read-only (the strategies' view)
        self.latency_recorder = LatencyRecorder()
        self.entry = OrderEntry(
            engine_id=engine_id, clock_ns=self.clock_ns, risk=self.risk, portfolio=self.portfolio, oms=self.oms,
            bus=self.bus, audit=self.audit, router=self.router, instruments=self.instruments, venues=self.venues,
            latency=self.latency_recorder,
        )
        self._held_stops = self.entry.stops.held  # the same dict for the engine's life: one lookup per quote
        self.executions = ExecutionHandler(
            oms=self.oms, portfolio=self.portfolio, router=self.router, bus=self.bus, clock_ns=self.clock_ns,
            sent_ns=self.entry.sent_ns, posted=self.entry.posted, cancel=self.entry.cancel, malformed=self._malformed,
        )
        self.oms.on_change = self.executions.track_order
        self.timers = Timers(self._call_timer)
        self.expiry = ExpirySettler(self)  # options expire, are exercised or assigned (before strategies hear timers)
        for inst in instruments:
            self.add_instrument(inst)
        for v in venues:
            self.add_venue(v)
        self.strategies: list[Strategy] = []
        for s in strategies:
            self.add_strategy(s)
        self.poll_hooks: list[Callable[[int], None]] = []
        self.market: Any = None  # the synthetic market of a paper engine, if any
        self._after_batch: list[Callable[[], None]] = []
        self.last_snapshot_ns = 0
        self._timer_ticks = 0
        self.events = 0
        self.malformed = 0
        self.running = False

    # ---------------------------------------------------------------- wiring
    def add_instrument(self, inst: Instrument) -> None:
        """Trade ``inst``: the portfolio values it, the bus gets its topics."""
        self.instruments[inst.instrument_id] = inst
        self.by_symbol[inst.symbol] = inst
        self.portfolio.add_instrument(inst)
        if not inst.is_option:
            self._spot_of[inst.instrument_id] = inst.underlying
        self._quote_topic[inst.instrument_id] = f"quotes.{inst.symbol}"
        self._trade_topic[inst.instrument_id] = f"trades.{inst.symbol}"
        self._book_topic[inst.instrument_id] = f"books.{inst.symbol}"

    def add_venue(self, venue: Venue) -> None:
        """Trade through ``venue``: the router scores it from its fees and what it shows."""
        self.venues[venue.name] = venue
        stats = VenueStats(venue.name, *venue.fees())  # (maker, taker) fees
        self.router.add_venue(stats)
        self._venue_tops[venue.name] = stats.top
        self.venue_quotes[venue.name] = MappingProxyType(stats.top)

    def add_strategy(self, strategy: Strategy) -> None:
        """Attach a strategy: it gets its context, and its hooks are subscribed on the bus under its name."""
        attach(self, strategy)
        self.strategies.append(strategy)
        STRATEGY_ERRORS.labels(strategy.name)  # the series exists (at 0) before the first error

    def _call(self, strategy: Strategy, hook: str) -> None:
        self._isolated(f"strategy:{strategy.name}", getattr(strategy, hook))

    def _call_timer(self, owner: str, fn: Callable[[int], None], now_ns: int) -> None:
        self._isolated(f"strategy:{owner}", lambda: fn(now_ns))

    def _isolated(self, owner: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            self.bus.errors[owner] += 1
            if owner.startswith("strategy:"):
                STRATEGY_ERRORS.labels(owner[9:]).inc()
            log.exception("%s failed in %s", owner, getattr(fn, "__qualname__", fn))

    # ---------------------------------------------------------------- orders (order entry does the work)
    def new_order(
        self, instrument_id: int, side: Side, qty: int, price_ticks: int | None = None,
        ord_type: OrderType = OrderType.LIMIT, tif: TimeInForce = TimeInForce.GTC, **kw: Any,
    ) -> Order:
        """A new INITIALIZED order with a fresh client id (unique across restarts); prices in integer ticks."""
        return self.entry.new_order(instrument_id, side, qty, price_ticks, ord_type, tif, **kw)

    def ref_price(self, instrument_id: int) -> float | None:
        """Reference (mid) price of an instrument in currency, None before the first two-sided quote."""
        return self.portfolio.marks.get(instrument_id)

    def submit(self, order: Order) -> list[Order]:
        """Risk-check, route and send an order. Returns the orders created (DENIED, one, or sweep children)."""
        return self.entry.submit(order)

    def amend(self, client_id: str, qty: int, price_ticks: int) -> Denial | None:
        """Change a live order's total quantity and limit (ticks); its denial, or None (see OrderEntry.amend)."""
        return self.entry.amend(client_id, qty, price_ticks)

    def amend_many(self, changes: Sequence[tuple[Order, int, int]]) -> list[Denial | None]:
        """A mass quote: ``(order, new total qty, new limit in ticks)`` each; a denial or None per change."""
        return self.entry.amend_many(changes)

    def cancel(self, client_id: str) -> bool:
        """Request a cancel; True when a request was sent (or a held stop was canceled at once)."""
        return self.entry.cancel(client_id)

    def cancel_all(self, strategy_id: str | None = None, instrument_id: int | None = None) -> int:
        """Cancel every open order (optionally of one strategy / instrument); returns how many."""
        return self.entry.cancel_all(strategy_id, instrument_id)

    def after_batch(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once at this batch's end (e.g. a full re-price); its orders are not timed as latency."""
        if fn not in self._after_batch:
            self._after_batch.append(fn)

    def kill(self, reason: str = "manual") -> None:
        """Manual kill switch: HALTED, cancel everything, block new orders until :meth:`reset_kill`."""
        self.risk.kill(reason)

    def reset_kill(self) -> None:
        """Clear the kill switch (trading ACTIVE again)."""
        self.risk.reset_kill()
        self.bus.publish("risk", {"event": "kill_reset"})

    def _on_kill(self, reason: str) -> None:
        guard.on_kill(self, reason)

    # ---------------------------------------------------------------- events in
    def on_market(self, msg: Any) -> None:
        """One market-data event (Quote, TradeTick, BookUpdate); a malformed one is counted and dropped."""
        lat = self.latency_recorder
        lat.start()
        self.events += 1
        try:
            if type(msg) is Quote:
                self._on_quote(msg)
            elif type(msg) is TradeTick:
                self._on_trade(msg)
            elif type(msg) is BookUpdate:
                if msg.instrument_id not in self.instruments:
                    raise DataError("instrument_id", msg.instrument_id, "unknown instrument")
                self.bus.publish(self._book_topic[msg.instrument_id], msg)
            else:
                raise DataError("event", type(msg).__name__, "not a Quote, TradeTick or BookUpdate")
        except DataError as exc:
            self._malformed("market", exc)
        finally:
            lat.t0 = 0

    def _malformed(self, topic: str, exc: Exception) -> None:
        self.malformed += 1
        MALFORMED.labels(topic).inc()
        if self.malformed <= 10 or self.malformed % 1000 == 0:  # never a log line per bad event in a flood
            log.warning("malformed event dropped (%d so far): %s", self.malformed, exc)

    def _on_quote(self, q: Quote) -> None:
        # the hot path: plain dict work only, no pricing (Greeks are revalued once at the batch end)
        iid = q.instrument_id
        topic = self._quote_topic.get(iid)
        if topic is None:
            raise DataError("instrument_id", iid, "unknown instrument")
        bid, ask = q.bid, q.ask
        if bid == bid and ask == ask:  # two-sided (NaN marks an empty side)
            if not 0.0 < bid <= ask < math.inf:
                raise DataError("bid/ask", (bid, ask), "need 0 < bid <= ask < inf")
            pf = self.portfolio
            mid = 0.5 * (bid + ask)
            pf.marks[iid] = mid
            und = self._spot_of.get(iid)
            if und is not None:
                pf.spots[und] = mid
                pf._dirty.add(und)
        elif (bid == bid and not 0.0 < bid < math.inf) or (ask == ask and not 0.0 < ask < math.inf):
            raise DataError("bid/ask", (bid, ask), "quote prices must be finite and > 0")
        self.last_quotes[iid] = q
        tops = self._venue_tops.get(q.venue)
        if tops is not None:  # the router's displayed-liquidity view, written in place (no call, no tuple per quote)
            tops[iid] = q
        held = self._held_stops
        if held:
            stops = held.get(iid)
            if stops:
                ref = self.portfolio.marks.get(iid)
                if ref is not None:
                    self.entry.stops.check(ref, stops, self.clock_ns())
        self.bus.publish(topic, q)

    def _on_trade(self, t: TradeTick) -> None:
        topic = self._trade_topic.get(t.instrument_id)
        if topic is None:
            raise DataError("instrument_id", t.instrument_id, "unknown instrument")
        if not (t.price > 0 and t.qty > 0):
            raise DataError("trade", (t.price, t.qty), "price and qty must be > 0")
        self.bus.publish(topic, t)

    def on_venue_event(self, ev: VenueEvent) -> None:
        """One execution event from a venue (ack, fill, cancel...); unknown or bad ones are counted."""
        self.events += 1
        self.executions.on_event(ev)

    def process(self, events: Iterable[Any]) -> None:
        """Handle a batch of events (market data and venue events), then revalue once at the batch end."""
        perf = time.perf_counter_ns
        lat = self.latency_recorder
        on_quote, on_market, on_venue = self._on_quote, self.on_market, self.on_venue_event
        for ev in events:
            t = type(ev)
            if t is Quote:  # the hot path, inlined: no extra call layer per event
                self.events += 1
                lat.t0 = perf()
                lat.first_pending = True
                try:
                    on_quote(ev)
                except DataError as exc:
                    self._malformed("market", exc)
                lat.t0 = 0
            elif t is VenueEvent:
                on_venue(ev)
            else:
                on_market(ev)
        self.end_batch()

    def end_batch(self) -> None:
        """Run after-batch work, revalue Greeks of the underlyings that moved, refresh VaR after fills, and
        publish the portfolio."""
        while self._after_batch:
            fns, self._after_batch = self._after_batch, []
            for fn in fns:
                self._isolated("after_batch", fn)
        pf = self.portfolio
        moved = pf.revalue(self.clock_ns())
        ex = self.executions
        filled = ex.risk_dirty  # set by fills in this batch
        if filled or (moved and pf.positions):
            self.risk.refresh(self.clock_ns())
            ex.risk_dirty = False
        if (moved or filled) and self.bus.has_subscribers("portfolio"):
            report.publish_portfolio(self)

    # ---------------------------------------------------------------- timers, end of day, persistence
    def on_timer(self, now_ns: int | None = None) -> None:
        """Timers: strategies, GTD expiry, continuous risk (stop loss, daily loss, drawdown), snapshots."""
        now = now_ns or self.clock_ns()
        self._timer_ticks += 1
        self.bus.publish("timers", now)
        guard.expire_gtd(self, now)
        # about once a second a full Monte Carlo revaluation, never per event
        mc = self._timer_ticks % max(1, int(round(1.0 / self.settings.trading.timer_interval_s))) == 0
        guard.watch(self, now, monte_carlo=mc)
        report.publish_metrics(self)
        interval = int(self.settings.trading.snapshot_interval_s * 1e9)
        if self.store is not None and now - self.last_snapshot_ns >= interval:
            self.snapshot(now)

    def end_of_day(self) -> None:
        """Close the trading day: venues expire DAY orders, the daily-loss baseline restarts from equity."""
        guard.end_of_day(self)

    def snapshot(self, now_ns: int | None = None) -> None:
        """Write the state to the store in one transaction (orders changed, new fills, audit, portfolio)."""
        recovery.snapshot(self, now_ns)

    def restore(self) -> bool:
        """Resume from the store's last snapshot; True when there was one. Call before :meth:`reconcile`."""
        return recovery.restore(self)

    def reconcile(self) -> dict[str, Any]:
        """After a (re)connect: apply missed venue fills once, adopt lost orders, close orders the venue no
        longer has. Returns counts per venue."""
        return recovery.reconcile(self)

    # ---------------------------------------------------------------- loop
    def start(self) -> None:
        """Start: every strategy's ``on_start``."""
        self.running = self.entry.accepting = True
        for s in self.strategies:
            self._call(s, "on_start")

    def stop(self) -> None:
        """Stop: every strategy's ``on_stop``, exact risk figures, a last snapshot."""
        for s in self.strategies:
            self._call(s, "on_stop")
        self.running = self.entry.accepting = False  # winding down: strategies' new orders are denied STOPPED
        self.risk.refresh()  # exact figures for the final summary
        self.risk.compute_mc_var()
        self.snapshot()

    def poll_once(self, now_ns: int | None = None) -> int:
        """Poll every venue once and process what arrived as one batch, then fire the strategies' due
        timers; returns the event count."""
        now = now_ns or self.clock_ns()
        for hook in self.poll_hooks:
            hook(now)
        batch: list[Any] = []
        for v in self.venues.values():
            batch.extend(v.poll(now))
        if batch:
            self.process(batch)
        heap = self.timers.heap
        if heap and heap[0][0] <= now:
            self.timers.fire_due(now)
            self.end_batch()
        return len(batch)

    async def run(self, duration_s: float, *, poll_interval_s: float = 0.0005) -> None:
        """Run the loop for ``duration_s`` seconds: poll venues, fire timers, snapshot; then stop."""
        # what is alive now lives all run: out of the collector's scans (no full collection stalls it for ms)
        gc.collect()
        gc.freeze()
        self.start()
        timer_ns = int(self.settings.trading.timer_interval_s * 1e9)
        t_end = time.monotonic() + duration_s
        next_timer = self.clock_ns() + timer_ns
        try:
            while time.monotonic() < t_end:
                now = self.clock_ns()
                self.poll_once(now)
                if now >= next_timer:
                    self.on_timer(now)
                    next_timer = now + timer_ns
                await asyncio.sleep(poll_interval_s)
        finally:
            self.stop()

    # ---------------------------------------------------------------- reporting
    @property
    def orders_out(self) -> int:
        """Orders and amends handed to venues so far."""
        return self.entry.orders_out

    @property
    def fill_count(self) -> int:
        """Fills applied so far."""
        return self.executions.fills_applied

    @property
    def unknown_events(self) -> int:
        """Venue events for orders the engine does not know."""
        return self.executions.unknown_events

    @property
    def latency(self) -> HdrHistogram:
        """HDR histogram (ns) of market event in -> order out, every order."""
        return self.latency_recorder.every

    @property
    def latency_first(self) -> HdrHistogram:
        """HDR histogram (ns) of market event in -> first order out, one value per event that ordered."""
        return self.latency_recorder.first

    def reset_latency(self) -> None:
        """Forget the latencies measured so far (benchmarks drop their warm-up)."""
        self.latency_recorder.reset()

    def latency_us(self, first_only: bool = False) -> dict[str, float]:
        """Internal path latency percentiles (market event in -> order out), microseconds; ``first_only``
        keeps the first order of each event (the reaction time)."""
        return self.latency_recorder.percentiles_us(first_only)

    def summary(self) -> dict[str, Any]:
        """What happened: orders, fills, denials by reason, P&L, Greeks, latency, errors."""
        return report.summary(self)
