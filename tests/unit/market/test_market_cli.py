"""The `greekfire market` commands and the market demo stage."""

from __future__ import annotations

import json
import re
import zipfile

from typer.testing import CliRunner

from greekfire.cli import app
from greekfire.core.settings import load_settings
from greekfire.market import itch, synth
from greekfire.market.demo import run_demo

runner = CliRunner()


def test_lobster_check_on_csv_pair_reports_100pct_levels_1_to_4(shared_data, tmp_path):
    z = shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_5.zip"
    with zipfile.ZipFile(z) as zf:
        names = [n for n in zf.namelist() if n.endswith(".csv")]
        zf.extractall(tmp_path, names)
    msg = next(str(tmp_path / n) for n in names if "_message_" in n)
    book = next(str(tmp_path / n) for n in names if "_orderbook_" in n)
    res = runner.invoke(app, ["market", "lobster-check", msg, book, "--levels", "5", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["ok"] and data["match_rate_pct"][:4] == [100.0, 100.0, 100.0, 100.0]
    res = runner.invoke(app, ["market", "lobster-check", str(z)])
    assert res.exit_code == 0 and "100.00" in res.output


def test_lobster_replay_and_bad_file(shared_data, tmp_path):
    z = shared_data / "lobster" / "LOBSTER_SampleFile_AMZN_2012-06-21_1.zip"
    res = runner.invoke(app, ["market", "lobster-replay", str(z), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["mode"] == "replay" and data["throughput"]["messages_per_s"] > 0
    bad = tmp_path / "x_message_1.csv"
    bad.write_text("1,2\n")
    res = runner.invoke(app, ["market", "lobster-check", str(bad), str(bad)])
    assert res.exit_code == 2 and "columns" in res.output


def test_itch_command_detects_framing_and_reads_with_option(shared_data):
    path = str(shared_data / "itch" / "ex20101224.TEST_ITCH_50.gz")
    res = runner.invoke(app, ["market", "itch", path])
    assert res.exit_code == 2 and "zero_prefix" in res.output
    res = runner.invoke(app, ["market", "itch", path, "--framing", "zero_prefix", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["messages"] == 12_012 and set(data["stocks"]) == {"ALC", "BOB", "CHAR"}
    assert data["bad_by_reason"] == {"unknown_order_id": data["bad_book_events"]}


def test_market_demo_stage(tmp_settings_env):
    s = load_settings(overrides={"market.demo_messages": 20_000})
    out = run_demo(s)
    # the demo drops one packet on purpose: its messages are missing, and orders they added are unknown later
    lost = int(re.search(r"\((\d+) messages lost\)", out["MoldUDP64"]).group(1))
    decoded = int(re.search(r"bytes, ([\d,]+) decoded", out["ITCH messages"]).group(1).replace(",", ""))
    sent = len(itch.decode(synth.synthetic_stream(20_000, n_stocks=4, seed=21)))
    assert "gaps [(" in out["MoldUDP64"] and lost > 0 and decoded + lost == sent
    assert out["bad book events (lost packet)"] > 0
    assert out["matching session"]["trades"] > 0 and out["signal events"] > 0
