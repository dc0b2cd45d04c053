"""QuickFIX's 59 FIX 4.4 acceptance scripts against our acceptor, through the command a user runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import command_env

CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]


def test_all_59_quickfix_acceptance_scripts_pass(shared_data: Path, tmp_path: Path) -> None:
    env = command_env(GREEKFIRE_HOME=str(tmp_path / "home"))
    run = subprocess.run(CLI + ["fix", "conformance", str(shared_data / "fix44"), "--json"], env=env,
                         capture_output=True, text=True, timeout=300)
    out = json.loads(run.stdout)
    failed = [(s["name"], s["line"], s["reason"]) for s in out["scripts"] if not s["passed"]]
    assert failed == []
    assert (out["total"], out["passed"], run.returncode) == (59, 59, 0)
    assert "Traceback" not in run.stderr


def test_a_script_we_fail_is_reported_with_its_line_and_the_command_exits_1(shared_data: Path, tmp_path: Path) -> None:
    script = (shared_data / "fix44" / "definitions_server_fix44" / "4b_ReceivedTestRequest.def").read_bytes()
    broken = script.replace(b"112=HELLO\x0110=0", b"112=HELLX\x0110=0")
    assert broken != script
    (tmp_path / "4b_broken.def").write_bytes(broken)
    env = command_env(GREEKFIRE_HOME=str(tmp_path / "home"))
    run = subprocess.run(CLI + ["fix", "conformance", str(tmp_path), "--json",
                                "--dictionary", str(shared_data / "fix44" / "FIX44.xml")],
                         env=env, capture_output=True, text=True, timeout=120)
    out = json.loads(run.stdout)
    assert run.returncode == 1 and out["failed"] == 1
    [s] = out["scripts"]
    assert s["line"] == 7 and "field 112 should be 'HELLX' but was 'HELLO'" in s["reason"]
