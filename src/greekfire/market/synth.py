"""A synthetic ITCH 5.0 trading day: valid, reproducible message streams for tests, demos and benchmarks.

Each stock has a reference price; orders rest on either side of it (bids below, asks above, so books
never cross), and the flow mixes adds, partial cancels, deletes, executions and replaces in roughly the
proportions of a Nasdaq day. Every cancel, delete, execution and replace names a live order, so a
correct book builder reports no bad event on it.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from greekfire.market import itch

# message kinds of the generator (columns of the raw output)
_A, _X, _D, _E, _U = 0, 1, 2, 3, 4
_TYPE_OF = {_A: "A", _X: "X", _D: "D", _E: "E", _U: "U"}


@nb.njit(cache=True)
def _generate(n, n_stocks, seed, ref_px, out_kind, out_loc, out_ts, out_ref, out_new, out_side, out_qty, out_px):
    np.random.seed(seed)
    cap = n + 16
    live_ref = np.empty(cap, np.int64)
    live_loc = np.empty(cap, np.int64)
    live_side = np.empty(cap, np.int64)
    live_qty = np.empty(cap, np.int64)
    live_px = np.empty(cap, np.int64)
    n_live = 0
    next_ref = 1
    ts = np.int64(34_200_000_000_000)  # 09:30 in ns after midnight
    step = np.int64(23_400_000_000_000 // max(n, 1))
    for i in range(n):
        ts += 1 + np.random.randint(0, 2 * step + 1)
        u = np.random.random()
        if n_live < 64 or u < 0.45:
            kind = _A
        elif u < 0.53:
            kind = _X
        elif u < 0.83:
            kind = _D
        elif u < 0.93:
            kind = _E
        else:
            kind = _U
        if kind == _A:
            loc = 1 + np.random.randint(0, n_stocks)
            side = 1 if np.random.random() < 0.5 else -1
            off = 1 + np.int64(np.random.exponential(4.0))
            px = ref_px[loc] - side * off * 100
            qty = 100 * (1 + np.random.randint(0, 10))
            live_ref[n_live] = next_ref
            live_loc[n_live] = loc
            live_side[n_live] = side
            live_qty[n_live] = qty
            live_px[n_live] = px
            n_live += 1
            out_ref[i] = next_ref
            out_loc[i] = loc
            out_side[i] = side
            out_qty[i] = qty
            out_px[i] = px
            next_ref += 1
        else:
            # most cancels and fills hit recent orders (the short-lived quotes of a real day)
            if np.random.random() < 0.8:
                j = n_live - 1 - min(np.int64(np.random.exponential(50.0)), n_live - 1)
            else:
                j = np.random.randint(0, n_live)
            out_ref[i] = live_ref[j]
            out_loc[i] = live_loc[j]
            out_side[i] = live_side[j]
            if kind == _X or kind == _E:  # noqa: SIM109 (numba: plain compares)
                have = live_qty[j]
                q = have if kind == _E and np.random.random() < 0.6 else 1 + np.random.randint(0, have)
                out_qty[i] = q
                out_px[i] = live_px[j]
                if q < have:
                    live_qty[j] = have - q
                else:
                    n_live -= 1
                    live_ref[j] = live_ref[n_live]
                    live_loc[j] = live_loc[n_live]
                    live_side[j] = live_side[n_live]
                    live_qty[j] = live_qty[n_live]
                    live_px[j] = live_px[n_live]
            elif kind == _D:
                out_px[i] = live_px[j]
                n_live -= 1
                live_ref[j] = live_ref[n_live]
                live_loc[j] = live_loc[n_live]
                live_side[j] = live_side[n_live]
                live_qty[j] = live_qty[n_live]
                live_px[j] = live_px[n_live]
            else:
                side = live_side[j]
                off = 1 + np.int64(np.random.exponential(4.0))
                px = ref_px[live_loc[j]] - side * off * 100
                qty = 100 * (1 + np.random.randint(0, 10))
                out_new[i] = next_ref
                out_qty[i] = qty
                out_px[i] = px
                live_ref[j] = next_ref
                live_qty[j] = qty
                live_px[j] = px
                next_ref += 1
        out_kind[i] = kind
        out_ts[i] = ts


def synthetic_day(n_messages: int = 1_000_000, n_stocks: int = 8, seed: int = 7) -> dict[str, np.ndarray]:
    """ITCH messages by type (:data:`greekfire.market.itch.DTYPES`, ``seq`` = stream position).

    Starts with a system event 'O' (start of messages), one stock directory ``R`` per stock (locates
    1..n_stocks, symbols SYN01...), ends with system event 'C'. Prices in 1e-4 dollars around $50-$250.
    """
    rng = np.random.default_rng(seed)
    ref_px = np.zeros(n_stocks + 1, np.int64)
    ref_px[1:] = rng.integers(50, 250, n_stocks) * 10_000
    n = int(n_messages)
    cols = {k: np.zeros(n, np.int64) for k in ("kind", "loc", "ts", "ref", "new", "side", "qty", "px")}
    _generate(n, n_stocks, seed, ref_px, *cols.values())
    head = 1 + n_stocks
    out: dict[str, np.ndarray] = {}
    s = np.zeros(2, itch.DTYPES["S"])
    s["seq"] = [0, head + n]
    s["event_code"] = [b"O", b"C"]
    s["timestamp"] = [34_100_000_000_000, 57_700_000_000_000]
    out["S"] = s
    r = np.zeros(n_stocks, itch.DTYPES["R"])
    r["seq"] = np.arange(1, head)
    r["stock_locate"] = np.arange(1, head)
    r["timestamp"] = 34_150_000_000_000
    r["stock"] = [f"SYN{i:02d}".encode() for i in range(1, head)]
    r["market_category"] = b"Q"
    r["financial_status"] = b"N"
    r["round_lot_size"] = 100
    for k, t in _TYPE_OF.items():
        sel = np.flatnonzero(cols["kind"] == k)
        a = np.zeros(sel.size, itch.DTYPES[t])
        a["seq"] = sel + head
        a["stock_locate"] = cols["loc"][sel]
        a["timestamp"] = cols["ts"][sel]
        a["order_ref"] = cols["ref"][sel]
        if t == "A":
            a["side"] = np.where(cols["side"][sel] > 0, b"B", b"S")
            a["shares"] = cols["qty"][sel]
            a["price"] = cols["px"][sel]
            a["stock"] = r["stock"][cols["loc"][sel] - 1]
        elif t == "X":
            a["canceled_shares"] = cols["qty"][sel]
        elif t == "E":
            a["executed_shares"] = cols["qty"][sel]
            a["match_number"] = np.arange(1, sel.size + 1)
        elif t == "U":
            a["new_order_ref"] = cols["new"][sel]
            a["shares"] = cols["qty"][sel]
            a["price"] = cols["px"][sel]
        out[t] = a
    out["R"] = r
    return {t: itch.space_pad(t, a) for t, a in out.items()}


def synthetic_stream(n_messages: int = 1_000_000, n_stocks: int = 8, seed: int = 7, framing: str = "length") -> bytes:
    """The synthetic day encoded and framed (Nasdaq binary-file framing by default)."""
    return itch.encode_stream(synthetic_day(n_messages, n_stocks, seed), framing)
