"""A simulated exchange built on the matching engine, for paper trading and tests.

:class:`SimulatedVenue` keeps one :class:`~greekfire.market.matching.MatchingEngine` per instrument,
delays requests and reports by a configurable latency (each way), charges maker/taker fees, and runs
background flow from synthetic participants (passive quotes around a fair value and occasional takers)
so that books move and our resting orders get filled. Our orders' prices arrive in integer ticks and go
onto the books as they are; market data (quotes, trades, depth) leaves in currency.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from greekfire.market.matching import ExecKind, ExecReport, MatchingEngine
from greekfire.trading.model import (
    BookUpdate,
    Instrument,
    OrderType,
    Quote,
    Side,
    TimeInForce,
    TradeTick,
    VenueEvent,
    VenueEventKind,
    VenueOrderState,
)
from greekfire.trading.orders import Order
from greekfire.trading.venues import Venue

_KIND = {
    ExecKind.ACCEPTED: VenueEventKind.ACCEPTED, ExecKind.REJECTED: VenueEventKind.REJECTED,
    ExecKind.TRADE: VenueEventKind.FILL, ExecKind.CANCELED: VenueEventKind.CANCELED,
    ExecKind.REPLACED: VenueEventKind.REPLACED, ExecKind.EXPIRED: VenueEventKind.EXPIRED,
}
_REJECTED, _REPLACE_REJECT, _CANCEL_REJECT = (
    VenueEventKind.REJECTED, VenueEventKind.REPLACE_REJECT, VenueEventKind.CANCEL_REJECT,
)

US_OWNER = 1  # our orders on the simulated books; synthetic participants use owners >= 100
CLIENT_OWNERS = range(1, 100)  # owners whose orders are reported back (``SimulatedVenue.owner_of``)


log = logging.getLogger(__name__)


class SimulatedVenue(Venue):
    """A simulated exchange: one matching engine per instrument, latency, fees and background flow.

    ``fair_value(instrument_id) -> float`` is where synthetic participants centre their quotes (currency).
    Latency is one way, in microseconds: ``latency_us`` plus uniform jitter up to ``jitter_us``.
    ``flow_rate_hz`` synthetic orders per second across all instruments. Deterministic for a given ``seed``.
    Requests are worked when they arrive, before the background flow of the same poll. Reports come back in
    the order the venue sent them (``ordered_reports``, one session: FIX guarantees it, so a fill is never
    overtaken by the cancel that followed it); ``ordered_reports=False`` lets the jitter reorder them, to
    put the engine through replies that cross.

    ``owner_of(client_id) -> int`` (attribute, default None: every order is ``US_OWNER``) files orders under
    several owners in :data:`CLIENT_OWNERS`: the exchange simulator over FIX gives each client session its
    own, so two clients' orders trade with each other (one owner's orders never do: self-trade prevention).
    """

    def __init__(
        self,
        name: str,
        instruments: list[Instrument],
        fair_value: Callable[[int], float],
        *,
        latency_us: float = 200.0,
        jitter_us: float = 100.0,
        maker_fee: float = -0.20,
        taker_fee: float = 0.50,
        flow_rate_hz: float = 200.0,
        taker_share: float = 0.3,
        half_spread_ticks: int = 3,
        book_levels: int = 0,
        seed: int = 0,
        ordered_reports: bool = True,
    ) -> None:
        self.name = name
        self.instruments = {i.instrument_id: i for i in instruments}
        self.fair_value = fair_value
        self.latency_ns = int(latency_us * 1000)
        self.jitter_ns = int(jitter_us * 1000)
        self.maker_fee, self.taker_fee = maker_fee, taker_fee
        self.flow_rate_hz = flow_rate_hz
        self.taker_share = taker_share
        self.half_spread_ticks = half_spread_ticks
        self.book_levels = book_levels  # > 0: also publish depth snapshots (BookUpdate) of touched books
        self.ordered_reports = ordered_reports
        self.owner_of: Callable[[str], int] | None = None
        self._last_report_due = 0
        self.rng = random.Random(seed)
        # fees are per unit of quantity on the books: one contract is one unit here
        self.books = {
            iid: MatchingEngine(iid, maker_fee=maker_fee, taker_fee=taker_fee) for iid in self.instruments
        }
        self._inbound: list[tuple[int, int, str, tuple[Any, ...]]] = []  # (due_ns, seq, op, args)
        self._outbound: list[tuple[int, int, Any]] = []
        self._seq = 0
        self._next_oid = 1
        self._oid_of: dict[str, int] = {}
        self._cid_of: dict[int, str] = {}
        self._inst_of: dict[int, int] = {}
        self._our_fills: list[VenueEvent] = []
        self._last_flow_ns: int | None = None
        self._bg_live: dict[int, list[int]] = {iid: [] for iid in self.instruments}
        self._flow_ids: list[int] = []  # the instruments synthetic participants trade: none expired
        self._next_expiry = 0
        self._prune_expired(0)
        self.connected = True
        self.requests = 0
        self._touched: set[int] = set()
        self._pending_md: list[Any] = []

    # ---------------------------------------------------------------- interface
    def fees(self) -> tuple[float, float]:
        return self.maker_fee, self.taker_fee

    def tick_size(self, instrument_id: int) -> float:
        return self.instruments[instrument_id].tick_size

    def _delay(self) -> int:
        return self.latency_ns + (int(self.rng.random() * self.jitter_ns) if self.jitter_ns else 0)

    def _push_in(self, now_ns: int, op: str, args: tuple[Any, ...], due_ns: int | None = None) -> None:
        # a request on the wire: it arrives at ``due_ns`` (default: now plus one delay)
        self._seq += 1
        self.requests += 1
        heapq.heappush(self._inbound, (now_ns + self._delay() if due_ns is None else due_ns, self._seq, op, args))

    def submit(self, order: Order, now_ns: int) -> None:
        self._push_in(now_ns, "submit", (order.client_id, order.instrument_id, int(order.side), order.qty,
                                         order.price_ticks, int(order.ord_type), int(order.tif), order.post_only))
        if order.trace_id is not None:  # entered through the API: say where it went
            log.info("venue %s: sent %s", self.name, order.client_id,
                     extra={"trace_id": order.trace_id, "venue": self.name, "client_id": order.client_id})

    def amend(self, order: Order, new_qty: int, new_price_ticks: int, now_ns: int) -> None:
        self._push_in(now_ns, "amend", (order.client_id, new_qty, new_price_ticks))

    def amend_many(self, amends: Sequence[tuple[Order, int, int]], now_ns: int) -> None:
        """A mass quote is one message: its amends travel together (one delay) and apply in order."""
        due = now_ns + self._delay()
        for order, qty, price in amends:
            self._push_in(now_ns, "amend", (order.client_id, qty, price), due)

    def cancel(self, order: Order, now_ns: int) -> None:
        self._push_in(now_ns, "cancel", (order.client_id,))

    def seed_books(self, levels: int = 3, size: int = 20, now_ns: int = 0) -> None:
        """Put a few levels of synthetic liquidity on each side of every book around fair value."""
        for iid in self.instruments:
            for lvl in range(levels):
                self._bg_quote(iid, now_ns, offset=lvl, size=size)
            self._touched.add(iid)

    def add_instrument(self, inst: Instrument, now_ns: int, levels: int = 3, size: int = 20) -> bool:
        """List ``inst`` from now on (a new expiry during a run): an empty book that synthetic participants quote,
        ``levels`` a side of ``size`` at once. False when it was listed already."""
        iid = inst.instrument_id
        if iid in self.instruments:
            return False
        self.instruments[iid] = inst
        self.books[iid] = MatchingEngine(iid, maker_fee=self.maker_fee, taker_fee=self.taker_fee)
        self._bg_live[iid] = []
        self._prune_expired(now_ns)
        for lvl in range(levels):
            self._bg_quote(iid, now_ns, offset=lvl, size=size)
        self._touched.add(iid)
        return True

    def _prune_expired(self, now_ns: int) -> None:
        """Synthetic flow trades only what has not expired at ``now_ns`` (an expired option's book stays)."""
        self._flow_ids = [i for i, inst in self.instruments.items() if not 0 < inst.expiry_ns <= now_ns]
        self._next_expiry = min((inst.expiry_ns for inst in self.instruments.values() if inst.expiry_ns > now_ns),
                                default=2**63)

    def add_liquidity(self, instrument_id: int, side: int, qty: int, price: float, now_ns: int = 0) -> None:
        """Rest a synthetic participant's limit order (price in currency) at once; for scripted scenarios."""
        oid = self._next_oid
        self._next_oid += 1
        inst = self.instruments[instrument_id]
        # each call is a different participant, so self-trade prevention never blocks a scripted cross
        reports = self.books[instrument_id].submit(oid, 1000 + oid, Side(side), qty, inst.to_ticks(price), ts_ns=now_ns)
        self._touched.add(instrument_id)
        self._reports(instrument_id, reports, now_ns, self._pending_md)

    def poll(self, now_ns: int) -> list[Any]:
        out: list[Any] = self._pending_md
        self._pending_md = []
        if not self.connected:
            return out
        touched = self._touched
        inbound = self._inbound
        while inbound and inbound[0][0] <= now_ns:  # requests that arrived since the last poll, then the flow
            due, _, op, args = heapq.heappop(inbound)
            self._execute(due, op, args, touched, out)
        self._background(now_ns, touched, out)
        for iid in touched:
            book = self.books[iid]
            bb, ba = book.best_bid(), book.best_ask()
            inst = self.instruments[iid]
            out.append(Quote(
                iid,
                inst.from_ticks(bb[0]) if bb else math.nan,
                inst.from_ticks(ba[0]) if ba else math.nan,
                bb[1] if bb else 0,
                ba[1] if ba else 0,
                now_ns,
                self.name,
            ))
            if self.book_levels:
                bids, asks = book.depth(self.book_levels)
                out.append(BookUpdate(
                    iid, tuple((inst.from_ticks(p), q) for p, q in bids), tuple((inst.from_ticks(p), q) for p, q in asks),
                    now_ns, self.name,
                ))
        touched.clear()
        outbound = self._outbound
        while outbound and outbound[0][0] <= now_ns:
            out.append(heapq.heappop(outbound)[2])
        return out

    def end_of_day(self, now_ns: int) -> None:
        """Expire every DAY order on every book (ours are reported as 'expired')."""
        for iid, book in self.books.items():
            reports = book.expire_day_orders(now_ns)
            if reports:
                self._touched.add(iid)
                self._reports(iid, reports, now_ns, self._pending_md)

    def report(self) -> tuple[list[VenueOrderState], list[VenueEvent]]:
        # a new order still on the wire has been sent and will be worked: report it as live (cum 0), so
        # reconciliation does not close an order that is about to rest or fill
        states = [
            VenueOrderState(args[0], "", args[1], args[2], args[3], args[4] or 0, 0, True)
            for _, _, op, args in self._inbound if op == "submit"
        ]
        for cid, oid in self._oid_of.items():
            iid = self._inst_of[oid]
            rep = self.books[iid].order(oid)
            if rep is not None:
                states.append(VenueOrderState(cid, f"{self.name}-{oid}", iid, int(rep.side), rep.qty, rep.price,
                                              rep.cum_qty, True))
        return states, list(self._our_fills)

    # ---------------------------------------------------------------- exchange side
    def _execute(self, now_ns: int, op: str, args: tuple[Any, ...], touched: set[int], out: list[Any]) -> None:
        if op == "submit":
            cid, iid, side, qty, price, ord_type, tif, post_only = args
            inst = self.instruments.get(iid)
            if inst is None:
                self._send(now_ns, VenueEvent(_REJECTED, self.name, cid, reason="unknown_instrument", ts_ns=now_ns))
                return
            oid = self._next_oid
            self._next_oid += 1
            self._oid_of[cid] = oid
            self._cid_of[oid] = cid
            self._inst_of[oid] = iid
            is_mkt = ord_type == OrderType.MARKET
            reports = self.books[iid].submit(
                oid, US_OWNER if self.owner_of is None else self.owner_of(cid), Side(side), qty,
                None if is_mkt else price,
                OrderType(ord_type), TimeInForce(tif), post_only, now_ns,
            )
        elif op == "amend":
            cid, new_qty, new_ticks = args
            oid = self._oid_of.get(cid, -1)
            iid = self._inst_of.get(oid)
            if iid is None:
                self._send(now_ns, VenueEvent(_REPLACE_REJECT, self.name, cid, reason="unknown_order", ts_ns=now_ns))
                return
            reports = self.books[iid].replace(oid, new_qty, new_ticks, now_ns)
            if reports and reports[0].kind == ExecKind.REJECTED:
                self._send(now_ns, VenueEvent(_REPLACE_REJECT, self.name, cid, reason=reports[0].reason, ts_ns=now_ns))
                return
        else:  # cancel
            (cid,) = args
            oid = self._oid_of.get(cid, -1)
            iid = self._inst_of.get(oid)
            if iid is None:
                self._send(now_ns, VenueEvent(_CANCEL_REJECT, self.name, cid, reason="unknown_order", ts_ns=now_ns))
                return
            reports = self.books[iid].cancel(oid, now_ns)
            if reports and reports[0].kind == ExecKind.REJECTED:
                self._send(now_ns, VenueEvent(_CANCEL_REJECT, self.name, cid, reason=reports[0].reason, ts_ns=now_ns))
                return
        touched.add(iid)
        self._reports(iid, reports, now_ns, out)

    def _reports(self, iid: int, reports: list[ExecReport], now_ns: int, out: list[Any]) -> None:
        inst = self.instruments[iid]
        for r in reports:
            if r.kind == ExecKind.TRADE and r.liquidity == "T":
                out.append(TradeTick(iid, inst.from_ticks(r.price), r.qty, Side(int(r.side)), now_ns, self.name))
            if r.owner not in CLIENT_OWNERS:
                continue
            cid = self._cid_of.get(r.order_id)
            if cid is None:
                continue
            ev = VenueEvent(
                _KIND[r.kind], self.name, cid, f"{self.name}-{r.order_id}", r.qty, r.price,
                r.leaves_qty, r.cum_qty,
                f"{self.name}-{iid}-{r.trade_id}-{r.liquidity}" if r.kind == ExecKind.TRADE else "",
                r.fee, r.liquidity, r.reason, now_ns, iid, int(r.side),
            )
            if r.kind == ExecKind.TRADE:
                self._our_fills.append(ev)
            self._send(now_ns, ev)

    def _send(self, now_ns: int, ev: VenueEvent) -> None:
        self._seq += 1
        due = now_ns + self._delay()
        if self.ordered_reports:  # one session: a report never arrives before one sent earlier
            if due < self._last_report_due:
                due = self._last_report_due
            self._last_report_due = due
        heapq.heappush(self._outbound, (due, self._seq, ev))

    # ---------------------------------------------------------------- synthetic participants
    def _bg_quote(self, iid: int, now_ns: int, offset: int | None = None, size: int | None = None) -> list[ExecReport]:
        inst = self.instruments[iid]
        fair = self.fair_value(iid)
        if not fair > 0:
            return []
        rng = self.rng
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        off = (self.half_spread_ticks + (offset if offset is not None else rng.randint(0, 4)))
        px = inst.to_ticks(fair) - off if side == Side.BUY else inst.to_ticks(fair) + off
        if px <= 0:
            return []
        oid = self._next_oid
        self._next_oid += 1
        live = self._bg_live[iid]
        live.append(oid)
        reports = self.books[iid].submit(oid, 100 + rng.randint(0, 9), side, size or rng.randint(1, 20), px,
                                         ts_ns=now_ns)
        if offset is not None:  # seeding puts both sides
            other = Side.SELL if side == Side.BUY else Side.BUY
            px2 = inst.to_ticks(fair) + off if other == Side.SELL else inst.to_ticks(fair) - off
            if px2 > 0:
                oid2 = self._next_oid
                self._next_oid += 1
                live.append(oid2)
                reports += self.books[iid].submit(oid2, 100 + rng.randint(0, 9), other, size or 10, px2, ts_ns=now_ns)
        if len(live) > 60:  # old synthetic quotes leave the book so it follows fair value
            for old in live[:20]:
                self.books[iid].cancel(old, now_ns)
            del live[:20]
        return reports

    def _background(self, now_ns: int, touched: set[int], out: list[Any]) -> None:
        if self._last_flow_ns is None:
            self._last_flow_ns = now_ns
            return
        dt = (now_ns - self._last_flow_ns) * 1e-9
        if dt <= 0 or self.flow_rate_hz <= 0:
            return
        self._last_flow_ns = now_ns
        lam = min(self.flow_rate_hz * dt, 1000.0)
        # Poisson count by inversion (lam is small per poll)
        n, p, u = 0, math.exp(-lam), self.rng.random()
        cum = p
        while u > cum and n < 5000:
            n += 1
            p *= lam / n
            cum += p
        if now_ns >= self._next_expiry:
            self._prune_expired(now_ns)
        ids = self._flow_ids
        if not ids:
            return
        for _ in range(n):
            iid = ids[self.rng.randrange(len(ids))]
            if self.rng.random() < self.taker_share:
                side = Side.BUY if self.rng.random() < 0.5 else Side.SELL
                oid = self._next_oid
                self._next_oid += 1
                reports = self.books[iid].submit(oid, 100 + self.rng.randint(0, 9), side, self.rng.randint(1, 10),
                                                 None, OrderType.MARKET, ts_ns=now_ns)
            else:
                reports = self._bg_quote(iid, now_ns)
            touched.add(iid)
            self._reports(iid, reports, now_ns, out)  # our resting orders may have been hit
