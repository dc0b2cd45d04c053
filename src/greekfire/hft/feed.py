"""Market data feed: ITCH 5.0 over MoldUDP64 on UDP multicast, with gap recovery from a re-request server.

* Transports: :mod:`greekfire.hft.transport` (:class:`Transport`, :class:`UdpMulticast`, :class:`AfPacket`;
  re-exported here).
* :class:`FeedServer`: replays an ITCH file as MoldUDP64 packets on a multicast group at a message rate,
  heartbeats while idle, the end-of-session packet at the end (repeated), and answers re-requests over
  unicast UDP from a retransmission buffer of everything it sent. ``drop`` names sequence numbers it
  deliberately does not multicast (tests, demos).
* :class:`FeedHandler`: receives, re-sequences with :class:`~greekfire.market.moldudp.MoldReceiver`
  (hold mode), asks the re-request server for every gap (with retries), and delivers the messages in
  sequence order with their receive timestamps. A gap that cannot be recovered is given up and reported
  (``stats["unrecovered"]``, ``stats["unrecovered_ranges"]``), never skipped silently.

Times are nanoseconds since the epoch (CLOCK_REALTIME) for receive timestamps, seconds for settings.
"""

from __future__ import annotations

import errno
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from greekfire.core.errors import DataError, InputFileError, UnavailableError
from greekfire.hft.transport import (  # the transports, re-exported: a feed is built from one
    ANC_SPACE,
    MAX_PAYLOAD,
    SO_RXQ_OVFL,
    AfPacket,
    Transport,
    UdpMulticast,
    big_rcvbuf,
    check_group,
    interface_name,
    parse_ancillary,
    timestamp_caps,
)
from greekfire.market import itch
from greekfire.market.moldudp import (
    END_OF_SESSION,
    HEADER,
    MoldReceiver,
    _session_bytes,
    end_of_session,
    heartbeat,
    parse_request,
    request,
)

DEFAULT_GROUP = "239.192.0.1"
DEFAULT_PORT = 26400

__all__ = ["AfPacket", "FeedHandler", "FeedServer", "RetransmissionBuffer", "Transport", "UdpMulticast", "interface_name",
           "load_itch", "serve_feed", "timestamp_caps"]


# ------------------------------------------------------------------------------------------- the file
def load_itch(data: bytes | str | Path, framing: str = "length") -> tuple[bytes, np.ndarray, int]:
    """An ITCH buffer or file (plain or gzipped; ``framing`` length or zero_prefix) as (length-framed
    stream, message end offsets ``o`` with message ``seq`` at ``stream[o[seq-1]:o[seq]]``, bad input
    skipped). Raises :class:`InputFileError` when there is no ITCH message in it."""
    name = Path(data).name if isinstance(data, str | Path) else "buffer"
    if isinstance(data, str | Path):
        if not Path(data).is_file():
            raise InputFileError("file", str(data), "no such file")
        if Path(data).stat().st_size == 0:
            raise InputFileError("file", str(data), "the file is empty (0 bytes); expected ITCH 5.0 messages")
    msgs = itch.scan(data, framing)
    n = len(msgs)
    if n == 0:
        why = msgs.errors[0][1] if msgs.errors else "no data"
        raise InputFileError("file", name, f"no ITCH 5.0 message in it with framing={framing!r} "
                             f"(first problem: {why}); try --framing zero_prefix or length")
    sizes = itch._SIZE_BY_BYTE[msgs.types]
    lens = sizes + 2
    ends = np.cumsum(lens)
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    buf = msgs.buffer
    if msgs.offsets[0] == 2 and int(ends[-1]) == buf.shape[0]:  # every byte is a framed message: rewrite in place
        out = buf.copy()
        out[msgs.offsets - 2] = sizes >> 8
        out[msgs.offsets - 1] = sizes & 0xFF
        return out.tobytes(), offsets, int(msgs.n_errors)
    # bad input was skipped: copy the good messages, a piece at a time (the index array stays small)
    parts = []
    for a in range(0, n, 1 << 16):
        b = min(a + (1 << 16), n)
        ln = lens[a:b]
        rel = ends[a:b] - ln - offsets[a]
        src = np.repeat(msgs.offsets[a:b] - 2 - rel, ln) + np.arange(int(offsets[b] - offsets[a]))
        piece = buf[src]
        piece[rel] = sizes[a:b] >> 8
        piece[rel + 1] = sizes[a:b] & 0xFF
        parts.append(piece.tobytes())
    return b"".join(parts), offsets, int(msgs.n_errors)


class RetransmissionBuffer:
    """Every message of a session (a length-framed stream and its offsets) for answering re-requests;
    messages up to ``published`` (a sequence number) have been sent and can be re-sent."""

    def __init__(self, stream: bytes, offsets: np.ndarray, session: bytes | str, max_payload: int = MAX_PAYLOAD):
        self.stream = stream
        self.offsets = offsets
        self.session = _session_bytes(session)
        self.max_payload = max_payload
        self.published = 0

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def packet(self, seq: int, last: int) -> bytes:
        """One packet from message ``seq``: as many messages up to ``last`` as fit in ``max_payload`` bytes
        (at least one)."""
        off = self.offsets
        j = int(np.searchsorted(off, off[seq - 1] + self.max_payload, side="right")) - 1
        j = min(max(j, seq), last, seq + END_OF_SESSION - 2)
        return HEADER.pack(self.session, seq, j - seq + 1) + self.stream[off[seq - 1] : off[j]]

    def packets(self, seq: int, count: int, max_packets: int = 64) -> list[bytes]:
        """Packets carrying messages ``seq``..``seq+count-1`` (only those published; at most ``max_packets``
        packets of ``max_payload`` bytes: the requester asks again for the rest)."""
        last = min(seq + count - 1, self.published)
        out: list[bytes] = []
        a = max(seq, 1)
        while a <= last and len(out) < max_packets:
            out.append(self.packet(a, last))
            a += HEADER.unpack_from(out[-1])[2]
        return out


# ------------------------------------------------------------------------------------------- server
def _runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs (first, last) of a set of sequence numbers."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out


class FeedServer:
    """Replays ITCH (a buffer or file; ``framing`` length or zero_prefix) as MoldUDP64 packets on multicast
    ``group``:``port`` through the interface with address ``iface``, at ``rate`` messages/s (0: as fast as
    the socket takes them), with heartbeats every ``heartbeat_s`` seconds while idle and the end-of-session
    packet (repeated every ``heartbeat_s``) after the last message. A re-request server on
    ``rerequest_host``:``rerequest_port`` (0: any free port; ``rerequest_address`` tells) answers
    MoldUDP64 requests over unicast from the retransmission buffer, with up to ``resend_packets`` packets
    per request. Sequence numbers in ``drop`` are never multicast (only re-sent on request).

    ``sent``: messages multicast; ``stats``: every counter.
    """

    def __init__(self, itch: bytes | Path, group: str, port: int, *, rate: float = 0, session: str = "GREEKFIRE",
                 rerequest_port: int = 0, drop: Iterable[int] = (), framing: str = "length",
                 iface: str = "127.0.0.1", rerequest_host: str = "127.0.0.1", ttl: int = 1,
                 heartbeat_s: float = 0.5, max_payload: int = MAX_PAYLOAD, resend_packets: int = 64) -> None:
        check_group(group, port)
        if rate < 0:
            raise DataError("rate", rate, "messages per second >= 0 (0: as fast as possible)")
        if heartbeat_s <= 0:
            raise DataError("heartbeat_s", heartbeat_s, "seconds > 0")
        self.group, self.port, self.iface, self.rate, self.ttl = group, port, iface, float(rate), ttl
        self.session = _session_bytes(session)
        self.heartbeat_s = heartbeat_s
        self.resend_packets = resend_packets
        stream, offsets, self.input_errors = load_itch(itch if isinstance(itch, bytes) else Path(itch), framing)
        self.buffer = RetransmissionBuffer(stream, offsets, self.session, max_payload)
        n = len(self.buffer)
        self.drop = {s for s in drop if 1 <= s <= n}
        # a dropped run travels in packets of its own, so the gaps are exactly the runs
        self._breaks = sorted({a for a, _ in _runs(self.drop)} | {b + 1 for _, b in _runs(self.drop)} | {n + 1})
        self.per_packet = 65534 if rate == 0 else max(1, min(65534, int(rate / 1000)))  # a packet per ms at most
        self._rr = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._rr.bind((rerequest_host, rerequest_port))
        except OSError as exc:
            self._rr.close()
            raise UnavailableError(f"re-request port {rerequest_host}:{rerequest_port}",
                                   exc.strerror or str(exc)) from exc
        self.rerequest_address: tuple[str, int] = self._rr.getsockname()[:2]
        self._stop = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sent = 0
        self.stats: dict[str, Any] = {
            "messages": n, "sent": 0, "packets_sent": 0, "dropped": 0, "dropped_packets": 0,
            "heartbeats": 0, "end_of_session": 0, "send_errors": 0, "requests": 0, "resent": 0,
            "resent_packets": 0, "bad_requests": 0, "unanswerable_requests": 0, "input_errors": self.input_errors,
        }

    def start(self) -> None:
        """Start sending (a thread) and answering re-requests (another)."""
        self._mc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            self._mc.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(self.iface))
            self._mc.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            self._mc.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
            self._mc.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self._mc.connect((self.group, self.port))
        except OSError as exc:
            self._mc.close()
            raise UnavailableError(f"multicast {self.group}:{self.port} via {self.iface}",
                                   exc.strerror or str(exc)) from exc
        for fn in (self._send_loop, self._rerequest_loop):
            t = threading.Thread(target=fn, name=f"feed-{fn.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def wait_done(self, timeout_s: float | None = None) -> bool:
        """Wait until every message was sent (the end-of-session packet is out); True when it was."""
        return self._done.wait(timeout_s)

    def stop(self) -> None:
        """Stop sending and answering; closes the sockets."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if hasattr(self, "_mc"):
            self._mc.close()
        self._rr.close()

    def __enter__(self) -> FeedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _send(self, pkt: bytes) -> bool:
        for _ in range(1000):
            try:
                self._mc.send(pkt)
                return True
            except (BlockingIOError, InterruptedError):
                time.sleep(0)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # loopback without listeners may refuse: counted
                    self.stats["send_errors"] += 1
                    return False
                time.sleep(0.0001)
        self.stats["send_errors"] += 1
        return False

    def _send_loop(self) -> None:
        st, buf, stop = self.stats, self.buffer, self._stop
        t0 = time.perf_counter()
        last = t0
        n, seq, brk = len(buf), 1, 0
        while seq <= n:
            while self._breaks[brk] <= seq:
                brk += 1
            pkt = buf.packet(seq, min(self._breaks[brk] - 1, seq + self.per_packet - 1))
            count = HEADER.unpack_from(pkt)[2]
            if self.rate > 0:
                due = t0 + (seq - 1) / self.rate
                while not stop.is_set():
                    now = time.perf_counter()
                    if now >= due:
                        break
                    if now - last >= self.heartbeat_s:
                        self._send(heartbeat(self.session, seq))
                        st["heartbeats"] += 1
                        last = now
                    stop.wait(min(due - now, self.heartbeat_s))
            if stop.is_set():
                return
            buf.published = seq + count - 1  # before the send: a request right after it can be answered
            if seq in self.drop:
                st["dropped"] += count
                st["dropped_packets"] += 1
            elif self._send(pkt):
                self.sent += count
                st["sent"] = self.sent
                st["packets_sent"] += 1
            last = time.perf_counter()
            seq += count
        eos = end_of_session(self.session, n + 1)
        while not stop.is_set():
            self._send(eos)
            st["end_of_session"] += 1
            self._done.set()
            stop.wait(self.heartbeat_s)

    def _rerequest_loop(self) -> None:
        st, sock = self.stats, self._rr
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                continue
            try:
                data, addr = sock.recvfrom(2048)
            except OSError:
                continue
            try:
                sess, seq, count = parse_request(data)
            except DataError:
                st["bad_requests"] += 1
                continue
            if sess != self.session:
                st["bad_requests"] += 1
                continue
            st["requests"] += 1
            pkts = self.buffer.packets(seq, count, self.resend_packets)
            if not pkts:
                st["unanswerable_requests"] += 1  # not sent yet, or past the end of the session
                continue
            for p in pkts:
                try:
                    sock.sendto(p, addr)
                except OSError:
                    st["send_errors"] += 1
                    break
                st["resent_packets"] += 1
                st["resent"] += HEADER.unpack_from(p)[2]


def serve_feed(path: str | Path, group: str = DEFAULT_GROUP, port: int = DEFAULT_PORT, rate: float = 0,
               rerequest_port: int = 0, duration: float | None = None, *, session: str = "GREEKFIRE",
               framing: str = "length", iface: str = "127.0.0.1", rerequest_host: str = "127.0.0.1",
               ttl: int = 1, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """What ``greekfire hft feed-server ITCH_FILE --rate N`` runs: replay the file on ``group``:``port`` at
    ``rate`` messages/s (0: as fast as possible) and answer re-requests on ``rerequest_host``:
    ``rerequest_port``, for ``duration`` seconds (None: until interrupted, Ctrl-C). Blocks; returns the
    server's counters. A missing, empty or unreadable file raises :class:`InputFileError` (one line)."""
    if duration is not None and duration <= 0:
        raise DataError("duration", duration, "seconds > 0, or None to run until interrupted")
    server = FeedServer(Path(path), group, port, rate=rate, session=session, rerequest_port=rerequest_port,
                        framing=framing, iface=iface, rerequest_host=rerequest_host, ttl=ttl)
    host, rport = server.rerequest_address
    if log is not None:
        pace = f"{rate:,.0f} msg/s" if rate else "as fast as possible"
        log(f"feed: {server.stats['messages']:,} messages of {Path(path).name} on {group}:{port} via {iface}, "
            f"{pace}; session {server.session.decode().strip()}; re-requests on {host}:{rport}")
    server.start()
    try:
        server._stop.wait(duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    if log is not None:
        st = server.stats
        log(f"feed: sent {st['sent']:,} messages in {st['packets_sent']:,} packets, re-sent {st['resent']:,} "
            f"on {st['requests']:,} requests")
    return dict(server.stats)


# ------------------------------------------------------------------------------------------- handler
class FeedHandler:
    """Receives MoldUDP64 from ``transport``, puts packets in sequence order, asks the re-request server
    at ``rerequest`` (host, port; None: no recovery) for every gap, and delivers ITCH messages in
    sequence order with their receive timestamps (ns) through :meth:`poll`.

    A gap is asked for at once and again every ``retry_s`` seconds, ``retries`` times (counted afresh
    whenever a retransmission fills part of it; the first ``max_inflight`` gaps at a time); then (or, without
    a re-request server, after ``reorder_s``) it is given up: counted in ``stats["unrecovered"]`` with
    its range in ``stats["unrecovered_ranges"]``, and delivery goes on after it. At most ``max_held``
    packets wait behind a gap (past that the oldest gap is given up, and counted). ``session`` (None: the
    first packet's) filters out packets of other sessions (``stats["bad_packets"]``).

    ``stats``: packets (multicast packets read), retransmitted (packets from the re-request server),
    messages (delivered), gaps (missing ranges seen), recovered / unrecovered (messages), duplicates,
    drops (packets the transport or kernel dropped: the consumer fell behind), retransmit_drops (answers
    dropped at the re-request socket), requests, request_errors,
    bad_packets, held, ended (the end-of-session packet was seen), next_seq.
    """

    def __init__(self, transport: Transport, rerequest: tuple[str, int] | None, session: str | None = None, *,
                 retry_s: float = 0.05, retries: int = 20, reorder_s: float = 0.002, max_held: int = 1 << 16,
                 batch: int = 1024, max_inflight: int = 8) -> None:
        self.transport = transport
        self._rx = MoldReceiver(session=_session_bytes(session) if session else None, hold=True,
                                max_held=max_held, keep=False)
        self.retry_s, self.retries, self.reorder_s, self.batch = retry_s, retries, reorder_s, batch
        self.max_inflight = max_inflight
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)
        self._req: socket.socket | None = None
        if rerequest is not None:
            self._req = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            big_rcvbuf(self._req, 16 << 20)
            self._req.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self._req.connect(rerequest)
            self._req.setblocking(False)
        self._asks: dict[int, list[float]] = {}  # first missing seq -> [tries, last ask, first seen]
        self._counted_upto = 0  # highest sequence number already counted in a gap
        self._n = {"packets": 0, "retransmitted": 0, "gaps": 0, "requests": 0, "request_errors": 0,
                   "retransmit_drops": 0}
        self.stats: dict[str, Any] = {}
        self._refresh()

    # -- public
    def poll(self, timeout_s: float = 0.0) -> tuple[list[bytes], list[int]]:
        """Messages now deliverable in sequence order (ITCH, no framing) and the receive time (ns) of each;
        waits up to ``timeout_s`` seconds for at least one. Requests and retries happen here: call it often."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._read()
            self._recover()
            msgs, stamps = self._rx.take()
            now = time.monotonic()
            if msgs or now >= deadline:
                self._refresh()
                return msgs, stamps
            wait = deadline - now
            if self._asks:
                wait = min(wait, self.retry_s / 2, self.reorder_s)
            fd = self.transport.fileno()
            if fd < 0:  # a transport without a descriptor (kernel bypass): busy-poll
                time.sleep(0)
                continue
            select.select([fd, self._req.fileno()] if self._req else [fd], [], [], max(wait, 0.0))

    @property
    def complete(self) -> bool:
        """The end of the session was seen and nothing is missing or waiting."""
        return self._rx.ended and not self._rx.held and not self._rx.pending()

    def collect(self, timeout_s: float) -> tuple[list[bytes], list[int]]:
        """Poll until the session is complete or ``timeout_s`` seconds pass; every message and timestamp."""
        msgs: list[bytes] = []
        stamps: list[int] = []
        deadline = time.monotonic() + timeout_s
        while not self.complete and time.monotonic() < deadline:
            m, t = self.poll(min(0.05, max(deadline - time.monotonic(), 0.0)))
            msgs += m
            stamps += t
        m, t = self.poll(0)
        return msgs + m, stamps + t

    def close(self) -> None:
        """Close the transport and the re-request socket."""
        self.transport.close()
        if self._req is not None:
            self._req.close()

    # -- inside
    def _read(self) -> None:
        rx, view, n = self._rx, self._view, self._n
        for _ in range(self.batch):
            size, ts = self.transport.recv(view)
            if size == 0:
                break
            n["packets"] += 1
            rx.feed(bytes(view[:size]), ts)
        if self._req is None:
            return
        for _ in range(self.batch):
            try:
                size, anc, _, _ = self._req.recvmsg_into([view], ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # ICMP port unreachable from an earlier request: the server is down
                n["request_errors"] += 1
                continue
            drops = parse_ancillary(anc)[2]
            if drops >= 0:
                n["retransmit_drops"] = drops
            n["retransmitted"] += 1
            rx.feed(bytes(view[:size]), time.time_ns(), resent=True)

    def _recover(self) -> None:
        rx = self._rx
        if not rx.held and rx.high_seq <= rx.next_seq:
            self._asks.clear()
            return
        now = time.monotonic()
        while True:
            ranges = rx.pending()
            asks = {}
            for a, b in ranges:
                if b > self._counted_upto:
                    if a > self._counted_upto:
                        self._n["gaps"] += 1
                    self._counted_upto = b
                asks[a] = self._asks.get(a) or [0, -1e18, now]
            self._asks = asks
            gave_up = False
            for a, b in ranges[: self.max_inflight]:  # the earliest first: they hold delivery up
                st = asks[a]
                if self._req is None:
                    if a == rx.next_seq and now - st[2] >= self.reorder_s:
                        self._give_up(a, b)
                        gave_up = True
                        break
                    continue
                if now - st[1] < self.retry_s:
                    continue
                if st[0] >= self.retries:
                    if a == rx.next_seq:
                        self._give_up(a, b)
                        gave_up = True
                        break
                    continue
                try:
                    self._req.send(request(rx.session or b"", a, min(b - a + 1, END_OF_SESSION - 1)))
                    self._n["requests"] += 1
                except OSError:
                    self._n["request_errors"] += 1
                st[0] += 1
                st[1] = now
            if not gave_up:
                return

    def _give_up(self, a: int, b: int) -> None:
        self._rx.skip(b)  # recorded in the receiver's gaps, with those it gave up itself (max_held)

    def _refresh(self) -> None:
        rx = self._rx
        self.stats.update(self._n)
        self.stats.update({
            "messages": rx.messages, "recovered": rx.resent_messages, "duplicates": rx.duplicates,
            "drops": int(getattr(self.transport, "drops", 0)),
            "bad_packets": len(rx.bad_packets), "held": rx.held, "ended": rx.ended, "next_seq": rx.next_seq,
            "unrecovered": rx.missing(), "unrecovered_ranges": list(rx.gaps),
        })
        self.stats["gaps"] = max(self._n["gaps"], len(rx.gaps))
