"""The wheel's per-underlying state machine.

An underlying is in one of four states; every allowed move is one row of :data:`TRANSITIONS`,
``(state, event) -> new state``, and anything else raises :class:`IllegalWheelTransition`. Rolls and stops
are transitions too (a roll keeps the state, a stop goes back to cash or shares). Each move is recorded as a
:class:`Transition` with its reason, for the journal.

    CASH --put_sold--> SHORT_PUT --put_expired/put_closed/put_stopped--> CASH
                       SHORT_PUT --put_assigned--> SHARES --call_sold--> SHORT_CALL
                       SHORT_CALL --call_expired/call_closed/call_stopped--> SHARES
                       SHORT_CALL --called_away--> CASH
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from greekfire.core.errors import GreekfireError


class WheelState(StrEnum):
    """Where one underlying is in the wheel (stable names: databases, metrics, the dashboard)."""

    CASH = "CASH"
    SHORT_PUT = "SHORT_PUT"
    SHARES = "SHARES"
    SHORT_CALL = "SHORT_CALL"


class WheelEvent(StrEnum):
    """What moves an underlying's state."""

    PUT_SOLD = "put_sold"
    PUT_ROLLED = "put_rolled"
    PUT_EXPIRED = "put_expired"
    PUT_CLOSED = "put_closed"  # bought back at the close P&L, or because no roll qualified
    PUT_STOPPED = "put_stopped"  # a stop loss bought it back
    PUT_ASSIGNED = "put_assigned"
    CALL_SOLD = "call_sold"
    CALL_ROLLED = "call_rolled"
    CALL_EXPIRED = "call_expired"
    CALL_CLOSED = "call_closed"
    CALL_STOPPED = "call_stopped"
    CALLED_AWAY = "called_away"
    SHARES_SOLD = "shares_sold"  # the underlying-drawdown stop sold the shares
    RECONCILED = "reconciled"  # positions said otherwise: the state was repaired to match them


W, E = WheelState, WheelEvent

# The whole machine. A reconciliation may move any state to any other (the positions are the truth).
TRANSITIONS: dict[tuple[WheelState, WheelEvent], WheelState] = {
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
    **{(s, E.RECONCILED): s for s in W},  # the target of a reconciliation is given, see next_state
}


class IllegalWheelTransition(GreekfireError):
    """An underlying was asked to move along an edge that is not in :data:`TRANSITIONS`."""

    def __init__(self, symbol: str, state: WheelState, event: str) -> None:
        self.symbol, self.state, self.event = symbol, state, event
        allowed = ", ".join(sorted(e.value for (s, e) in TRANSITIONS if s == state and e != E.RECONCILED))
        super().__init__(f"wheel {symbol}: illegal event {event!r} in state {state.value} (allowed: {allowed})")


def next_state(symbol: str, state: WheelState, event: WheelEvent | str, target: WheelState | None = None) -> WheelState:
    """The state ``event`` moves ``state`` to, or IllegalWheelTransition; a ``reconciled`` event moves to
    ``target`` (what the positions say)."""
    try:
        ev = WheelEvent(event)
    except ValueError:
        raise IllegalWheelTransition(symbol, state, str(event)) from None
    if ev == E.RECONCILED:
        if target is None:
            raise IllegalWheelTransition(symbol, state, "reconciled (without a target state)")
        return target
    new = TRANSITIONS.get((state, ev))
    if new is None:
        raise IllegalWheelTransition(symbol, state, ev.value)
    return new


@dataclass(frozen=True)
class Transition:
    """One state change of one underlying: ``old -> new`` on ``event`` because of ``reason``, at ``ts_ns``
    (ns since the epoch); ``data`` holds the numbers behind it (strike, premium, P&L fraction...)."""

    symbol: str
    old: WheelState
    new: WheelState
    event: str
    reason: str
    ts_ns: int
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON and databases."""
        return {"symbol": self.symbol, "old": self.old.value, "new": self.new.value, "event": self.event,
                "reason": self.reason, "ts_ns": self.ts_ns, "data": dict(self.data)}
