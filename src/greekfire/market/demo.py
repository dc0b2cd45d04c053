"""Demo stage "market": a synthetic ITCH day through MoldUDP64 with a lost packet, books, the matching
engine and a few microstructure signals -- no outside data needed."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from greekfire.core.metrics import counter
from greekfire.core.settings import Settings
from greekfire.market import itch, micro, moldudp, synth
from greekfire.market.book import OrderBooks
from greekfire.market.matching import MatchingEngine, OrdType, Side


def _matching_session(stp: str, n: int = 20_000, seed: int = 5) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    eng = MatchingEngine(maker_fee=-0.0020, taker_fee=0.0030, stp=stp)
    kinds: dict[str, int] = {}
    fees = 0.0
    stp_cancels = 0
    live: list[int] = []
    for oid in range(1, n + 1):
        u = rng.random()
        side = Side.BUY if rng.random() < 0.5 else Side.SELL
        if u < 0.2 and live:
            reports = eng.cancel(live.pop(int(rng.integers(0, len(live)))))
        elif u < 0.3:
            reports = eng.submit(oid, int(rng.integers(0, 20)), side, int(rng.integers(1, 5)) * 100,
                                 ord_type=OrdType.MARKET)
        else:
            px = 10_000 - int(side) * int(1 + rng.exponential(4))
            reports = eng.submit(oid, int(rng.integers(0, 20)), side, int(rng.integers(1, 10)) * 100, px)
            live.append(oid)
        for r in reports:
            kinds[r.kind.name] = kinds.get(r.kind.name, 0) + 1
            fees += r.fee
            stp_cancels += r.reason == "self_trade"
    bid, ask = eng.best_bid(), eng.best_ask()
    return {"orders": n, "trades": eng.trades, "volume": eng.volume, "reports": kinds, "fees": round(fees, 2),
            "top": f"{bid} x {ask}", "self_trade_cancels": stp_cancels}


def run_demo(settings: Settings) -> dict[str, Any]:
    """Encode a synthetic day, send it as MoldUDP64 packets losing one, rebuild the books, run a matching
    session and derive signals from book snapshots; returns a summary."""
    t0 = time.perf_counter()
    n_msgs = settings.market.demo_messages
    stream = synth.synthetic_stream(n_msgs, n_stocks=4, seed=21)
    packets = moldudp.packetize(stream, session="GFDEMO", max_payload=1400)
    rx = moldudp.MoldReceiver()
    rx.feed_all(moldudp.drop(packets, [len(packets) // 2]))
    # load (or, the first time, compile) the kernels on a few messages so the rates below are throughput
    warm = itch.decode(stream[:2000])
    OrderBooks(5, 1024, 64).apply_fast(itch.book_events(warm)[0], np.zeros(len(warm), np.int8))
    t_dec = time.perf_counter()
    msgs = itch.decode(rx.stream())
    dec_s = time.perf_counter() - t_dec
    ev, _ = itch.book_events(msgs)

    # replay in chunks, snapshotting the top of every book after each chunk (the time series for signals)
    levels = settings.market.max_levels
    books = OrderBooks(5, max_orders=max(1 << 16, ev.shape[0]), max_levels=4096)
    status = np.zeros(ev.shape[0], np.int8)
    chunk = max(ev.shape[0] // 400, 1)
    snaps = []
    t_book = time.perf_counter()
    for i in range(0, ev.shape[0], chunk):
        books.apply_fast(ev[i : i + chunk], status[i : i + chunk])
        snaps.append(books.depth_array(levels)[1:])
    book_s = time.perf_counter() - t_book
    bad = int(np.count_nonzero(status))
    counter("greekfire_market_demo_messages", "ITCH messages decoded by the market demo").inc(len(msgs))

    arr = torch.as_tensor(np.stack(snaps)).to(torch.float64)  # [T, B, 2, L, 2]
    series = micro.Depth(arr[:, :, 0, :, 0], arr[:, :, 0, :, 1], arr[:, :, 1, :, 0], arr[:, :, 1, :, 1])
    feats = {"imbalance": micro.imbalance(series, levels=5, decay=0.5),
             "ofi": micro.order_flow_imbalance(series)}
    sig = micro.signals(feats, enter=2.0, exit=0.5, halflife=30, warmup=20)
    sweeps = micro.sweeps(series, min_levels=2)
    names = msgs.stock_directory()
    top = books.depth(1, 1)
    return {
        "ITCH messages": f"{len(stream):,} bytes, {len(msgs):,} decoded ({len(msgs) / dec_s / 1e6:.1f}M msg/s)",
        "MoldUDP64": f"{rx.packets} packets, gaps {rx.gaps} ({rx.missing()} messages lost)",
        "books": f"{len(names)} stocks, {books.n_orders:,} live orders, {ev.shape[0] / book_s / 1e6:.1f}M events/s",
        "bad book events (lost packet)": bad,
        f"{names.get(1, 'stock 1')} top": f"{top[0][:1]} x {top[1][:1]} (1e-4 $)",
        "matching session": _matching_session(settings.market.stp),
        "signal events": int(sig.events.shape[0]),
        "sweeps (>=2 levels)": int(sweeps["buy_sweep"].sum() + sweeps["sell_sweep"].sum()),
        "seconds": round(time.perf_counter() - t0, 2),
    }
