"""`greekfire wheel run --paper` as a user runs it, on SQLite and on the PostgreSQL server on loopback: killed
(SIGKILL) in the middle of a run, after an option has expired or been assigned, and started again, it resumes from the database with nothing lost and
nothing doubled: every fill the engine stored is a trade of the wheel's database exactly once (by id), the
trades stored before the kill are all still there, the database's positions equal the engine's at the end
and equal the sum of the stored trades (fills, and settlements with the shares they delivered)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conftest import command_env, poll_until

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]


def _rows(url: str, sql: str, **params: object) -> list[tuple]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        eng.dispose()


def _trades(url: str, account: str) -> list[tuple]:
    return _rows(url, "SELECT trade_id, source, instrument_id, side, qty FROM wheel_trades WHERE account = :a",
                 a=account)


def kill_and_resume(url: str, tmp_path: Path, account: str) -> None:
    # five times the default synthetic flow: the wheel's limit orders fill within a few market days, so the
    # first expiry comes sooner (the run waits for it); the test's subject is the restart, not the fill rate
    env = command_env(GREEKFIRE_HOME=str(tmp_path / "home"), GREEKFIRE_TRADING__BACKGROUND_RATE_HZ="1000")
    config = tmp_path / "wheel.yaml"  # one-week options, so a 60-market-day run sees several expiries
    config.write_text("symbols: {SPY: 1.0}\ndte: 5\nmax_dte: 12\n")
    args = ["wheel", "run", "--paper", "--db", url, "--account", account, "--time-scale", "86400", "--json",
            "--config", str(config)]
    first = subprocess.Popen(CLI + args + ["--duration", "150"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        # kill it once an option has been settled (an expired contract the restarted run must list again)
        settled = poll_until(lambda: {"fill", "settlement"} <= {r[1] for r in _trades(url, account)}, timeout_s=150,
                             step_s=0.5, ignore=(Exception,))
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert settled, "the first run stored no fill and settlement"
        time.sleep(2.0)  # a few market days more: orders in flight, fills not yet copied
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    before = {r[0] for r in _trades(url, account)}
    second = subprocess.run(CLI + args + ["--duration", "8"], env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    summary = json.loads(second.stdout)
    wheel = summary["wheel"]

    runs = dict(_rows(url, "SELECT status, COUNT(*) FROM wheel_runs WHERE account = :a GROUP BY status", a=account))
    assert runs == {"interrupted": 1, "finished": 1}
    trades = _trades(url, account)
    ids = [r[0] for r in trades]
    assert len(ids) == len(set(ids))
    assert before <= set(ids), "a trade stored before the kill is gone"
    engine_fills = {r[0] for r in _rows(url, "SELECT fill_id FROM trading_fills WHERE engine_id = :e",
                                       e=f"wheel-{account}")}
    assert engine_fills and {r[0] for r in trades if r[1] == "fill"} == engine_fills
    engine_pos = {int(k): v for k, v in wheel["positions_by_id"].items()}
    db_pos = dict(_rows(url, "SELECT instrument_id, qty FROM wheel_positions WHERE account = :a", a=account))
    assert db_pos == engine_pos
    summed: dict[int, int] = defaultdict(int)
    for _, source, iid, side, qty in trades:
        if source != "strategy":  # the strategy's own notes of its trades are not positions
            summed[iid] += side * qty
    assert {i: q for i, q in summed.items() if q} == engine_pos
    legs = _rows(url, "SELECT instrument_id, qty FROM wheel_option_legs WHERE account = :a AND status = 'open'",
                 a=account)
    assert dict(legs) == {i: q for i, q in engine_pos.items() if i != 1}
    assert wheel["cycles"] >= 1
    # every step is in the database: the state transitions with their reasons, one snapshot per session closed
    reasons = _rows(url, "SELECT reason FROM wheel_transitions WHERE account = :a", a=account)
    assert reasons and all(r[0] for r in reasons)
    days = _rows(url, "SELECT day FROM wheel_snapshots WHERE account = :a", a=account)
    assert len(days) >= 2 and len({d[0] for d in days}) == len(days)


def test_a_killed_sqlite_paper_run_resumes_with_nothing_lost_or_doubled(tmp_path: Path) -> None:
    kill_and_resume(f"sqlite:///{tmp_path / 'wheel.db'}", tmp_path, "paper")


def test_a_killed_postgresql_paper_run_resumes_with_nothing_lost_or_doubled(postgres_url: str, tmp_path: Path) -> None:
    account = f"t{uuid.uuid4().hex[:10]}"
    try:
        kill_and_resume(postgres_url, tmp_path, account)
    finally:
        eng = create_engine(postgres_url)
        with eng.begin() as conn:
            for t in ("wheel_snapshots", "wheel_transitions", "wheel_option_legs", "wheel_trades", "wheel_lots",
                      "wheel_positions", "wheel_runs", "wheel_accounts"):
                conn.execute(text(f"DELETE FROM {t} WHERE account = :a"), {"a": account})
            for t in ("trading_state", "trading_orders", "trading_fills", "trading_audit"):
                conn.execute(text(f"DELETE FROM {t} WHERE engine_id = :e"), {"e": f"wheel-{account}"})
        eng.dispose()
