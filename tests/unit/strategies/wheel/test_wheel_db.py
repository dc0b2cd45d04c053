"""The wheel's position database on SQLite and on the PostgreSQL server on loopback: opening applies the
migrations (again: nothing), the journal writes and reads back (transitions and states, FIFO share lots with
their realized P&L, premium net of fees, snapshots, option legs), trades are stored once by id, and the read
side answers in JSON-ready dicts. Each test works in its own account, so reruns and parallel runs on one
PostgreSQL database do not collide."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import delete, inspect

from greekfire.core.errors import UnavailableError
from greekfire.strategies.wheel import db as wdb
from greekfire.strategies.wheel.db import WheelDB
from greekfire.strategies.wheel.state import Transition, WheelState

TABLES = {"wheel_accounts", "wheel_runs", "wheel_positions", "wheel_lots", "wheel_trades", "wheel_option_legs",
          "wheel_transitions", "wheel_snapshots"}


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'wheel.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db(url: str) -> Iterator[WheelDB]:
    d = WheelDB(url, account=f"t{uuid.uuid4().hex[:12]}")
    d.ensure_account(100_000.0)
    yield d
    with d.db.begin() as conn:  # this test's rows only
        for t in (wdb.snapshots, wdb.transitions, wdb.legs, wdb.trades, wdb.lots, wdb.positions, wdb.runs, wdb.accounts):
            conn.execute(delete(t).where(t.c.account == d.account))
    d.close()


def test_opening_applies_the_migrations_once(db: WheelDB) -> None:
    assert set(inspect(db.db).get_table_names()) >= TABLES
    assert db.revision() == "0001"
    again = WheelDB(db.url, account=db.account)  # a second open: already at head, nothing changes
    assert again.revision() == "0001" and again.ensure_account(1.0)["starting_cash"] == 100_000.0
    again.close()


def test_journal_transitions_and_states_round_trip(db: WheelDB) -> None:
    db.start_run("r1", "paper", {"symbols": {"SPY": 1.0}})
    j = db.journal("r1")
    j.transition(Transition("SPY", WheelState.CASH, WheelState.SHORT_PUT, "open", "sold SPY 450P at 3.10", 10, {"k": 1}))
    j.transition(Transition("SPY", WheelState.SHORT_PUT, WheelState.SHARES, "assigned", "spot 440 < 450", 20, {}))
    j.transition(Transition("QQQ", WheelState.CASH, WheelState.SHORT_PUT, "open", "sold", 15, {}))
    fresh = WheelDB(db.url, account=db.account).journal("r2")  # read back through a new connection
    assert fresh.states() == {"SPY": WheelState.SHARES, "QQQ": WheelState.SHORT_PUT}
    last = db.transitions(limit=2)
    assert [t["event"] for t in last] == ["open", "assigned"]  # newest first
    assert db.transitions()[-1]["data"] == {"k": 1} and db.transitions()[-1]["reason"] == "sold SPY 450P at 3.10"
    assert [s["state"] for s in db.states()] == ["SHORT_PUT", "SHARES"]
    assert db.runs()[0]["run_id"] == "r1" and db.runs()[0]["status"] == "running"
    db.end_run("r1", "finished", {"fills": 3})
    assert db.runs()[0]["status"] == "finished" and db.runs()[0]["summary"] == {"fills": 3}


def test_lots_are_taken_first_in_first_out_with_their_realized_pnl(db: WheelDB) -> None:
    j = db.journal("r1")
    j.add_lot("SPY", 100, 450.0, 1)
    j.add_lot("SPY", 200, 440.0, 2)
    assert j.lots("SPY") == [(100, 450.0), (200, 440.0)]
    j.add_lot("SPY", -150, 460.0, 3)  # called away at 460: all of the first lot, half of the second
    assert j.lots("SPY") == [(150, 440.0)]
    closed = db.lots("SPY", open_only=False)
    assert [(r["qty_open"], r["realized_pnl"]) for r in closed] == [(0, 1000.0), (150, 1000.0)]
    assert closed[0]["closed_ns"] == 3 and closed[1]["closed_ns"] is None
    assert j.lots("QQQ") == []


def test_premium_is_net_of_buybacks_and_fees_and_trades_are_stored_once(db: WheelDB) -> None:
    j = db.journal("r1")
    j.trade("r1", 1, "SPY", "SPY 20250117 450P", -1, 2, 3.10, 1.30, "open")   # +620 - 1.30
    j.trade("r1", 2, "SPY", "SPY 20250117 450P", 1, 2, 0.50, 1.30, "close")  # -100 - 1.30
    j.trade("r1", 3, "QQQ", "QQQ 20250117 380P", -1, 1, 2.00, 0.65, "open")  # +200 - 0.65
    j.trade("r1", 4, "SPY", "SPY", 1, 100, 450.0, 0.0, "assignment")         # shares: no premium
    assert j.premium("SPY") == pytest.approx(620 - 100 - 2.60)
    assert j.premium() == pytest.approx(620 - 100 - 2.60 + 200 - 0.65)
    fill = {"trade_id": "SIM1-5-17-T", "ts_ns": 5, "symbol": "SPY", "instrument": "SPY 20250117 450P",
            "instrument_id": 7, "side": -1, "qty": 1, "price": 3.0, "fee": 0.5, "kind": "fill"}
    assert db.record_trades("r1", [fill, fill], "fill") == 1  # the same id twice in one batch
    assert db.record_trades("r2", [fill], "fill") == 0  # and again after a restart
    assert [t["trade_id"] for t in db.trades("fill")] == ["SIM1-5-17-T"]
    assert len(db.trades("strategy")) == 4


def test_positions_legs_snapshots_and_performance(db: WheelDB) -> None:
    put = {"instrument_id": 7, "instrument": "SPY 20250117 450P", "symbol": "SPY", "kind": "put", "strike": 450.0,
           "expiry_ns": 99, "multiplier": 100.0, "qty": -2, "avg_cost": 3.0, "realized_pnl": 0.0, "fees": 1.0,
           "mark": 2.0}
    db.set_positions([put], 10)
    (leg,) = db.journal("r1").open_legs("SPY")
    assert (leg["right"], leg["strike"], leg["qty"], leg["premium"], leg["expiry_ns"]) == ("P", 450.0, -2, 3.0, 99)
    (p,) = db.positions()
    assert p["unrealized_pnl"] == pytest.approx((2.0 - 3.0) * -2 * 100) and p["market_value"] == pytest.approx(-400)
    # assigned: the put is gone, 200 shares came at the strike
    db.record_trades("r1", [{"trade_id": "settle:7:100", "ts_ns": 100, "symbol": "SPY", "instrument": put["instrument"],
                             "instrument_id": 7, "side": 1, "qty": 2, "price": 0.0, "fee": 0.0, "kind": "assigned"}],
                     "settlement")
    shares = {**put, "instrument_id": 1, "instrument": "SPY", "kind": "stock", "strike": 0.0, "expiry_ns": 0,
              "multiplier": 1.0, "qty": 200, "avg_cost": 450.0, "realized_pnl": 600.0, "mark": 445.0}
    db.set_positions([shares, {**put, "qty": 0}], 110)
    assert db.journal("r1").open_legs("SPY") == []
    assert [(r["status"], r["closed_ns"]) for r in db.option_legs()] == [("assigned", 110)]
    assert [r["instrument_id"] for r in db.positions()] == [1]
    j = db.journal("r1")
    j.snapshot(date(2025, 1, 16), 101_000.0, 100_000.0, {"SPY": {"shares": 0}})
    j.snapshot(date(2025, 1, 17), 99_000.0, 10_000.0, {"SPY": {"shares": 200}})
    j.snapshot(date(2025, 1, 17), 99_500.0, 10_000.0, {"SPY": {"shares": 200}})  # the same day again: replaced
    assert db.equity() == [{"date": "2025-01-16", "equity": 101_000.0, "cash": 100_000.0},
                           {"date": "2025-01-17", "equity": 99_500.0, "cash": 10_000.0}]
    perf = db.performance()
    assert perf["max_drawdown"] == pytest.approx(99_500 / 101_000 - 1)
    assert perf["total_return"] == pytest.approx(99_500 / 100_000 - 1)
    assert perf["assignments"] == 1 and perf["realized_pnl"] == 600.0 and perf["days"] == 2
    json.dumps([db.positions(), db.states(), db.transitions(), db.equity(), perf, db.runs()])  # JSON-ready


def test_a_schema_newer_than_the_code_is_one_clear_error(tmp_path: Path) -> None:
    d = WheelDB(f"sqlite:///{tmp_path / 'w.db'}")
    with d.db.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {wdb.VERSION_TABLE} SET version_num = '9999'")
    d.close()
    with pytest.raises(UnavailableError, match="schema is not one this version knows"):
        WheelDB(f"sqlite:///{tmp_path / 'w.db'}")


def test_an_unreachable_database_is_one_clear_error() -> None:
    with pytest.raises(UnavailableError, match=r"postgresql\+psycopg://u:\*\*\*@127\.0\.0\.1:1/x.*cannot be opened"):
        WheelDB("postgresql+psycopg://u:secret@127.0.0.1:1/x?connect_timeout=2")
