"""Peer measurement for bench_market.py: hftbacktest building its market depth from a file of events.

Runs in the peers virtualenv (``make peers`` -> .venv-peers; hftbacktest pins numpy < 2.3), never in .venv:

    .venv-peers/bin/python benchmarks/peer_hftbacktest.py EVENTS.npz [REPEAT]

EVENTS.npz (written by bench_market.py) holds ``mode`` ("l2" or "l3"), ``source_events`` (how many of our
events the arrays stand for) and one array ``asset<i>`` per book in hftbacktest's event layout, every row
a LOCAL event only: the backtest's local processor builds the depth (an L3 order map with the FIFO queue
model for "l3", a price -> quantity map for "l2"), the exchange processor gets nothing to do. Timed: the
backtest's own run to the end of the data (``goto_end``), in process CPU seconds like our rows; building
the backtest (which copies the arrays) is not timed. Prints one line ``RESULT {json}`` with the best of
REPEAT runs, the exit code of the run (1 = end of data reached) and the final best bid/ask of every book,
for a cross-check against our book.
"""

import json
import sys
import time

import hftbacktest as hbt
import numpy as np


def build(arrays: list[np.ndarray], mode: str):
    assets = []
    for arr in arrays:
        a = (hbt.BacktestAsset().data(arr).linear_asset(1.0).constant_order_latency(0, 0)
             .trading_value_fee_model(0.0, 0.0).tick_size(1.0).lot_size(1.0).last_trades_capacity(0))
        if mode == "l3":
            a = a.l3_fifo_queue_model().no_partial_fill_exchange()
        else:
            a = a.risk_adverse_queue_model().no_partial_fill_exchange()
        assets.append(a)
    return hbt.HashMapMarketDepthBacktest(assets)


def main(path: str, repeat: int) -> None:
    z = np.load(path)
    mode = str(z["mode"])
    names = sorted((k for k in z.files if k.startswith("asset")), key=lambda k: int(k[5:]))
    arrays = [np.ascontiguousarray(z[k]) for k in names]
    rows = sum(a.shape[0] for a in arrays)
    best, rc, top = float("inf"), None, []
    for _ in range(repeat):
        bt = build(arrays, mode)
        t0 = time.process_time()
        rc = bt._goto_end()
        best = min(best, time.process_time() - t0)
        top = []
        for i in range(len(arrays)):
            d = bt.depth(i)
            bq, aq = float(d.best_bid_qty), float(d.best_ask_qty)  # an empty side: price 0, like ours
            top.append([int(d.best_bid_tick) if bq > 0 else 0, bq, int(d.best_ask_tick) if aq > 0 else 0, aq])
        bt.close()
    out = {"mode": mode, "rows": rows, "source_events": int(z["source_events"]), "seconds": best,
           "messages_per_s": int(z["source_events"]) / best, "rc": int(rc), "top": top,
           "version": hbt.__version__}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
