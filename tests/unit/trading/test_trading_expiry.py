"""Option expiry on the engine: out of the money an option expires, in the money it is exercised (long) or
assigned (short) with shares and cash moving at the strike; a short deep-ITM American option is assigned early
when the rules say (a put without time value, a call before an ex-dividend worth more than its time value);
every settlement reaches strategies on the ``settlements`` topic and the audit log; prints count as volume."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from one_venue import T0, one_venue_engine

from greekfire.trading.engine import TradingEngine
from greekfire.trading.expiry import NS_PER_DAY, SettlementRules
from greekfire.trading.model import Fill, Instrument, Side, TradeTick, option
from greekfire.trading.strategy import Settlement, SettlementKind, Strategy


class Listener(Strategy):
    name = "listener"

    def __init__(self) -> None:
        super().__init__()
        self.got: list[Settlement] = []

    def on_settlement(self, settlement: Settlement) -> None:
        self.got.append(settlement)


def _by(eng: TradingEngine, strike: float, right: str) -> Instrument:
    return next(i for i in eng.instruments.values()
                if i.is_option and i.strike == strike and (i.right > 0) == (right == "C"))


def _hold(eng: TradingEngine, inst: Instrument, qty: int, price: float) -> None:
    side = Side.BUY if qty > 0 else Side.SELL
    eng.portfolio.apply_fill(Fill(f"f{inst.instrument_id}", "c", inst.instrument_id, side, abs(qty), price))


def _setup(american: bool = False) -> tuple[TradingEngine, Listener]:
    s = Listener()
    eng, _, _ = one_venue_engine(s, start=True)
    if american:
        eng.expiry.rules = SettlementRules(early=True)
    return eng, s


@pytest.mark.parametrize(
    ("strike", "right", "qty", "spot", "kind", "shares"),
    [
        (105, "P", -2, 100.0, SettlementKind.ASSIGNED, 200),   # short put in the money: we buy 200 at 105
        (95, "C", -1, 100.0, SettlementKind.ASSIGNED, -100),   # short call in the money: called away at 95
        (95, "C", 1, 100.0, SettlementKind.EXERCISED, 100),    # long call exercised: we buy at 95
        (105, "P", 3, 100.0, SettlementKind.EXERCISED, -300),  # long put exercised: we sell at 105
        (95, "P", -2, 100.0, SettlementKind.EXPIRED, 0),       # out of the money: nothing but the option moves
        (110, "C", -1, 100.0, SettlementKind.EXPIRED, 0),
    ],
)
def test_expiry_settles_by_spot_with_shares_and_cash_at_the_strike(
    strike: float, right: str, qty: int, spot: float, kind: SettlementKind, shares: int,
) -> None:
    eng, listener = _setup()
    inst = _by(eng, strike, right)
    _hold(eng, inst, qty, 3.00)
    eng.portfolio.mark(1, spot)
    cash0, shares0 = eng.portfolio.cash, eng.portfolio.net.get(1, 0)
    assert eng.expiry.settle_due(inst.expiry_ns - 1) == []  # not yet (no early case here)
    out = eng.expiry.settle_due(inst.expiry_ns)
    assert [s.kind for s in out] == [kind] and listener.got == out
    s = out[0]
    assert (s.instrument_id, s.qty, s.underlying_qty, s.price, s.early) == (inst.instrument_id, qty, shares, strike, False)
    assert eng.portfolio.net[inst.instrument_id] == 0
    assert eng.portfolio.net.get(1, 0) - shares0 == shares
    assert eng.portfolio.cash - cash0 == pytest.approx(-shares * strike) == pytest.approx(s.cash)
    # the option's premium is realized: a short keeps it, a long loses it
    assert eng.portfolio.positions[inst.instrument_id].realized_pnl == pytest.approx(-qty * 3.00 * 100)
    entries = eng.audit.entries(kind="settlement")
    assert len(entries) == 1 and entries[0][4]["kind"] == kind.value and entries[0][4]["underlying_qty"] == shares
    assert eng.expiry.settle_due(inst.expiry_ns + NS_PER_DAY) == []  # settled once


def test_assigned_shares_carry_the_strike_as_cost() -> None:
    eng, _ = _setup()
    put = _by(eng, 105, "P")
    _hold(eng, put, -1, 2.00)
    eng.portfolio.mark(1, 101.0)
    eng.expiry.settle_due(put.expiry_ns)
    pos = eng.portfolio.positions[1]
    assert (pos.qty, pos.avg_cost) == (100, 105.0)
    # equity: premium kept (+200) and the shares marked at 101 against 105 paid (-400)
    assert eng.portfolio.equity() == pytest.approx(eng.portfolio.starting_cash + 200 - 400)


def test_a_deep_itm_put_without_time_value_is_assigned_early() -> None:
    eng, listener = _setup(american=True)
    put = _by(eng, 110, "P")
    _hold(eng, put, -1, 4.00)
    eng.portfolio.mark(1, 100.0)
    now = put.expiry_ns - 5 * NS_PER_DAY
    eng.portfolio.mark(put.instrument_id, 10.5)  # time value 0.50: kept
    assert eng.expiry.settle_due(now) == []
    eng.portfolio.mark(put.instrument_id, 10.0)  # time value gone
    (s,) = eng.expiry.settle_due(now)
    assert s.kind == SettlementKind.ASSIGNED and s.early and s.underlying_qty == 100 and "time value" in s.reason
    assert listener.got == [s] and eng.portfolio.net[1] == 100


def test_a_long_option_is_never_assigned_early() -> None:
    eng, _ = _setup(american=True)
    put = _by(eng, 110, "P")
    _hold(eng, put, 1, 4.00)
    eng.portfolio.mark(1, 100.0)
    eng.portfolio.mark(put.instrument_id, 10.0)
    assert eng.expiry.settle_due(put.expiry_ns - NS_PER_DAY) == []


def test_a_deep_itm_call_is_assigned_before_an_ex_dividend_worth_more_than_its_time_value() -> None:
    eng, _ = _setup(american=True)
    call = _by(eng, 90, "C")
    _hold(eng, call, -2, 8.00)
    eng.portfolio.mark(1, 100.0)
    eng.portfolio.mark(call.instrument_id, 10.20)  # time value 0.20
    now = call.expiry_ns - 10 * NS_PER_DAY
    eng.expiry.dividends["GFX"] = [(now + NS_PER_DAY // 2, 0.10)]
    assert eng.expiry.settle_due(now) == []  # the dividend is worth less than the time value
    eng.expiry.dividends["GFX"] = [(now + 5 * NS_PER_DAY, 0.50)]
    assert eng.expiry.settle_due(now) == []  # ex-date too far
    eng.expiry.dividends["GFX"] = [(now + NS_PER_DAY // 2, 0.50)]
    (s,) = eng.expiry.settle_due(now)
    day = datetime.fromtimestamp((now + NS_PER_DAY // 2) / 1e9, UTC).date().isoformat()
    assert s.early and s.underlying_qty == -200 and f"ex-dividend {day}" in s.reason


def test_by_default_options_settle_at_expiry_only() -> None:
    eng, _ = _setup()  # an instrument does not say it is American: no early assignment unless asked
    put = _by(eng, 110, "P")
    _hold(eng, put, -1, 4.00)
    eng.portfolio.mark(1, 100.0)
    eng.portfolio.mark(put.instrument_id, 9.0)  # below intrinsic
    assert eng.expiry.settle_due(put.expiry_ns - NS_PER_DAY) == []
    assert [s.kind for s in eng.expiry.settle_due(put.expiry_ns)] == [SettlementKind.ASSIGNED]


def test_rules_decide_from_their_inputs() -> None:
    rules = SettlementRules(put_time_value=0.05, min_moneyness=0.05)
    put = option(9, "X", 100.0, datetime.fromtimestamp(T0 / 1e9 + 30 * 86400, UTC), "P")
    assert rules.early_reason(put, 97.0, 3.0, T0) is None  # 3% in the money: not deep enough
    assert rules.early_reason(put, 90.0, 10.04, T0) is not None
    assert rules.early_reason(put, 90.0, 10.06, T0) is None
    assert rules.early_reason(put, 90.0, None, T0) is None  # no mark, nothing decided
    assert SettlementRules(early=False).early_reason(put, 50.0, 50.0, T0) is None
    assert rules.early_reason(put, 110.0, 0.01, T0) is None  # out of the money


def test_an_option_without_its_underlying_is_cash_settled() -> None:
    eng, _ = _setup()
    idx = option(99, "IDX", 4000.0, datetime.fromtimestamp(T0 / 1e9 + 86400, UTC), "C", multiplier=100.0)
    eng.add_instrument(idx)
    _hold(eng, idx, 1, 20.0)
    eng.portfolio.spots["IDX"] = 4050.0
    cash0 = eng.portfolio.cash
    (s,) = eng.expiry.settle_due(idx.expiry_ns)
    assert s.kind == SettlementKind.EXERCISED and s.underlying_qty == 0
    assert eng.portfolio.cash - cash0 == pytest.approx(50.0 * 100) == pytest.approx(s.cash)


def test_prints_count_as_volume_of_the_day() -> None:
    eng, _ = _setup()
    eng.process([TradeTick(2, 2.5, 3, Side.BUY, T0), TradeTick(2, 2.5, 4, Side.SELL, T0)])
    assert eng.instrument_stats[2].volume == 7
    eng.process([TradeTick(2, 2.5, 1, Side.BUY, T0 + NS_PER_DAY)])  # a new day starts from zero
    assert eng.instrument_stats[2].volume == 1
