"""The venues the HFT pipeline trades with, and the ticks they are built from.

* :class:`ExchangeSim`: the exchange simulator on rings -- it publishes the feed, so it fills an order
  decided at sequence number *s* against its instrument's book as of *s*;
* the OUCH exchange simulator's books (:func:`seed_liquidity`: the file's closing book) and what it does
  with a stream of orders (:func:`match_against`, for the single-process reference);
* :class:`OuchVenue`: the gateway's side of OUCH 4.2 (pool orders through greekfire.hft.gateway's OUCH
  gateway, outcomes back as order records).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from greekfire.hft.cluster import TICK_DTYPE, max_orders_for
from greekfire.hft.strategy import CANCELED, FILLED, ORD_DTYPE, PARTIAL, REJECTED
from greekfire.market import itch
from greekfire.market.book import OrderBooks

VENUE_REJECT = 255  # reason code of an order the venue refused (greekfire.hft.orders.VENUE_REJECT)


# ------------------------------------------------------------------------------------------- ticks
def itch_ticks(data: Any, framing: str = "length") -> tuple[np.ndarray, int]:
    """The book messages of an ITCH buffer or file as ticks (sequence number = the message's 1-based
    position in the stream), and the number of messages in the stream."""
    msgs = itch.scan(data, framing)
    ev, idx = itch.book_events(msgs)
    t = np.zeros(len(ev), TICK_DTYPE)
    t["ev"] = ev
    t["seq"] = idx + 1
    return t, len(msgs)


def messages_to_ticks(msgs: list[bytes], first_seq: int) -> np.ndarray:
    """Raw ITCH messages (in sequence order, the first numbered ``first_seq``) as ticks."""
    scanned = itch.scan(np.frombuffer(itch.frame(msgs), np.uint8), sniff=False)
    ev, idx = itch.book_events(scanned)
    t = np.zeros(len(ev), TICK_DTYPE)
    t["ev"] = ev
    t["seq"] = idx + first_seq
    return t


# ------------------------------------------------------------------------------------------- exchange
class ExchangeSim:
    """The exchange simulator: it publishes the feed, so it knows every book at every sequence number. An
    order decided at sequence number ``seq`` is an immediate-or-cancel limit order against the book of its
    instrument as of ``seq``: a buy at or above the best ask fills min(qty, ask size) at the ask, a sell
    likewise at the bid; the rest is canceled. Our fills do not change the public book (the feed's)."""

    def __init__(self, data: Any, n_instruments: int, framing: str = "length") -> None:
        ticks, _ = itch_ticks(data, framing)
        ok = ticks["ev"]["book"] < n_instruments
        ticks = ticks[ok]
        self.events = np.ascontiguousarray(ticks["ev"])
        self.seq = ticks["seq"]
        order = np.argsort(self.events["book"], kind="stable")
        self._order = order
        self._starts = np.searchsorted(self.events["book"][order], np.arange(n_instruments + 1))
        self._ptr = self._starts[:-1].copy()
        self.books = OrderBooks(n_instruments, max_orders_for(self.events), 256)
        self._status = np.zeros(len(self.events), np.int8)
        self.n_instruments = n_instruments

    def _advance(self, b: int, seq: int) -> None:
        lo, hi = int(self._ptr[b]), int(self._starts[b + 1])
        idx = self._order[lo:hi]
        upto = lo + int(np.searchsorted(self.seq[idx], seq, side="right"))
        if upto > lo:
            self.books.apply_fast(self.events[self._order[lo:upto]], self._status[: upto - lo])
            self._ptr[b] = upto

    def execute(self, orders: np.ndarray) -> np.ndarray:
        """Fill ``orders`` (:data:`ORD_DTYPE`, each instrument's in sequence order); returns them with
        status, filled and fill_px set."""
        out = orders.copy()
        for i in range(len(out)):
            o = out[i]
            b = int(o["instrument"])
            if not 0 <= b < self.n_instruments:
                o["status"], o["reason"] = REJECTED, VENUE_REJECT
                continue
            self._advance(b, int(o["seq"]))
            side = int(o["side"])
            top = self.books.best_ask(b) if side > 0 else self.books.best_bid(b)
            px = int(o["price"])
            if top is not None and (px >= top[0] if side > 0 else px <= top[0]):
                q = min(int(o["qty"]), int(top[1]))
                o["filled"], o["fill_px"] = q, top[0]
                o["status"] = FILLED if q == int(o["qty"]) else PARTIAL
            else:
                o["status"] = CANCELED
        return out


def symbol_of(instrument: int) -> str:
    """The OUCH symbol of an instrument (its ITCH stock locate): ``L00042``."""
    return f"L{instrument:05d}"


def seed_liquidity(data: Any, n_instruments: int, framing: str = "length", levels: int = 64
                   ) -> dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
    """The resting orders of the OUCH exchange simulator: each instrument's book at the end of the file,
    ``levels`` levels a side, (price ticks, qty) -- liquidity the strategy's orders trade against."""
    ex = ExchangeSim(data, n_instruments, framing)
    out = {}
    for b in range(n_instruments):
        ex._advance(b, np.iinfo(np.int64).max)
        bids, asks = ex.books.depth(b, levels)
        if bids or asks:
            out[b] = (bids, asks)
    return out


def match_against(orders: np.ndarray, seed: dict[int, tuple[list[tuple[int, int]], list[tuple[int, int]]]]
                  ) -> np.ndarray:
    """What the OUCH exchange simulator does with ``orders`` (each instrument's in sequence order): one
    matching engine per instrument (greekfire.market.matching, as the OUCH server runs) holding ``seed``,
    immediate-or-cancel limit orders; returns the orders with status, filled and the average fill price."""
    from greekfire.market.matching import MatchingEngine, Side, TimeInForce

    books: dict[int, Any] = {}
    out = orders.copy()
    next_id = 1
    for i in range(len(out)):
        o = out[i]
        b = int(o["instrument"])
        if b not in books:
            eng = books[b] = MatchingEngine(b)
            for side, levels in ((Side.BUY, seed.get(b, ([], []))[0]), (Side.SELL, seed.get(b, ([], []))[1])):
                for px, q in levels:
                    eng.submit(next_id, 0, side, q, px)
                    next_id += 1
        reports = books[b].submit(next_id, 1, Side(int(o["side"])), int(o["qty"]), int(o["price"]),
                                  tif=TimeInForce.IOC)
        mine = [r for r in reports if r.order_id == next_id and r.kind.name == "TRADE"]
        next_id += 1
        filled = sum(r.qty for r in mine)
        o["filled"] = filled
        o["fill_px"] = round(sum(r.qty * r.price for r in mine) / filled) if filled else 0
        o["status"] = FILLED if filled == int(o["qty"]) else PARTIAL if filled else CANCELED
    return out



def _ouch_outcome(pool: Any, slot: int, rec: np.void) -> bool:
    """Fill ``rec`` from pool order ``slot`` when that order is closed; True then."""
    from greekfire.hft.orders import STATUS
    from greekfire.trading.orders import OrderStatus

    st = STATUS[int(pool.orders[slot]["status"])]
    if st not in (OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED, OrderStatus.EXPIRED,
                  OrderStatus.DENIED):
        return False
    filled = int(pool.orders[slot]["filled"])
    rec["filled"] = filled
    rec["fill_px"] = round(float(pool.orders[slot]["avg_px"])) if filled else 0
    if st == OrderStatus.REJECTED or st == OrderStatus.DENIED:
        rec["status"], rec["reason"] = REJECTED, int(pool.orders[slot]["reason"]) or VENUE_REJECT
    else:
        rec["status"] = FILLED if filled == int(rec["qty"]) else PARTIAL if filled else CANCELED
    return True


class OuchVenue:
    """The gateway's side of OUCH: pool orders through greekfire.hft.gateway's OUCH gateway, outcomes back as
    order records."""

    def __init__(self, cfg: Any, host: str, port: int) -> None:
        from greekfire.hft.gateway import open_gateway
        from greekfire.hft.orders import OrderPool

        self.pool = OrderPool(1 << 16)
        self.gw = open_gateway("ouch", self.pool, host=host, port=port,
                               symbols={i: symbol_of(i) for i in range(cfg.n_locates)}, tick_size=cfg.risk.tick_size)
        self.meta = np.zeros(self.pool.capacity, ORD_DTYPE)
        self.live: set[int] = set()

    def send(self, orders: np.ndarray) -> None:
        for o in orders:
            slot = self.pool.alloc(int(o["instrument"]), int(o["side"]), int(o["qty"]), int(o["price"]),
                                   int(o["t_signal"]), 2)  # immediate or cancel
            now = time.perf_counter_ns()
            self.meta[slot] = o
            self.meta[slot]["t_sent"] = now
            self.gw.enter(slot, now)
            self.live.add(slot)

    def poll(self) -> np.ndarray:
        events = self.gw.poll(0.0)
        done = []
        for slot in {e.slot for e in events if e.slot >= 0} & self.live:
            rec = self.meta[slot].copy()
            if _ouch_outcome(self.pool, slot, rec):
                done.append(rec)
                self.live.discard(slot)
                self.pool.free(slot)
        return np.array(done, ORD_DTYPE) if done else np.zeros(0, ORD_DTYPE)

    def close(self) -> None:
        self.gw.stop()


