"""The market data feed over real UDP multicast on loopback: a feed server replays ITCH as MoldUDP64, the
feed handler receives it, recovers the packets the server deliberately did not multicast (or that the
kernel dropped while the consumer was not reading) from the re-request server, and the books built from
what it delivered equal the books built from the file. With the re-request server down, the gaps are
reported with their ranges."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, free_port, need, poll_until
from greekfire.core.errors import UnavailableError
from greekfire.hft.feed import AfPacket, FeedHandler, FeedServer, UdpMulticast, load_itch, serve_feed
from greekfire.market import itch, moldudp, synth

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ITCH_FILE = SHARED_DATA / "itch" / "ex20101224.TEST_ITCH_50.gz"


def _probe(group: str, port: int) -> bool:
    """One datagram through multicast on loopback."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind((group, port))
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        rx.settimeout(1.0)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        tx.sendto(b"probe", (group, port))
        return rx.recv(16) == b"probe"
    except OSError:
        return False
    finally:
        rx.close()
        tx.close()


@pytest.fixture(scope="module")
def multicast_lo() -> None:
    """Multicast works on loopback here; where it does not, turn it on (`ip link set lo multicast on`, root)
    or skip (fail under CI) with the reason."""
    group, port = "239.192.77.1", free_port()
    if _probe(group, port):
        return
    ip = shutil.which("ip")
    if ip and os.geteuid() == 0:
        subprocess.run([ip, "link", "set", "lo", "multicast", "on"], check=False, capture_output=True)
        if _probe(group, port):
            return
    need(False, "UDP multicast on the loopback interface does not deliver here (as root: `ip link set lo multicast on`)")


@pytest.fixture
def group(multicast_lo: None) -> tuple[str, int]:
    """A multicast group and port of this test alone (no crosstalk between tests)."""
    return f"239.192.{random.randint(1, 250)}.{random.randint(1, 250)}", free_port()


def _collect(handler: FeedHandler, timeout_s: float = 30.0, books: itch.StreamBooks | None = None):
    """Poll until the session is complete; every message and timestamp (and the live books fed as they come)."""
    msgs: list[bytes] = []
    stamps: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m, t = handler.poll(0.05)
        msgs += m
        stamps += t
        if books is not None and m:
            books.feed(itch.frame(m))
        if handler.complete:
            break
    return msgs, stamps


def _assert_books_equal(stream: bytes, live: itch.StreamBooks) -> None:
    books, msgs, res = itch.build_books(stream)
    assert len(msgs) == live.messages and res.bad == live.bad_events
    assert books.n_orders == live.books.n_orders > 0
    for i, loc in enumerate(books.locates):
        assert books.depth(i, 64) == live.books.depth(int(loc), 64)
        assert books.stats(i)["traded_qty"] == live.books.stats(int(loc))["traded_qty"]


def test_lossless_replay_books_equal_the_file(group):
    g, port = group
    stream = synth.synthetic_stream(4_000, n_stocks=4, seed=21)
    n = len(itch.scan(stream))
    t_start = time.time_ns()
    server = FeedServer(stream, g, port, rate=100_000, heartbeat_s=0.1)
    handler = FeedHandler(UdpMulticast(g, port), server.rerequest_address)
    with server:
        live = itch.StreamBooks(n_locates=8, max_orders=1 << 14)
        msgs, stamps = _collect(handler, books=live)
        handler.close()
    st = handler.stats
    assert st["ended"] and st["messages"] == n and len(msgs) == n == server.sent
    assert itch.frame(msgs) == stream  # every message, in order
    assert st["unrecovered"] == 0 and st["unrecovered_ranges"] == []
    assert st["gaps"] == 0 or st["drops"] > 0  # a gap only ever comes from a counted kernel drop
    assert len(stamps) == n and all(t_start <= t <= time.time_ns() for t in stamps)  # kernel stamps of this run
    assert handler.transport.timestamp_caps["interface"] == "lo" and not handler.transport.timestamp_caps["hardware_rx"]
    assert handler.transport.hardware_packets == 0  # loopback never stamps in hardware
    _assert_books_equal(stream, live)


def test_deliberate_drops_are_all_recovered_from_the_rerequest_server(group):
    """Acceptance 2: packets dropped on purpose (the first message, single ones, a run of 25, the last packet
    before the end of session) are asked for and recovered; the stream is the file's, byte for byte."""
    g, port = group
    stream = synth.synthetic_stream(5_000, n_stocks=3, seed=22)
    n = len(itch.scan(stream))
    drop = {1, 77, 1_000, *range(2_000, 2_025), 3_333, n}
    server = FeedServer(stream, g, port, rate=100_000, drop=drop, heartbeat_s=0.05)
    handler = FeedHandler(UdpMulticast(g, port), server.rerequest_address)
    with server:
        live = itch.StreamBooks(n_locates=8, max_orders=1 << 14)
        msgs, _ = _collect(handler, books=live)
        handler.close()
        # the server counts a re-sent packet once its sendto has returned, which the handler can beat to it
        poll_until(lambda: server.stats["resent"] >= len(drop), timeout_s=5.0)
        sst = dict(server.stats)
    st = handler.stats
    assert itch.frame(msgs) == stream
    assert st["recovered"] == len(drop) and st["unrecovered"] == 0 and st["messages"] == n
    assert st["gaps"] == 6 and st["requests"] >= 6 and st["retransmitted"] >= 6
    assert sst["dropped"] == len(drop) and sst["sent"] == n - len(drop) and sst["resent"] >= len(drop)
    _assert_books_equal(stream, live)


@pytest.mark.parametrize("server_down", ["closed_port", "no_server"])
def test_rerequest_server_down_gaps_reported_with_their_ranges(group, server_down):
    g, port = group
    stream = synth.synthetic_stream(3_000, n_stocks=2, seed=23)
    framed = itch.scan(stream)
    n = len(framed)
    drop = {5, *range(600, 610), 2_222, n}
    rerequest = ("127.0.0.1", free_port()) if server_down == "closed_port" else None  # nobody listens there
    server = FeedServer(stream, g, port, drop=drop, heartbeat_s=0.05)
    handler = FeedHandler(UdpMulticast(g, port), rerequest, retry_s=0.01, retries=3)
    with server:
        msgs, _ = _collect(handler)
        handler.close()
    st = handler.stats
    assert st["unrecovered_ranges"] == [(5, 5), (600, 609), (2_222, 2_222), (n, n)]
    assert st["unrecovered"] == len(drop) and st["recovered"] == 0 and st["gaps"] == 4
    assert st["messages"] == len(msgs) == n - len(drop)
    if server_down == "closed_port":
        assert st["requests"] >= 4
    # what was delivered is the file without the lost messages, in order
    ends = np.concatenate([framed.offsets + itch._SIZE_BY_BYTE[framed.types]])
    want = [stream[int(a) : int(b)] for i, (a, b) in enumerate(zip(framed.offsets, ends, strict=True)) if i + 1 not in drop]
    assert msgs == want


def test_overload_kernel_drops_counted_then_recovered(group):
    """A consumer that does not read while the server sends as fast as it can: the socket's small buffer
    overflows, the kernel's drops are counted, and every gap is then recovered from the re-request server."""
    g, port = group
    stream = synth.synthetic_stream(100_000, n_stocks=8, seed=24)
    n = len(itch.scan(stream))
    server = FeedServer(stream, g, port, heartbeat_s=0.05)
    handler = FeedHandler(UdpMulticast(g, port, rcvbuf=64 << 10), server.rerequest_address)
    with server:
        assert server.wait_done(60)  # the whole session went out while nobody read
        msgs, _ = _collect(handler, timeout_s=60)
        handler.close()
        sst = dict(server.stats)
    st = handler.stats
    assert st["drops"] > 0 and st["gaps"] >= 1 and st["recovered"] > 0
    assert st["unrecovered"] == 0 and st["messages"] == n and itch.frame(msgs) == stream
    assert sst["resent"] >= st["recovered"] and sst["sent"] == n
    # what came by multicast plus what was recovered is the session
    assert st["recovered"] <= n - 1


def test_real_itch_file_zero_prefix_framing(group, tmp_path: Path):
    need(ITCH_FILE.is_file(), f"the ITCH sample {ITCH_FILE.name} is absent from the shared data folder")
    g, port = group
    stream, offsets, errors = load_itch(ITCH_FILE, "zero_prefix")
    n = offsets.shape[0] - 1
    drop = {2, *range(5_000, 5_040), n}
    server = FeedServer(ITCH_FILE, g, port, framing="zero_prefix", drop=drop, heartbeat_s=0.05)
    handler = FeedHandler(UdpMulticast(g, port), server.rerequest_address, session="GREEKFIRE")
    with server:
        live = itch.StreamBooks(n_locates=64, max_orders=1 << 15)
        msgs, _ = _collect(handler, books=live)
        handler.close()
    assert n == 12_012 and errors == 0
    assert handler.stats["recovered"] == len(drop) and handler.stats["unrecovered"] == 0
    assert itch.frame(msgs) == stream
    # the books from the feed equal the books from the file as written (zero-prefixed)
    books, _, _ = itch.build_books(ITCH_FILE, "zero_prefix")
    for i, loc in enumerate(books.locates):
        assert books.depth(i, 64) == live.books.depth(int(loc), 64)
    assert books.n_orders == live.books.n_orders


def test_af_packet_transport_receives_and_recovers(group):
    """The raw-socket path (needs CAP_NET_RAW): where it is missing, the error says so and what to do."""
    g, port = group
    try:
        transport = AfPacket(g, port, iface="127.0.0.1")
    except UnavailableError as exc:
        assert "CAP_NET_RAW" in str(exc)
        pytest.skip(f"no CAP_NET_RAW here: {exc}")
    stream = synth.synthetic_stream(3_000, n_stocks=2, seed=25)
    drop = {10, 11, 12, 1_500}
    server = FeedServer(stream, g, port, drop=drop, heartbeat_s=0.05)
    handler = FeedHandler(transport, server.rerequest_address)
    with server:
        # another group on the same port, and another port on the group: filtered out
        noise = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        noise.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        noise.sendto(b"x" * 40, ("239.192.251.251", port))
        noise.sendto(b"y" * 40, (g, port + 1 if port < 65535 else port - 1))
        noise.close()
        msgs, stamps = _collect(handler)
        handler.close()
    assert itch.frame(msgs) == stream and handler.stats["recovered"] == len(drop)
    assert handler.stats["bad_packets"] == 0 and all(t > 0 for t in stamps)


def test_af_packet_without_cap_net_raw_says_so():
    code = ("from greekfire.hft.feed import AfPacket\n"
            "try:\n    AfPacket('239.192.9.9', 26400)\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    argv = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # root has the capability: drop it for the child
        setpriv = shutil.which("setpriv")
        need(setpriv is not None, "`setpriv` (util-linux) is needed to drop CAP_NET_RAW for this check")
        argv = [str(setpriv), "--inh-caps=-net_raw", "--bounding-set=-net_raw", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=os.environ.copy())
    if os.geteuid() != 0 and "UnavailableError" not in out.stdout:
        pytest.skip("this user holds CAP_NET_RAW (file capabilities on the interpreter): nothing to check")
    assert "UnavailableError" in out.stdout and "CAP_NET_RAW" in out.stdout, out.stdout + out.stderr


def test_serve_feed_runs_for_its_duration_and_rejects_a_bad_file(group, tmp_path: Path):
    g, port = group
    f = tmp_path / "day.itch"
    f.write_bytes(synth.synthetic_stream(2_000, n_stocks=2, seed=26))
    lines: list[str] = []
    rport = free_port()
    handler = FeedHandler(UdpMulticast(g, port), ("127.0.0.1", rport))
    import threading

    box: dict = {}
    t = threading.Thread(target=lambda: box.update(serve_feed(f, g, port, rate=20_000, rerequest_port=rport,
                                                              duration=1.0, log=lines.append)))
    t.start()
    msgs, _ = _collect(handler, timeout_s=30)
    t.join(30)
    handler.close()
    assert handler.stats["unrecovered"] == 0, handler.stats
    assert itch.frame(msgs) == f.read_bytes() and box["sent"] == len(msgs) == 2_004
    assert f"{g}:{port}" in lines[0] and f"127.0.0.1:{rport}" in lines[0] and "20,000 msg/s" in lines[0]
    bad = tmp_path / "bad.itch"
    bad.write_bytes(b"")
    from greekfire.core.errors import InputFileError

    with pytest.raises(InputFileError, match="empty") as err:
        serve_feed(bad, g, port, duration=1)
    assert "\n" not in str(err.value)
    with pytest.raises(InputFileError, match="no such file"):
        serve_feed(tmp_path / "absent.itch", g, port, duration=1)


def test_slow_feed_heartbeats_while_idle_and_gaps_still_recovered(group):
    g, port = group
    msgs = [itch.encode_message("D", order_ref=i) for i in range(1, 31)]
    stream = itch.frame(msgs)
    server = FeedServer(stream, g, port, rate=100, heartbeat_s=0.005, drop={10, 11, 30})  # 100 msg/s: idle between
    handler = FeedHandler(UdpMulticast(g, port), server.rerequest_address)
    with server:
        got, _ = _collect(handler, timeout_s=30)
        handler.close()
        sst = dict(server.stats)
    assert got == msgs and handler.stats["recovered"] == 3 and handler.stats["unrecovered"] == 0
    assert sst["heartbeats"] > 0 and sst["packets_sent"] == 27  # one message a packet at this rate


def test_rerequest_server_on_the_wire(group):
    """The re-request server as any MoldUDP64 client sees it: a plain UDP socket asks, packets come back;
    malformed requests, another session and sequence numbers past the end are counted, not answered."""
    g, port = group
    msgs = [itch.encode_message("D", order_ref=i) for i in range(1, 501)]
    server = FeedServer(itch.frame(msgs), g, port, session="WIRE", heartbeat_s=0.05, max_payload=200)
    with server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        assert server.wait_done(10)
        client.settimeout(5)
        client.sendto(moldudp.request("WIRE", 100, 30), server.rerequest_address)
        got = []
        while len(got) < 30:
            pkt = client.recv(2048)
            sess, seq, count = moldudp.HEADER.unpack_from(pkt)
            assert sess == b"WIRE      " and len(pkt) - 20 <= 200 and seq == 100 + len(got)
            rx = moldudp.MoldReceiver(next_seq=seq)
            rx.feed(pkt)
            got += rx.take()[0]
        assert got == msgs[99:129]
        client.sendto(b"garbage", server.rerequest_address)
        client.sendto(moldudp.request("OTHER", 1, 1), server.rerequest_address)
        client.sendto(moldudp.request("WIRE", 501, 5), server.rerequest_address)
        assert poll_until(lambda: server.stats["bad_requests"] == 2 and server.stats["unanswerable_requests"] == 1)
        client.settimeout(0.2)
        with pytest.raises(TimeoutError):
            client.recv(2048)  # none of them was answered
    assert server.stats["requests"] == 2 and server.stats["resent"] == 30
