"""The pipeline's strategy: an imbalance-driven taker with position limits, and the order record that runs
from the strategy through risk and the gateway to the venue and back.

Decisions depend only on the decision records (features at a sequence number) and on the strategy's own
sent quantity, never on timing: a run through the multi-process pipeline and a single-process replay of the
same file send the same orders (order id = the sequence number of the decision).
"""

from __future__ import annotations

import time

import numpy as np

from greekfire.core.errors import DataError
from greekfire.hft.cluster import SIG_DTYPE
from greekfire.hft.features import F_SIGNAL

#: an order on its way (strategy -> gateway -> venue) and back (venue -> gateway -> coordinator). Prices in
#: ticks (1e-4 dollars), stamps perf_counter ns (0: not reached)
ORD_DTYPE = np.dtype([
    ("order_id", "u8"), ("seq", "i8"), ("instrument", "i4"), ("side", "i1"), ("status", "u1"), ("reason", "u1"),
    ("end", "u1"), ("qty", "i4"), ("filled", "i4"), ("price", "i8"), ("fill_px", "i8"),
    ("t_rx", "i8"), ("t_book", "i8"), ("t_feat", "i8"), ("t_signal", "i8"), ("t_risk", "i8"), ("t_sent", "i8"),
    ("t_ack", "i8"),
])
NEW, FILLED, PARTIAL, CANCELED, REJECTED = 0, 1, 2, 3, 4
STATUS_NAMES = {NEW: "new", FILLED: "filled", PARTIAL: "partially_filled", CANCELED: "canceled",
                REJECTED: "rejected"}


class ImbalanceTaker:
    """Takes the touch when the features' signal says so: a buy of ``order_qty`` at the best ask on signal +1,
    a sell at the best bid on -1 (immediate-or-cancel limit orders), while the sent quantity per instrument
    stays within +-``max_position`` shares (sent orders count as filled: the cap never depends on when a fill
    comes back). Each instrument's decisions are taken once, in sequence order: a record at or below the last
    sequence number seen for its instrument (a worker's replay after a takeover) is skipped."""

    def __init__(self, n_instruments: int, order_qty: int = 100, max_position: int = 1000) -> None:
        if order_qty <= 0 or max_position < order_qty:
            raise DataError("order_qty/max_position", (order_qty, max_position), "0 < order_qty <= max_position")
        self.order_qty = int(order_qty)
        self.max_position = int(max_position)
        self.sent = np.zeros(n_instruments, np.int64)  # signed shares sent per instrument
        self.last_seq = np.zeros(n_instruments, np.int64)
        self.decisions = 0
        self.duplicates = 0

    def on_signals(self, sig: np.ndarray) -> np.ndarray:
        """Orders (:data:`ORD_DTYPE`) for a batch of decision records (:data:`~greekfire.hft.cluster.SIG_DTYPE`)."""
        if sig.dtype != SIG_DTYPE:
            raise DataError("sig.dtype", str(sig.dtype), "greekfire.hft.cluster.SIG_DTYPE")
        out = np.zeros(len(sig), ORD_DTYPE)
        n = 0
        q, cap = self.order_qty, self.max_position
        inst_a, seq_a, sgn_a = sig["instrument"], sig["seq"], sig["f"][:, F_SIGNAL]
        for i in range(len(sig)):
            b, s = int(inst_a[i]), int(seq_a[i])
            if s <= self.last_seq[b]:
                self.duplicates += 1
                continue
            self.last_seq[b] = s
            self.decisions += 1
            side = int(sgn_a[i])
            if side == 0:
                continue
            r = sig[i]
            px, avail = (int(r["ask_px"]), int(r["ask_qty"])) if side > 0 else (int(r["bid_px"]), int(r["bid_qty"]))
            if avail <= 0 or abs(int(self.sent[b]) + side * q) > cap:
                continue
            self.sent[b] += side * q
            o = out[n]
            o["order_id"], o["seq"], o["instrument"], o["side"], o["qty"], o["price"] = s, s, b, side, q, px
            o["t_rx"], o["t_book"], o["t_feat"] = r["t_rx"], r["t_book"], r["t_feat"]
            n += 1
        out = out[:n]
        out["t_signal"] = time.perf_counter_ns()
        return out
