"""HFT fast-path risk: each check gives its trading-core Reason, batch order matters (rate, pending
positions), and the circuit breakers (LULD, error rate, loss) trip and recover."""

from __future__ import annotations

import numpy as np

from greekfire.core.settings import RiskSettings
from greekfire.hft.orders import ORDER_DTYPE, OrderPool, reason_code, reason_of
from greekfire.hft.risk import ErrorRateBreaker, FastLimits, FastRisk, LossBreaker, LuldBands
from greekfire.trading.denials import Reason

NOW = 1_000_000_000_000
SEC = 1_000_000_000


def rows(*orders: tuple[int, int, int, int]) -> np.ndarray:
    """(instrument, side, qty, price_ticks) each."""
    a = np.zeros(len(orders), ORDER_DTYPE)
    for k, (i, s, q, p) in enumerate(orders):
        a[k]["instrument"], a[k]["side"], a[k]["qty"], a[k]["price_ticks"] = i, s, q, p
    return a


def reasons(codes: np.ndarray) -> list[Reason | None]:
    return [reason_of(int(c)) for c in codes]


class Kill:
    tripped = False


def risk(**kw: object) -> FastRisk:
    lim = FastLimits(max_order_qty=100, max_notional=50_000.0, price_band_pct=0.05, price_band_ticks=10,
                     max_position=150, max_orders_per_s=1000, tick_size=0.01, multiplier=1.0)
    r = FastRisk(lim, 4, **kw)  # type: ignore[arg-type]
    r.set_instrument(0, ref_ticks=10_000)  # 100.00
    r.set_instrument(1, ref_ticks=10_000)
    return r


def test_each_check_and_its_reason() -> None:
    r = risk()
    batch = rows(
        (0, 1, 10, 10_000),  # pass
        (9, 1, 10, 10_000),  # UNKNOWN_INSTRUMENT
        (0, 1, 0, 10_000),  # BAD_QTY
        (0, 0, 10, 10_000),  # BAD_QTY (no side)
        (0, 1, 101, 10_000),  # MAX_QTY
        (0, 1, 10, -5),  # BAD_TICK
        (2, 1, 10, 0),  # NO_REFERENCE_PRICE (market order, instrument 2 has no reference)
        (0, 1, 10, 10_600),  # PRICE_BAND (6% away, band 5% = 500 ticks)
        (0, -1, 10, 9_500),  # exactly on the band: pass
        (1, 1, 60, 10_000),  # MAX_NOTIONAL? 60 x 100.00 = 6000: pass
        (3, 1, 100, 60_000),  # no reference: no band; 100 x 600.00 = 60000 > 50000: MAX_NOTIONAL
        (0, 1, 100, 10_000),  # position: 10 pending + 100 = 110 <= 150: pass
        (0, 1, 50, 10_000),  # 110 + 50 > 150: POSITION_LIMIT
        (0, -1, 100, 10_000),  # sells: pending sells 10 + 100 = 110: pass
        (0, -1, 41, 10_000),  # 110 + 41 > 150: POSITION_LIMIT
    )
    codes = r.check(batch, NOW)
    assert codes.dtype == np.uint8
    assert reasons(codes) == [
        None, Reason.UNKNOWN_INSTRUMENT, Reason.BAD_QTY, Reason.BAD_QTY, Reason.MAX_QTY, Reason.BAD_TICK,
        Reason.NO_REFERENCE_PRICE, Reason.PRICE_BAND, None, None, Reason.MAX_NOTIONAL, None,
        Reason.POSITION_LIMIT, None, Reason.POSITION_LIMIT,
    ]
    assert r.pending_buy[0] == 110 and r.pending_sell[0] == 110 and r.pending_buy[1] == 60
    stats = r.stats()
    assert stats["checked"] == 15 and stats["denials"]["POSITION_LIMIT"] == 2


def test_band_floor_in_ticks_and_fills_move_pending_to_position() -> None:
    r = risk()
    r.set_instrument(2, ref_ticks=100)  # 5% of 100 ticks is 5: the 10-tick floor applies
    assert reasons(r.check(rows((2, 1, 10, 110), (2, 1, 10, 111)), NOW)) == [None, Reason.PRICE_BAND]
    r.on_fill(2, 1, 10, 110)
    assert r.position[2] == 10 and r.pending_buy[2] == 0
    r.set_instrument(2, max_position=15)
    assert reasons(r.check(rows((2, 1, 6, 100)), NOW)) == [Reason.POSITION_LIMIT]
    assert reasons(r.check(rows((2, 1, 5, 100)), NOW)) == [None]
    r.release(2, 1, 5)
    assert r.pending_buy[2] == 0


def test_order_rate_token_bucket() -> None:
    r = risk()
    r.set_limits(max_orders_per_s=5)
    r._par[5:] = (5.0, NOW)  # a full bucket of 5 tokens at NOW
    codes = r.check(rows(*[(0, 1, 1, 10_000)] * 8), NOW)
    assert reasons(codes) == [None] * 5 + [Reason.ORDER_RATE] * 3
    assert reasons(r.check(rows((0, 1, 1, 10_000)), NOW + SEC // 10)) == [Reason.ORDER_RATE]  # 0.5 token back
    assert reasons(r.check(rows((0, 1, 1, 10_000)), NOW + SEC // 5)) == [None]  # one whole token


def test_kill_switch_and_halt_deny_everything_first() -> None:
    kill = Kill()
    r = risk(kill=kill)
    ok = rows((0, 1, 1, 10_000), (9, 1, 0, 0))
    assert reasons(r.check(ok, NOW))[0] is None
    r.halt()
    assert reasons(r.check(ok, NOW)) == [Reason.HALTED] * 2
    kill.tripped = True
    assert reasons(r.check(ok, NOW)) == [Reason.KILL_SWITCH] * 2
    kill.tripped = False
    r.resume()
    assert reasons(r.check(ok, NOW))[0] is None


def test_limits_from_the_trading_settings() -> None:
    s = RiskSettings(max_order_qty=7, max_position=9)
    r = FastRisk(s, 2)
    assert r.limits.max_order_qty == 7 and int(r.max_position[1]) == 9
    assert reasons(r.check(rows((0, 1, 8, 100)), NOW)) == [Reason.MAX_QTY]


def test_luld_band_pause_and_recovery() -> None:
    luld = LuldBands(4, band_pct=0.05, window_s=300, pause_s=15)
    r = risk(luld=luld)
    t = np.arange(10, dtype=np.int64) * SEC + NOW
    assert luld.update(np.zeros(10, np.int64), np.full(10, 10_000), t) == 0
    assert luld.reference(0) == 10_000 and (luld.lower[0], luld.upper[0]) == (9_500, 10_500)
    # an order inside the risk band but outside LULD: PRICE_BAND
    r.set_limits(price_band_pct=0.5)
    assert reasons(r.check(rows((0, 1, 1, 10_600)), NOW + 10 * SEC)) == [Reason.PRICE_BAND]
    # a trade through the band pauses instrument 0 (only)
    assert luld.update(np.array([0]), np.array([11_000]), np.array([NOW + 11 * SEC])) == 1
    assert luld.paused(0, NOW + 12 * SEC) and not luld.paused(1, NOW + 12 * SEC)
    assert reasons(r.check(rows((0, 1, 1, 10_000), (1, 1, 1, 10_000)), NOW + 12 * SEC)) == [Reason.HALTED, None]
    # the pause ends by itself
    assert reasons(r.check(rows((0, 1, 1, 10_000)), NOW + 27 * SEC)) == [None]
    # the window rolls: after five minutes of trades at 10_400 the reference is theirs alone
    t2 = NOW + 400 * SEC + np.arange(5, dtype=np.int64) * SEC
    luld.update(np.zeros(5, np.int64), np.full(5, 10_400), t2)
    assert luld.reference(0) == 10_400


def test_error_rate_breaker_trips_and_recovers() -> None:
    b = ErrorRateBreaker(max_per_s=10, cooldown_s=2)
    r = risk(breakers=(b,))
    assert not any(b.record(NOW + k * 1_000_000) for k in range(10))
    assert b.record(NOW + 10_000_000)  # the 11th reject within the second
    assert b.is_tripped(NOW + SEC) and b.trips == 1
    assert reasons(r.check(rows((0, 1, 1, 10_000)), NOW + SEC)) == [Reason.HALTED]
    assert not b.is_tripped(NOW + 3 * SEC)
    assert reasons(r.check(rows((0, 1, 1, 10_000)), NOW + 3 * SEC)) == [None]
    # spread out, the same number of rejects never trips it
    b2 = ErrorRateBreaker(max_per_s=10)
    assert not any(b2.record(NOW + k * 200_000_000) for k in range(50))


def test_loss_breaker_trips_on_realised_plus_unrealised_and_holds_until_reset() -> None:
    loss = LossBreaker(max_loss=500.0)
    r = risk(breakers=(loss,))
    r.check(rows((0, 1, 100, 10_000)), NOW)
    r.on_fill(0, 1, 100, 10_000)  # long 100 @ 100.00
    marks = r.ref.copy()
    marks[0] = 9_960  # -0.40 x 100 = -40
    assert not loss.update_from(r, marks)
    marks[0] = 9_400  # -6.00 x 100 = -600
    assert loss.update_from(r, marks) and loss.tripped
    assert reasons(r.check(rows((1, 1, 1, 10_000)), NOW)) == [Reason.HALTED]
    marks[0] = 10_000
    loss.update_from(r, marks)
    assert loss.tripped  # holds
    loss.reset()
    assert reasons(r.check(rows((1, 1, 1, 10_000)), NOW)) == [None]


def test_codes_are_the_pool_codes() -> None:
    r = risk()
    codes = r.check(rows((0, 1, 1000, 10_000)), NOW)
    assert int(codes[0]) == reason_code(Reason.MAX_QTY)


def test_screen_moves_the_pool() -> None:
    r = risk()
    pool = OrderPool(8)
    ok = pool.alloc(0, 1, 10, 10_000, t_signal_ns=1)
    big = pool.alloc(0, 1, 500, 10_000, t_signal_ns=1)
    codes = r.screen(pool, [ok, big], NOW)
    assert reasons(codes) == [None, Reason.MAX_QTY]
    assert pool.status(ok).value == "INITIALIZED" and pool.orders[ok]["t_risk_ns"] > 0
    assert pool.status(big).value == "DENIED" and reason_of(int(pool.orders[big]["reason"])) is Reason.MAX_QTY


def test_apply_events_keeps_pending_and_positions_in_step() -> None:
    from greekfire.hft.ouch_gateway import OuchEvent

    err = ErrorRateBreaker(max_per_s=1)
    r = risk(breakers=(err,))
    pool = OrderPool(8)
    a, b, c = (pool.alloc(0, 1, 50, 10_000) for _ in range(3))
    assert not r.screen(pool, [a, b, c], NOW).any()
    assert r.pending_buy[0] == 150
    for s in (a, b, c):
        pool.on_sent(s, 1)
    pool.on_ack(a, 2)
    pool.on_fill(a, 20, 10_000, 3)
    pool.on_ack(b, 2)
    pool.on_cancel(b)
    pool.on_reject(c)
    oid = lambda s: int(pool.orders[s]["order_id"])  # noqa: E731
    r.apply_events([
        OuchEvent("executed", a, oid(a), 20, 10_000, "R", 1),
        OuchEvent("canceled", b, oid(b), 50, 0, "U", 2),
        OuchEvent("rejected", c, oid(c), 0, 0, "O", 3),
    ], pool, NOW)
    assert r.position[0] == 20 and r.pending_buy[0] == 30  # a's 30 still working
    assert r.cash[0] == -20 * 100.0
    r.apply_events([OuchEvent("rejected", c, oid(c), 0, 0, "O", 4)] * 2, pool, NOW + 1)
    assert err.is_tripped(NOW + 2)  # three rejects within a second, limit 1
