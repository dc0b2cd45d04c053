"""`greekfire wheel run --paper --venues fix` against a `greekfire fix exchange`: the wheel's paper run logs on
over FIX 4.4, trades on the wall clock (cycles only in NYSE sessions), records its run in the database and
logs out at the end."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import command_env, free_port

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]


def test_the_wheel_paper_run_trades_over_fix(shared_data: Path, tmp_path: Path) -> None:
    common = {"GREEKFIRE_FIX__PORT": str(free_port()),
              "GREEKFIRE_FIX__DATA_DICTIONARY": str(shared_data / "fix44" / "FIX44.xml")}
    exchange = subprocess.Popen(CLI + ["fix", "exchange"], env=command_env(GREEKFIRE_HOME=str(tmp_path / "ex"), **common),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert exchange.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = exchange.stderr.readline()
            if line.startswith("greekfire fix exchange: listening on") or (not line and exchange.poll() is not None):
                break
        assert exchange.poll() is None, "the exchange did not start"
        db = tmp_path / "wheel.db"
        run = subprocess.run(CLI + ["wheel", "run", "--paper", "--venues", "fix", "--duration", "4", "--db",
                                    f"sqlite:///{db}", "--json"],
                             env=command_env(GREEKFIRE_HOME=str(tmp_path / "tr"), **common), capture_output=True,
                             text=True, timeout=120)
    finally:
        exchange.send_signal(signal.SIGTERM)
        try:
            exchange.wait(15)
        except subprocess.TimeoutExpired:
            exchange.kill()
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["fix"]["logons"] >= 1 and summary["fix"]["sent"] > 0
    assert summary["wheel"]["db_positions"] == summary["wheel"]["positions"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM wheel_runs").fetchall() == [("finished",)]
