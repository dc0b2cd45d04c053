"""Order state machine: every legal and illegal transition, fills, and the OMS around it."""

from __future__ import annotations

import itertools

import pytest

from greekfire.core.errors import DataError
from greekfire.trading.audit import AuditLog
from greekfire.trading.bus import MessageBus
from greekfire.trading.model import Fill, Side, VenueEvent, VenueEventKind, VenueOrderState
from greekfire.trading.oms import OMS
from greekfire.trading.orders import TERMINAL, TRANSITIONS, IllegalTransition, Order, OrderStatus

LEGAL = [(old, new) for old, nxt in TRANSITIONS.items() for new in sorted(nxt)]
ILLEGAL = [
    (old, new) for old, new in itertools.product(OrderStatus, OrderStatus) if new not in TRANSITIONS[old]
]


def make(status: OrderStatus = OrderStatus.INITIALIZED, qty: int = 10, cid: str = "o1") -> Order:
    o = Order(cid, 2, Side.BUY, qty, 125, strategy_id="s1")
    o.status = status
    return o


def fill(fid: str, qty: int, price: float = 1.25, cid: str = "o1") -> Fill:
    return Fill(fid, cid, 2, Side.BUY, qty, price, fee=0.1, liquidity="M", venue="V1", ts_ns=5)


def test_table_covers_every_state_and_terminals_are_final() -> None:
    assert set(TRANSITIONS) == set(OrderStatus)
    assert {OrderStatus.DENIED, OrderStatus.REJECTED, OrderStatus.FILLED, OrderStatus.CANCELED,
                        OrderStatus.EXPIRED} == TERMINAL


@pytest.mark.parametrize(("old", "new"), LEGAL, ids=[f"{a.value}->{b.value}" for a, b in LEGAL])
def test_legal_transition(old: OrderStatus, new: OrderStatus) -> None:
    o = make(old)
    assert o.transition(new, ts_ns=7) == (old, new)
    assert o.status == new and o.ts_last_ns == 7


@pytest.mark.parametrize(("old", "new"), ILLEGAL, ids=[f"{a.value}->{b.value}" for a, b in ILLEGAL])
def test_illegal_transition_raises(old: OrderStatus, new: OrderStatus) -> None:
    o = make(old)
    with pytest.raises(IllegalTransition) as exc:
        o.transition(new)
    assert o.status == old
    assert old.value in str(exc.value) and new.value in str(exc.value)


def test_fills_move_state_and_average_price() -> None:
    o = make(OrderStatus.ACCEPTED)
    o.apply_fill(fill("f1", 4, 1.00))
    assert o.status == OrderStatus.PARTIALLY_FILLED and o.leaves_qty == 6
    o.apply_fill(fill("f2", 6, 2.00))
    assert o.status == OrderStatus.FILLED and o.leaves_qty == 0
    assert o.avg_px == pytest.approx((4 * 1.0 + 6 * 2.0) / 10)
    assert o.fees == pytest.approx(0.2)


def test_partial_fill_while_cancel_pending_stays_pending_and_falls_back() -> None:
    o = make(OrderStatus.ACCEPTED)
    o.transition(OrderStatus.PENDING_CANCEL)
    o.apply_fill(fill("f1", 3))
    assert o.status == OrderStatus.PENDING_CANCEL and o.filled_qty == 3
    assert o.resting_status() == OrderStatus.PARTIALLY_FILLED
    o.apply_fill(fill("f2", 7))
    assert o.status == OrderStatus.FILLED


def test_oms_publishes_and_audits_every_transition() -> None:
    bus, audit = MessageBus(), AuditLog()
    seen = []
    bus.subscribe("orders", seen.append)
    oms = OMS(bus, audit)
    o = make()
    oms.add(o)
    oms.transition(o, OrderStatus.SUBMITTED, 1)
    oms.transition(o, OrderStatus.ACCEPTED, 2)
    assert [(e.old, e.new) for e in seen] == [("INITIALIZED", "SUBMITTED"), ("SUBMITTED", "ACCEPTED")]
    assert [e[4]["new"] for e in audit.entries(ref="o1")] == ["SUBMITTED", "ACCEPTED"]
    assert oms.open_orders(instrument_id=2) == [o] and oms.open_orders(strategy_id="s1") == [o]
    assert oms.open_orders(strategy_id="other") == []
    with pytest.raises(IllegalTransition):
        oms.transition(o, OrderStatus.SUBMITTED, 3)
    assert len(audit) == 2  # a refused transition writes nothing


def test_oms_calls_its_change_hook_always_and_builds_bus_events_only_for_subscribers() -> None:
    bus, audit = MessageBus(), AuditLog()
    oms = OMS(bus, audit)
    changes: list[tuple[str, str]] = []
    oms.on_change = lambda cid, new: changes.append((cid, new))
    o = make()
    oms.add(o)
    assert oms.transition(o, OrderStatus.SUBMITTED, 1) is None  # nobody listens on "orders": no event built
    seen = []
    bus.subscribe("orders", seen.append)
    ev = oms.transition(o, OrderStatus.CANCELED, 2, "gone")
    assert ev is not None and seen == [ev] and (ev.old, ev.new, ev.info) == ("SUBMITTED", "CANCELED", {"reason": "gone"})
    assert changes == [("o1", "SUBMITTED"), ("o1", "CANCELED")]
    assert [(e[0], e[4]) for e in audit.entries(ref="o1")] == [
        (1, {"old": "INITIALIZED", "new": "SUBMITTED"}), (ev.seq, {"old": "SUBMITTED", "new": "CANCELED", "reason": "gone"}),
    ]
    assert type(ev.new) is str and type(audit.entries()[0][4]["old"]) is str  # plain strings, not enum members
    assert oms.open_orders() == [] and oms.status_counts == {"SUBMITTED": 1, "CANCELED": 1}


def test_oms_moves_a_mass_quote_in_one_pass_each_order_audited_and_published_as_one_by_one() -> None:
    bus, audit = MessageBus(), AuditLog()
    seen = []
    bus.subscribe("orders", seen.append)
    oms = OMS(bus, audit)
    changes: list[tuple[str, str]] = []
    oms.on_change = lambda cid, new: changes.append((cid, new))
    a, b, c = (Order(f"o{k}", 2, Side.BUY, 5, 250, strategy_id="s1") for k in (1, 2, 3))
    for o in (a, b, c):
        oms.add(o)
        oms.transition(o, OrderStatus.SUBMITTED, 1)
    oms.transition(a, OrderStatus.ACCEPTED, 2)
    oms.transition(b, OrderStatus.ACCEPTED, 2)
    seen.clear()
    changes.clear()
    oms.transition_many([(a, {"new_qty": 6, "new_price": 2.51}), (b, {"new_qty": 7, "new_price": 2.52})],
                        OrderStatus.PENDING_REPLACE, 3)
    assert [(e.client_id, e.old, e.new, e.info) for e in seen] == [
        ("o1", "ACCEPTED", "PENDING_REPLACE", {"new_qty": 6, "new_price": 2.51}),
        ("o2", "ACCEPTED", "PENDING_REPLACE", {"new_qty": 7, "new_price": 2.52}),
    ]
    assert [e.seq for e in seen] == [audit.entries(ref="o1")[-1][0], audit.entries(ref="o2")[-1][0]] == [
        audit.seq - 1, audit.seq]
    assert audit.entries(ref="o2")[-1][1:] == (3, "order", "o2", {
        "old": "ACCEPTED", "new": "PENDING_REPLACE", "new_qty": 7, "new_price": 2.52})
    assert changes == [("o1", "PENDING_REPLACE"), ("o2", "PENDING_REPLACE")]
    assert oms.status_counts["PENDING_REPLACE"] == 2 and oms.transitions == 7
    # c is closed: its move is illegal; the one before it has moved and is audited, c is not
    oms.transition(c, OrderStatus.CANCELED, 3)
    seq = audit.seq
    with pytest.raises(IllegalTransition):
        oms.transition_many([(a, {}), (c, {})], OrderStatus.ACCEPTED, 4)
    assert a.status == OrderStatus.ACCEPTED and c.status == OrderStatus.CANCELED
    assert audit.seq == seq + 1 and audit.entries()[-1][3] == "o1"


def test_duplicate_overfill_and_closed_fills_are_reported_not_applied() -> None:
    bus, audit = MessageBus(), AuditLog()
    risk_events = []
    bus.subscribe("risk", risk_events.append)
    oms = OMS(bus, audit)
    o = make(OrderStatus.ACCEPTED)
    oms.add(o)
    assert oms.apply_fill(fill("f1", 6)) is o
    assert oms.apply_fill(fill("f1", 6)) is None  # same fill id again
    assert oms.apply_fill(fill("f2", 5)) is None  # 6 + 5 > 10
    assert o.filled_qty == 6 and o.status == OrderStatus.PARTIALLY_FILLED
    assert oms.apply_fill(fill("f3", 4)) is o
    assert oms.apply_fill(Fill("f4", "o1", 2, Side.BUY, 1, 1.0)) is None  # order closed
    assert oms.apply_fill(Fill("f5", "nope", 2, Side.BUY, 1, 1.0)) is None
    c = make(OrderStatus.ACCEPTED, cid="c")
    oms.add(c)
    c.transition(OrderStatus.CANCELED)
    assert oms.apply_fill(Fill("f6", "c", 2, Side.BUY, 1, 1.0)) is None  # a canceled order takes no fill
    assert oms.fill_problems == {"duplicate_fill": 1, "overfill": 2, "unknown_order": 1, "fill_on_closed": 1}
    kinds = [e["problem"] for e in risk_events]
    assert kinds == ["duplicate_fill", "overfill", "overfill", "unknown_order", "fill_on_closed"]
    assert len(audit.entries(kind="fill_problem")) == 5


def test_reconcile_finds_missing_fills_closed_and_unknown_orders() -> None:
    oms = OMS(MessageBus(), AuditLog())
    a, b = make(OrderStatus.ACCEPTED, cid="a"), make(OrderStatus.ACCEPTED, cid="b")
    a.venue = b.venue = "V1"
    oms.add(a)
    oms.add(b)
    oms._index(a)
    oms._index(b)
    states = [VenueOrderState("a", "V1-1", 2, 1, 10, 125, 4, True), VenueOrderState("zz", "V1-9", 2, 1, 1, 100, 0, True)]
    fills = [VenueEvent(VenueEventKind.FILL, "V1", "a", qty=4, price_ticks=125, fill_id="V1-t1")]
    res = oms.reconcile("V1", states, fills, 9)
    assert [f.fill_id for f in res["missing_fills"]] == ["V1-t1"]
    assert res["closed"] == ["b"] and res["unknown"] == ["zz"] and res["qty_mismatch"] == []
    assert audit_kinds(oms) == ["reconcile"]


def audit_kinds(oms: OMS) -> list[str]:
    return [e[2] for e in oms.audit.entries()]


def test_order_round_trips_through_dict() -> None:
    o = make(OrderStatus.ACCEPTED)
    o.apply_fill(fill("f1", 3))
    back = Order.from_dict(o.to_dict())
    assert back.to_dict() == o.to_dict()
    assert o.to_dict()["price_ticks"] == 125 and "price" not in o.to_dict()


def test_an_order_row_of_the_older_format_reads_its_currency_prices_as_ticks() -> None:
    o = make(OrderStatus.ACCEPTED)
    o.stop_ticks = 130
    row = o.to_dict()
    old = {k: v for k, v in row.items() if k not in ("price_ticks", "stop_ticks")} | {"price": 1.25, "stop_price": 1.3}
    back = Order.from_dict(old, tick_size=0.01)
    assert (back.price_ticks, back.stop_ticks) == (125, 130) and back.to_dict() == row
    assert Order.from_dict(old | {"price": None, "stop_price": None}, tick_size=0.05).price_ticks is None
    with pytest.raises(DataError, match="tick_size"):
        Order.from_dict(old)  # currency prices cannot be read without the instrument's tick
