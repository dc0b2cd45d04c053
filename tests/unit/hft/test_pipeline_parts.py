"""The pipeline's parts on their own: stage latency histograms, the imbalance taker, the exchange simulator,
the hft settings, the metrics and the status command."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import greekfire.hft.metrics as metrics
from greekfire.core.errors import ConfigErrors
from greekfire.core.metrics import sample_value
from greekfire.hft.cluster import SIG_DTYPE
from greekfire.hft.config import load_hft, stage_cpus, stage_names
from greekfire.hft.features import F_SIGNAL
from greekfire.hft.latency import StageLatency
from greekfire.hft.strategy import CANCELED, FILLED, ORD_DTYPE, PARTIAL, ImbalanceTaker
from greekfire.hft.venues import ExchangeSim, itch_ticks
from greekfire.market.itch import encode_message, frame

runner = CliRunner()


def test_stage_latency_percentiles_from_the_stamps() -> None:
    rows = np.zeros(101, ORD_DTYPE)
    rows["t_rx"] = 1_000_000
    rows["t_sent"] = 1_000_000 + np.arange(101) * 1000  # 0..100 µs
    rows["t_ack"][:50] = rows["t_sent"][:50] + 5000  # half acknowledged, 5 µs later
    lat = StageLatency()
    lat.record(rows)
    q = lat.percentiles_us()
    assert q["tick->order"]["count"] == 101  # a 0 ns difference counts (as 1 ns, the lowest value)
    assert q["tick->order"]["p50"] == pytest.approx(50, rel=0.01)
    assert q["tick->order"]["max"] == pytest.approx(100, rel=0.01)
    assert q["order->ack"]["count"] == 50 and q["order->ack"]["p99"] == pytest.approx(5, rel=0.01)
    assert q["feed->book"] == {"count": 0}
    lat.reset()
    assert lat.percentiles_us()["tick->order"] == {"count": 0}


def sig(rows: list[tuple[int, int, float, int, int]]) -> np.ndarray:
    """(seq, instrument, signal, bid px, ask px) -> decision records with 500 shares at each touch."""
    s = np.zeros(len(rows), SIG_DTYPE)
    for i, (seq, inst, signal, bid, ask) in enumerate(rows):
        s[i]["seq"], s[i]["instrument"] = seq, inst
        s[i]["f"][F_SIGNAL] = signal
        s[i]["bid_px"], s[i]["ask_px"], s[i]["bid_qty"], s[i]["ask_qty"] = bid, ask, 500, 500
    return s


def test_imbalance_taker_orders_caps_and_skips_what_it_has_seen() -> None:
    t = ImbalanceTaker(4, order_qty=100, max_position=200)
    o = t.on_signals(sig([(8, 1, 1, 99, 101), (16, 1, 1, 99, 101), (24, 1, 1, 99, 101), (32, 2, -1, 50, 52),
                          (40, 1, 0, 99, 101)]))
    assert o["order_id"].tolist() == [8, 16, 32]  # the third buy would pass +200 shares
    assert o["side"].tolist() == [1, 1, -1] and o["price"].tolist() == [101, 101, 50]
    assert t.sent.tolist() == [0, 200, -100, 0]
    again = t.on_signals(sig([(16, 1, -1, 99, 101), (48, 1, -1, 99, 101)]))  # 16 replayed: skipped
    assert again["order_id"].tolist() == [48] and t.duplicates == 1 and t.decisions == 6


def tiny_itch(tmp_path: Path) -> Path:
    m = [encode_message("S", event_code=b"O"),
         encode_message("A", stock_locate=3, order_ref=1, side=b"S", shares=300, stock=b"XYZ", price=1_000_000),
         encode_message("A", stock_locate=3, order_ref=2, side=b"B", shares=200, stock=b"XYZ", price=990_000),
         encode_message("E", stock_locate=3, order_ref=1, executed_shares=250, match_number=1)]
    path = tmp_path / "tiny.itch"
    path.write_bytes(frame(m))
    return path


def test_exchange_simulator_fills_against_the_book_as_of_the_decision(tmp_path: Path) -> None:
    path = tiny_itch(tmp_path)
    ticks, n = itch_ticks(path)
    assert n == 4 and ticks["seq"].tolist() == [2, 3, 4]
    ex = ExchangeSim(path, 8)
    o = np.zeros(5, ORD_DTYPE)
    #            seq  side  qty  price: before the ask exists; at it; partly; a limit below; after the execution
    for i, (seq, side, qty, px) in enumerate([(1, 1, 100, 1_000_000), (2, 1, 100, 1_000_000),
                                              (3, 1, 400, 1_000_000), (3, -1, 100, 1_000_000),
                                              (4, 1, 100, 1_000_000)]):
        o[i]["seq"], o[i]["instrument"], o[i]["side"], o[i]["qty"], o[i]["price"] = seq, 3, side, qty, px
    out = ex.execute(o)
    assert out["status"].tolist() == [CANCELED, FILLED, PARTIAL, CANCELED, PARTIAL]
    assert out["filled"].tolist() == [0, 100, 300, 0, 50]
    assert out["fill_px"][1] == 1_000_000


def test_hft_settings_and_cpus(tmp_path: Path) -> None:
    cfg = load_hft(overrides={"workers": 2, "cpus": [0, 0, 0]})
    assert stage_names(2) == ["feed", "worker0", "worker1", "strategy", "gateway", "exchange"]
    cpus = stage_cpus(cfg)
    assert cpus["feed"] == 0 and cpus["worker1"] == 0 and cpus["strategy"] is None
    with pytest.raises(ConfigErrors, match="hft.ring_capacity"):
        load_hft(overrides={"ring_capacity": 1000})
    with pytest.raises(ConfigErrors, match="hft.wait"):
        load_hft(overrides={"wait": "sleepy"})


def test_metrics_count_what_grew() -> None:
    feed: dict[str, int] = {"messages": 10, "drops": 2, "errors": 0}
    status = {"stages": {"feedX": feed}, "orders": {"filled": 3},
              "latency_us": {"tick->order": {"count": 1, "p50": 7.0, "p99": 9.0, "p99.9": 9.5}}, "losses": []}
    metrics.publish(status)
    feed["messages"] = 25
    metrics.publish(status)
    assert sample_value("greekfire_hft_messages_total", {"stage": "feedX"}) == 25
    assert sample_value("greekfire_hft_drops_total", {"stage": "feedX"}) == 2
    assert sample_value("greekfire_hft_errors_total", {"stage": "feedX"}) == 0  # exported before the first
    assert sample_value("greekfire_hft_feed_gaps_total", {"stage": "feedX"}) is None  # no gaps key: no series
    feed["gaps"] = 0
    metrics.publish(status)
    assert sample_value("greekfire_hft_feed_gaps_total", {"stage": "feedX"}) == 0
    feed["gaps"] = 4
    metrics.publish(status)
    assert sample_value("greekfire_hft_feed_gaps_total", {"stage": "feedX"}) == 4
    assert sample_value("greekfire_hft_stage_latency_us", {"stage": "tick->order", "quantile": "p99"}) == 9.0
    import urllib.request

    port = metrics.serve(0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'greekfire_hft_messages_total{stage="feedX"} 25.0' in body


def test_status_command_reads_the_status_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from greekfire.cli import STATE, app

    path = tmp_path / "status.json"
    monkeypatch.setenv("GREEKFIRE_HFT__STATUS_FILE", str(path))
    STATE._settings = None
    r = runner.invoke(app, ["hft", "status"])
    assert r.exit_code == 2 and "no status file" in r.output and "Traceback" not in r.output
    path.write_text(json.dumps({"state": "running", "pid": 1, "updated": time.time(), "stages": {
        "feed": {"pid": 1, "alive": True, "messages": 5, "drops": 0, "errors": 0, "stalls": 0}},
        "orders": {"filled": 2}, "latency_us": {}, "losses": []}))
    STATE._settings = None
    r = runner.invoke(app, ["hft", "status", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["orders"] == {"filled": 2} and data["stale"] is False
    STATE._settings = None
    r = runner.invoke(app, ["hft", "replay", str(tmp_path / "none.itch")])
    assert r.exit_code == 2 and "no such file" in r.output


def test_replay_log_and_control_table_are_shared_between_handles() -> None:
    from greekfire.hft.cluster import TICK_DTYPE, ClusterControl, ReplayLog

    log = ReplayLog.create(8)
    ctl = ClusterControl.create(3, 10)
    try:
        t = np.zeros(6, TICK_DTYPE)
        t["seq"] = np.arange(1, 7)
        log.append(t)
        log.append(t)  # 12 ticks into 8 slots: 4 counted as overflow, never silently dropped
        other = ReplayLog.attach(log.name)
        assert other.count == 8 and other.overflow == 4 and other.view()["seq"].tolist() == [1, 2, 3, 4, 5, 6, 1, 2]
        other.close()
        peer = ClusterControl.attach(ctl.name)
        assert peer.n_workers == 3 and peer.owner.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
        ctl.acked[1] = 42
        ctl.alive[2] = 0
        assert peer.acked[1] == 42 and peer.living() == [0, 1]
        peer.close()
    finally:
        log.close()
        ctl.close()


def test_a_stage_stops_waiting_when_its_coordinator_is_gone() -> None:
    import subprocess

    from greekfire.hft.cluster import ClusterControl, Idle

    gone = subprocess.Popen(["true"])
    gone.wait()
    idle = Idle("busy", gone.pid)
    with pytest.raises(SystemExit, match=f"pid {gone.pid}"):
        for _ in range(Idle.OWNER_CHECK_EVERY):
            idle()
    here = Idle("busy", os.getpid())
    for _ in range(2 * Idle.OWNER_CHECK_EVERY):
        here()  # the coordinator lives: the stage waits on
    assert here.n == 2 * Idle.OWNER_CHECK_EVERY
    ctl = ClusterControl.create(1, 4)
    try:
        assert int(ctl.head[ctl.OWNER_PID]) == os.getpid()
    finally:
        ctl.close()
