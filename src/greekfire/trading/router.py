"""Smart order router: score venues by expected all-in cost and fill probability, then post or sweep.

For each venue the router keeps what it has seen (:class:`VenueStats`): maker/taker fees per contract,
tick size, ack and fill latency (EWMA and p99 from an HDR histogram, updated from real venue events),
the fill-rate history of posted orders, and the displayed top of book per instrument.

A parent order's limit comes in integer ticks of its instrument (the displayed prices are market data, in
currency: the limit is converted once per decision). It is **marketable** when its limit reaches some
venue's opposite best price. Then the router
**sweeps**: it ranks venues by all-in cost per contract

    price x multiplier x side + taker_fee + adverse_per_us x ack_latency_ewma_us

and takes displayed size at each, cheapest first, until the order is filled (what is left is posted at the
best posting venue). Otherwise it **posts** the whole order at the venue with the lowest posting score

    maker_fee + adverse_per_us x ack_latency_ewma_us - fill_value x fill_rate

(a rebate is a negative fee, so a rebate venue scores lower). ``adverse_per_us`` is the currency per
contract lost to adverse selection per microsecond of latency; 0 ignores latency. Each decision is kept
with its scores in :attr:`SmartOrderRouter.decisions` and logged at DEBUG (the hot path logs nothing at
INFO).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from hdrh.histogram import HdrHistogram

from greekfire.core.metrics import counter, gauge
from greekfire.trading.model import Quote, Side

log = logging.getLogger(__name__)

ROUTED = counter("greekfire_trading_routed_orders", "child orders routed", ["venue", "mode"])
ROUTE_DECISIONS = counter("greekfire_trading_route_decisions", "routing decisions", ["mode"])
VENUE_LATENCY = gauge("greekfire_trading_venue_latency_us", "venue latency EWMA, microseconds", ["venue", "kind"])
VENUE_FILL_RATE = gauge("greekfire_trading_venue_fill_rate", "EWMA fill rate of posted orders", ["venue"])


@dataclass
class VenueStats:
    """What the router knows about one venue. Fees in currency per contract (negative: rebate)."""

    name: str
    maker_fee: float = 0.0
    taker_fee: float = 0.0
    tick_size: float = 0.01
    ewma_alpha: float = 0.05
    ack_ewma_us: float = 0.0
    fill_ewma_us: float = 0.0
    fill_rate: float = 0.5  # prior before any history
    posted: int = 0
    filled: int = 0
    # instrument -> the last quote seen from this venue (prices in currency, NaN: an empty side). The engine
    # stores each quote as it comes (no tuple built per market event); quotes are immutable
    top: dict[int, Quote] = field(default_factory=dict)
    ack_hist: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 60_000_000, 3))
    fill_hist: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 60_000_000, 3))

    def record_ack(self, latency_us: float) -> None:
        """An order was acknowledged ``latency_us`` after we sent it."""
        self.ack_ewma_us = latency_us if self.ack_hist.get_total_count() == 0 else (
            self.ack_ewma_us + self.ewma_alpha * (latency_us - self.ack_ewma_us)
        )
        self.ack_hist.record_value(max(1, int(latency_us)))

    def record_fill_latency(self, latency_us: float) -> None:
        """A fill arrived ``latency_us`` after the order was sent."""
        self.fill_ewma_us = latency_us if self.fill_hist.get_total_count() == 0 else (
            self.fill_ewma_us + self.ewma_alpha * (latency_us - self.fill_ewma_us)
        )
        self.fill_hist.record_value(max(1, int(latency_us)))

    def record_outcome(self, filled_fraction: float) -> None:
        """A posted order closed having filled this fraction of its quantity (0..1)."""
        self.posted += 1
        self.filled += filled_fraction > 0
        self.fill_rate += self.ewma_alpha * (filled_fraction - self.fill_rate)

    def ack_p99_us(self) -> float:
        return float(self.ack_hist.get_value_at_percentile(99.0)) if self.ack_hist.get_total_count() else 0.0

    def fill_p99_us(self) -> float:
        return float(self.fill_hist.get_value_at_percentile(99.0)) if self.fill_hist.get_total_count() else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "maker_fee": self.maker_fee, "taker_fee": self.taker_fee, "ack_ewma_us": round(self.ack_ewma_us, 1),
            "ack_p99_us": self.ack_p99_us(), "fill_ewma_us": round(self.fill_ewma_us, 1),
            "fill_p99_us": self.fill_p99_us(), "fill_rate": round(self.fill_rate, 3), "posted": self.posted,
        }


class ChildOrder(NamedTuple):
    """One slice of a parent order for one venue: ``mode`` is 'take' (marketable) or 'post'. Quantity in
    units, limit in integer ticks (None: market), score in currency per contract. (A named tuple: immutable, and
    built in a fraction of a frozen dataclass's time on the order path.)"""

    venue: str
    qty: int
    price_ticks: int | None
    mode: str
    score: float


class SmartOrderRouter:
    """Chooses venues for parent orders. ``adverse_per_us``: currency per contract per microsecond."""

    def __init__(self, adverse_per_us: float = 0.001, fill_value: float = 1.0, keep_decisions: int = 1000) -> None:
        self.venues: dict[str, VenueStats] = {}
        self.adverse_per_us = adverse_per_us
        self.fill_value = fill_value
        self.decisions: deque[dict[str, Any]] = deque(maxlen=keep_decisions)
        self._debug = log.isEnabledFor(logging.DEBUG)
        # plain counts on the hot path; publish_metrics() copies them to Prometheus on the timer
        self.routed: dict[tuple[str, str], int] = {}
        self.decided: dict[str, int] = {}
        self._published: dict[Any, int] = {}

    def add_venue(self, stats: VenueStats) -> None:
        self.venues[stats.name] = stats

    def update_top(self, venue: str, instrument_id: int, bid: float, bid_size: int, ask: float, ask_size: int) -> None:
        """Displayed top of book of one instrument on one venue (NaN price: that side is empty)."""
        v = self.venues.get(venue)
        if v is not None:
            v.top[instrument_id] = Quote(instrument_id, bid, ask, bid_size, ask_size, 0, venue)

    def take_cost(self, v: VenueStats, side: int, price: float, multiplier: float) -> float:
        """All-in cost per contract of taking at ``price`` on venue ``v`` (currency; lower is better)."""
        return side * price * multiplier + v.taker_fee + self.adverse_per_us * v.ack_ewma_us

    def post_score(self, v: VenueStats) -> float:
        """Posting score per contract (currency; lower is better)."""
        return v.maker_fee + self.adverse_per_us * v.ack_ewma_us - self.fill_value * v.fill_rate

    def route(
        self, client_id: str, instrument_id: int, side: Side, qty: int, limit: int | None, multiplier: float = 1.0,
        *, tick_size: float, allow_post: bool = True,
    ) -> list[ChildOrder]:
        """Split one parent order into child orders. ``limit`` in integer ticks of ``tick_size`` (currency)
        each; None: a market order, take only.

        ``allow_post`` False (IOC/FOK): nothing is posted; what displayed size cannot cover goes with the
        cheapest take (the venue cancels what it cannot fill)."""
        s = int(side)
        lim_px = 0.0 if limit is None else limit * tick_size  # currency, to compare with displayed prices
        takes: list[tuple[float, str, float, int]] = []
        for name, v in self.venues.items():
            top = v.top.get(instrument_id)
            if top is None:
                continue
            px, size = (top.ask, top.ask_size) if s > 0 else (top.bid, top.bid_size)
            if size <= 0 or px != px:  # empty side (NaN)
                continue
            if limit is None or (s > 0 and px <= lim_px + 1e-12) or (s < 0 and px >= lim_px - 1e-12):
                takes.append((self.take_cost(v, s, px, multiplier), name, px, size))
        out: list[ChildOrder] = []
        left = qty
        if takes:
            takes.sort()
            for cost, name, _px, size in takes:
                if left <= 0:
                    break
                q = min(left, size)
                # child limit = parent limit (not the seen price): the book may have moved by arrival
                out.append(ChildOrder(name, q, limit, "take", cost))
                left -= q
            if (limit is None or not allow_post) and left > 0:  # market/IOC: the rest goes to the cheapest venue
                first = out[0]
                out[0] = ChildOrder(first.venue, first.qty + left, first.price_ticks, "take", first.score)
                left = 0
        post_scores: list[tuple[float, str]] = []
        if left > 0 and limit is not None:
            post_scores = sorted((self.post_score(v), n) for n, v in self.venues.items())
            if post_scores:
                mode = "post" if allow_post else "take"
                out.append(ChildOrder(post_scores[0][1], left, limit, mode, post_scores[0][0]))
        mode = "sweep" if len(out) > 1 else (out[0].mode if out else "none")
        self.decided[mode] = self.decided.get(mode, 0) + 1
        routed = self.routed
        for c in out:
            key = (c.venue, c.mode)
            routed[key] = routed.get(key, 0) + 1
        decision = {
            "client_id": client_id, "instrument_id": instrument_id, "side": s, "qty": qty, "limit": limit,
            "mode": mode, "take_scores": {n: c for c, n, _, _ in takes}, "post_scores": {n: c for c, n in post_scores},
            "children": [(c.venue, c.qty, c.mode) for c in out],
        }
        self.decisions.append(decision)
        if self._debug:
            log.debug("route %s", client_id, extra={"decision": decision})
        return out

    def publish_metrics(self) -> None:
        """Copy routing counts and venue statistics to Prometheus (called on timers, not per event)."""
        pub = self._published
        for mode, n in self.decided.items():
            if n > pub.get(mode, 0):
                ROUTE_DECISIONS.labels(mode).inc(n - pub.get(mode, 0))
                pub[mode] = n
        for key, n in self.routed.items():
            if n > pub.get(key, 0):
                ROUTED.labels(*key).inc(n - pub.get(key, 0))
                pub[key] = n
        for name, v in self.venues.items():
            VENUE_LATENCY.labels(name, "ack").set(v.ack_ewma_us)
            VENUE_LATENCY.labels(name, "fill").set(v.fill_ewma_us)
            VENUE_FILL_RATE.labels(name).set(v.fill_rate)
