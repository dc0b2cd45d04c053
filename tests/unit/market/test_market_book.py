"""L3/L2 order books: operations, queue positions, bad events, and properties against a reference model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greekfire.core.errors import DataError
from greekfire.market.book import (
    ADD,
    DELETE,
    EVENT_DTYPE,
    EXECUTE,
    LEVEL,
    REDUCE,
    REPLACE,
    OrderBook,
    OrderBooks,
    make_events,
)


def test_add_reduce_delete_execute_replace_and_views():
    b = OrderBook(max_orders=64, max_levels=16)
    assert b.add(0, 1, 1, 100, 10) == "ok"
    assert b.add(0, 1, 2, 100, 5) == "ok"
    assert b.add(0, 1, 3, 99, 7) == "ok"
    assert b.add(0, -1, 4, 102, 8) == "ok"
    assert b.add(0, -1, 5, 101, 3) == "ok"
    assert b.best_bid() == (100, 15) and b.best_ask() == (101, 3)
    assert b.depth(0, 5) == ([(100, 15), (99, 7)], [(101, 3), (102, 8)])
    assert b.queue_position(2) == (1, 10) and b.queue_position(1) == (0, 0)
    assert b.reduce(1, 4) == "ok" and b.best_bid() == (100, 11)
    assert b.queue_position(2) == (1, 6)  # a partial cancel keeps the place
    assert b.execute(5, 3) == "ok" and b.best_ask() == (102, 8)
    assert b.stats(0)["traded_qty"] == 3 and b.stats(0)["trades"] == 1
    # replace: same id, same price, smaller -> keeps priority; new id or price -> back of the queue
    assert b.replace(1, 1, 100, 2) == "ok" and b.queue_position(1) == (0, 0)
    assert b.replace(1, 11, 100, 2) == "ok" and b.queue_position(11) == (1, 5)
    assert b.order(1) is None and b.order(11)["qty"] == 2
    assert b.level_orders(0, 1, 100) == [(2, 5), (11, 2)]
    assert b.delete(2) == "ok" and b.delete(11) == "ok"
    assert b.best_bid() == (99, 7)
    assert b.vwap_to_fill(0, 1, 4) == (102.0, 4)
    assert b.vwap_to_fill(0, -1, 10) == (99.0, 7)  # thin book: fills 7 of 10
    assert b.check(0) == [] and b.n_orders == 2


def test_l2_levels_and_clear_and_many_books():
    books = OrderBooks(n_books=3, max_orders=32, max_levels=8)
    assert books.set_level(2, -1, 205, 30) == "ok"
    assert books.set_level(2, -1, 204, 10) == "ok"
    assert books.set_level(2, -1, 205, 0) == "ok"
    assert books.depth(2, 3) == ([], [(204, 10)])
    books.add(1, 1, 7, 50, 1)
    arr = books.depth_array(2)
    assert arr.shape == (3, 2, 2, 2)
    assert arr[1, 0, 0].tolist() == [50, 1] and arr[2, 1, 0].tolist() == [204, 10] and arr[0].sum() == 0
    books.clear(1)
    assert books.best_bid(1) is None and books.n_orders == 0
    with pytest.raises(DataError):
        books.best_bid(3)


def test_bad_events_counted_with_position_never_raised():
    ev = make_events(8)
    ev[0] = (ADD, 1, 0, 0, 0, 1, 100, 10, 0, 0, 0)
    ev[1] = (ADD, 1, 0, 0, 0, 1, 100, 10, 0, 0, 0)  # duplicate id
    ev[2] = (REDUCE, 0, 0, 0, 0, 99, 0, 5, 0, 0, 0)  # unknown id
    ev[3] = (ADD, 1, 0, 0, 0, 2, 100, -5, 0, 0, 0)  # negative size
    ev[4] = (ADD, 1, 0, 9, 0, 3, 100, 5, 0, 0, 0)  # no such book
    ev[5] = (EXECUTE, 0, 0, 0, 0, 1, 0, 50, 0, 0, 0)  # more than the order holds: clipped and flagged
    ev[6] = (42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # unknown kind
    ev[7] = (LEVEL, 1, 0, 0, 0, 0, 90, 5, 0, 0, 0)
    b = OrderBook(max_orders=16, max_levels=8)
    res = b.apply(ev)
    assert res.applied == 8 and res.bad == 6
    assert res.first_bad == [(1, "duplicate_order_id"), (2, "unknown_order_id"), (3, "bad_size"),
                             (4, "bad_book"), (5, "reduce_beyond_order"), (6, "unknown_event_kind")]
    assert b.depth(0, 3) == ([(90, 5)], [])
    with pytest.raises(DataError):
        b.apply(np.zeros(3, np.int64))


def test_capacity_full_is_reported():
    b = OrderBook(max_orders=2, max_levels=2)
    assert [b.add(0, 1, i, 100 - i, 1) for i in range(1, 4)] == ["ok", "ok", "capacity_full"]
    b2 = OrderBook(max_orders=8, max_levels=2)
    assert [b2.add(0, 1, i, 100 - i, 1) for i in range(1, 4)] == ["ok", "ok", "capacity_full"]


class RefBook:
    """A plain reference: dict of orders, FIFO lists per price."""

    def __init__(self):
        self.orders = {}  # id -> [side, px, qty]
        self.queues = {1: {}, -1: {}}  # side -> px -> [ids]

    def add(self, oid, side, px, qty):
        self.orders[oid] = [side, px, qty]
        self.queues[side].setdefault(px, []).append(oid)

    def remove(self, oid, qty=None):
        side, px, have = self.orders[oid]
        if qty is None or qty >= have:
            del self.orders[oid]
            self.queues[side][px].remove(oid)
            if not self.queues[side][px]:
                del self.queues[side][px]
        else:
            self.orders[oid][2] = have - qty

    def depth(self, side):
        pxs = sorted(self.queues[side], reverse=side > 0)
        return [(p, sum(self.orders[o][2] for o in self.queues[side][p])) for p in pxs]


ops = st.lists(
    st.tuples(st.sampled_from(["add", "add", "add", "reduce", "delete", "execute", "replace", "cross"]),
              st.sampled_from([1, -1]), st.integers(0, 20), st.integers(1, 50), st.integers(0, 10_000)),
    max_size=150,
)


@settings(max_examples=80, deadline=None)
@given(ops)
def test_random_flow_matches_reference_and_keeps_invariants(flow):
    """A feed-like flow (adds never cross: a crossing add executes the opposite front orders first).

    The book stays uncrossed, quantities positive, L2 = sum of L3, and it equals a plain reference.
    """
    ref = RefBook()
    events = []
    next_id = 1

    def ev(kind, side=0, oid=0, px=0, qty=0, new_id=0, new_px=0, new_qty=0):
        events.append((kind, side, 0, 0, len(events), oid, px, qty, new_id, new_px, new_qty))

    for op, side, off, qty, pick in flow:
        live = list(ref.orders)
        if op in ("add", "cross") or not live:
            best_opp = ref.depth(-side)
            px = 100 - side * (1 + off) if op == "add" else (best_opp[0][0] if best_opp else 100 - side)
            # take out what it crosses, front orders first, as an exchange feed would report
            while best_opp and (px >= best_opp[0][0] if side > 0 else px <= best_opp[0][0]) and qty > 0:
                front = ref.queues[-side][best_opp[0][0]][0]
                take = min(qty, ref.orders[front][2])
                ev(EXECUTE, oid=front, qty=take)
                ref.remove(front, take)
                qty -= take
                best_opp = ref.depth(-side)
            if qty > 0:
                ev(ADD, side, next_id, px, qty)
                ref.add(next_id, side, px, qty)
                next_id += 1
            continue
        oid = live[pick % len(live)]
        o_side, o_px, o_qty = ref.orders[oid]
        if op == "delete":
            ev(DELETE, oid=oid)
            ref.remove(oid)
        elif op in ("reduce", "execute"):
            q = 1 + pick % o_qty
            ev(REDUCE if op == "reduce" else EXECUTE, oid=oid, qty=q)
            ref.remove(oid, q)
        else:  # replace on the same side, away from the opposite side
            new_px = 100 - o_side * (1 + off)
            # a "cross" can leave an order resting at 99 or 101, inside the usual ranges: a feed never
            # reports a replace that crosses it, so keep the new price a tick away from the opposite best
            best_opp = ref.depth(-o_side)
            if best_opp:
                new_px = min(new_px, best_opp[0][0] - 1) if o_side > 0 else max(new_px, best_opp[0][0] + 1)
            ev(REPLACE, oid=oid, new_id=next_id, new_px=new_px, new_qty=qty)
            ref.remove(oid)
            ref.add(next_id, o_side, new_px, qty)
            next_id += 1
    book = OrderBook(max_orders=512, max_levels=64)
    arr = np.array(events, dtype=EVENT_DTYPE) if events else make_events(0)
    res = book.apply(arr)
    assert res.bad == 0, res.first_bad
    bids, asks = book.depth(0, 100)
    assert bids == ref.depth(1) and asks == ref.depth(-1)
    if bids and asks:
        assert bids[0][0] < asks[0][0]
    assert all(q > 0 for _, q in bids + asks)
    assert book.check(0) == []
    for oid, (_, px, _q) in ref.orders.items():
        n_ahead, q_ahead = book.queue_position(oid)
        side = ref.orders[oid][0]
        queue = ref.queues[side][px]
        assert n_ahead == queue.index(oid)
        assert q_ahead == sum(ref.orders[o][2] for o in queue[: queue.index(oid)])


def test_deep_books_l2_updates_match_a_dict():
    """Hundreds of levels per side: the search past the top levels (bisection) must agree with a dict."""
    rng = np.random.default_rng(4)
    n = 20_000
    ev = make_events(n)
    ev["kind"] = LEVEL
    ev["side"] = rng.choice([1, -1], n)
    ev["price"] = np.where(ev["side"] > 0, rng.integers(1, 400, n), rng.integers(400, 800, n))
    ev["qty"] = rng.integers(0, 4, n) * 10
    book = OrderBook(max_orders=16, max_levels=1024)
    assert book.apply(ev).bad == 0
    ref = {1: {}, -1: {}}
    for side, px, qty in zip(ev["side"].tolist(), ev["price"].tolist(), ev["qty"].tolist(), strict=True):
        if qty:
            ref[side][px] = qty
        else:
            ref[side].pop(px, None)
    bids, asks = book.depth(0, 1000)
    assert bids == sorted(ref[1].items(), reverse=True) and asks == sorted(ref[-1].items())
    assert len(bids) > 100 and book.check(0, l2_only=True) == []
    assert book.check(0)  # the quantities are not backed by orders


def test_bad_events_are_counted_on_the_metrics_registry():
    from greekfire.core.metrics import sample_value

    before = sample_value("greekfire_market_bad_book_events_total", {"reason": "unknown_order_id"}) or 0.0
    b = OrderBook(max_orders=4, max_levels=4)
    ev = make_events(2)
    ev["kind"] = DELETE
    ev["order_id"] = [5, 6]
    res = b.apply(ev)
    assert res.by_reason == {"unknown_order_id": 2}
    after = sample_value("greekfire_market_bad_book_events_total", {"reason": "unknown_order_id"})
    assert after == before + 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["limit", "limit", "market", "cancel", "replace"]), st.sampled_from([1, -1]),
                          st.integers(1, 20), st.integers(95, 105), st.integers(0, 50)), max_size=100))
def test_book_mirrors_the_matching_engine(flow):
    """Engine reports turned into book events keep an L3 book equal to the engine: depth, queue places."""
    from greekfire.market.matching import MatchingEngine, OrdType, Side

    eng = MatchingEngine(stp="none")
    book = OrderBook(max_orders=512, max_levels=64)
    ids: list[int] = []
    for i, (op, side, qty, px, pick) in enumerate(flow, start=1):
        if op == "cancel" and ids:
            reports = eng.cancel(ids[pick % len(ids)])
        elif op == "replace" and ids:
            reports = eng.replace(ids[pick % len(ids)], qty, px)
        else:
            reports = eng.submit(i, pick % 3, Side(side), qty, px,
                                 OrdType.MARKET if op == "market" else OrdType.LIMIT)
            ids.append(i)
        for oid in dict.fromkeys(r.order_id for r in reports):
            live, mine = eng.order(oid), book.order(oid)
            if live is None and mine is not None:
                assert book.delete(oid) == "ok"
            elif live is not None and mine is None:
                assert book.add(0, int(live.side), oid, live.price, live.leaves_qty) == "ok"
            elif live is not None and mine is not None and (live.price, live.leaves_qty) != (mine["price"], mine["qty"]):
                if live.price == mine["price"] and live.leaves_qty < mine["qty"] and eng.queue_ahead(oid) is not None:
                    assert book.reduce(oid, mine["qty"] - live.leaves_qty) == "ok"
                else:
                    assert book.replace(oid, oid, live.price, live.leaves_qty) == "ok"
        assert book.depth(0, 100) == eng.depth(100)
        for oid in ids:
            if eng.order(oid) is not None:
                assert book.queue_position(oid)[1] == eng.queue_ahead(oid)
    assert book.check(0) == []
