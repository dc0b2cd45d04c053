"""Risk engine: every pre-trade check passes a good order and denies a bad one with its reason and values;
continuous checks, trading states and the kill switch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from greekfire.core.errors import ConfigError
from greekfire.core.metrics import sample_value
from greekfire.core.settings import RiskSettings
from greekfire.trading.denials import Reason, TradingState
from greekfire.trading.model import Fill, Instrument, InstrumentKind, OrderType, Side, option
from greekfire.trading.orders import Order
from greekfire.trading.portfolio import Portfolio
from greekfire.trading.risk import RiskEngine

NOW = 1_800_000_000 * 10**9
EXPIRY = datetime.fromtimestamp(NOW / 1e9, UTC) + timedelta(days=30)
CALL = option(2, "XYZ", 100.0, EXPIRY, "C", multiplier=100.0, tick_size=0.01)
STOCK = Instrument(1, "XYZ", InstrumentKind.EQUITY, tick_size=0.01)
LOT10 = Instrument(3, "LOTS", InstrumentKind.EQUITY, tick_size=0.05, lot_size=10)


def book(cash: float = 10_000_000.0) -> Portfolio:
    pf = Portfolio(cash)
    for inst in (STOCK, CALL, LOT10):
        pf.add_instrument(inst)
    pf.mark(1, 100.0)
    pf.mark(3, 20.0)
    pf.mark(2, 2.50)
    pf.revalue(NOW)
    return pf


def engine(cash: float = 10_000_000.0, **limits: object) -> RiskEngine:
    risk = RiskEngine(RiskSettings(**limits), book(cash))
    risk.refresh()
    return risk


def order(iid: int = 2, side: Side = Side.BUY, qty: int = 10, price: float | None = 250, **kw: object) -> Order:
    # ``price``: the limit in ticks (a float is allowed here to test that it is refused)
    return Order("c1", iid, side, qty, price, strategy_id="s", **kw)  # type: ignore[arg-type]


def hold(risk: RiskEngine, iid: int, qty: int, price: float) -> None:
    side = Side.BUY if qty > 0 else Side.SELL
    risk.portfolio.apply_fill(Fill(f"seed-{iid}-{qty}", "seed", iid, side, abs(qty), price))
    risk.portfolio.revalue(NOW, force=True)
    risk.refresh()


def denied(risk: RiskEngine, o: Order, ref: float | None = 2.50) -> Reason | None:
    d = risk.check(o, ref, NOW)
    return None if d is None else d.reason


def test_a_good_order_passes_every_check() -> None:
    risk = engine()
    assert risk.check(order(), 2.50, NOW) is None
    assert risk.check(order(1, Side.SELL, 100, 10000), 100.0, NOW) is None


@pytest.mark.parametrize(
    ("limits", "good", "bad", "reason"),
    [
        ({}, order(qty=5), order(qty=0), Reason.BAD_QTY),
        ({"max_order_qty": 20}, order(qty=20), order(qty=21), Reason.MAX_QTY),
        ({}, order(price=251), order(price=250.5), Reason.BAD_TICK),
        ({}, order(price=251), order(price=251.0), Reason.BAD_TICK),  # a float is not a number of ticks
        ({}, order(price=251), order(price=0), Reason.BAD_TICK),
        ({}, order(price=None, ord_type=OrderType.STOP, stop_ticks=260),
         order(price=None, ord_type=OrderType.STOP, stop_ticks=2.60), Reason.BAD_TICK),  # a stop in currency
        ({}, order(price=251, ord_type=OrderType.STOP_LIMIT, stop_ticks=255),
         order(price=251, ord_type=OrderType.STOP_LIMIT), Reason.BAD_TICK),  # a stop-limit without its stop
        ({"price_band_pct": 0.10, "price_band_ticks": 0}, order(price=275), order(price=276), Reason.PRICE_BAND),
        ({"max_notional": 2_500.0}, order(qty=10), order(qty=11), Reason.MAX_NOTIONAL),
        ({"max_position": 15}, order(qty=15), order(qty=16), Reason.POSITION_LIMIT),
        ({"max_delta": 600.0}, order(qty=10), order(qty=20), Reason.DELTA_LIMIT),
        ({"max_gamma": 100.0}, order(qty=10), order(qty=20), Reason.GAMMA_LIMIT),
        ({"max_vega": 15_000.0}, order(qty=10), order(qty=20), Reason.VEGA_LIMIT),
        ({"max_theta": 20_000.0}, order(qty=10), order(qty=20), Reason.THETA_LIMIT),
        ({"max_total_delta_cash": 60_000.0}, order(qty=10), order(qty=20), Reason.TOTAL_DELTA_LIMIT),
        ({"max_total_gamma_cash": 10_000.0}, order(qty=10), order(qty=20), Reason.TOTAL_GAMMA_LIMIT),
        ({"max_total_vega": 15_000.0}, order(qty=10), order(qty=20), Reason.TOTAL_VEGA_LIMIT),
        ({"max_total_theta": 20_000.0}, order(qty=10), order(qty=20), Reason.TOTAL_THETA_LIMIT),
    ],
    ids=lambda v: v.value if isinstance(v, Reason) else "",
)
def test_each_check_passes_then_denies(limits: dict, good: Order, bad: Order, reason: Reason) -> None:
    assert denied(engine(**limits), good) is None
    risk = engine(**limits)
    d = risk.check(bad, 2.50, NOW)
    assert d is not None and d.reason == reason
    assert d.values and d.message  # the values that caused it travel with the denial
    assert risk.denials == {reason.value: 1}


def test_greek_limits_see_the_book_after_the_order_and_let_reducing_orders_through() -> None:
    risk = engine(max_delta=600.0)
    hold(risk, 2, 20, 2.50)  # already beyond the delta limit (about 20 x 100 x 0.54)
    assert denied(risk, order(qty=1)) == Reason.DELTA_LIMIT
    assert denied(risk, order(side=Side.SELL, qty=5)) is None
    d = risk.check(order(qty=1), 2.50, NOW)
    assert d is not None and d.values["after"] > d.values["before"] > d.values["limit"]


def test_amend_is_checked_on_its_new_terms_and_a_shrink_passes_a_breached_limit() -> None:
    risk = engine(max_position=10)
    hold(risk, 2, 10, 2.50)  # the position is at its limit
    live = order(qty=10)
    assert risk.check_amend(live, 5, 251, 2.50, NOW) is None  # smaller: adds no risk
    d = risk.check_amend(live, 12, 251, 2.50, NOW)  # 2 more contracts would make the position 12
    assert d is not None and d.reason == Reason.POSITION_LIMIT and d.values == {"position_after": 12, "limit": 10}
    same = risk.check(order(qty=12, price=251), 2.50, NOW, amend_of=live)  # the Order-shaped form agrees
    assert same is not None and (same.reason, same.values) == (d.reason, d.values)
    d = risk.check_amend(live, 10, 250.5, 2.50, NOW)  # type: ignore[arg-type]
    assert d is not None and d.reason == Reason.BAD_TICK and d.values == {"price_ticks": 250.5, "tick": 0.01}
    d = risk.check_amend(live, 10, 900, 2.50, NOW)
    assert d is not None and d.reason == Reason.PRICE_BAND and d.values["price"] == 9.0
    assert d.values["price_ticks"] == 900
    assert live.qty == 10 and live.price_ticks == 250  # checking never changes the live order


def test_lot_unknown_instrument_and_missing_reference() -> None:
    risk = engine()
    assert denied(risk, order(3, qty=10, price=400), 20.0) is None
    assert denied(risk, order(3, qty=15, price=400), 20.0) == Reason.BAD_LOT
    assert denied(risk, order(99)) == Reason.UNKNOWN_INSTRUMENT
    assert denied(risk, order(price=None, ord_type=OrderType.MARKET), None) == Reason.NO_REFERENCE_PRICE
    assert denied(risk, order(price=None, ord_type=OrderType.MARKET), 2.50) is None


def test_underlying_position_limit_counts_every_instrument_of_the_underlying() -> None:
    risk = engine(max_underlying_position=50, max_position=1000)
    hold(risk, 1, 40, 100.0)
    assert denied(risk, order(qty=10)) is None
    assert denied(risk, order(qty=11)) == Reason.UNDERLYING_POSITION_LIMIT


def test_order_rate_limit_refills_with_time() -> None:
    risk = engine(max_orders_per_s=3)
    assert [denied(risk, order()) for _ in range(4)] == [None, None, None, Reason.ORDER_RATE]
    assert risk.check(order(), 2.50, NOW + 10**9) is None


def test_cash_and_margin() -> None:
    risk = engine(cash=2_000.0)
    assert denied(risk, order(qty=8)) is None  # 8 x 2.50 x 100 = 2,000
    assert denied(risk, order(qty=9)) == Reason.INSUFFICIENT_MARGIN
    # selling short posts margin on the underlying notional (20% x 100 x 100 per contract, less premium)
    assert denied(risk, order(side=Side.SELL, qty=1)) is None
    assert denied(risk, order(side=Side.SELL, qty=2)) == Reason.INSUFFICIENT_MARGIN


def test_reduce_only_and_reducing_state() -> None:
    risk = engine()
    hold(risk, 2, 10, 2.50)
    assert denied(risk, order(qty=1, reduce_only=True)) == Reason.REDUCE_ONLY
    assert denied(risk, order(side=Side.SELL, qty=5, reduce_only=True)) is None
    risk.set_state(TradingState.REDUCING)
    assert denied(risk, order(qty=1)) == Reason.REDUCING_ONLY
    assert denied(risk, order(side=Side.SELL, qty=10)) is None
    risk.set_state(TradingState.HALTED)
    assert denied(risk, order(side=Side.SELL, qty=10)) == Reason.HALTED


def test_kill_switch_blocks_until_reset_and_calls_back() -> None:
    calls: list[str] = []
    risk = RiskEngine(RiskSettings(), book(), on_kill=calls.append)
    risk.kill("test")
    assert calls == ["test"] and risk.state == TradingState.HALTED
    assert denied(risk, order()) == Reason.KILL_SWITCH
    with pytest.raises(ConfigError):
        risk.set_state(TradingState.ACTIVE)
    risk.reset_kill()
    assert risk.state == TradingState.ACTIVE and denied(risk, order()) is None


def test_kill_switch_gauge_follows_the_switch() -> None:
    risk = RiskEngine(RiskSettings(), book())
    assert sample_value("greekfire_trading_kill_switch") == 0
    risk.kill("test")
    assert sample_value("greekfire_trading_kill_switch") == 1
    risk.reset_kill()
    assert sample_value("greekfire_trading_kill_switch") == 0


def test_limits_change_at_run_time_and_bad_values_name_the_field() -> None:
    risk = engine()
    assert denied(risk, order(qty=30)) is None
    risk.set_limits(max_order_qty=20)
    assert denied(risk, order(qty=30)) == Reason.MAX_QTY
    with pytest.raises(ConfigError, match="trading.risk.max_order_qty"):
        risk.set_limits(max_order_qty=-1)
    with pytest.raises(ConfigError, match="trading.risk.no_such"):
        risk.set_limits(no_such=1)


def test_var_limit_denies_a_risk_increasing_order() -> None:
    risk = engine(var_limit=500.0)
    assert denied(risk, order(1, qty=10, price=10000), 100.0) is None  # 1-day 99% VaR about 30
    d = risk.check(order(1, qty=400, price=10000), 100.0, NOW)  # about 2.33 x 1.26% x 40,000 = 1,170
    assert risk.var_available, "greekfire.quant.parametric_var is required"
    assert d is not None and d.reason == Reason.VAR_LIMIT
    assert d.values["var_after"] == pytest.approx(2.3263 * 0.20 / 252**0.5 * 40_000, rel=0.01)
    # a risk-reducing order passes even when the book is over the limit
    hold(risk, 1, 400, 100.0)
    assert risk.var > 500.0 and denied(risk, order(1, Side.SELL, 100, 10000), 100.0) is None


def test_monte_carlo_var_of_the_book_is_close_to_the_parametric_one() -> None:
    risk = engine(var_mc_paths=20_000)
    hold(risk, 1, 400, 100.0)
    hold(risk, 2, -10, 2.50)
    mc = risk.compute_mc_var()
    assert risk.var_available, "greekfire.quant.mc_var is required"
    assert mc > 0 and mc == pytest.approx(risk.var, rel=0.15)
    risk.set_limits(var_limit=mc / 2)
    assert [b.reason for b in risk.continuous()] == [Reason.MC_VAR] and risk.state == TradingState.REDUCING


def test_continuous_stop_loss_names_the_position() -> None:
    risk = engine(stop_loss=1_000.0)
    hold(risk, 2, 10, 2.50)
    risk.portfolio.mark(2, 1.40)  # 10 x 100 x -1.10 = -1,100
    breaches = risk.continuous()
    assert [(b.reason, b.instrument_id, b.action) for b in breaches] == [(Reason.STOP_LOSS, 2, "close_position")]


def test_daily_loss_reduces_then_halts_and_trips_the_kill_switch() -> None:
    killed: list[str] = []
    risk = RiskEngine(RiskSettings(daily_loss_limit=1_000.0, stop_loss=1e9, max_drawdown=1e9), book(), on_kill=killed.append)
    hold(risk, 2, 10, 2.50)
    risk.portfolio.mark(2, 1.60)  # -900: beyond 80% of the limit
    assert [b.reason for b in risk.continuous()] == [Reason.DAILY_LOSS]
    assert risk.state == TradingState.REDUCING and not risk.killed
    risk.portfolio.mark(2, 1.40)  # -1,100
    risk.continuous()
    assert risk.killed and risk.state == TradingState.HALTED and killed


def test_drawdown_from_the_peak_halts_without_kill_when_configured() -> None:
    risk = engine(max_drawdown=500.0, daily_loss_limit=1e9, stop_loss=1e9, kill_on_breach=False)
    hold(risk, 2, 10, 2.50)
    risk.portfolio.mark(2, 3.50)  # +1,000: new peak
    assert risk.continuous() == []
    risk.portfolio.mark(2, 2.90)  # 600 below the peak
    assert [b.reason for b in risk.continuous()] == [Reason.DRAWDOWN]
    assert risk.state == TradingState.HALTED and not risk.killed
    assert sample_value("greekfire_trading_drawdown") == pytest.approx(600.0)
    assert sample_value("greekfire_trading_drawdown_limit") == 500.0


def test_mass_amend_checks_agree_with_one_by_one_checks_on_every_outcome() -> None:
    """check_amends (the mass-quote fast path) gives each amend the verdict check_amend gives it, in order,
    token for token: re-prices that pass, and every way one can fail (tick, band, notional, lot, max qty,
    size that grows into a limit, a non-limit order, the order rate running out)."""
    import random

    rng = random.Random(11)
    cases: list[tuple[Order, int, int]] = []
    for k in range(400):
        iid = rng.choice((1, 2, 3))
        ref = {1: 10000, 2: 250, 3: 400}[iid]  # the reference, in ticks (0.01, 0.01, 0.05)
        live = Order(f"c{k}", iid, rng.choice((Side.BUY, Side.SELL)), rng.choice((10, 20, 40)), ref,
                     strategy_id=rng.choice(("s", "t")),
                     ord_type=OrderType.STOP_LIMIT if rng.random() < 0.03 else OrderType.LIMIT)
        qty = rng.choice((live.qty, live.qty, live.qty - 10, live.qty + 30, 0, 15, 20_000))
        price = rng.choice((
            ref + rng.randint(-5, 5), ref + 0.5, ref * 3 // 2, ref // 2, float("nan"), -1,
            ref + rng.randint(-400, 400),
        ))
        cases.append((live, qty, price))  # type: ignore[arg-type]  # a float is a limit off the tick grid
    limits = {"max_orders_per_s": 100, "max_notional": 6_000.0, "max_position": 25}
    one, many = engine(**limits), engine(**limits)
    refs = {1: 100.0, 2: 2.50}  # no reference price for 3: no band, and still a rate token each
    expected = [one.check_amend(o, q, p, refs.get(o.instrument_id), NOW) for o, q, p in cases]
    full = many._check
    full_checks = []

    def counted(*args: object) -> object:
        full_checks.append(args)
        return full(*args)  # type: ignore[arg-type]

    many._check = counted  # type: ignore[method-assign]
    got = many.check_amends(cases, refs, NOW)
    assert [None if d is None else (d.reason, d.values) for d in got] == [
        None if d is None else (d.reason, d.values) for d in expected
    ]
    reasons = {d.reason for d in expected if d is not None}
    # the cases reach the fast path's every exit, not only its pass
    assert {Reason.BAD_TICK, Reason.PRICE_BAND, Reason.MAX_NOTIONAL, Reason.BAD_QTY, Reason.BAD_LOT, Reason.MAX_QTY,
            Reason.POSITION_LIMIT, Reason.ORDER_RATE} <= reasons
    passed = sum(d is None for d in expected)
    assert passed >= 20 and one.denials == many.denials
    assert len(full_checks) <= len(cases) - passed + 10  # the re-prices that pass never reach the full check


def test_mass_amend_checks_follow_the_trading_state_and_the_kill_switch() -> None:
    risk = engine()
    live = order(qty=10, price=250)
    refs = {2: 2.50}
    risk.set_state(TradingState.REDUCING)
    assert risk.check_amends([(live, 10, 251), (live, 12, 251)], refs, NOW)[0] is None  # a re-price adds nothing
    assert risk.check_amends([(live, 12, 251)], refs, NOW)[0].reason == Reason.REDUCING_ONLY  # type: ignore[union-attr]
    risk.kill("test")
    d = risk.check_amends([(live, 10, 251)], refs, NOW)[0]
    assert d is not None and d.reason == Reason.KILL_SWITCH
