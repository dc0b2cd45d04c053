"""Long commands show their progress on a terminal, and only there: each runs on a pseudo-terminal
(``run_in_pty``) and the test looks for the bar's or the status line's text; the same commands with ``--json``
or piped keep stdout to the answer alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import command_env, run_in_pty

CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours, cursor moves and line clears of the terminal


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean greekfire home for the command; no GREEKFIRE_* setting from the caller's shell."""
    out = command_env()
    out["GREEKFIRE_HOME"] = str(tmp_path / "home")
    return out


def _pty(args: list[str], env: dict[str, str], timeout_s: float = 120) -> str:
    """What the command drew on a terminal, colours and cursor moves removed (the text stays)."""
    rc, out = run_in_pty(CLI + args, timeout_s=timeout_s, env=env)
    assert rc == 0, out
    return ANSI.sub("", out)


def test_trade_paper_shows_a_live_status_line_and_units(env: dict[str, str]) -> None:
    out = _pty(["trade", "--paper", "--duration", "3"], env)
    # the status line, refreshed once a second while the engine runs
    assert "paper 1/3 s" in out and "| fills " in out and "| P&L " in out and "latency" in out
    # the summary says its units, and which sign of the fees is a rebate
    assert "fees (USD; negative = rebate)" in out and "P&L total (USD, after fees)" in out
    assert "latency event -> order (µs)" in out


def test_trade_json_without_a_terminal_keeps_stdout_clean(env: dict[str, str]) -> None:
    res = subprocess.run(CLI + ["trade", "--paper", "--duration", "2", "--json"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)  # nothing but the JSON document
    assert {"fills", "pnl", "latency_us"} <= set(data) and "fees" in data["pnl"]
    assert "paper " not in res.stdout and "\x1b" not in res.stdout


def test_lobster_check_draws_bars_over_bytes_and_messages(shared_data: Path, env: dict[str, str]) -> None:
    z = shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_5.zip"
    out = _pty(["market", "lobster-check", str(z)], env)
    # the sample's two CSVs hold 24,507,475 bytes; 155,935 messages are checked
    assert "read" in out and "24,507,475/24,507,475 bytes" in out
    assert "check" in out and "155,935/155,935 messages" in out
    assert "check: " in out and "s for 155,935 messages" in out  # the summary's time, with its unit


def test_lobster_replay_draws_bars_for_replay_and_throughput(shared_data: Path, env: dict[str, str]) -> None:
    z = shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_1.zip"
    out = _pty(["market", "lobster-replay", str(z)], env)
    assert "57,515/57,515 messages" in out and "throughput" in out and "3/3 runs" in out
    assert "messages/s on one core" in out


def test_lobster_json_without_a_terminal_keeps_stdout_clean(shared_data: Path, env: dict[str, str]) -> None:
    z = shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_1.zip"
    res = subprocess.run(CLI + ["market", "lobster-check", str(z), "--json"], env=env, capture_output=True,
                         text=True, timeout=120)
    # a level-1 file checks no level that must match: exit 1, with the JSON answer on stdout all the same
    assert res.returncode == 1, res.stderr
    assert json.loads(res.stdout)["messages"] == 57_515
    assert "bytes" not in res.stderr and "\x1b" not in res.stdout + res.stderr


def test_itch_draws_bars_over_file_bytes_and_book_events(shared_data: Path, env: dict[str, str]) -> None:
    path = shared_data / "itch" / "ex20101224.TEST_ITCH_50.gz"
    out = _pty(["market", "itch", str(path), "--framing", "zero_prefix"], env)
    size = path.stat().st_size
    assert f"{size:,}/{size:,} bytes" in out and "books" in out and "7,000/7,000 events" in out
    assert "top of book per stock (price USD x size shares)" in out


def test_demo_stage_shows_a_spinner(env: dict[str, str]) -> None:
    out = _pty(["demo", "--only", "foundation"], env)
    assert "demo stage foundation (1/1) running" in out and "time (s)" in out


def test_progress_hooks_do_not_change_the_results(shared_data: Path) -> None:
    """With a hook the LOBSTER check runs in pieces of 65,536 messages and the ITCH books in pieces of
    events: the answers are the ones of a single pass, and the hook hears each stage end at its total."""
    from greekfire.market import itch, lobster

    heard: list[tuple[str, int, int, str]] = []

    def hook(stage: str, done: int, total: int, unit: str) -> None:
        heard.append((stage, done, total, unit))

    data = lobster.read(shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_5.zip", progress=hook)
    plain, pieces = lobster.check(data).as_dict(), lobster.check(data, progress=hook).as_dict()
    plain.pop("seconds"), pieces.pop("seconds")
    assert pieces == plain and plain["ok"]
    assert [h for h in heard if h[0] == "check"] == [("check", 65_537, 155_935, "messages"),
                                                      ("check", 131_073, 155_935, "messages"),
                                                      ("check", 155_935, 155_935, "messages")]
    assert heard[0][0] == "read" and ("read", 24_507_475, 24_507_475, "bytes") in heard
    path = shared_data / "itch" / "ex20101224.TEST_ITCH_50.gz"
    plain, counted = itch.file_report(path, "zero_prefix"), itch.file_report(path, "zero_prefix", progress=hook)
    plain.pop("seconds"), counted.pop("seconds")
    assert counted == plain and heard[-1] == ("books", 7_000, 7_000, "events")
