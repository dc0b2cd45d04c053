"""The trading engine: one event loop, one message bus, and the path market event -> decision -> risk ->
router -> venue -> fills -> positions, P&L and Greeks.

Everything a strategy does goes through :class:`TradingEngine` (submit, amend, cancel); everything it hears
comes from the bus (``quotes.<symbol>``, ``trades.<symbol>``, ``books.<symbol>``, ``fills``, ``timers``).
Dispatch is synchronous inside the loop, so the latency of the internal path (market event in -> order
handed to the venue) is measured exactly and kept in an HDR histogram.

Build it with :func:`greekfire.trading.build_engine` so tests run what production runs.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hdrh.histogram import HdrHistogram

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter, gauge
from greekfire.core.settings import Settings
from greekfire.trading.audit import AuditLog
from greekfire.trading.bus import MALFORMED, MessageBus
from greekfire.trading.model import (
    BookUpdate,
    Fill,
    Instrument,
    OrderType,
    Quote,
    Side,
    TimeInForce,
    TradeTick,
)
from greekfire.trading.oms import OMS
from greekfire.trading.orders import TERMINAL, TRANSITIONS, Order, OrderStatus
from greekfire.trading.portfolio import Portfolio
from greekfire.trading.risk import Denial, RiskEngine
from greekfire.trading.router import SmartOrderRouter, VenueStats
from greekfire.trading.store import SnapshotStore
from greekfire.trading.venues import Venue, VenueEvent

log = logging.getLogger(__name__)

EVENTS = counter("greekfire_trading_events", "market and venue events processed", ["kind"])
FILLS = counter("greekfire_trading_fills", "fills applied", ["venue", "liquidity"])
STRATEGY_ERRORS = counter("greekfire_trading_strategy_errors", "exceptions raised by strategies", ["strategy"])
PNL = gauge("greekfire_trading_pnl", "P&L since start, currency", ["kind"])
GREEK = gauge("greekfire_trading_greek", "portfolio Greek per underlying", ["underlying", "greek"])
INTERNAL_LATENCY = gauge(
    "greekfire_trading_internal_latency_us", "market event in -> order out, microseconds (HDR percentiles)", ["quantile"]
)

# bound once: Enum attribute lookups cost ~0.2 us each on the per-order path
_PENDING_REPLACE, _SUBMITTED = OrderStatus.PENDING_REPLACE, OrderStatus.SUBMITTED
_AMENDABLE = frozenset(s for s, nxt in TRANSITIONS.items() if _PENDING_REPLACE in nxt)
_HELD_TYPES = frozenset((OrderType.STOP, OrderType.STOP_LIMIT))  # held by the engine until triggered
_NO_LIMIT_TYPES = frozenset((OrderType.MARKET, OrderType.STOP))
_NO_POST_TIFS = frozenset((TimeInForce.IOC, TimeInForce.FOK))  # never rest a remainder
_CLOSED = frozenset(s.value for s in TERMINAL)


class Strategy:
    """Base class of strategies. Override the ``on_*`` hooks; act only through ``self.engine``.

    A hook that raises is isolated: the exception is logged and counted, and the engine goes on.
    """

    name = "strategy"

    def __init__(self, name: str | None = None, **params: Any) -> None:
        if name:
            self.name = name
        self.params = params
        self.engine: TradingEngine | None = None

    # hooks
    def on_start(self) -> None: ...
    def on_quote(self, quote: Quote) -> None: ...
    def on_trade(self, trade: TradeTick) -> None: ...
    def on_book(self, book: BookUpdate) -> None: ...
    def on_fill(self, fill: Fill) -> None: ...
    def on_timer(self, now_ns: int) -> None: ...
    def on_stop(self) -> None: ...

    # actions (through the engine)
    def submit(
        self, instrument_id: int, side: Side, qty: int, price: float | None = None,
        ord_type: OrderType = OrderType.LIMIT, tif: TimeInForce = TimeInForce.GTC, **kw: Any,
    ) -> list[Order]:
        """New order; returns the order(s) sent (a sweep splits into child orders) or the DENIED one."""
        assert self.engine is not None, "strategy is not attached to an engine"
        return self.engine.submit(self.engine.new_order(instrument_id, side, qty, price, ord_type, tif, strategy_id=self.name, **kw))

    def amend(self, client_id: str, qty: int, price: float) -> Denial | None:
        assert self.engine is not None
        return self.engine.amend(client_id, qty, price)

    def cancel(self, client_id: str) -> None:
        assert self.engine is not None
        self.engine.cancel(client_id)


class TradingEngine:
    """Kernel of the trading system. ``clock_ns`` gives the time (default: monotonic wall clock)."""

    def __init__(
        self,
        settings: Settings,
        *,
        instruments: Iterable[Instrument],
        venues: Iterable[Venue],
        strategies: Iterable[Strategy] = (),
        store: SnapshotStore | None = None,
        clock_ns: Callable[[], int] | None = None,
        engine_id: str = "paper",
    ) -> None:
        ts = settings.trading
        self.settings = settings
        self.engine_id = engine_id
        self.clock_ns = clock_ns or time.time_ns
        self.bus = MessageBus()
        self.audit = AuditLog(ts.audit_file)
        self.portfolio = Portfolio(ts.starting_cash)
        self.oms = OMS(self.bus, self.audit)
        self.risk = RiskEngine(ts.risk, self.portfolio, on_kill=self._on_kill)
        self.router = SmartOrderRouter()
        self.store = store
        self.instruments: dict[int, Instrument] = {}
        self._spot_of: dict[int, str] = {}  # instrument id of an underlying -> its name
        self.by_symbol: dict[str, Instrument] = {}
        self._quote_topic: dict[int, str] = {}
        self._trade_topic: dict[int, str] = {}
        self._book_topic: dict[int, str] = {}
        for inst in instruments:
            self.add_instrument(inst)
        self.venues: dict[str, Venue] = {}
        self._venue_tops: dict[str, dict[int, tuple[float, int, float, int]]] = {}
        for v in venues:
            self.add_venue(v)
        self.strategies: list[Strategy] = []
        for s in strategies:
            self.add_strategy(s)
        self.poll_hooks: list[Callable[[int], None]] = []
        self.market: Any = None  # the synthetic market of a paper engine, if any
        self.incarnation = 1
        self._seq = 0
        self._t0 = 0  # perf_counter_ns of the market event being handled (0: none)
        # latencies (ns) go into preallocated-growth arrays on the hot path and into HDR histograms when read
        self._lat_all = array("q")
        self._lat_first = array("q")
        self._latency = HdrHistogram(100, 10_000_000_000, 3)  # every order: event in -> that order out
        self._latency_first = HdrHistogram(100, 10_000_000_000, 3)  # first order of each event only
        self._first_pending = False
        self._after_batch: list[Callable[[], None]] = []
        self._sent_ns: dict[str, int] = {}
        # a cancel sent right after its order can reach the venue first and come back unknown_order: it is
        # sent again when the venue acknowledges the order, or at once if that ack came in before the reject
        self._cancel_on_ack: set[str] = set()
        self._acked_while_canceling: set[str] = set()
        self._posted: set[str] = set()
        self._stops: dict[int, list[Order]] = {}
        self._new_fills: list[dict[str, Any]] = []
        self._dirty_orders: set[str] = set()
        self._risk_dirty = True
        self._last_snapshot_ns = 0
        self._timers = 0
        self.events = 0
        self.malformed = 0
        self.orders_out = 0
        self.fill_count = 0
        self.unknown_events = 0
        self.running = False
        self.oms.on_change = self._track_order

    # ---------------------------------------------------------------- wiring
    def add_instrument(self, inst: Instrument) -> None:
        self.instruments[inst.instrument_id] = inst
        self.by_symbol[inst.symbol] = inst
        self.portfolio.add_instrument(inst)
        if not inst.is_option:
            self._spot_of[inst.instrument_id] = inst.underlying
        self._quote_topic[inst.instrument_id] = f"quotes.{inst.symbol}"
        self._trade_topic[inst.instrument_id] = f"trades.{inst.symbol}"
        self._book_topic[inst.instrument_id] = f"books.{inst.symbol}"

    def add_venue(self, venue: Venue) -> None:
        self.venues[venue.name] = venue
        maker, taker = venue.fees()
        stats = VenueStats(venue.name, maker, taker)
        self.router.add_venue(stats)
        self._venue_tops[venue.name] = stats.top

    def add_strategy(self, strategy: Strategy) -> None:
        """Attach a strategy: its hooks are subscribed on the bus under its name (isolated)."""
        strategy.engine = self
        self.strategies.append(strategy)
        owner = f"strategy:{strategy.name}"
        cls = type(strategy)
        if cls.on_quote is not Strategy.on_quote:
            self.bus.subscribe("quotes.*", strategy.on_quote, owner)
        if cls.on_trade is not Strategy.on_trade:
            self.bus.subscribe("trades.*", strategy.on_trade, owner)
        if cls.on_book is not Strategy.on_book:
            self.bus.subscribe("books.*", strategy.on_book, owner)
        if cls.on_fill is not Strategy.on_fill:
            self.bus.subscribe(f"fills.{strategy.name}", strategy.on_fill, owner)
        if cls.on_timer is not Strategy.on_timer:
            self.bus.subscribe("timers", strategy.on_timer, owner)

    def _call(self, strategy: Strategy, hook: str) -> None:
        try:
            getattr(strategy, hook)()
        except Exception:
            self.bus.errors[f"strategy:{strategy.name}"] += 1
            STRATEGY_ERRORS.labels(strategy.name).inc()
            log.exception("strategy %s.%s failed", strategy.name, hook)

    # ---------------------------------------------------------------- orders in
    def new_order(
        self, instrument_id: int, side: Side, qty: int, price: float | None = None,
        ord_type: OrderType = OrderType.LIMIT, tif: TimeInForce = TimeInForce.GTC, **kw: Any,
    ) -> Order:
        """A new INITIALIZED order with a fresh client id (unique across restarts)."""
        self._seq += 1
        return Order(f"{self.engine_id}.{self.incarnation}.{self._seq}", instrument_id, Side(side), qty, price,
                     ord_type, tif, ts_ns=self.clock_ns(), **kw)

    def ref_price(self, instrument_id: int) -> float | None:
        """Reference (mid) price of an instrument in currency, None before the first two-sided quote."""
        return self.portfolio.marks.get(instrument_id)

    def submit(self, order: Order) -> list[Order]:
        """Risk-check, route and send an order. Returns the orders created (DENIED, one, or sweep children)."""
        now = self.clock_ns()
        denial = self.risk.check(order, self.portfolio.marks.get(order.instrument_id), now)
        self.oms.add(order)
        if denial is not None:
            self._denied(order, denial, now)
            return [order]
        if order.ord_type in _HELD_TYPES:
            # held here until the reference trades through the stop price
            order.venue = "engine"
            self.oms.transition(order, OrderStatus.SUBMITTED, now, venue="engine")
            self.oms.transition(order, OrderStatus.ACCEPTED, now, note="stop held by engine")
            self._stops.setdefault(order.instrument_id, []).append(order)
            return [order]
        return self._route(order, now)

    def _denied(self, order: Order, denial: Denial, now: int) -> None:
        self.oms.transition(order, OrderStatus.DENIED, now, denial.reason.value, values=denial.values)
        self.bus.publish("risk", {"event": "denied", "client_id": order.client_id, **denial.to_dict()})

    def _route(self, order: Order, now: int) -> list[Order]:
        inst = self.instruments[order.instrument_id]
        limit = None if order.ord_type in _NO_LIMIT_TYPES else order.price
        children = self.router.route(order.client_id, order.instrument_id, order.side, order.qty, limit, inst.multiplier,
                                     allow_post=order.tif not in _NO_POST_TIFS)
        if not children:
            self.oms.transition(order, OrderStatus.SUBMITTED, now)
            self.oms.transition(order, OrderStatus.REJECTED, now, "no_venue")
            return [order]
        if len(children) == 1:
            c = children[0]
            self._send(order, c.venue, c.mode, now)
            return [order]
        # a sweep: the parent becomes child orders, one per venue; the parent itself is not sent
        del self.oms.orders[order.client_id]
        out = []
        for k, c in enumerate(children, 1):
            child = Order(
                f"{order.client_id}/{k}", order.instrument_id, order.side, c.qty, order.price, order.ord_type,
                order.tif if c.mode == "post" else (TimeInForce.IOC if order.tif == TimeInForce.GTC else order.tif),
                strategy_id=order.strategy_id, post_only=order.post_only, reduce_only=order.reduce_only,
                expire_ns=order.expire_ns, ts_ns=now, parent_id=order.client_id,
            )
            self.oms.add(child)
            self._send(child, c.venue, c.mode, now)
            out.append(child)
        return out

    def _send(self, order: Order, venue: str, mode: str, now: int) -> None:
        order.venue = venue
        self.oms.transition(order, _SUBMITTED, now, venue=venue, mode=mode)
        self._sent_ns[order.client_id] = now
        if mode == "post":
            self._posted.add(order.client_id)
        self.venues[venue].submit(order, now)
        self.orders_out += 1
        if self._t0:
            self._record_latency()

    def _record_latency(self, n: int = 1) -> None:
        # ``n`` orders handed over by the call that just returned (a mass quote): one sample each
        dt = time.perf_counter_ns() - self._t0
        if n == 1:
            self._lat_all.append(dt)
        else:
            self._lat_all.extend([dt] * n)
        if self._first_pending:
            self._lat_first.append(dt)
            self._first_pending = False
        if len(self._lat_all) >= 1_000_000:
            self._drain_latency()

    def _drain_latency(self) -> None:
        for buf, hist in ((self._lat_all, self._latency), (self._lat_first, self._latency_first)):
            for v in buf:
                hist.record_value(max(100, v))
            del buf[:]

    @property
    def latency(self) -> HdrHistogram:
        """HDR histogram (ns) of market event in -> order out, every order."""
        self._drain_latency()
        return self._latency

    @property
    def latency_first(self) -> HdrHistogram:
        """HDR histogram (ns) of market event in -> first order out, one value per event that ordered."""
        self._drain_latency()
        return self._latency_first

    def reset_latency(self) -> None:
        """Forget the latencies measured so far (benchmarks drop their warm-up)."""
        self._drain_latency()
        self._latency.reset()
        self._latency_first.reset()

    def after_batch(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once at the end of the current event batch (work that must not delay this event's
        orders, e.g. a full re-price). Its orders are not timed as event -> order latency."""
        if fn not in self._after_batch:
            self._after_batch.append(fn)

    def amend(self, client_id: str, qty: int, price: float) -> Denial | None:
        """Change a live order's total quantity and limit price (risk-checked like a new order). Returns the
        denial, or None when sent or when the order can no longer be amended (closed, or a cancel/replace
        already pending)."""
        order = self.oms.orders.get(client_id)
        return None if order is None else self.amend_many(((order, qty, price),))[0]

    def amend_many(self, changes: Sequence[tuple[Order, int, float]]) -> list[Denial | None]:
        """Amend several live orders at once (a mass quote: a market maker moving its quotes), ``(order, new
        total qty, new limit price in currency)`` each. Returns, for each change, its denial or None, as
        :meth:`amend` does.

        Every amend is risk-checked as by :meth:`amend`. The ones that pass go to each venue in one
        :meth:`Venue.amend_many` call, timed when that call has returned; the bookkeeping (PENDING_REPLACE,
        audit, bus) follows at once, before any other event can be handled (the loop is single-threaded and
        a venue only queues what it is handed), so it is off the path an order takes to leave. A venue call
        that raises leaves its orders untouched: nothing was sent."""
        now = self.clock_ns()
        out: list[Denial | None] = [None] * len(changes)
        if not changes:
            return out
        venue = changes[0][0].venue
        one_venue = True
        for order, _, _ in changes:  # the common case: every order amendable, all on one venue
            if order.venue != venue:
                one_venue = False
            if order.status not in _AMENDABLE:
                where: Sequence[int] = [k for k, c in enumerate(changes) if c[0].status in _AMENDABLE]
                todo: Sequence[tuple[Order, int, float]] = [changes[k] for k in where]
                break
        else:
            where, todo = range(len(changes)), changes
        denials = self.risk.check_amends(todo, self.portfolio.marks, now) if todo else []
        if one_venue and todo is changes and denials.count(None) == len(changes):
            self._send_amends(((venue, changes),), now)
            return out
        by_venue: dict[str, list[tuple[Order, int, float]]] = {}
        for k, item, denial in zip(where, todo, denials, strict=True):
            if denial is None:
                by_venue.setdefault(item[0].venue, []).append(item)
            else:
                out[k] = denial
                cid = item[0].client_id
                self.audit.append(now, "risk", cid, {"amend_denied": denial.to_dict()})
                self.bus.publish("risk", {"event": "amend_denied", "client_id": cid, **denial.to_dict()})
        self._send_amends(by_venue.items(), now)
        return out

    def _send_amends(self, groups: Iterable[tuple[str, Sequence[tuple[Order, int, float]]]], now: int) -> None:
        # risk-checked amends, grouped by venue: hand every group over (each timed as its call returns), then
        # the bookkeeping of all of them; a venue that raises stops here, its group and the later ones unsent
        sent_groups = []
        try:
            for venue, group in groups:
                self.venues[venue].amend_many(group, now)
                if self._t0:
                    self._record_latency(len(group))
                sent_groups.append(group)
        finally:
            sent = self._sent_ns
            for group in sent_groups:
                self.orders_out += len(group)
                for order, _, _ in group:
                    sent[order.client_id] = now
                self.oms.transition_many([(o, {"new_qty": q, "new_price": p}) for o, q, p in group], _PENDING_REPLACE, now)

    def cancel(self, client_id: str) -> bool:
        """Request a cancel; True when a request was sent (or a held stop was canceled at once)."""
        now = self.clock_ns()
        order = self.oms.get(client_id)
        if order is None or not order.can(OrderStatus.PENDING_CANCEL):
            return False
        if order.venue == "engine":  # a held stop
            self._stops.get(order.instrument_id, []).remove(order)
            self.oms.transition(order, OrderStatus.CANCELED, now, "canceled")
            return True
        self.oms.transition(order, OrderStatus.PENDING_CANCEL, now)
        self.venues[order.venue].cancel(order, now)
        return True

    def cancel_all(self, strategy_id: str | None = None, instrument_id: int | None = None) -> int:
        """Cancel every open order (optionally of one strategy / instrument); returns how many."""
        n = 0
        for o in self.oms.open_orders(instrument_id, strategy_id):
            n += self.cancel(o.client_id)
        return n

    def kill(self, reason: str = "manual") -> None:
        """Manual kill switch: HALTED, cancel everything, block new orders until :meth:`reset_kill`."""
        self.risk.kill(reason)

    def reset_kill(self) -> None:
        self.risk.reset_kill()
        self.bus.publish("risk", {"event": "kill_reset"})

    def _on_kill(self, reason: str) -> None:
        n = self.cancel_all()
        self.audit.append(self.clock_ns(), "risk", "kill_switch", {"reason": reason, "canceled": n})
        self.bus.publish("risk", {"event": "kill_switch", "reason": reason, "canceled": n})

    # ---------------------------------------------------------------- events in
    def on_market(self, msg: Any) -> None:
        """One market-data event (Quote, TradeTick, BookUpdate); a malformed one is counted and dropped."""
        self._t0 = time.perf_counter_ns()
        self._first_pending = True
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
            self._t0 = 0

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
        tops = self._venue_tops.get(q.venue)
        if tops is not None:  # the router's displayed-liquidity view, written in place (no call per quote)
            tops[iid] = (bid, q.bid_size, ask, q.ask_size)
        if self._stops:
            stops = self._stops.get(iid)
            if stops:
                self._check_stops(iid, stops)
        self.bus.publish(topic, q)

    def _on_trade(self, t: TradeTick) -> None:
        topic = self._trade_topic.get(t.instrument_id)
        if topic is None:
            raise DataError("instrument_id", t.instrument_id, "unknown instrument")
        if not (t.price > 0 and t.qty > 0):
            raise DataError("trade", (t.price, t.qty), "price and qty must be > 0")
        self.bus.publish(topic, t)

    def _check_stops(self, iid: int, stops: list[Order]) -> None:
        ref = self.portfolio.marks.get(iid)
        if ref is None:
            return
        now = self.clock_ns()
        for o in list(stops):
            sp = o.stop_price or 0.0
            if (o.side == Side.BUY and ref >= sp) or (o.side == Side.SELL and ref <= sp):
                stops.remove(o)
                # triggered: the order (already ACCEPTED by us) goes to one venue as a market/limit order;
                # its state stays ACCEPTED, so the venue's ack changes nothing and its fills apply as usual
                o.ord_type = OrderType.MARKET if o.ord_type == OrderType.STOP else OrderType.LIMIT
                limit = o.price if o.ord_type == OrderType.LIMIT else None
                children = self.router.route(o.client_id, iid, o.side, o.qty, limit, self.instruments[iid].multiplier)
                venue = children[0].venue if children else next(iter(self.venues))
                o.venue = venue
                self.audit.append(now, "order", o.client_id, {"stop_triggered": ref, "venue": venue})
                self._sent_ns[o.client_id] = now
                self.venues[venue].submit(o, now)
                self.orders_out += 1
                if self._t0:  # a triggered stop is an order caused by this market event: timed like the others
                    self._record_latency()

    def on_venue_event(self, ev: VenueEvent) -> None:
        """One execution event from a venue (ack, fill, cancel...); unknown or bad ones are counted."""
        self.events += 1
        order = self.oms.get(ev.client_id)
        if order is None:
            self.unknown_events += 1
            if ev.kind == "fill":
                self.oms.apply_fill(self._fill_of(ev, None))  # reported as unknown_order, not applied
            return
        now = ev.ts_ns or self.clock_ns()
        kind = ev.kind
        try:
            if kind == "fill":
                self._on_fill(order, ev)
            elif kind == "accepted":
                if order.status == OrderStatus.SUBMITTED:
                    order.venue_order_id = ev.venue_order_id
                    self.oms.transition(order, OrderStatus.ACCEPTED, now)
                elif order.status == OrderStatus.PENDING_CANCEL:
                    self._acked_while_canceling.add(order.client_id)
                sent = self._sent_ns.get(order.client_id)
                if sent:
                    self.router.venues[ev.venue].record_ack((self.clock_ns() - sent) / 1000.0)
                if order.client_id in self._cancel_on_ack:
                    self._cancel_on_ack.discard(order.client_id)
                    self.cancel(order.client_id)
            elif kind == "rejected":
                self.oms.transition(order, OrderStatus.REJECTED, now, ev.reason)
            elif kind in ("canceled", "expired"):
                if order.is_open:
                    new = OrderStatus.CANCELED if kind == "canceled" else OrderStatus.EXPIRED
                    self.oms.transition(order, new, now, ev.reason)
            elif kind == "replaced":
                if order.status == OrderStatus.PENDING_REPLACE:
                    order.qty = ev.qty
                    order.price = ev.price
                    self.oms.transition(order, order.resting_status(), now, qty=ev.qty, price=ev.price)
            elif kind in ("cancel_reject", "replace_reject"):
                if order.status in (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE):
                    self.oms.transition(order, order.resting_status(), now, ev.reason)
                    if kind == "cancel_reject" and ev.reason == "unknown_order":
                        # the cancel overtook its order on the way to the venue: cancel again
                        cid = order.client_id
                        if cid in self._acked_while_canceling:
                            self._acked_while_canceling.discard(cid)
                            self.cancel(cid)
                        else:
                            self._cancel_on_ack.add(cid)
            else:
                raise DataError("kind", kind, "unknown venue event kind")
        except DataError as exc:
            self._malformed("venue", exc)
        except Exception as exc:  # an illegal transition from a confused venue must not stop the engine
            self._malformed("venue", exc)

    def _fill_of(self, ev: VenueEvent, order: Order | None) -> Fill:
        return Fill(
            ev.fill_id, ev.client_id, order.instrument_id if order else ev.instrument_id,
            order.side if order else Side(ev.side or 1), ev.qty, ev.price, ev.fee, ev.liquidity, ev.venue, ev.ts_ns,
            order.strategy_id if order else "",
        )

    def _on_fill(self, order: Order, ev: VenueEvent) -> None:
        fill = self._fill_of(ev, order)
        if self.oms.apply_fill(fill) is None:
            return
        self.portfolio.apply_fill(fill)
        self.fill_count += 1
        self._risk_dirty = True
        self._new_fills.append({
            "fill_id": fill.fill_id, "client_id": fill.client_id, "instrument_id": fill.instrument_id,
            "side": int(fill.side), "qty": fill.qty, "price": fill.price, "fee": fill.fee, "venue": fill.venue,
            "ts_ns": fill.ts_ns,
        })
        FILLS.labels(ev.venue, ev.liquidity or "?").inc()
        sent = self._sent_ns.get(order.client_id)
        if sent:
            self.router.venues[ev.venue].record_fill_latency((self.clock_ns() - sent) / 1000.0)
        self.bus.publish("fills", fill)
        if order.strategy_id:
            self.bus.publish(f"fills.{order.strategy_id}", fill)

    def _track_order(self, client_id: str, new: str) -> None:
        """After every order transition (called by the OMS): mark it for the next snapshot; on a terminal
        state, forget its send time and give a posted order's fill outcome to the router."""
        self._dirty_orders.add(client_id)
        if new in _CLOSED:
            self._sent_ns.pop(client_id, None)
            self._cancel_on_ack.discard(client_id)
            self._acked_while_canceling.discard(client_id)
            if client_id in self._posted:
                self._posted.discard(client_id)
                o = self.oms.orders.get(client_id)
                if o is not None and o.qty and o.venue in self.router.venues:
                    self.router.venues[o.venue].record_outcome(o.filled_qty / o.qty)

    def process(self, events: Iterable[Any]) -> None:
        """Handle a batch of events (market data and venue events), then revalue once at the batch end."""
        perf = time.perf_counter_ns
        on_quote, on_market, on_venue = self._on_quote, self.on_market, self.on_venue_event
        for ev in events:
            t = type(ev)
            if t is Quote:  # the hot path, inlined: no extra call layer per event
                self.events += 1
                self._t0 = perf()
                self._first_pending = True
                try:
                    on_quote(ev)
                except DataError as exc:
                    self._malformed("market", exc)
                self._t0 = 0
            elif t is VenueEvent:
                on_venue(ev)
            else:
                on_market(ev)
        self.end_batch()

    def end_batch(self) -> None:
        """Revalue Greeks of the underlyings that moved, refresh VaR after fills, publish the portfolio."""
        while self._after_batch:
            fns, self._after_batch = self._after_batch, []
            for fn in fns:
                try:
                    fn()
                except Exception:
                    self.bus.errors["after_batch"] += 1
                    log.exception("after-batch callback failed")
        pf = self.portfolio
        moved = pf.revalue(self.clock_ns())
        filled = self._risk_dirty  # set by fills in this batch
        if filled or (moved and pf.positions):
            self.risk.refresh(self.clock_ns())
            self._risk_dirty = False
        if (moved or filled) and self.bus.has_subscribers("portfolio"):
            # a copy: subscribers must not see (or change) the live totals
            self.bus.publish("portfolio", {
                "greeks": {u: list(t) for u, t in pf.totals.items()}, "cash": pf.cash, "var": self.risk.var,
                "positions": {i: p.qty for i, p in pf.positions.items() if p.qty},
            })

    # ---------------------------------------------------------------- timers, persistence
    def on_timer(self, now_ns: int | None = None) -> None:
        """Timers: strategies, GTD expiry, continuous risk (stop loss, daily loss, drawdown), snapshots."""
        now = now_ns or self.clock_ns()
        self._timers += 1
        self.bus.publish("timers", now)
        for o in self.oms.open_orders():
            if o.tif == TimeInForce.GTD and o.expire_ns and now >= o.expire_ns and o.status != OrderStatus.PENDING_CANCEL:
                self.cancel(o.client_id)
        if self.risk.killed:  # the kill switch holds: whatever is still open (acked after the kill) is canceled
            self.cancel_all()
        self.risk.refresh(now)
        if self._timers % max(1, int(round(1.0 / self.settings.trading.timer_interval_s))) == 0:
            self.risk.compute_mc_var()  # about once a second: a full revaluation, never per event
        for b in self.risk.continuous():
            self.audit.append(now, "risk", b.reason.value, {"values": b.values, "action": b.action})
            self.bus.publish("risk", {"event": "breach", "reason": b.reason.value, "values": b.values, "action": b.action})
            if b.action == "close_position" and b.instrument_id is not None:
                self._close_position(b.instrument_id)
        pnl = self.portfolio.pnl()
        for k, v in pnl.items():
            PNL.labels(k).set(v)
        for und, t in self.portfolio.totals.items():
            for name, v in zip(("delta", "gamma", "vega", "theta"), t, strict=True):
                GREEK.labels(und, name).set(v)
        self.router.publish_metrics()
        self.oms.publish_metrics()
        lat = self.latency_us()
        for q in ("p50", "p99", "p99.9"):
            if q in lat:
                INTERNAL_LATENCY.labels(q).set(lat[q])
        interval = int(self.settings.trading.snapshot_interval_s * 1e9)
        if self.store is not None and now - self._last_snapshot_ns >= interval:
            self.snapshot(now)

    def end_of_day(self) -> None:
        """Close the trading day: venues expire DAY orders, the daily-loss baseline restarts from equity."""
        now = self.clock_ns()
        for v in self.venues.values():
            eod = getattr(v, "end_of_day", None)
            if eod is not None:
                eod(now)
        self.portfolio.day_start_equity = self.portfolio.equity()
        self.audit.append(now, "engine", "end_of_day", {"equity": self.portfolio.day_start_equity})

    def _close_position(self, instrument_id: int) -> None:
        pos = self.portfolio.positions.get(instrument_id)
        if not pos or not pos.qty:
            return
        self.cancel_all(instrument_id=instrument_id)
        side = Side.SELL if pos.qty > 0 else Side.BUY
        self.submit(self.new_order(instrument_id, side, abs(pos.qty), None, OrderType.MARKET, TimeInForce.IOC,
                                   strategy_id="risk", reduce_only=True))

    def snapshot(self, now_ns: int | None = None) -> None:
        """Write the state to the store in one transaction (orders changed, new fills, audit, portfolio)."""
        if self.store is None:
            return
        now = now_ns or self.clock_ns()
        changed = [self.oms.orders[c].to_dict() for c in self._dirty_orders if c in self.oms.orders]
        state = {
            "portfolio": self.portfolio.snapshot(),
            "engine": {"incarnation": self.incarnation, "seq": self._seq, "audit_seq": self.audit.seq},
            "risk": {"state": self.risk.state.value, "killed": self.risk.killed, "kill_reason": self.risk.kill_reason,
                     "limits": self.risk.limits.model_dump()},
        }
        self.store.save(now, state, changed, self._new_fills, self.audit.flush())
        self._new_fills = []
        self._dirty_orders.clear()
        self._last_snapshot_ns = now

    def restore(self) -> bool:
        """Resume from the store's last snapshot; True when there was one. Call before :meth:`reconcile`."""
        if self.store is None:
            return False
        snap = self.store.load()
        if snap is None:
            self.snapshot()  # record incarnation 1 at once so a crash before the first timer is safe
            return False
        st = snap["state"]
        self.portfolio.restore(st["portfolio"])
        self.oms.restore(snap["orders"])
        eng = st.get("engine", {})
        self.incarnation = int(eng.get("incarnation", 0)) + 1  # new ids can never collide with a lost session's
        self.audit.flush()
        self.audit.resume(int(eng.get("audit_seq", 0)))
        self._seq = 0
        risk = st.get("risk", {})
        if risk.get("limits"):
            self.risk.set_limits(**{k: v for k, v in risk["limits"].items() if getattr(self.risk.limits, k) != v})
        if risk.get("killed"):
            self.risk.kill(risk.get("kill_reason") or "restored")
        self.portfolio.revalue(self.clock_ns(), force=True)
        self.risk.refresh()
        self.audit.append(self.clock_ns(), "engine", "restore", {"orders": len(snap["orders"]), "fills": len(snap["fills"])})
        self.snapshot()
        log.info("engine restored: %d orders, %d fills, incarnation %d", len(snap["orders"]), len(snap["fills"]), self.incarnation)
        return True

    def reconcile(self) -> dict[str, Any]:
        """After a (re)connect: apply every venue fill we have not seen (once), adopt orders the venue has that
        we lost, and close orders the venue no longer has. Returns counts per venue."""
        now = self.clock_ns()
        out: dict[str, Any] = {}
        for name, venue in self.venues.items():
            states, fills = venue.report()
            prefix = f"{self.engine_id}."
            # orders we lost (sent after the last snapshot): adopt them from the venue's view
            adopted = 0
            recovered: list[str] = []
            known = self.oms.orders
            by_cid: dict[str, list[VenueEvent]] = {}
            for f in fills:
                by_cid.setdefault(f.client_id, []).append(f)
            open_states = {s.client_id: s for s in states}
            for cid in set(by_cid) | set(open_states):
                if cid in known or not cid.startswith(prefix):
                    continue
                s = open_states.get(cid)
                fl = by_cid.get(cid, [])
                if s is not None:
                    lost = Order(cid, s.instrument_id, Side(s.side), s.qty, s.price, strategy_id="", ts_ns=now)
                else:
                    lost = Order(cid, fl[0].instrument_id, Side(fl[0].side), sum(f.qty for f in fl), fl[0].price, ts_ns=now)
                lost.venue = name
                self.oms.add(lost)
                self.oms.transition(lost, OrderStatus.SUBMITTED, now, "recovered")
                self.oms.transition(lost, OrderStatus.ACCEPTED, now, "recovered")
                recovered.append(cid)
                adopted += 1
            # the venue's terms win: an amend acknowledged there after our last snapshot changed qty/price
            for cid, st in open_states.items():
                o = known.get(cid)
                if o is None:
                    continue
                if o.qty != st.qty or (o.price is not None and abs(o.price - st.price) > 1e-9):
                    self.audit.append(now, "reconcile", cid, {"qty": [o.qty, st.qty], "price": [o.price, st.price]})
                    o.qty, o.price = st.qty, st.price
                if o.status in (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE):
                    self.oms.transition(o, o.resting_status(), now, "reconcile_live_at_venue")
            for cid, fl in by_cid.items():
                o = known.get(cid)
                total = sum(f.qty for f in fl)
                if o is not None and total > o.qty:  # closed at the venue after an upsize we did not save
                    self.audit.append(now, "reconcile", cid, {"qty": [o.qty, total]})
                    o.qty = total
            res = self.oms.reconcile(name, states, fills, now)
            for f in res["missing_fills"]:
                order = self.oms.get(f.client_id)
                if order is not None:
                    self._on_fill(order, f)
            for cid in res["closed"]:
                o = self.oms.get(cid)
                if o is not None and o.is_open:
                    self.oms.transition(o, OrderStatus.CANCELED, now, "reconcile_not_at_venue")
            # a recovered order that is still working belongs to no strategy we know: take it off the book
            for cid in recovered:
                o = self.oms.get(cid)
                if o is not None and o.is_open and o.can(OrderStatus.PENDING_CANCEL):
                    self.cancel(cid)
            out[name] = {"missing_fills": len(res["missing_fills"]), "closed": len(res["closed"]), "adopted": adopted,
                         "qty_mismatch": len(res["qty_mismatch"])}
        self.end_batch()
        self.snapshot(now)
        return out

    # ---------------------------------------------------------------- loop
    def start(self) -> None:
        self.running = True
        for s in self.strategies:
            self._call(s, "on_start")

    def stop(self) -> None:
        for s in self.strategies:
            self._call(s, "on_stop")
        self.running = False
        self.risk.refresh()  # exact figures for the final summary
        self.risk.compute_mc_var()
        self.snapshot()

    def poll_once(self, now_ns: int | None = None) -> int:
        """Poll every venue once and process what arrived as one batch; returns the event count."""
        now = now_ns or self.clock_ns()
        for hook in self.poll_hooks:
            hook(now)
        batch: list[Any] = []
        for v in self.venues.values():
            batch.extend(v.poll(now))
        if batch:
            self.process(batch)
        return len(batch)

    async def run(self, duration_s: float, *, poll_interval_s: float = 0.0005) -> None:
        """Run the loop for ``duration_s`` seconds: poll venues, fire timers, snapshot; then stop."""
        # everything alive now (imports, torch, instruments) is long-lived: keep it out of the collector's
        # scans, so a full collection during the run does not stall the event path for tens of ms
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
    def latency_us(self, first_only: bool = False) -> dict[str, float]:
        """Internal path latency percentiles (market event in -> order out), microseconds.

        Every order is timed from the event that caused it, so an event that moves a whole chain of quotes
        reports each of its orders (the last one waits for all before it); ``first_only`` keeps the first
        order of each event (the reaction time)."""
        h = self.latency_first if first_only else self.latency
        if h.get_total_count() == 0:
            return {"count": 0}
        return {
            "count": h.get_total_count(),
            "p50": h.get_value_at_percentile(50) / 1000.0,
            "p99": h.get_value_at_percentile(99) / 1000.0,
            "p99.9": h.get_value_at_percentile(99.9) / 1000.0,
            "max": h.get_max_value() / 1000.0,
        }

    def summary(self) -> dict[str, Any]:
        """What happened: orders, fills, denials by reason, P&L, Greeks, latency, errors."""
        statuses: dict[str, int] = {}
        rejections: dict[str, int] = {}
        for o in self.oms.orders.values():
            statuses[o.status.value] = statuses.get(o.status.value, 0) + 1
            if o.status == OrderStatus.REJECTED:
                rejections[o.reason or "?"] = rejections.get(o.reason or "?", 0) + 1
        pnl = self.portfolio.pnl()
        greeks = self.portfolio.greeks()
        return {
            "events": self.events,
            "orders": len(self.oms.orders),
            "orders_out": self.orders_out,
            "order_status": statuses,
            "fills": self.fill_count,
            "denials": dict(self.risk.denials),
            "venue_rejections": rejections,
            "pnl": {k: round(v, 2) for k, v in pnl.items()},
            "equity": round(self.portfolio.equity(), 2),
            "greeks": {u: {k: round(v, 4) for k, v in g.items()} for u, g in greeks.items()},
            "var_1d": round(self.risk.var, 2),
            "mc_var_1d": round(self.risk.mc_var_value, 2),
            "trading_state": self.risk.state.value,
            "latency_us": {k: round(v, 2) for k, v in self.latency_us().items()},
            "latency_first_order_us": {k: round(v, 2) for k, v in self.latency_us(first_only=True).items()},
            "venues": {n: v.summary() for n, v in self.router.venues.items()},
            "errors": {
                "strategy_exceptions": dict(self.bus.errors),
                "malformed_events": self.malformed,
                "unknown_order_events": self.unknown_events,
                "fill_problems": dict(self.oms.fill_problems),
            },
        }
