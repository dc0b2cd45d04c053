"""The parts of the wheel's paper runs: exchange sessions and weekly expiries from the XNYS calendar (holidays
and early closes included), stable option ids so a restarted run lists the same contracts, and the runner's
schedule: a data gap is retried with doubling back-off inside the session, then left to the next session; an
order denied by risk is logged with its reason and retried."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from greekfire.core.clock import ManualClock
from greekfire.core.errors import ConfigError, DataError
from greekfire.core.settings import load_settings
from greekfire.strategies.wheel.calendar import Sessions
from greekfire.strategies.wheel.config import WheelConfig
from greekfire.strategies.wheel.db import WheelDB
from greekfire.strategies.wheel.paper import NS, WheelRunner, model_open_interest, strike_grid, wheel_chain
from greekfire.strategies.wheel.strategy import WheelStrategy
from greekfire.trading import build_engine
from greekfire.trading.build import chain_id, chain_key, option_chain
from greekfire.trading.store import SnapshotStore
from greekfire.trading.strategy import OrderStatus, Side


def ns(text: str) -> int:
    return int(pd.Timestamp(text).value)


def test_weekly_expiries_are_the_last_session_of_each_week_at_its_close() -> None:
    s = Sessions("XNYS")
    got = s.weekly_expiries(ns("2026-03-23T12:00Z"), 3)
    # Good Friday 2026-04-03 is a holiday: that week expires on Thursday; 16:00 New York is 20:00 UTC in April
    assert [e.isoformat() for e in got] == ["2026-03-27T20:00:00+00:00", "2026-04-02T20:00:00+00:00",
                                            "2026-04-10T20:00:00+00:00"]
    xmas = s.weekly_expiries(ns("2026-12-21T12:00Z"), 2)
    # Christmas week: Thursday the 24th closes early (13:00 New York); New Year's day: Thursday the 31st
    assert [e.isoformat() for e in xmas] == ["2026-12-24T18:00:00+00:00", "2026-12-31T21:00:00+00:00"]


def test_sessions_open_and_close_from_the_calendar() -> None:
    s = Sessions("XNYS")
    label, o, c = s.current_or_next(ns("2026-12-05T15:00Z"))  # a Saturday: Monday's session
    assert str(label.date()) == "2026-12-07" and o == ns("2026-12-07T14:30Z") and c == ns("2026-12-07T21:00Z")
    assert s.current_or_next(ns("2026-12-07T16:00Z"))[1] == o  # under way: the same session
    assert s.next_open(ns("2026-12-07T16:00Z")) == ns("2026-12-08T14:30Z")
    with pytest.raises(ConfigError, match="calendar='NOPE'"):
        Sessions("NOPE")


def test_option_ids_are_stable_and_unique() -> None:
    exp = [datetime(2026, 12, 11, 21, tzinfo=UTC), datetime(2026, 12, 18, 21, tzinfo=UTC)]
    a = option_chain("GFX", exp, [95.0, 97.5, 100.0])
    b = option_chain("GFX", reversed(exp), [100.0, 95.0, 97.5])
    assert [(i.instrument_id, i.symbol) for i in a] == [(i.instrument_id, i.symbol) for i in b]
    ids = [i.instrument_id for i in a]
    assert len(ids) == len(set(ids)) == 1 + 2 * 3 * 2 and ids[0] == 1
    assert max(ids) < 2**31  # fits an INTEGER column
    assert chain_id(exp[0], 95.0, "P") != chain_id(exp[0], 95.0, "C") != chain_id(exp[1], 95.0, "C")
    with pytest.raises(DataError, match="strike=95.3"):
        chain_id(exp[0], 95.3, "P")


def test_a_restarted_chain_lists_the_options_still_held() -> None:
    s = Sessions("XNYS")
    now = ns("2026-12-07T14:30Z")
    chain = wheel_chain("GFX", 100.0, s, now, 2)
    assert {i.expiry_ns for i in chain if i.is_option} == {ns("2026-12-11T21:00Z"), ns("2026-12-18T21:00Z")}
    assert sorted({i.strike for i in chain if i.is_option}) == strike_grid(100.0) == [80, 85, 90, 95, 100, 105, 110, 115, 120]
    held = next(i for i in chain if i.is_option and i.strike == 80 and i.right < 0)
    gone = next(i for i in chain if i.is_option and i.strike == 120 and i.right > 0 and i.expiry_ns < ns("2026-12-12T00:00Z"))
    # a week later, the spot moved: the option still held and the expired one the saved state refers to are
    # listed again, the same contracts under the same ids
    later = wheel_chain("GFX", 130.0, s, ns("2026-12-14T14:30Z"), 2, [held.instrument_id, gone.instrument_id, 1])
    for old in (held, gone):
        again = next(i for i in later if i.instrument_id == old.instrument_id)
        assert again == old
    assert chain_key(held.instrument_id) == (date(2026, 12, 11), 80.0, "P") and chain_key(1) is None


def test_the_synthetic_chain_has_open_interest_peaking_at_the_money() -> None:
    chain = wheel_chain("GFX", 100.0, Sessions("XNYS"), ns("2026-12-07T14:30Z"), 1)
    oi = model_open_interest(chain, 100.0)
    by_strike = {chain_key(i)[1]: s.open_interest for i, s in oi.items() if chain_key(i)[2] == "P"}
    assert set(oi) == {i.instrument_id for i in chain if i.is_option}
    assert by_strike[100.0] == 5000 and by_strike[90.0] < by_strike[95.0] < 5000 and by_strike[80.0] >= 100


@pytest.fixture
def runner(tmp_path: Path) -> tuple[WheelRunner, ManualClock]:
    sessions = Sessions("XNYS")
    start = ns("2026-12-07T14:30Z")
    clock = ManualClock(start)
    chain = wheel_chain("GFX", 100.0, sessions, start, 2)
    db = WheelDB(f"sqlite:///{tmp_path / 'w.db'}")
    db.ensure_account(1e6)
    journal = db.journal("r")
    strategy = WheelStrategy(WheelConfig(symbols={"GFX": 1.0}), journal)
    eng = build_engine(load_settings(), instruments=chain, venues=[], strategies=[strategy], store=False,
                       clock_ns=clock.now_ns)
    r = WheelRunner(eng, strategy, db, journal, sessions, "r", cycle_offset_s=1800, backoff_s=600)
    r.schedule(start)
    return r, clock


def test_a_data_gap_is_retried_with_back_off_then_left_to_the_next_session(runner: tuple[WheelRunner, ManualClock]) -> None:
    r, _ = runner
    first = ns("2026-12-07T15:00Z")
    assert r.next_cycle == first and r.cycle_close == r.close_at == ns("2026-12-07T21:00Z")
    r.cycle(first)  # no quote has come: nothing is decided
    assert r.next_cycle == first + 600 * NS and "no spot of GFX" in r.retries[-1]
    r.cycle(r.next_cycle)
    assert r.next_cycle == first + 1800 * NS  # 10, then 20 market minutes
    r.cycle(ns("2026-12-07T20:55Z"))
    assert r.next_cycle == ns("2026-12-08T15:00Z") and "next session decides" in r.retries[-1]
    assert r.cycles == 0
    assert r.close_at == ns("2026-12-07T21:00Z")  # today's close is still processed: the day's snapshot


def test_each_session_close_snapshots_the_day_once(runner: tuple[WheelRunner, ManualClock], tmp_path: Path) -> None:
    r, clock = runner
    r.engine.store = SnapshotStore(f"sqlite:///{tmp_path / 'w.db'}", "wheel-paper")
    for t in ("2026-12-07T21:00Z", "2026-12-07T21:01Z", "2026-12-08T21:00Z", "2026-12-09T13:00Z"):
        clock.advance(ns(t) - clock.now_ns())
        r.on_poll(ns(t))
    assert [d["date"] for d in r.db.equity()] == ["2026-12-07", "2026-12-08"]
    assert r.close_at == ns("2026-12-09T21:00Z") and r.errors == 0


def test_a_denied_order_is_logged_with_its_reason_and_retried(runner: tuple[WheelRunner, ManualClock]) -> None:
    r, clock = runner
    now = ns("2026-12-07T15:00Z")
    clock.advance(now - clock.now_ns())
    r.schedule(r.cycle_close + 1)  # today's cycle has run: the next one is tomorrow's
    put = next(i for i in r.engine.instruments.values() if i.is_option)
    from greekfire.core.metrics import sample_value

    before = sample_value("greekfire_wheel_denials_total", {"reason": "MAX_QTY"}) or 0.0
    (o,) = r.strategy.ctx.submit(put.instrument_id, Side.SELL, 1_000_000, 100)
    assert o.status == OrderStatus.DENIED
    # counted under its risk reason code (greekfire_wheel_denials_total{reason})
    assert o.reason == "MAX_QTY" and sample_value("greekfire_wheel_denials_total", {"reason": "MAX_QTY"}) == before + 1
    assert r.rejections and f"({put.symbol}) denied: {o.reason}" in r.rejections[-1]
    assert r.next_cycle == now + 600 * NS


def test_each_session_close_keeps_the_weekly_expiries_listed(tmp_path: Path) -> None:
    """Two weeks listed at the start; after the first Friday's close the third week's expiry is listed on the
    engine, the simulated venue (a quoted book) and the synthetic market (a fair value), with strikes around
    the spot of that day, stable ids and open interest; a second close lists nothing more that week."""
    from greekfire.trading.synthetic import SyntheticMarket

    sessions = Sessions("XNYS")
    start = ns("2026-12-07T14:30Z")
    clock = ManualClock(start)
    chain = wheel_chain("GFX", 100.0, sessions, start, 2)
    market = SyntheticMarket(chain, spot=100.0, now_ns=start)
    db = WheelDB(f"sqlite:///{tmp_path / 'w.db'}")
    db.ensure_account(1e6)
    journal = db.journal("r")
    strategy = WheelStrategy(WheelConfig(symbols={"GFX": 1.0}), journal)
    eng = build_engine(load_settings(), instruments=chain, strategies=[strategy], store=False, clock_ns=clock.now_ns,
                       market=market)
    eng.store = SnapshotStore(f"sqlite:///{tmp_path / 'w.db'}", "wheel-paper")
    r = WheelRunner(eng, strategy, db, journal, sessions, "r", weeks=2)
    r.schedule(start)
    expiries = lambda: sorted({i.expiry_ns for i in eng.instruments.values() if i.is_option})  # noqa: E731
    assert expiries() == [ns("2026-12-11T21:00Z"), ns("2026-12-18T21:00Z")]
    assert r.list_expiries(start) == []  # both weeks are listed already
    market.set_spot(131.0, start)  # the spot moved before the Friday close
    friday_close = ns("2026-12-11T21:00Z")
    for day in ("2026-12-07", "2026-12-08", "2026-12-09", "2026-12-10"):
        clock.advance(ns(f"{day}T21:00Z") - clock.now_ns())
        r.on_poll(clock.now_ns())
    assert len(expiries()) == 2 and r.listed == []  # nothing expired yet: nothing to list
    clock.advance(friday_close - clock.now_ns())
    r.on_poll(friday_close)
    assert r.errors == 0 and r.listed == ["2026-12-24"]  # Christmas Day is a holiday: Thursday the 24th, 18:00 UTC
    new = [i for i in eng.instruments.values() if i.is_option and i.expiry_ns == ns("2026-12-24T18:00Z")]
    assert sorted({i.strike for i in new}) == strike_grid(131.0)
    assert {i.instrument_id for i in new} == {i.instrument_id for i in option_chain("GFX", [datetime(2026, 12, 24, 18, tzinfo=UTC)],
                                                                                    strike_grid(131.0)) if i.is_option}
    venue = next(iter(eng.venues.values()))
    atm = next(i for i in new if i.strike == 130.0 and i.right < 0)
    assert market.fair_value(atm.instrument_id) > 0
    assert venue.books[atm.instrument_id].best_bid() is not None and venue.books[atm.instrument_id].best_ask() is not None
    assert eng.instrument_stats[atm.instrument_id] == model_open_interest([atm], 131.0)[atm.instrument_id]
    assert strategy.ctx.instruments[atm.instrument_id] == atm  # the strategy sees it
    clock.advance(ns("2026-12-14T21:00Z") - clock.now_ns())
    r.on_poll(clock.now_ns())
    assert r.listed == ["2026-12-24"]  # Monday: the next two weeks' expiries are listed already
