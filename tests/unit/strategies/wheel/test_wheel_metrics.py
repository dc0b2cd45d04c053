"""The wheel's Prometheus metrics: events counted, the book's gauges set from database rows (and reset
when a position goes away)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from greekfire.core.metrics import render, sample_value
from greekfire.strategies.wheel import metrics as m
from greekfire.strategies.wheel.state import Transition, WheelState


def test_a_transition_is_counted_by_event_and_sets_the_state_set() -> None:
    before = sample_value("greekfire_wheel_transitions_total", {"event": "assigned"}) or 0.0
    m.record_transition(Transition("MTA", WheelState.SHORT_PUT, WheelState.SHARES, "assigned", "put assigned",
                                   1_700_000_000_000_000_000, {}))
    assert sample_value("greekfire_wheel_transitions_total", {"event": "assigned"}) == before + 1
    assert sample_value("greekfire_wheel_state", {"symbol": "MTA", "state": "SHARES"}) == 1.0
    assert {sample_value("greekfire_wheel_state", {"symbol": "MTA", "state": s}) for s in m.STATES if s != "SHARES"} == {0.0}
    assert sample_value("greekfire_wheel_state_since_timestamp_seconds", {"symbol": "MTA"}) == 1_700_000_000.0
    m.record_transition({"symbol": "MTA", "old": "SHARES", "new": "SHORT_CALL", "event": "open_call", "ts_ns": 0})
    assert sample_value("greekfire_wheel_state", {"symbol": "MTA", "state": "SHARES"}) == 0.0
    assert sample_value("greekfire_wheel_state", {"symbol": "MTA", "state": "SHORT_CALL"}) == 1.0


def test_denials_reconcile_and_cycles_are_counted() -> None:
    d0 = sample_value("greekfire_wheel_denials_total", {"reason": "MAX_NOTIONAL"}) or 0.0
    m.record_denial("MAX_NOTIONAL")
    m.record_denial("MAX_NOTIONAL")
    assert sample_value("greekfire_wheel_denials_total", {"reason": "MAX_NOTIONAL"}) == d0 + 2
    m.record_reconcile(["MTB: state SHORT_PUT but no put held", "MTB: 100 shares not in the state"])
    m.record_reconcile(["anything"], symbol="MTC")
    m.record_reconcile([])
    assert sample_value("greekfire_wheel_reconcile_mismatches_total", {"symbol": "MTB"}) == 2
    assert sample_value("greekfire_wheel_reconcile_mismatches_total", {"symbol": "MTC"}) == 1
    c0 = sample_value("greekfire_wheel_cycles_total") or 0.0
    m.record_cycle(1_750_000_000_500_000_000)
    assert sample_value("greekfire_wheel_cycles_total") == c0 + 1
    assert sample_value("greekfire_wheel_last_cycle_timestamp_seconds") == 1_750_000_000.5


def test_the_metered_journal_writes_through_and_counts() -> None:
    written: list[object] = []

    class Inner:
        def transition(self, t: object) -> None:
            written.append(t)

        def premium(self, symbol: str | None = None) -> float:
            return 12.5

    j = m.MeteredJournal(Inner())
    before = sample_value("greekfire_wheel_transitions_total", {"event": "stop"}) or 0.0
    t = Transition("MTD", WheelState.SHORT_PUT, WheelState.CASH, "stop", "loss 3x premium", 1, {})
    j.transition(t)
    assert written == [t] and j.premium() == 12.5
    assert sample_value("greekfire_wheel_transitions_total", {"event": "stop"}) == before + 1


def test_the_book_gauges_follow_the_rows_and_reset_what_is_gone() -> None:
    expiry = datetime(2026, 12, 18, tzinfo=UTC)
    positions = [
        {"symbol": "MTE", "right": "P", "qty": -2, "expiry": "2026-12-18"},
        {"symbol": "MTE", "right": "P", "qty": -1, "expiry_ns": int(datetime(2026, 11, 20, tzinfo=UTC).timestamp() * 1e9)},
        {"symbol": "MTF", "right": None, "qty": 100},
        {"symbol": "MTF", "right": "call", "qty": -1, "expiry": "2026-12-18"},
    ]
    states = [{"symbol": "MTE", "state": "SHORT_PUT", "since_ns": 2_000_000_000}]
    equity = [{"date": "2026-09-01", "equity": 100.0}, {"date": "2026-09-02", "equity": 125.0},
              {"date": "2026-09-03", "equity": 100.0}]
    perf = {"premium_by_symbol": {"MTE": 310.0, "MTF": 95.5}, "realized_pnl": 42.0, "unrealized_pnl": -7.0}
    m.set_book(positions, states, equity, perf)
    v = sample_value
    assert v("greekfire_wheel_positions", {"symbol": "MTE", "right": "put"}) == -3.0
    assert v("greekfire_wheel_positions", {"symbol": "MTF", "right": "shares"}) == 100.0
    assert v("greekfire_wheel_positions", {"symbol": "MTF", "right": "call"}) == -1.0
    assert v("greekfire_wheel_next_expiry_timestamp_seconds", {"symbol": "MTE"}) == datetime(2026, 11, 20, tzinfo=UTC).timestamp()
    assert v("greekfire_wheel_next_expiry_timestamp_seconds", {"symbol": "MTF"}) == expiry.timestamp()
    assert v("greekfire_wheel_state", {"symbol": "MTE", "state": "SHORT_PUT"}) == 1.0
    assert v("greekfire_wheel_equity") == 100.0 and v("greekfire_wheel_drawdown") == pytest.approx(0.2)
    assert v("greekfire_wheel_last_snapshot_timestamp_seconds") == datetime(2026, 9, 3, tzinfo=UTC).timestamp()
    assert v("greekfire_wheel_premium_collected", {"symbol": "MTF"}) == 95.5
    assert v("greekfire_wheel_pnl", {"kind": "realized"}) == 42.0 and v("greekfire_wheel_pnl", {"kind": "unrealized"}) == -7.0

    m.set_book([{"symbol": "MTF", "right": None, "qty": 100}], [], equity, {"premium_collected": 1.0})
    assert v("greekfire_wheel_positions", {"symbol": "MTE", "right": "put"}) == 0.0  # closed: 0, not stale
    assert v("greekfire_wheel_next_expiry_timestamp_seconds", {"symbol": "MTE"}) is None  # no leg: no expiry
    assert v("greekfire_wheel_premium_collected", {"symbol": "ALL"}) == 1.0
    text = render()[0].decode()
    assert 'greekfire_wheel_positions{right="shares",symbol="MTF"} 100.0' in text


def test_bad_numbers_in_rows_are_skipped_not_exported() -> None:
    m.set_book([{"symbol": "MTG", "right": "P", "qty": "n/a"}], [], [{"date": "x", "equity": float("nan")}],
               {"realized_pnl": float("inf")})
    assert sample_value("greekfire_wheel_positions", {"symbol": "MTG", "right": "put"}) == 0.0


def test_a_run_start_creates_its_counters_series_at_zero() -> None:
    assert sample_value("greekfire_wheel_reconcile_mismatches_total", {"symbol": "STARTSYM"}) is None
    m.start_run(["STARTSYM"])
    assert sample_value("greekfire_wheel_reconcile_mismatches_total", {"symbol": "STARTSYM"}) == 0.0
    assert sample_value("greekfire_wheel_denials_total", {"reason": "VAR_LIMIT"}) is not None
    assert sample_value("greekfire_wheel_cycles_total") is not None
