"""STAND-IN order records (replaced by the real module at merge)."""

from __future__ import annotations

import numpy as np

ORDER_DTYPE = np.dtype([
    ("order_id", "u8"), ("instrument", "i4"), ("side", "i1"), ("qty", "i4"), ("price_ticks", "i8"), ("status", "u1"),
    ("filled", "i4"), ("reason", "u1"), ("t_signal_ns", "i8"), ("t_risk_ns", "i8"), ("t_sent_ns", "i8"),
    ("t_ack_ns", "i8"), ("t_fill_ns", "i8"),
])

_REASONS = tuple(__import__("greekfire.trading.denials", fromlist=["Reason"]).Reason)
VENUE_REJECT = 255


def reason_code(reason: object) -> int:
    return _REASONS.index(reason) + 1  # type: ignore[arg-type]


def reason_of(code: int) -> object:
    return _REASONS[code - 1] if 0 < code <= len(_REASONS) else None
