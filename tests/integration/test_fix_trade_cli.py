"""`greekfire fix exchange` and `greekfire trade --paper --venues fix`, as a user runs them: the trader fills
orders over FIX, and the exchange killed (SIGKILL) and restarted in the middle of the run loses no fill and
duplicates none: the trader's fills (by ExecID) are exactly the fills the exchange stored as sent."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import command_env, free_port
from greekfire.fix.message import parse

CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]


def _start_exchange(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(CLI + ["fix", "exchange"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("greekfire fix exchange: listening on"):
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the exchange did not start: {proc.stderr.read()[-2000:]}")


def _exchange_fills(db: Path, session_id: str) -> list[str]:
    """ExecIDs of the fill ExecutionReports the exchange stored as sent to ``session_id``."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT raw FROM fix_messages WHERE session_id = ?", (session_id,)).fetchall()
    out = []
    for (raw,) in rows:
        if raw:
            m = parse(raw)
            if m.msg_type == "8" and m.get(150) == "F":
                out.append(m.get(17) or "")
    return out


def test_trade_over_fix_survives_the_exchange_being_killed_and_restarted(shared_data: Path, tmp_path: Path) -> None:
    port = free_port()
    common = {"GREEKFIRE_FIX__PORT": str(port), "GREEKFIRE_FIX__DATA_DICTIONARY": str(shared_data / "fix44" / "FIX44.xml"),
              "GREEKFIRE_FIX__RECONNECT_S": "0.2", "GREEKFIRE_FIX__MAX_RECONNECT_S": "1"}
    ex_env = command_env(GREEKFIRE_HOME=str(tmp_path / "exchange"), **common)
    tr_env = command_env(GREEKFIRE_HOME=str(tmp_path / "trader"), **common)
    exchange = _start_exchange(ex_env)
    trader = subprocess.Popen(CLI + ["trade", "--paper", "--venues", "fix", "--duration", "20", "--json"],
                              env=tr_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(8.0)
        assert trader.poll() is None, trader.stderr.read() if trader.stderr else ""
        os.kill(exchange.pid, signal.SIGKILL)
        exchange.wait(10)
        time.sleep(1.0)
        exchange = _start_exchange(ex_env)
        out, err = trader.communicate(timeout=90)
        assert trader.returncode == 0, err[-3000:]
        summary = json.loads(out)
    finally:
        for p in (trader, exchange):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    assert "Traceback" not in err
    assert summary["fix"]["logons"] >= 2, summary["fix"]  # it logged on again after the restart
    sent = _exchange_fills(tmp_path / "exchange" / "fix.db", "FIX.4.4:GFEXCH->GREEKFIRE")
    with sqlite3.connect(tmp_path / "trader" / ".greekfire" / "greekfire.db") as conn:
        got = [r[0] for r in conn.execute("SELECT fill_id FROM trading_fills WHERE engine_id = 'paper'")]
    assert len(sent) > 0 and summary["fills"] > 0
    assert len(set(sent)) == len(sent), "the exchange never reuses an ExecID"
    assert sorted(got) == sorted(sent), "every fill the exchange sent reached the trader once"
    assert summary["fills"] == len(sent)
