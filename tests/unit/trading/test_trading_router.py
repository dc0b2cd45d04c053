"""Smart order router: constructed cases where the right venue is known."""

from __future__ import annotations

from greekfire.trading.model import Side
from greekfire.trading.router import SmartOrderRouter, VenueStats


def router(*venues: VenueStats, adverse_per_us: float = 0.0) -> SmartOrderRouter:
    r = SmartOrderRouter(adverse_per_us=adverse_per_us)
    for v in venues:
        r.add_venue(v)
    return r


def test_cheaper_venue_wins_when_taking() -> None:
    r = router(VenueStats("A", taker_fee=0.60), VenueStats("B", taker_fee=0.30))
    for name in ("A", "B"):
        r.update_top(name, 7, 1.00, 50, 1.05, 50)
    kids = r.route("p1", 7, Side.BUY, 10, 105, multiplier=100.0, tick_size=0.01)  # limit 1.05 in ticks
    assert [(k.venue, k.qty, k.mode, k.price_ticks) for k in kids] == [("B", 10, "take", 105)]
    assert r.decisions[-1]["take_scores"]["B"] < r.decisions[-1]["take_scores"]["A"]


def test_better_price_beats_lower_fee() -> None:
    r = router(VenueStats("A", taker_fee=0.60), VenueStats("B", taker_fee=0.30))
    r.update_top("A", 7, 1.00, 50, 1.04, 50)  # 1 cent x 100 = 1.00 per contract better than B
    r.update_top("B", 7, 1.00, 50, 1.05, 50)
    assert r.route("p1", 7, Side.BUY, 10, 105, multiplier=100.0, tick_size=0.01)[0].venue == "A"


def test_bigger_rebate_wins_when_posting() -> None:
    r = router(VenueStats("A", maker_fee=-0.10), VenueStats("B", maker_fee=-0.25))
    r.update_top("A", 7, 1.00, 50, 1.10, 50)
    r.update_top("B", 7, 1.00, 50, 1.10, 50)
    kids = r.route("p1", 7, Side.BUY, 10, 102, multiplier=100.0, tick_size=0.01)
    assert [(k.venue, k.mode) for k in kids] == [("B", "post")]


def test_slower_venue_loses_when_latency_matters() -> None:
    slow, fast = VenueStats("SLOW", taker_fee=0.30), VenueStats("FAST", taker_fee=0.40)
    for _ in range(20):
        slow.record_ack(900.0)
        fast.record_ack(100.0)
    for adverse, winner in ((0.0, "SLOW"), (0.001, "FAST")):
        r = router(slow, fast, adverse_per_us=adverse)
        for name in ("SLOW", "FAST"):
            r.update_top(name, 7, 1.00, 50, 1.05, 50)
        assert r.route("p1", 7, Side.BUY, 5, 105, multiplier=100.0, tick_size=0.01)[0].venue == winner
    assert slow.ack_p99_us() >= 899 and fast.ack_ewma_us == 100.0


def test_sweep_splits_by_displayed_size_then_posts_the_rest() -> None:
    r = router(VenueStats("A"), VenueStats("B"), VenueStats("C", maker_fee=-0.30))
    r.update_top("A", 7, 0.95, 10, 1.00, 10)
    r.update_top("B", 7, 0.95, 10, 1.00, 15)
    r.update_top("C", 7, 0.95, 10, 1.05, 50)  # above the limit: not swept
    kids = r.route("p1", 7, Side.BUY, 30, 100, multiplier=100.0, tick_size=0.01)
    assert sorted((k.venue, k.qty, k.mode) for k in kids if k.mode == "take") == [("A", 10, "take"), ("B", 15, "take")]
    assert [(k.venue, k.qty) for k in kids if k.mode == "post"] == [("C", 5)]
    assert sum(k.qty for k in kids) == 30 and r.decisions[-1]["mode"] == "sweep"


def test_sell_sweeps_bids_and_market_order_takes_everything() -> None:
    r = router(VenueStats("A"), VenueStats("B"))
    r.update_top("A", 7, 0.99, 4, 1.05, 10)
    r.update_top("B", 7, 0.98, 6, 1.05, 10)
    kids = r.route("p1", 7, Side.SELL, 20, None, multiplier=1.0, tick_size=0.01)
    assert [(k.venue, k.qty) for k in kids] == [("A", 14), ("B", 6)]


def test_fill_rate_history_moves_the_posting_choice() -> None:
    a, b = VenueStats("A", maker_fee=-0.20), VenueStats("B", maker_fee=-0.20)
    for _ in range(30):
        a.record_outcome(0.0)
        b.record_outcome(1.0)
    r = router(a, b)
    assert r.route("p1", 7, Side.BUY, 5, 100, tick_size=0.01)[0].venue == "B"
    assert b.fill_rate > 0.8 > 0.2 > a.fill_rate
