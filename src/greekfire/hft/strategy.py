"""The pipeline's strategy: an imbalance-driven taker with position limits, and the order record that runs
from the strategy through risk and the gateway to the venue and back.

Decisions depend only on the decision records (features at a sequence number) and on the strategy's own
sent quantity, never on timing: a run through the multi-process pipeline and a single-process replay of the
same file send the same orders (order id = the sequence number of the decision).
"""

from __future__ import annotations

import time

import numba as nb
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
        n = len(sig)
        pick = np.empty(n, np.int64)
        side = np.empty(n, np.int64)
        px = np.empty(n, np.int64)
        counts = np.zeros(2, np.int64)
        k = _decide(sig["instrument"].astype(np.int64), sig["seq"], sig["f"][:, F_SIGNAL], sig["bid_px"],
                    sig["bid_qty"], sig["ask_px"], sig["ask_qty"], self.order_qty, self.max_position, self.sent,
                    self.last_seq, pick, side, px, counts)
        self.decisions += int(counts[0])
        self.duplicates += int(counts[1])
        out = np.zeros(k, ORD_DTYPE)
        rows = sig[pick[:k]]
        out["order_id"] = out["seq"] = rows["seq"]
        out["instrument"] = rows["instrument"]
        out["side"], out["price"], out["qty"] = side[:k], px[:k], self.order_qty
        out["t_rx"], out["t_book"], out["t_feat"] = rows["t_rx"], rows["t_book"], rows["t_feat"]
        out["t_signal"] = time.perf_counter_ns()
        return out


@nb.njit(cache=True)
def _decide(inst, seq, signal, bid_px, bid_qty, ask_px, ask_qty, q, cap, sent, last_seq, pick, side, px, counts):
    k = 0
    for i in range(inst.shape[0]):
        b, s = inst[i], seq[i]
        if s <= last_seq[b]:
            counts[1] += 1
            continue
        last_seq[b] = s
        counts[0] += 1
        d = int(signal[i])
        if d == 0:
            continue
        p, avail = (ask_px[i], ask_qty[i]) if d > 0 else (bid_px[i], bid_qty[i])
        if avail <= 0 or abs(sent[b] + d * q) > cap:
            continue
        sent[b] += d * q
        pick[k], side[k], px[k] = i, d, p
        k += 1
    return k
