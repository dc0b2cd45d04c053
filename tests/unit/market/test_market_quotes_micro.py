"""Options quote book on tensors, microstructure features, detectors and signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from greekfire.core.errors import DataError
from greekfire.market import micro
from greekfire.market.book import OrderBooks
from greekfire.market.quotes import QuoteBook, random_updates

T = torch.tensor


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_quote_book_nbbo_hand_worked(backend):
    qb = QuoteBook(3, 3, device="cpu", backend=backend)
    n = qb.update(series=T([0, 0, 0, 0, 5, 1]), venue=T([0, 1, 2, 2, 0, 0]),
                  bid_px=T([100, 101, 99, 101, 1, 50]), bid_sz=T([10, 3, 1, 4, 1, -1]),
                  ask_px=T([105, 105, 0, 0, 2, 60]), ask_sz=T([5, 7, 0, 0, 1, 1]),
                  ts=T([10, 20, 30, 40, 50, 60]))
    assert n == 4 and qb.rejected == 2  # series 5 out of range, negative size
    nb = qb.nbbo()
    assert nb["bid_px"][0] == 101 and nb["bid_sz"][0] == 7 and nb["bid_venues"][0] == 2
    assert nb["ask_px"][0] == 105 and nb["ask_sz"][0] == 12 and nb["ask_venues"][0] == 2
    assert not nb["has_bid"][1] and not nb["has_ask"][2]
    s = qb.summary(nb)
    assert s["spread"][0] == 4 and s["mid"][0] == 103
    assert s["weighted_mid"][0].item() == pytest.approx((101 * 12 + 105 * 7) / 19)
    assert math.isnan(s["spread"][1].item())
    st = qb.stats(now_ns=1_000_000_040, stale_after_ns=1_000_000_000)
    assert st["updates"].tolist() == [4, 0, 0]
    assert st["quote_rate"][0].item() == pytest.approx(3 / 30e-9)
    assert st["staleness_s"][0].item() == pytest.approx(1.0) and math.isinf(st["staleness_s"][1].item())
    assert st["stale_venues"][0] == 2  # venues 0 and 1 quoted at 10 and 20 ns
    assert qb.snapshot(0)["bid_px"] == [100, 101, 101]


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_quote_book_matches_one_by_one_application(backend):
    qb = QuoteBook(50, 4, device="cpu", backend=backend)
    ups = random_updates(3000, 50, 4, seed=5)
    qb.update(**ups)
    ref = np.zeros((50, 4, 5), np.int64)
    cols = [ups[k].numpy() for k in ("bid_px", "bid_sz", "ask_px", "ask_sz", "ts")]
    for i, (s, v) in enumerate(zip(ups["series"].numpy(), ups["venue"].numpy(), strict=True)):
        ref[s, v] = [c[i] for c in cols]
    assert np.array_equal(qb.quotes.numpy(), ref)
    nb = qb.nbbo()
    for s in range(50):
        bids = [(ref[s, v, 0], ref[s, v, 1]) for v in range(4) if ref[s, v, 1] > 0]
        if bids:
            best = max(p for p, _ in bids)
            assert nb["bid_px"][s] == best and nb["bid_sz"][s] == sum(q for p, q in bids if p == best)
    assert qb.stats(10**9)["updates"].sum() == 3000
    with pytest.raises(DataError):
        QuoteBook(0, 1)
    with pytest.raises(DataError):
        QuoteBook(1, 1, backend="bogus")
    with pytest.raises(DataError, match="same length"):
        qb.update(T([1, 2]), T([0]), T([1]), T([1]), T([1]), T([1]), T([1]))


def depth1(bp, bs, ap, as_):
    return micro.Depth(T(bp, dtype=torch.float64), T(bs, dtype=torch.float64), T(ap, dtype=torch.float64),
                       T(as_, dtype=torch.float64))


def test_snapshot_features_hand_worked():
    d = depth1([[100, 99], [50, 0]], [[10, 30], [5, 0]], [[102, 103], [0, 0]], [[30, 10], [0, 0]])
    assert micro.spread(d)[0] == 2 and math.isnan(micro.spread(d)[1].item())
    assert micro.mid(d)[0] == 101
    assert micro.microprice(d)[0].item() == pytest.approx((100 * 30 + 102 * 10) / 40)
    assert micro.weighted_mid(d, 2)[0].item() == pytest.approx(((100 * 10 + 99 * 30) / 40 + (102 * 30 + 103 * 10) / 40) / 2)
    assert micro.imbalance(d)[0].item() == pytest.approx(-0.5)
    w = micro.imbalance(d, levels=2, decay=0.5)[0].item()
    assert w == pytest.approx(((10 - 30) + 0.5 * (30 - 10)) / ((10 + 30) + 0.5 * 40))
    assert micro.imbalance(d)[1] == 1.0  # only a bid
    with pytest.raises(DataError):
        micro.imbalance(d, levels=0)


def test_order_flow_imbalance_cont_kukanov_stoikov():
    bp, bs = T([[100.0], [100.0], [101.0]]), T([[10.0], [15.0], [3.0]])
    ap, as_ = T([[101.0], [101.0], [102.0]]), T([[10.0], [10.0], [8.0]])
    d = micro.Depth(bp[..., None], bs[..., None], ap[..., None], as_[..., None])
    assert micro.order_flow_imbalance(d)[:, 0].tolist() == [0.0, 5.0, 13.0]


def test_trade_sign_signed_volume_realized_vol():
    tp = T([[101.0], [100.5], [100.5], [99.0], [99.0]])
    m = T([[100.5], [100.5], [100.5], [100.0], [99.0]])
    s = micro.trade_sign(tp, m)
    assert s[:, 0].tolist() == [1.0, -1.0, -1.0, -1.0, -1.0]  # 100.5 at the mid: last tick was down
    assert micro.signed_volume(s, T([[10], [5], [1], [2], [3]]))[:, 0].tolist() == [10, -5, -1, -2, -3]
    rv = micro.realized_vol(T([[100.0], [101.0], [100.0], [100.0]], dtype=torch.float64), window=2)
    r1 = math.log(101 / 100)
    assert rv[1, 0].item() == pytest.approx(abs(r1)) and rv[2, 0].item() == pytest.approx(math.sqrt(2) * abs(r1))
    assert rv[3, 0].item() == pytest.approx(abs(r1))


def test_queue_depletion():
    d = micro.Depth(T([[[100.0]], [[100.0]], [[101.0]]]), T([[[50.0]], [[30.0]], [[10.0]]]),
                    T([[[102.0]], [[102.0]], [[102.0]]]), T([[[5.0]], [[5.0]], [[1.0]]]))
    r = micro.queue_depletion_rate(d, dt_s=2.0, halflife=1.0)
    assert r["bid"][1, 0].item() == pytest.approx(0.5 * 10.0)  # 20 shares in 2 s, alpha 0.5
    assert r["bid"][2, 0].item() == pytest.approx(0.5 * 5.0)  # new price: no depletion, decays
    assert r["ask"][2, 0].item() == pytest.approx(0.5 * 2.0)


def test_sweep_iceberg_and_cancel_burst_detectors():
    # asks 101,102,103 then 103,104: a buy took two levels
    d = micro.Depth(T([[[99.0, 98, 97]], [[99.0, 98, 97]]]), T([[[1.0, 1, 1]], [[1.0, 1, 1]]]),
                    T([[[101.0, 102, 103]], [[103.0, 104, 0]]]), T([[[1.0, 1, 1]], [[1.0, 1, 0]]]))
    sw = micro.sweeps(d, min_levels=2)
    assert sw["buy"][:, 0].tolist() == [0, 2] and sw["buy_sweep"][1, 0] and sw["sell"][1, 0] == 0
    # the best ask at 101 shows 10, trades take 10 and it is back at 101 with 10: twice
    ask_px, ask_sz = T([[[101.0]], [[101.0]], [[101.0]], [[102.0]]]), T([[[10.0]], [[10.0]], [[10.0]], [[5.0]]])
    d2 = micro.Depth(ask_px - 2, ask_sz, ask_px, ask_sz)
    traded = {"ask": T([[0.0], [10.0], [12.0], [10.0]]), "bid": torch.zeros(4, 1)}
    ib = micro.iceberg_refills(d2, traded, min_refills=2)
    assert ib["ask"][:, 0].tolist() == [0, 1, 2, 0] and ib["ask_iceberg"][2, 0] and not ib["bid_iceberg"].any()
    burst = micro.cancel_bursts(T([[1.0], [9.0], [9.0], [0.0], [0.0]]), window=2, threshold=15)
    assert burst[:, 0].tolist() == [False, False, True, False, False]


def test_signals_hysteresis_and_events():
    x = torch.zeros(60, 2, dtype=torch.float64)
    x[:, 0] = torch.sin(torch.arange(60.0))  # some variance
    x[:, 1] = torch.sin(torch.arange(60.0) * 1.3)
    x[40, 0] = 25.0  # a spike in instrument 0
    sig = micro.signals({"f": x}, enter=2.0, exit=0.5, halflife=20, warmup=10)
    st = sig.state["f"][:, 0]
    assert st[40] == 1 and st[:40].abs().sum() == 0
    ev = sig.events
    assert ev.dtype == micro.SIGNAL_EVENT_DTYPE and ev.size >= 2
    first = ev[(ev["instrument"] == 0)][0]
    assert first["t"] == 40 and first["state"] == 1 and first["z"] > 2
    # hysteresis: between exit and enter the state is held
    z = sig.z["f"][:, 0]
    for t in range(41, 60):
        if st[t - 1] == 1 and exit_band(z[t]):
            assert st[t] == 1
    with pytest.raises(DataError):
        micro.signals({"f": x}, enter=1.0, exit=1.5)


def exit_band(z):
    return 0.5 <= z.item() <= 2.0


def test_features_from_many_books():
    books = OrderBooks(n_books=3, max_orders=64, max_levels=8)
    books.add(0, 1, 1, 100, 10)
    books.add(0, -1, 2, 102, 30)
    books.add(2, 1, 3, 50, 5)
    d = micro.Depth.from_array(books.depth_array(3))
    f = micro.features(d, levels=3)
    assert f["spread"][0] == 2 and math.isnan(f["spread"][1].item()) and f["imbalance_l1"][2] == 1.0
    assert f["microprice"][0].item() == pytest.approx((100 * 30 + 102 * 10) / 40)


def test_trade_sign_many_instruments_matches_a_loop():
    g = torch.Generator().manual_seed(2)
    tp = 100 + torch.randint(-3, 4, (200, 7), generator=g).to(torch.float64)
    m = 100 + torch.randint(-1, 2, (200, 7), generator=g).to(torch.float64)
    tp[5, 2] = float("nan")
    s = micro.trade_sign(tp, m)
    for b in range(7):
        last = 0.0
        prev = None
        for t in range(200):
            p = tp[t, b].item()
            if prev is not None and not math.isnan(p) and not math.isnan(prev) and p != prev:
                last = 1.0 if p > prev else -1.0
            want = 0.0 if math.isnan(p) else (1.0 if p > m[t, b] else -1.0 if p < m[t, b] else last)
            assert s[t, b].item() == want, (t, b)
            prev = p
