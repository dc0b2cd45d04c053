"""STAND-IN fast pre-trade risk (replaced by the real module at merge)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from greekfire.trading.denials import Reason

#: reason code (u1) -> Reason; 0 = pass
REASONS: list[Reason | None] = [None, *Reason]
CODE = {r: i for i, r in enumerate(REASONS) if r is not None}


@dataclass
class Limits:
    max_order_qty: int = 1000
    max_notional: float = 1_000_000.0
    max_position: int = 500
    tick_value: float = 1e-4


class FastRisk:
    def __init__(self, limits: Limits, n_instruments: int = 65536) -> None:
        self.limits = limits
        self.position = np.zeros(n_instruments, np.int64)

    def check(self, orders: np.ndarray) -> np.ndarray:
        out = np.zeros(orders.shape[0], np.uint8)
        lim = self.limits
        for i in range(orders.shape[0]):
            o = orders[i]
            q, inst = int(o["qty"]), int(o["instrument"])
            signed = q * int(o["side"])
            if q <= 0:
                out[i] = CODE[Reason.BAD_QTY]
            elif q > lim.max_order_qty:
                out[i] = CODE[Reason.MAX_QTY]
            elif q * float(o["price_ticks"]) * lim.tick_value > lim.max_notional:
                out[i] = CODE[Reason.MAX_NOTIONAL]
            elif abs(self.position[inst] + signed) > lim.max_position:
                out[i] = CODE[Reason.POSITION_LIMIT]
            else:
                self.position[inst] += signed
        return out
