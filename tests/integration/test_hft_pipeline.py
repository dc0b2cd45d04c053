"""Acceptance 1 of the HFT engine: the whole pipeline on loopback -- a MoldUDP64 multicast feed replaying a
synthetic ITCH file, book/feature workers, the strategy, the gateway with its risk checks and the exchange
simulator, each a process joined by shared-memory rings -- ends with the same books, feature state and
fills as a single-process replay of the same file."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port, need
from greekfire.hft.config import load_hft
from greekfire.hft.pipeline import Pipeline, reference_run
from greekfire.hft.strategy import FILLED, PARTIAL, REJECTED
from greekfire.market import synth

pytestmark = pytest.mark.integration


def multicast_works(group: str, port: int) -> bool:
    """A datagram sent to ``group`` on the loopback interface comes back (IP_MULTICAST_LOOP)."""
    try:
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        r.bind(("", port))
        r.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        r.settimeout(1.0)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.sendto(b"probe", (group, port))
        ok = r.recv(16) == b"probe"
        r.close()
        s.close()
        return ok
    except OSError:
        return False


@pytest.fixture(scope="module")
def itch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hft") / "synthetic.itch"
    path.write_bytes(synth.synthetic_stream(120_000, n_stocks=12, seed=3))
    return path


def test_pipeline_on_loopback_equals_a_single_process_replay(itch_file: Path, tmp_path: Path) -> None:
    group, port = "239.192.7.11", free_port()
    need(multicast_works(group, port), "UDP multicast on the loopback interface does not come back here")
    cfg = load_hft(overrides={
        "workers": 2, "n_locates": 64, "max_orders": 1 << 17, "decide_every": 8, "enter": 0.12,
        "ring_capacity": 16384, "wait": "block", "feed_group": group, "feed_port": port,
        # risk denies the orders above $15,000 (100 shares of the dearer stocks): a denial that does not depend
        # on when fills come back, unlike a position limit that counts them
        "max_position": 1000, "risk": {"max_notional": 15_000.0, "max_position": 1 << 30},
        "status_file": str(tmp_path / "status.json"),
    })
    ref = reference_run(itch_file, cfg)
    result = Pipeline(cfg, itch=itch_file, source="multicast", rate=200_000).run(timeout_s=300)

    # the run did trade: fills, partial fills and risk denials (notional)
    status = result.orders["status"]
    assert np.count_nonzero(status == FILLED) > 10
    assert np.count_nonzero(status == REJECTED) > 0
    assert np.count_nonzero(status == PARTIAL) > 0
    # ... and everything equals the single-process replay of the same file
    assert result.fills() == ref.fills()
    assert np.array_equal(result.depth, ref.depth)
    assert ref.depth[1:13, :, 0, 1].min() > 0  # the books compared are not empty
    np.testing.assert_array_equal(result.state, ref.state)
    # every message reached the workers, nothing lost, no worker lost
    feed = result.stats["stages"]["feed"]
    assert feed["messages"] == 120_000 + 14 and feed["drops"] == 0
    assert sum(w["messages"] for w in result.stats["workers"].values()) == ref.stats["ticks"]
    assert result.losses == []
    # every order sent has its stage latencies (a rejected one never left); the status file says the run is over
    lat = result.latency_us
    sent = len(result.orders) - np.count_nonzero(status == REJECTED)
    assert lat["tick->order"]["count"] == lat["order->ack"]["count"] == sent
    assert lat["features->signal"]["count"] == len(result.orders)
    assert lat["tick->order"]["p50"] > 0
    saved = json.loads((tmp_path / "status.json").read_text())
    assert saved["state"] == "done" and saved["orders"]["rejected"] == int(np.count_nonzero(status == REJECTED))


@pytest.mark.parametrize("how", ["file", "signal"])
def test_kill_switch_stops_every_order_from_the_next_loop(how: str, itch_file: Path, tmp_path: Path) -> None:
    """The gateway's kill switch, tripped by its file or by SIGUSR1 to the coordinator mid-stream: from the
    loop that sees it on, every order is denied with KILL_SWITCH and none reaches the exchange."""
    import os
    import signal

    from conftest import poll_until
    from greekfire.hft.orders import reason_code
    from greekfire.trading.denials import Reason

    kill_file = tmp_path / "KILL"
    cfg = load_hft(overrides={
        "workers": 1, "n_locates": 64, "max_orders": 1 << 17, "decide_every": 8, "enter": 0.12, "wait": "block",
        "ring_capacity": 8192, "max_position": 1 << 30, "killswitch_file": str(kill_file),
        "cpus": [0, 0, 0, 0, 0],  # every stage pinned (to the first CPU this process may use)
        "status_file": str(tmp_path / "status.json"),
    })
    pipe = Pipeline(cfg, itch=itch_file, source="file", rate=30_000)
    try:
        pipe.start()
        gw = pipe.stage_names.index("gateway")
        assert poll_until(lambda: pipe.stats.arr[gw, 0] >= 30, timeout_s=120, step_s=0.002)
        if how == "file":
            kill_file.touch()
        else:
            os.kill(os.getpid(), signal.SIGUSR1)  # the coordinator forwards it to the gateway
        pinned = {name: os.sched_getaffinity(pid) for name, pid in pipe.pids.items()}
        result = pipe.wait(timeout_s=300)
    finally:
        pipe.stop()
    first_cpu = min(os.sched_getaffinity(0))
    assert all(cpus == {first_cpu} for cpus in pinned.values()), pinned
    gw_stats = result.stats["gateway"]
    assert gw_stats["killed"] and gw_stats["kill_reason"]
    t_kill = gw_stats["killed_ns"]
    o = result.orders
    after = o[o["t_risk"] >= t_kill]
    before = o[(o["t_risk"] > 0) & (o["t_risk"] < t_kill)]
    assert len(before) >= 30 and len(after) > 0
    assert (after["reason"] == reason_code(Reason.KILL_SWITCH)).all()
    assert (after["t_sent"] == 0).all() and (after["filled"] == 0).all()
    assert result.stats["stages"]["gateway"]["kill_switch_tripped"]


def test_pipeline_through_ouch_equals_the_same_orders_matched_in_one_process(itch_file: Path, tmp_path: Path) -> None:
    """hft.gateway ouch: orders leave the gateway as OUCH 4.2 Enter Orders over SoupBinTCP to the OUCH exchange
    simulator (one matching engine per symbol holding the file's closing book); the outcomes equal the same
    orders matched against the same books in one process."""
    group, port = "239.192.7.12", free_port()
    need(multicast_works(group, port), "UDP multicast on the loopback interface does not come back here")
    cfg = load_hft(overrides={
        "workers": 1, "n_locates": 64, "max_orders": 1 << 17, "decide_every": 8, "enter": 0.12, "wait": "block",
        "ring_capacity": 8192, "gateway": "ouch", "feed_group": group, "feed_port": port,
        "risk": {"max_position": 1 << 30}, "status_file": str(tmp_path / "status.json"),
    })
    ref = reference_run(itch_file, cfg)
    result = Pipeline(cfg, itch=itch_file, source="multicast", rate=100_000).run(timeout_s=300)
    assert result.fills() == ref.fills()
    filled = int(np.count_nonzero(result.orders["filled"] > 0))
    assert filled > 10
    sent = int(np.count_nonzero(result.orders["t_sent"] > 0))
    ex = result.stats["exchange"]
    assert ex["orders"] == sent and ex["executions"] >= filled
    assert result.latency_us["order->ack"]["count"] == sent


def test_packets_lost_on_the_wire_are_recovered_and_change_nothing(itch_file: Path, tmp_path: Path) -> None:
    """Messages the feed server never multicasts reach the books through the re-request server: the run ends
    with the books and fills of the replay, every gap recovered, none given up."""
    group, port = "239.192.7.13", free_port()
    need(multicast_works(group, port), "UDP multicast on the loopback interface does not come back here")
    cfg = load_hft(overrides={
        "workers": 2, "n_locates": 64, "max_orders": 1 << 17, "decide_every": 8, "enter": 0.12, "wait": "block",
        "ring_capacity": 8192, "feed_group": group, "feed_port": port, "status_file": str(tmp_path / "status.json"),
    })
    lost = tuple(range(5_000, 120_000, 9_973)) + (60_001, 60_002, 60_003)
    ref = reference_run(itch_file, cfg)
    result = Pipeline(cfg, itch=itch_file, source="multicast", rate=100_000, drop=lost).run(timeout_s=300)
    feed = result.stats["feed"]["feed"]
    assert feed["gaps"] >= 10 and feed["recovered"] >= len(lost) and feed["unrecovered"] == 0
    assert result.stats["stages"]["feed"]["recovered"] >= len(lost)
    assert np.array_equal(result.depth, ref.depth)
    assert result.fills() == ref.fills() and len(result.orders) > 10


def test_pipeline_trades_with_an_ouch_venue_it_did_not_start(itch_file: Path, tmp_path: Path) -> None:
    """``venue=(host, port)``: the gateway logs in to an OUCH exchange running elsewhere (here in this
    process, holding the closing book) and the outcomes equal the one-process match of the same orders."""
    from greekfire.hft.ouch_server import OuchServer
    from greekfire.hft.venues import seed_liquidity, symbol_of
    from greekfire.market.matching import Side

    cfg = load_hft(overrides={
        "workers": 1, "n_locates": 64, "max_orders": 1 << 17, "decide_every": 8, "enter": 0.12, "wait": "block",
        "ring_capacity": 8192, "gateway": "ouch", "risk": {"max_position": 1 << 30},
        "status_file": str(tmp_path / "status.json"),
    })
    server = OuchServer("127.0.0.1", 0, tick_size=cfg.risk.tick_size)
    port = server.start()
    try:
        for b, (bids, asks) in seed_liquidity(itch_file, cfg.n_locates).items():
            for side, levels in ((Side.BUY, bids), (Side.SELL, asks)):
                for px, q in levels:
                    server.rest(symbol_of(b), side, q, px)
        result = Pipeline(cfg, itch=itch_file, source="file", rate=100_000,
                          venue=("127.0.0.1", port)).run(timeout_s=300)
        sent = int(np.count_nonzero(result.orders["t_sent"] > 0))
        assert server.counters["orders"] == sent > 10
    finally:
        server.stop()
    assert "exchange" not in result.stats["stages"]
    assert result.fills() == reference_run(itch_file, cfg).fills()
