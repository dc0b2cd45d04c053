"""HFT market data feed: ITCH over MoldUDP64 on loopback multicast, received by the feed handler.

The feed server runs in its own process and replays a synthetic ITCH day; this process receives it.

* "as fast as possible": the server sends the whole session as fast as the socket takes it; the handler
  re-sequences, recovers every packet the kernel dropped while it fell behind (from the re-request
  server), and delivers every message in order. Figure: messages delivered per wall second, first packet
  to the last message, with the kernel drops, gaps and recovered messages of the run.
* "paced": the server sends at a fixed rate the handler keeps up with; gaps should be 0.
* peer: a plain ``socket.recv_into`` loop over the same session from the same server (counts messages from
  the packet headers; no re-sequencing, no per-message split, no recovery): the ceiling of a Python
  receive loop on this machine, and how much it loses when it does not recover.

``feed_bench(seconds)`` returns the figures as a dict (for ``greekfire hft bench --json``).
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from greekfire.hft.feed import FeedHandler, FeedServer, UdpMulticast  # noqa: E402
from greekfire.market import itch, synth  # noqa: E402
from greekfire.market.moldudp import END_OF_SESSION, HEADER  # noqa: E402

GROUP = "239.192.200.1"
SMALL_RCVBUF = 208 << 10  # the usual net.core.rmem_default: a socket that was not given a large buffer


def _serve(stream: bytes, port: int, rate: float, conn: Any) -> None:
    server = FeedServer(stream, GROUP, port, rate=rate, heartbeat_s=0.05)
    conn.send(server.rerequest_address)
    conn.recv()  # go
    server.start()
    conn.recv()  # stop
    server.stop()
    conn.send(dict(server.stats))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(stream: bytes, rate: float, receiver: str, timeout_s: float, rcvbuf: int = 32 << 20) -> dict[str, Any]:
    """One session from a server process, received by the feed handler or the plain loop (socket receive
    buffer of ``rcvbuf`` bytes asked)."""
    port = _free_udp_port()
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(stream, port, rate, there), daemon=True)
    proc.start()
    try:
        rerequest = here.recv()
        transport = UdpMulticast(GROUP, port, rcvbuf=rcvbuf)
        out: dict[str, Any] = {"rate": rate, "receiver": receiver, "rcvbuf": transport.rcvbuf}
        if receiver == "handler":
            handler = FeedHandler(transport, tuple(rerequest))
            here.send("go")
            first = None
            n = 0
            deadline = time.monotonic() + timeout_s
            while not handler.complete and time.monotonic() < deadline:
                msgs, stamps = handler.poll(0.05)
                if msgs and first is None:
                    first = time.perf_counter()
                n += len(msgs)
            elapsed = time.perf_counter() - (first or time.perf_counter())
            handler.close()
            st = handler.stats
            out.update(messages=n, seconds=elapsed, complete=handler.complete, drops=st["drops"], gaps=st["gaps"],
                       recovered=st["recovered"], unrecovered=st["unrecovered"], requests=st["requests"],
                       retransmit_drops=st["retransmit_drops"])
        else:
            buf = memoryview(bytearray(65536))
            here.send("go")
            n = 0
            first = None
            last = time.perf_counter()
            deadline = time.monotonic() + timeout_s
            ended = False
            while not ended and time.monotonic() < deadline:
                size, _ = transport.recv(buf)
                if size == 0:
                    time.sleep(0)
                    continue
                _, _, count = HEADER.unpack_from(buf)
                if count == END_OF_SESSION:
                    ended = True
                elif count:
                    if first is None:
                        first = time.perf_counter()
                    n += count
                    last = time.perf_counter()
            transport.close()
            out.update(messages=n, seconds=last - (first or last), complete=ended, drops=transport.drops)
        here.send("stop")
        out["server"] = here.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    out["messages_per_s"] = out["messages"] / out["seconds"] if out["seconds"] > 0 else 0.0
    return out


def feed_bench(seconds: float = 3.0) -> dict[str, Any]:
    """Feed figures over loopback multicast (messages/s, s): the handler at full speed (with recovery of
    what the kernel dropped), paced at a rate it sustains, and the plain receive-loop peer."""
    n = max(50_000, int(seconds * 400_000))
    stream = synth.synthetic_stream(n, n_stocks=16, seed=3)
    total = len(itch.scan(stream))
    full = _run(stream, 0, "handler", timeout_s=30 * seconds)
    peer = _run(stream, 0, "plain", timeout_s=30 * seconds)
    small = _run(stream, 0, "handler", timeout_s=30 * seconds, rcvbuf=SMALL_RCVBUF)
    small_peer = _run(stream, 0, "plain", timeout_s=30 * seconds, rcvbuf=SMALL_RCVBUF)
    pace = max(10_000.0, round(full["messages_per_s"] / 4, -4))  # well under what the handler sustains
    paced_n = min(total, int(pace * seconds))
    paced_stream = itch.frame(_messages(stream)[:paced_n])
    paced = _run(paced_stream, pace, "handler", timeout_s=10 * seconds + 10)
    return {"session_messages": total, "full_speed": full, "plain_loop_peer": peer, "small_buffer": small,
            "small_buffer_peer": small_peer, "paced": paced}


def _messages(stream: bytes) -> list[bytes]:
    msgs = itch.scan(stream)
    ends = msgs.offsets + itch._SIZE_BY_BYTE[msgs.types]
    return [stream[int(a) : int(b)] for a, b in zip(msgs.offsets, ends, strict=True)]


def main() -> None:
    t0 = time.perf_counter()
    res = feed_bench(3.0)
    full, peer, paced = res["full_speed"], res["plain_loop_peer"], res["paced"]
    small, small_peer = res["small_buffer"], res["small_buffer_peer"]
    rows = [
        {"benchmark": "feed handler, loopback multicast, server as fast as possible (every gap recovered)",
         "ours": full["messages_per_s"], "peer": "plain recv_into loop (no sequencing, no recovery)",
         "peer_value": peer["messages_per_s"], "unit": "messages/s",
         "ratio": full["messages_per_s"] / peer["messages_per_s"] if peer["messages_per_s"] else None,
         "messages": full["messages"], "complete": full["complete"], "kernel_drops": full["drops"],
         "gaps": full["gaps"], "recovered": full["recovered"], "unrecovered": full["unrecovered"],
         "peer_messages": peer["messages"], "peer_lost": res["session_messages"] - peer["messages"]},
        {"benchmark": f"the same with a {SMALL_RCVBUF >> 10} KiB socket buffer: the kernel drops, the handler recovers",
         "ours": small["messages_per_s"], "peer": "plain recv_into loop, same buffer (loses what was dropped)",
         "peer_value": small_peer["messages_per_s"], "unit": "messages/s",
         "ratio": small["messages_per_s"] / small_peer["messages_per_s"] if small_peer["messages_per_s"] else None,
         "messages": small["messages"], "complete": small["complete"], "kernel_drops": small["drops"],
         "gaps": small["gaps"], "recovered": small["recovered"], "unrecovered": small["unrecovered"],
         "retransmit_drops": small["retransmit_drops"],
         "peer_messages": small_peer["messages"], "peer_lost": res["session_messages"] - small_peer["messages"],
         "peer_kernel_drops": small_peer["drops"]},
        {"benchmark": f"feed handler, paced at {paced['rate']:,.0f} msg/s", "ours": paced["messages_per_s"],
         "peer": "the server's rate", "peer_value": paced["rate"], "unit": "messages/s",
         "ratio": paced["messages_per_s"] / paced["rate"], "gaps": paced["gaps"], "kernel_drops": paced["drops"],
         "recovered": paced["recovered"], "unrecovered": paced["unrecovered"], "complete": paced["complete"]},
    ]
    notes = [
        f"session of {res['session_messages']:,} synthetic ITCH messages, MoldUDP64 packets of <= 1,400 bytes; "
        "server in its own process (fork), receiver in this one, both on loopback multicast (239.192.200.1)",
        f"full speed, {full['rcvbuf'] >> 20} MiB socket buffer (granted): kernel drops {full['drops']:,}, gaps "
        f"{full['gaps']}, recovered {full['recovered']:,}; the buffer absorbs the burst",
        f"{SMALL_RCVBUF >> 10} KiB buffer: the kernel dropped {small['drops']:,} packets while the handler fell "
        f"behind, {small['gaps']} gaps, {small['recovered']:,} messages recovered by re-request, "
        f"{small['unrecovered']} unrecovered (complete={small['complete']}); the plain loop lost "
        f"{res['session_messages'] - small_peer['messages']:,} messages (kernel drops {small_peer['drops']:,}; "
        "it does not recover)",
        "messages/s: messages delivered (handler) or counted from headers (peer) per wall second from the first "
        "packet to the last message; shared machine, one run each",
        f"no torch; default glibc allocator; total {time.perf_counter() - t0:.0f} s",
    ]
    report("hft_feed", rows, notes)


if __name__ == "__main__":
    main()
