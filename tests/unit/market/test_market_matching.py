"""Matching engine: hand-worked scenarios for every order type, and properties on random flows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greekfire.core.errors import ConfigError
from greekfire.market.matching import (
    ExecKind,
    MatchingEngine,
    OrdType,
    Side,
    TimeInForce,
)

B, S = Side.BUY, Side.SELL


def kinds(reports):
    return [(r.kind, r.order_id) for r in reports]


def test_limit_rests_and_book_views():
    eng = MatchingEngine()
    assert eng.best_bid() is None and eng.best_ask() is None
    r = eng.submit(1, 10, B, 100, 99)
    assert kinds(r) == [(ExecKind.ACCEPTED, 1)]
    assert r[0].leaves_qty == 100 and r[0].cum_qty == 0 and r[0].price == 99
    eng.submit(2, 11, B, 50, 99)
    eng.submit(3, 12, B, 30, 98)
    eng.submit(4, 13, S, 20, 101)
    eng.submit(5, 13, S, 25, 102)
    assert eng.best_bid() == (99, 150)
    assert eng.best_ask() == (101, 20)
    bids, asks = eng.depth(5)
    assert bids == [(99, 150), (98, 30)]
    assert asks == [(101, 20), (102, 25)]
    assert eng.queue_ahead(2) == 100 and eng.queue_ahead(1) == 0
    assert len(eng) == 5


def test_aggressive_limit_walks_levels_price_time_fees():
    eng = MatchingEngine(maker_fee=-0.002, taker_fee=0.003)
    eng.submit(1, 1, S, 10, 101)
    eng.submit(2, 2, S, 10, 101)
    eng.submit(3, 3, S, 10, 102)
    r = eng.submit(9, 9, B, 25, 102)
    trades = [x for x in r if x.kind == ExecKind.TRADE]
    # taker then maker per trade; makers in time order at 101 then 102
    assert [(t.order_id, t.price, t.qty, t.liquidity) for t in trades] == [
        (9, 101, 10, "T"), (1, 101, 10, "M"),
        (9, 101, 10, "T"), (2, 101, 10, "M"),
        (9, 102, 5, "T"), (3, 102, 5, "M"),
    ]
    assert trades[0].trade_id == trades[1].trade_id == 1 and trades[4].trade_id == 3
    assert trades[0].fee == pytest.approx(0.03) and trades[1].fee == pytest.approx(-0.02)
    assert trades[-2].leaves_qty == 0 and trades[-2].cum_qty == 25
    assert eng.best_ask() == (102, 5)
    assert eng.best_bid() is None
    assert eng.volume == 25 and eng.trades == 3


def test_limit_partial_fill_then_rests():
    eng = MatchingEngine()
    eng.submit(1, 1, S, 10, 100)
    r = eng.submit(2, 2, B, 30, 100)
    assert r[-1].kind == ExecKind.TRADE and r[-2].leaves_qty == 20
    assert eng.best_bid() == (100, 20) and eng.best_ask() is None


def test_market_order_fills_and_cancels_rest():
    eng = MatchingEngine()
    eng.submit(1, 1, S, 10, 100)
    eng.submit(2, 1, S, 10, 105)
    r = eng.submit(3, 2, B, 25, ord_type=OrdType.MARKET)
    assert r[0].kind == ExecKind.ACCEPTED and r[0].price == 0
    assert [(x.price, x.qty) for x in r if x.kind == ExecKind.TRADE and x.order_id == 3] == [(100, 10), (105, 10)]
    assert r[-1].kind == ExecKind.CANCELED and r[-1].reason == "no_liquidity" and r[-1].cum_qty == 20
    assert eng.best_ask() is None and eng.best_bid() is None


def test_market_on_empty_book():
    eng = MatchingEngine()
    r = eng.submit(1, 1, S, 5, ord_type=OrdType.MARKET)
    assert kinds(r) == [(ExecKind.ACCEPTED, 1), (ExecKind.CANCELED, 1)]


def test_ioc_fills_what_it_can_and_never_rests():
    eng = MatchingEngine()
    eng.submit(1, 1, S, 10, 100)
    r = eng.submit(2, 2, B, 15, 100, tif=TimeInForce.IOC)
    assert r[-1].kind == ExecKind.CANCELED and r[-1].reason == "ioc_remainder"
    assert eng.best_bid() is None
    r = eng.submit(3, 2, B, 15, 100, tif=TimeInForce.IOC)
    assert kinds(r) == [(ExecKind.ACCEPTED, 3), (ExecKind.CANCELED, 3)]


def test_fok_all_or_nothing():
    eng = MatchingEngine()
    eng.submit(1, 1, S, 10, 100)
    eng.submit(2, 1, S, 10, 101)
    r = eng.submit(3, 2, B, 25, 101, tif=TimeInForce.FOK)
    assert kinds(r) == [(ExecKind.REJECTED, 3)] and r[0].reason == "fok_unfillable"
    assert eng.best_ask() == (100, 10)
    r = eng.submit(4, 2, B, 15, 100, tif=TimeInForce.FOK)  # only 10 at or below 100
    assert r[0].reason == "fok_unfillable"
    r = eng.submit(5, 2, B, 20, 101, tif=TimeInForce.FOK)
    assert sum(x.qty for x in r if x.kind == ExecKind.TRADE and x.order_id == 5) == 20
    assert eng.best_ask() is None and eng.best_bid() is None


def test_fok_counts_self_trade_prevention():
    eng = MatchingEngine(stp="cancel_newest")
    eng.submit(1, 7, S, 10, 100)
    eng.submit(2, 1, S, 10, 100)
    r = eng.submit(3, 7, B, 10, 100, tif=TimeInForce.FOK)  # own order first in the queue
    assert r[0].kind == ExecKind.REJECTED and r[0].reason == "fok_unfillable"


def test_post_only():
    eng = MatchingEngine()
    eng.submit(1, 1, S, 10, 100)
    r = eng.submit(2, 2, B, 10, 100, post_only=True)
    assert r[0].kind == ExecKind.REJECTED and r[0].reason == "post_only_would_cross"
    r = eng.submit(3, 2, B, 10, 99, post_only=True)
    assert r[0].kind == ExecKind.ACCEPTED and eng.best_bid() == (99, 10)
    # post-only replace that would cross is rejected, order left as it was
    r = eng.replace(3, 10, 100)
    assert r[0].kind == ExecKind.REJECTED and eng.best_bid() == (99, 10)
    r = eng.submit(4, 2, B, 5, ord_type=OrdType.MARKET, post_only=True)
    assert r[0].reason == "post_only_market"


def test_bad_requests_are_rejected():
    eng = MatchingEngine()
    assert eng.submit(1, 1, B, 0, 100)[0].reason == "bad_qty"
    assert eng.submit(1, 1, B, -5, 100)[0].reason == "bad_qty"
    assert eng.submit(1, 1, B, 5)[0].reason == "missing_price"
    eng.submit(1, 1, B, 5, 100)
    assert eng.submit(1, 1, B, 5, 100)[0].reason == "duplicate_order_id"
    r = eng.cancel(42)
    assert r[0].kind == ExecKind.REJECTED and r[0].reason == "unknown_order"
    assert eng.replace(42, 1, 1)[0].reason == "unknown_order"
    assert eng.submit(9, 1, 0, 5, 100)[0].reason == "bad_side"
    assert eng.submit(9, 1, B, 5, 100, tif=7)[0].reason == "bad_tif"
    assert eng.submit(9, 1, B, 5, 100, ord_type=5)[0].reason == "bad_ord_type"
    assert eng.submit(9, 1, -1, 5, 101, 0, 1)[0].kind == ExecKind.ACCEPTED  # plain ints are fine
    with pytest.raises(ConfigError):
        MatchingEngine(stp="bogus")


def test_what_the_book_cannot_represent_is_refused_not_rounded():
    eng = MatchingEngine()
    eng.submit(1, 10, B, 100, 10_000)
    # a sell at 10000.5 ticks must not trade at 10000 (through its own limit): refused, the book untouched
    r = eng.submit(2, 11, S, 100, 10_000.5)
    assert kinds(r) == [(ExecKind.REJECTED, 2)] and r[0].reason == "off_tick"
    r = eng.submit(3, 11, S, 2.5, 10_001)
    assert kinds(r) == [(ExecKind.REJECTED, 3)] and r[0].reason == "fractional_qty"
    for bad in (float("nan"), float("inf"), "10000"):
        assert eng.submit(4, 11, S, 100, bad)[0].reason == "off_tick"
    assert eng.best_bid() == (10_000, 100) and eng.best_ask() is None
    # whole numbers in another type are the same order: 10_001.0 ticks, 2.0 units
    r = eng.submit(5, 11, S, 2.0, 10_001.0)
    assert kinds(r) == [(ExecKind.ACCEPTED, 5)] and r[0].price == 10_001 and r[0].qty == 2
    assert eng.best_ask() == (10_001, 2)
    # replace likewise: the order stays as it was
    assert eng.replace(5, 2, 10_001.25)[0].reason == "off_tick"
    assert eng.replace(5, 3.5, 10_001)[0].reason == "fractional_qty"
    assert eng.best_ask() == (10_001, 2)
    assert eng.replace(5, 4.0, 10_002.0)[0].kind == ExecKind.REPLACED
    assert eng.best_ask() == (10_002, 4)


def test_cancel():
    eng = MatchingEngine()
    eng.submit(1, 1, B, 10, 100)
    eng.submit(2, 1, B, 5, 100)
    r = eng.cancel(1)
    assert r[0].kind == ExecKind.CANCELED and r[0].leaves_qty == 0
    assert eng.best_bid() == (100, 5)
    eng.cancel(2)
    assert eng.best_bid() is None and len(eng) == 0
    assert eng.cancel(2)[0].kind == ExecKind.REJECTED


def test_replace_priority_rules():
    eng = MatchingEngine()
    eng.submit(1, 1, B, 10, 100)
    eng.submit(2, 2, B, 10, 100)
    # size down at the same price keeps the place
    r = eng.replace(1, 6, 100)
    assert r[0].kind == ExecKind.REPLACED and r[0].leaves_qty == 6
    assert eng.queue_ahead(1) == 0 and eng.best_bid() == (100, 16)
    # size up loses priority
    eng.replace(1, 12, 100)
    assert eng.queue_ahead(1) == 10 and eng.queue_ahead(2) == 0
    # price change loses priority: back to 100 behind 2 again after moving away
    eng.replace(2, 10, 99)
    eng.replace(2, 10, 100)
    assert eng.queue_ahead(2) == 12
    assert eng.best_bid() == (100, 22)


def test_replace_that_crosses_trades_and_uses_total_qty():
    eng = MatchingEngine()
    eng.submit(1, 1, S, 5, 101)
    eng.submit(2, 2, B, 10, 100)
    eng.submit(3, 3, S, 4, 100)  # fills 4 of order 2 -> cum 4
    r = eng.replace(2, 12, 101)  # new total 12: leaves 8, crosses 101 for 5
    assert r[0].kind == ExecKind.REPLACED and r[0].leaves_qty == 8
    trades = [x for x in r if x.kind == ExecKind.TRADE and x.order_id == 2]
    assert [(t.price, t.qty, t.cum_qty, t.leaves_qty) for t in trades] == [(101, 5, 9, 3)]
    assert eng.best_bid() == (101, 3)
    assert eng.replace(2, 9, 101)[0].reason == "qty_not_above_filled"


@pytest.mark.parametrize(
    ("mode", "incoming_cancel", "resting_cancel", "traded"),
    [
        ("cancel_newest", True, False, 0),
        ("cancel_oldest", False, True, 10),
        ("cancel_both", True, True, 0),
        ("none", False, False, 10),
    ],
)
def test_self_trade_prevention(mode, incoming_cancel, resting_cancel, traded):
    eng = MatchingEngine(stp=mode)
    eng.submit(1, 7, S, 10, 100)
    eng.submit(2, 8, S, 10, 100)
    r = eng.submit(3, 7, B, 10, 100)
    stp = {x.order_id for x in r if x.kind == ExecKind.CANCELED and x.reason == "self_trade"}
    assert (3 in stp) == incoming_cancel
    assert (1 in stp) == resting_cancel
    assert sum(x.qty for x in r if x.kind == ExecKind.TRADE and x.order_id == 3) == traded


def test_day_orders_expire():
    eng = MatchingEngine()
    eng.submit(1, 1, B, 10, 100, tif=TimeInForce.DAY)
    eng.submit(2, 1, B, 10, 99, tif=TimeInForce.GTC)
    r = eng.expire_day_orders(ts_ns=5)
    assert kinds(r) == [(ExecKind.EXPIRED, 1)] and r[0].reason == "end_of_day" and r[0].ts_ns == 5
    assert eng.best_bid() == (99, 10)


ops = st.lists(
    st.tuples(
        st.sampled_from(["limit", "limit", "limit", "market", "ioc", "fok", "post", "cancel", "replace"]),
        st.sampled_from([B, S]),
        st.integers(1, 30),
        st.integers(95, 105),
        st.integers(1, 4),
    ),
    max_size=120,
)


@settings(max_examples=120, deadline=None)
@given(ops, st.sampled_from(["cancel_newest", "cancel_oldest", "cancel_both", "none"]))
def test_random_flow_conserves_quantity_and_stays_uncrossed(flow, stp):
    eng = MatchingEngine(stp=stp)
    submitted: dict[int, int] = {}  # order id -> total order qty (after replaces)
    final: dict[int, tuple[int, int]] = {}  # order id -> (cum, leaves) last seen
    closed: set[int] = set()
    bought = sold = 0
    for i, (op, side, qty, px, owner) in enumerate(flow, start=1):
        if op == "cancel" and submitted:
            reports = eng.cancel(list(submitted)[i % len(submitted)])
        elif op == "replace" and submitted:
            reports = eng.replace(list(submitted)[i % len(submitted)], qty, px)
        else:
            tif = {"ioc": TimeInForce.IOC, "fok": TimeInForce.FOK}.get(op, TimeInForce.GTC)
            ot = OrdType.MARKET if op == "market" else OrdType.LIMIT
            reports = eng.submit(i, owner, side, qty, px, ot, tif, post_only=(op == "post"))
        for r in reports:
            assert r.leaves_qty >= 0 and r.cum_qty >= 0 and r.qty >= 0
            if r.kind == ExecKind.ACCEPTED or r.kind == ExecKind.REPLACED:
                submitted[r.order_id] = r.qty
            elif r.kind == ExecKind.TRADE:
                if r.side == B:
                    bought += r.qty
                else:
                    sold += r.qty
            if r.order_id in submitted and r.kind != ExecKind.REJECTED:
                final[r.order_id] = (r.cum_qty, r.leaves_qty)
            if r.kind in (ExecKind.CANCELED, ExecKind.EXPIRED):
                closed.add(r.order_id)
        bb, ba = eng.best_bid(), eng.best_ask()
        if bb and ba:
            assert bb[0] < ba[0], "book crossed"
    assert bought == sold == eng.volume
    # every order: cum + leaves == its order quantity while live; book totals equal live leaves
    bids, asks = eng.depth(1000)
    resting = sum(q for _, q in bids) + sum(q for _, q in asks)
    live_leaves = 0
    for oid, qty in submitted.items():
        cum, leaves = final[oid]
        if oid in closed or leaves == 0:
            continue
        live = eng.order(oid)
        assert live is not None and live.cum_qty == cum and live.leaves_qty == leaves
        assert cum + leaves == qty
        live_leaves += leaves
    assert resting == live_leaves == sum(eng.order(o).leaves_qty for o in list(submitted) if eng.order(o))


def test_reports_are_ordinary_frozen_exec_reports():
    import dataclasses

    from greekfire.market.matching import ExecReport

    eng = MatchingEngine(taker_fee=0.5)
    eng.submit(1, 1, S, 10, 100)
    r = eng.submit(2, 2, B, 4, 100)[1]
    same = ExecReport(ExecKind.TRADE, 2, 2, B, 100, 4, 0, 4, 1, "T", 2.0, "", 0)
    assert type(r) is ExecReport and r == same and hash(r) == hash(same) and repr(r) == repr(same)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.qty = 5
