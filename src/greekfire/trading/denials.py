"""Risk reason codes and the records a risk decision produces: a :class:`Denial` for a refused order, a
:class:`Breach` for a continuous-limit event, and the :class:`TradingState` they move the engine through.

A strategy sees these (a denied order or amend carries its :class:`Denial`), so they live apart from the
risk engine that makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class TradingState(StrEnum):
    """What the risk engine lets through: everything, only position-reducing orders, or nothing."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"  # only orders that shrink a position pass
    HALTED = "HALTED"  # nothing passes


class Reason(StrEnum):
    """Denial and breach reason codes (stable strings: they are metrics labels and API values)."""

    HALTED = "HALTED"
    KILL_SWITCH = "KILL_SWITCH"
    REDUCING_ONLY = "REDUCING_ONLY"
    UNKNOWN_INSTRUMENT = "UNKNOWN_INSTRUMENT"
    BAD_QTY = "BAD_QTY"
    BAD_LOT = "BAD_LOT"
    BAD_TICK = "BAD_TICK"
    NO_REFERENCE_PRICE = "NO_REFERENCE_PRICE"
    PRICE_BAND = "PRICE_BAND"
    MAX_QTY = "MAX_QTY"
    MAX_NOTIONAL = "MAX_NOTIONAL"
    REDUCE_ONLY = "REDUCE_ONLY"
    POSITION_LIMIT = "POSITION_LIMIT"
    UNDERLYING_POSITION_LIMIT = "UNDERLYING_POSITION_LIMIT"
    DELTA_LIMIT = "DELTA_LIMIT"
    GAMMA_LIMIT = "GAMMA_LIMIT"
    VEGA_LIMIT = "VEGA_LIMIT"
    THETA_LIMIT = "THETA_LIMIT"
    TOTAL_DELTA_LIMIT = "TOTAL_DELTA_LIMIT"
    TOTAL_GAMMA_LIMIT = "TOTAL_GAMMA_LIMIT"
    TOTAL_VEGA_LIMIT = "TOTAL_VEGA_LIMIT"
    TOTAL_THETA_LIMIT = "TOTAL_THETA_LIMIT"
    VAR_LIMIT = "VAR_LIMIT"
    ORDER_RATE = "ORDER_RATE"
    INSUFFICIENT_MARGIN = "INSUFFICIENT_MARGIN"
    STOPPED = "STOPPED"  # the engine is stopping: no new orders or amends (cancels still pass)
    # continuous
    STOP_LOSS = "STOP_LOSS"
    DAILY_LOSS = "DAILY_LOSS"
    DRAWDOWN = "DRAWDOWN"
    MC_VAR = "MC_VAR"


@dataclass(slots=True, frozen=True)
class Denial:
    """Why an order was refused: a reason code, the values that caused it, and a sentence."""

    reason: Reason
    values: dict[str, Any]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "values": self.values, "message": self.message}


@dataclass(slots=True)
class Breach:
    """A continuous-check result: a reason, the values, and the action taken."""

    reason: Reason
    values: dict[str, Any]
    action: str
    instrument_id: int | None = None
