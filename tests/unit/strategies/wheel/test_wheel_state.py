"""The wheel's state machine: every legal transition, and an illegal one raises naming what is allowed."""

from __future__ import annotations

import pytest

from greekfire.strategies.wheel.state import (
    TRANSITIONS,
    IllegalWheelTransition,
    WheelEvent,
    WheelState,
    next_state,
)

W, E = WheelState, WheelEvent

EXPECTED = {
    (W.CASH, E.PUT_SOLD): W.SHORT_PUT,
    (W.SHORT_PUT, E.PUT_ROLLED): W.SHORT_PUT,
    (W.SHORT_PUT, E.PUT_EXPIRED): W.CASH,
    (W.SHORT_PUT, E.PUT_CLOSED): W.CASH,
    (W.SHORT_PUT, E.PUT_STOPPED): W.CASH,
    (W.SHORT_PUT, E.PUT_ASSIGNED): W.SHARES,
    (W.SHARES, E.CALL_SOLD): W.SHORT_CALL,
    (W.SHARES, E.SHARES_SOLD): W.CASH,
    (W.SHORT_CALL, E.CALL_ROLLED): W.SHORT_CALL,
    (W.SHORT_CALL, E.CALL_EXPIRED): W.SHARES,
    (W.SHORT_CALL, E.CALL_CLOSED): W.SHARES,
    (W.SHORT_CALL, E.CALL_STOPPED): W.SHARES,
    (W.SHORT_CALL, E.CALLED_AWAY): W.CASH,
}


@pytest.mark.parametrize(("edge", "new"), list(EXPECTED.items()), ids=[f"{s}-{e}" for s, e in EXPECTED])
def test_legal_transition(edge: tuple[WheelState, WheelEvent], new: WheelState) -> None:
    state, event = edge
    assert TRANSITIONS[edge] == new
    assert next_state("SPY", state, event) == new
    assert next_state("SPY", state, event.value) == new  # by its stable name too


def test_the_table_has_nothing_else_but_reconciliations() -> None:
    extra = {k: v for k, v in TRANSITIONS.items() if k not in EXPECTED}
    assert {e for _, e in extra} == {E.RECONCILED}


@pytest.mark.parametrize("state", list(W))
def test_reconciliation_moves_to_the_given_state(state: WheelState) -> None:
    for target in W:
        assert next_state("SPY", state, E.RECONCILED, target) == target
    with pytest.raises(IllegalWheelTransition, match="without a target"):
        next_state("SPY", state, E.RECONCILED)


def test_illegal_transition_raises_with_what_is_allowed() -> None:
    with pytest.raises(IllegalWheelTransition) as err:
        next_state("SPY", W.CASH, E.CALL_SOLD)
    msg = str(err.value)
    assert "SPY" in msg and "call_sold" in msg and "CASH" in msg and "allowed: put_sold" in msg
    with pytest.raises(IllegalWheelTransition, match="'no_such_event'"):
        next_state("SPY", W.SHARES, "no_such_event")
    # every pair outside the table is refused
    for s in W:
        for e in E:
            if e != E.RECONCILED and (s, e) not in EXPECTED:
                with pytest.raises(IllegalWheelTransition):
                    next_state("X", s, e)
