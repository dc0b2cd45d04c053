"""STAND-IN fast pre-trade risk with the real module's interface (replaced by it at merge)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from greekfire.hft.orders import reason_code
from greekfire.trading.denials import Reason


@dataclass
class FastLimits:
    max_order_qty: int = 1000
    max_notional: float = 1_000_000.0
    price_band_pct: float = 0.10
    price_band_ticks: int = 20
    max_position: int = 500
    max_orders_per_s: int = 5000
    tick_size: float = 0.01
    multiplier: float = 1.0


class FastRisk:
    def __init__(self, limits: FastLimits | None = None, n_instruments: int = 1024, *, kill: object = None,
                 **_: object) -> None:
        self.kill = kill
        self.limits = limits or FastLimits()
        self.position = np.zeros(n_instruments, np.int64)
        self.pending_buy = np.zeros(n_instruments, np.int64)
        self.pending_sell = np.zeros(n_instruments, np.int64)

    def check(self, orders: np.ndarray, now_ns: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        _ = time.monotonic_ns() if now_ns is None else now_ns
        codes = np.zeros(orders.shape[0], np.uint8)
        lim = self.limits
        for k in range(orders.shape[0]):
            if self.kill is not None and getattr(self.kill, "tripped", False):
                codes[k] = reason_code(Reason.KILL_SWITCH)
                continue
            o = orders[k]
            i, q, s = int(o["instrument"]), int(o["qty"]), int(o["side"])
            if q <= 0 or s not in (1, -1):
                codes[k] = reason_code(Reason.BAD_QTY)
            elif q > lim.max_order_qty:
                codes[k] = reason_code(Reason.MAX_QTY)
            elif q * float(o["price_ticks"]) * lim.tick_size * lim.multiplier > lim.max_notional:
                codes[k] = reason_code(Reason.MAX_NOTIONAL)
            elif s > 0 and self.position[i] + self.pending_buy[i] + q > lim.max_position or s < 0 and self.position[i] - self.pending_sell[i] - q < -lim.max_position:
                codes[k] = reason_code(Reason.POSITION_LIMIT)
            elif s > 0:
                self.pending_buy[i] += q
            else:
                self.pending_sell[i] += q
        return codes

    def on_fill(self, instrument: int, side: int, qty: int, price_ticks: int) -> None:
        if side > 0:
            self.pending_buy[instrument] = max(0, self.pending_buy[instrument] - qty)
        else:
            self.pending_sell[instrument] = max(0, self.pending_sell[instrument] - qty)
        self.position[instrument] += side * qty

    def release(self, instrument: int, side: int, qty: int) -> None:
        if side > 0:
            self.pending_buy[instrument] = max(0, self.pending_buy[instrument] - qty)
        else:
            self.pending_sell[instrument] = max(0, self.pending_sell[instrument] - qty)
