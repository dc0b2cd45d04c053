"""The HFT order pool: statuses move along the trading core's table, illegal moves are refused, partial fills
and average prices, the free list, and a hot loop that allocates nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from greekfire.hft.orders import (
    ORDER_DTYPE,
    STATUS,
    OrderPool,
    PoolError,
    reason_code,
    reason_of,
)
from greekfire.trading.denials import Reason
from greekfire.trading.orders import TRANSITIONS, FillProblem, IllegalTransition, OrderStatus

S = OrderStatus


def test_dtype_has_the_shared_fields() -> None:
    names = ORDER_DTYPE.names or ()
    assert names[:13] == ("order_id", "instrument", "side", "qty", "price_ticks", "status", "filled", "reason",
                          "t_signal_ns", "t_risk_ns", "t_sent_ns", "t_ack_ns", "t_fill_ns")
    assert ORDER_DTYPE["status"] == np.uint8 and ORDER_DTYPE["order_id"] == np.uint64
    assert STATUS[0] is S.INITIALIZED  # a zeroed row is a new order


def test_reason_codes_map_one_to_one() -> None:
    codes = [reason_code(r) for r in Reason]
    assert len(set(codes)) == len(Reason) and 0 not in codes and max(codes) < 255
    assert all(reason_of(reason_code(r)) is r for r in Reason)
    assert reason_of(0) is None


def _to(pool: OrderPool, slot: int, target: OrderStatus) -> None:
    """Drive a fresh slot to ``target`` through the pool's own methods."""
    paths: dict[OrderStatus, list[Callable[[], object]]] = {
        S.INITIALIZED: [],
        S.DENIED: [lambda: pool.deny(slot, reason_code(Reason.MAX_QTY))],
        S.SUBMITTED: [lambda: pool.on_sent(slot, 1)],
        S.ACCEPTED: [lambda: pool.on_sent(slot, 1), lambda: pool.on_ack(slot, 2)],
        S.REJECTED: [lambda: pool.on_sent(slot, 1), lambda: pool.on_reject(slot)],
        S.PARTIALLY_FILLED: [lambda: pool.on_sent(slot, 1), lambda: pool.on_ack(slot, 2),
                             lambda: pool.on_fill(slot, 1, 100, 3)],
        S.FILLED: [lambda: pool.on_sent(slot, 1), lambda: pool.on_ack(slot, 2), lambda: pool.on_fill(slot, 10, 100, 3)],
        S.PENDING_CANCEL: [lambda: pool.on_sent(slot, 1), lambda: pool.on_ack(slot, 2),
                           lambda: pool.on_cancel_request(slot)],
        S.CANCELED: [lambda: pool.on_sent(slot, 1), lambda: pool.on_ack(slot, 2), lambda: pool.on_cancel(slot)],
        S.PENDING_REPLACE: [lambda: pool.on_sent(slot, 1), lambda: pool.on_ack(slot, 2),
                            lambda: pool.on_replace_request(slot)],
        S.EXPIRED: [lambda: pool.on_sent(slot, 1), lambda: pool.on_ack(slot, 2), lambda: pool.on_expire(slot)],
    }
    for step in paths[target]:
        step()
    assert pool.status(slot) is target


# the pool's one move per target status (what each method asks for)
MOVES = {
    S.DENIED: lambda p, s: p.deny(s, 1),
    S.SUBMITTED: lambda p, s: p.on_sent(s, 5),
    S.REJECTED: lambda p, s: p.on_reject(s),
    S.PENDING_CANCEL: lambda p, s: p.on_cancel_request(s),
    S.PENDING_REPLACE: lambda p, s: p.on_replace_request(s),
    S.CANCELED: lambda p, s: p.on_cancel(s),
    S.EXPIRED: lambda p, s: p.on_expire(s),
}


@pytest.mark.parametrize("start", list(S))
@pytest.mark.parametrize("target", list(MOVES))
def test_every_move_follows_the_trading_table(start: OrderStatus, target: OrderStatus) -> None:
    pool = OrderPool(4)
    slot = pool.alloc(1, 1, 10, 100)
    _to(pool, slot, start)
    before = pool.orders[slot].copy()
    if target in TRANSITIONS[start]:
        MOVES[target](pool, slot)
        assert pool.status(slot) is target
    else:
        with pytest.raises(IllegalTransition) as e:
            MOVES[target](pool, slot)
        assert e.value.old is start and e.value.new is target
        assert pool.orders[slot] == before  # refused: nothing changed


def test_partial_fills_average_price_and_stamps() -> None:
    pool = OrderPool(8)
    s = pool.alloc(instrument=7, side=-1, qty=100, price_ticks=10_000, t_signal_ns=1_000, tif=1)
    row = pool.row(s)
    assert row == {"order_id": row["order_id"], "instrument": 7, "side": -1, "qty": 100, "price_ticks": 10_000,
                   "status": "INITIALIZED", "filled": 0, "reason": 0, "t_signal_ns": 1_000, "t_risk_ns": 0,
                   "t_sent_ns": 0, "t_ack_ns": 0, "t_fill_ns": 0, "avg_px": 0.0, "tif": 1}
    assert pool.slot_of(row["order_id"]) == s
    pool.stamp_risk(s, 1_500)
    pool.on_sent(s, 2_000)
    pool.on_ack(s, 5_000)
    assert pool.on_fill(s, 30, 10_000, 6_000) == 70
    assert pool.status(s) is S.PARTIALLY_FILLED
    assert pool.on_fill(s, 50, 10_010, 7_000) == 20
    assert pool.orders[s]["avg_px"] == pytest.approx((30 * 10_000 + 50 * 10_010) / 80)
    assert pool.leaves(s) == 20
    with pytest.raises(FillProblem) as e:
        pool.on_fill(s, 21, 10_000, 8_000)
    assert e.value.kind == "overfill" and pool.orders[s]["filled"] == 80
    assert pool.on_fill(s, 20, 10_020, 9_000) == 0
    assert pool.status(s) is S.FILLED and pool.leaves(s) == 0
    with pytest.raises(FillProblem) as e:
        pool.on_fill(s, 1, 10_000, 9_500)
    assert e.value.kind == "fill_on_closed"
    lat = pool.latency(s)
    assert lat == {"risk": 500, "send": 500, "ack": 3_000, "fill": 1_000, "signal_to_ack": 4_000}  # first fill


def test_fill_while_cancel_pending_stays_pending_until_answer() -> None:
    pool = OrderPool(2)
    s = pool.alloc(1, 1, 10, 100)
    _to(pool, s, S.PENDING_CANCEL)
    pool.on_fill(s, 4, 100, 1)
    assert pool.status(s) is S.PENDING_CANCEL and pool.orders[s]["filled"] == 4
    pool.on_cancel_reject(s)
    assert pool.status(s) is S.PARTIALLY_FILLED  # back to the resting status its fills give
    pool.on_cancel_request(s)
    pool.on_fill(s, 6, 100, 2)  # the fill completes it: FILLED wins
    assert pool.status(s) is S.FILLED


def test_replace_and_partial_cancel() -> None:
    pool = OrderPool(2)
    s = pool.alloc(1, 1, 10, 100)
    _to(pool, s, S.PENDING_REPLACE)
    pool.on_replaced(s, 15, 101)
    assert pool.status(s) is S.ACCEPTED and pool.orders[s]["qty"] == 15 and pool.orders[s]["price_ticks"] == 101
    pool.on_cancel(s, decrement=5)  # a partial cancel: 10 left working
    assert pool.status(s) is S.ACCEPTED and pool.leaves(s) == 10
    pool.on_cancel(s, decrement=10)
    assert pool.status(s) is S.CANCELED


def test_free_list_and_slot_of() -> None:
    pool = OrderPool(3)
    slots = [pool.alloc(1, 1, 1, 1) for _ in range(3)]
    assert sorted(slots) == [0, 1, 2] and pool.available == 0 and len(pool) == 3
    with pytest.raises(PoolError):
        pool.alloc(1, 1, 1, 1)
    oid = int(pool.orders[slots[1]]["order_id"])
    assert pool.slot_of(oid) == slots[1]
    pool.on_sent(slots[1], 1)
    with pytest.raises(PoolError):  # still working
        pool.free(slots[1])
    assert list(pool.open_slots()) == [slots[1]]
    pool.on_reject(slots[1])
    pool.free(slots[1])
    with pytest.raises(PoolError):
        pool.free(slots[1])
    assert pool.slot_of(oid) == -1  # a stale id no longer finds the slot
    again = pool.alloc(2, -1, 5, 9)
    assert again == slots[1] and int(pool.orders[again]["order_id"]) != oid
    assert pool.status(again) is S.INITIALIZED and pool.orders[again]["filled"] == 0


# Measured in a child process: tracemalloc traces every thread, and in the suite's process threads that other
# tests left running (loggers, servers' event loops) allocate while the loop runs (1,168 bytes kept and a 5,772
# byte peak in two full runs).
HOT_LOOP = """
import gc, json, tracemalloc
from greekfire.hft.orders import STATUS_CODE, OrderPool
from greekfire.trading.orders import OrderStatus

pool = OrderPool(64)

def cycle(n):
    for i in range(n):
        s = pool.alloc(3, 1, 10, 10_000, i)
        pool.stamp_risk(s, i + 1)
        pool.on_sent(s, i + 2)
        pool.on_ack(s, i + 3)
        pool.on_fill(s, 4, 10_000, i + 4)
        pool.on_fill(s, 6, 10_001, i + 5)
        pool.free(s)

cycle(200)  # warm up (first-use caches)
gc.collect()
tracemalloc.start()
cycle(10)
base, _ = tracemalloc.get_traced_memory()
tracemalloc.reset_peak()
cycle(20_000)
current, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
print(json.dumps({"kept": current - base, "peak": peak - base, "available": pool.available,
                  "filled": STATUS_CODE[OrderStatus.FILLED] == int(pool.orders[0]["status"])}))
"""


def test_hot_loop_allocates_nothing() -> None:
    proc = subprocess.run([sys.executable, "-c", HOT_LOOP], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["kept"] < 1024, f"the loop kept {r['kept']} bytes"
    assert r["peak"] < 4096, f"the loop's peak was {r['peak']} bytes above its start"
    assert r["available"] == 64 and r["filled"]
