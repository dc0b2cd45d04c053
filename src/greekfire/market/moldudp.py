"""MoldUDP64: Nasdaq's packet framing for ITCH over UDP multicast.

A packet is a 20-byte header -- session (10 alpha), sequence number of the first message (uint64 BE),
message count (uint16 BE) -- followed by ``count`` message blocks, each a 2-byte big-endian length and
the message. A count of 0 is a heartbeat (the sequence number is the next one expected); 0xFFFF marks the
end of the session. Because a message block is framed exactly as in Nasdaq's binary files, the payloads
of consecutive packets concatenate into a length-framed ITCH stream.

:class:`MoldReceiver` puts packets back in order, drops duplicates, and records every gap (the
sequence numbers it never saw) -- a gap is reported, never silently skipped over. With ``hold=True`` it
holds the packets that arrive after a gap until the gap is filled (by a retransmission) or given up
(:meth:`MoldReceiver.skip`), which is what a feed handler with a re-request server needs.

A re-request (:func:`request`) has the header's layout: session, first sequence number wanted, message
count; the server answers over unicast with ordinary packets.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from greekfire.core.errors import DataError

HEADER = struct.Struct(">10sQH")
HEARTBEAT = 0
END_OF_SESSION = 0xFFFF


def _session_bytes(session: bytes | str) -> bytes:
    s = session.encode() if isinstance(session, str) else bytes(session)
    if len(s) > 10:
        raise DataError("session", session, "at most 10 characters")
    return s.ljust(10)


def packet(session: bytes | str, seq: int, messages: list[bytes]) -> bytes:
    """One packet carrying ``messages`` (raw ITCH messages) starting at sequence number ``seq``."""
    if len(messages) >= END_OF_SESSION:
        raise DataError("messages", len(messages), "at most 65534 messages per packet")
    body = b"".join(len(m).to_bytes(2, "big") + m for m in messages)
    return HEADER.pack(_session_bytes(session), seq, len(messages)) + body


def heartbeat(session: bytes | str, next_seq: int) -> bytes:
    """A heartbeat packet (count 0) announcing the next sequence number."""
    return HEADER.pack(_session_bytes(session), next_seq, HEARTBEAT)


def end_of_session(session: bytes | str, next_seq: int) -> bytes:
    """The end-of-session packet (count 0xFFFF)."""
    return HEADER.pack(_session_bytes(session), next_seq, END_OF_SESSION)


def request(session: bytes | str, seq: int, count: int) -> bytes:
    """A re-request packet: ``count`` messages (1..65534) from sequence number ``seq``."""
    if not 1 <= count < END_OF_SESSION:
        raise DataError("count", count, "a re-request asks for 1..65534 messages")
    if seq < 1:
        raise DataError("seq", seq, "sequence numbers start at 1")
    return HEADER.pack(_session_bytes(session), seq, count)


def parse_request(pkt: bytes) -> tuple[bytes, int, int]:
    """(session, first sequence number, count) of a re-request packet; DataError when it is not one."""
    if len(pkt) != HEADER.size:
        raise DataError("request", len(pkt), f"a MoldUDP64 re-request is {HEADER.size} bytes")
    sess, seq, count = HEADER.unpack(pkt)
    if seq < 1 or not 1 <= count < END_OF_SESSION:
        raise DataError("request", (seq, count), "sequence number >= 1 and a count of 1..65534")
    return sess, seq, count


def packetize(stream: bytes, session: bytes | str = "GREEKFIRE", first_seq: int = 1, max_payload: int = 1400,
              end: bool = True, max_messages: int = END_OF_SESSION - 1,
              breaks: Collection[int] = ()) -> list[bytes]:
    """Cut a length-framed ITCH stream into MoldUDP64 packets of at most ``max_payload`` payload bytes and
    ``max_messages`` messages; a packet also starts at every sequence number in ``breaks``.

    Appends the end-of-session packet when ``end``.
    """
    if not 1 <= max_messages < END_OF_SESSION:
        raise DataError("max_messages", max_messages, "1..65534 messages per packet")
    sess = _session_bytes(session)
    buf = memoryview(stream)
    out: list[bytes] = []
    pos, seq, n = 0, first_seq, len(stream)
    while pos < n:
        start, count = pos, 0
        while pos < n and count < max_messages:
            if count and seq + count in breaks:
                break
            if pos + 2 > n:
                raise DataError("stream", n, "truncated length prefix", position=pos)
            ln = int.from_bytes(buf[pos : pos + 2], "big")
            if count and pos + 2 + ln - start > max_payload:
                break
            pos += 2 + ln
            count += 1
        if pos > n:
            raise DataError("stream", n, "truncated message", position=start)
        out.append(HEADER.pack(sess, seq, count) + bytes(buf[start:pos]))
        seq += count
    if end:
        out.append(HEADER.pack(sess, seq, END_OF_SESSION))
    return out


@dataclass
class MoldReceiver:
    """Re-sequences MoldUDP64 packets of one session into a length-framed message stream.

    ``gaps`` holds (first missing, last missing) sequence numbers; ``bad_packets`` (packet index,
    reason) for packets that could not be read (short header, wrong session, truncated block).

    ``hold=True``: a packet after a gap is held (at most ``max_held`` packets; past that the oldest gap is
    given up) instead of skipping the gap; :meth:`pending` lists the ranges still missing, a retransmission
    fed in fills them, :meth:`skip` gives one up. ``gaps`` then lists only the ranges given up. ``keep=False``
    forgets what :meth:`take`/:meth:`drain` returned (a long-running handler); ``ts`` given to :meth:`feed`
    (receive time, ns) comes back with each message from :meth:`take`.
    """

    session: bytes | None = None
    next_seq: int = 1
    gaps: list[tuple[int, int]] = field(default_factory=list)
    bad_packets: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    packets: int = 0
    messages: int = 0
    ended: bool = False
    hold: bool = False
    max_held: int = 1 << 16
    keep: bool = True
    high_seq: int = 0  # one past the highest sequence number seen or announced (hold mode)
    _chunks: list[bytes] = field(default_factory=list)
    _chunk_ts: list[int] = field(default_factory=list)
    _drained: int = 0
    resent_messages: int = 0  # delivered from packets fed as retransmissions
    _held: dict[int, tuple[bytes, int, int, int, bool]] = field(default_factory=dict)  # seq -> pkt, count, ts, index, resent
    _heap: list[int] = field(default_factory=list)

    def feed(self, pkt: bytes, ts: int = 0, resent: bool = False) -> int:
        """Take one packet (``ts``: its receive time, ns; ``resent``: a retransmission, whose messages are
        counted in ``resent_messages`` when delivered); returns the number of new in-order messages it
        delivered (in hold mode, with the held packets it released)."""
        index = self.packets
        self.packets += 1
        if len(pkt) < HEADER.size:
            self.bad_packets.append((index, "short_header"))
            return 0
        sess, seq, count = HEADER.unpack_from(pkt)
        if self.session is None:
            self.session = sess
        elif sess != self.session:
            self.bad_packets.append((index, "wrong_session"))
            return 0
        if count in (HEARTBEAT, END_OF_SESSION):
            self.ended = self.ended or count == END_OF_SESSION
            if seq > self.next_seq:
                if self.hold:
                    self.high_seq = max(self.high_seq, seq)
                else:
                    self.gaps.append((self.next_seq, seq - 1))
                    self.next_seq = seq
            return 0
        if seq + count <= self.next_seq:
            self.duplicates += 1
            return 0
        if seq > self.next_seq:
            if self.hold:
                self._hold(pkt, seq, count, ts, index, resent)
                return 0
            self.gaps.append((self.next_seq, seq - 1))
            self.next_seq = seq
        delivered = self._deliver(pkt, seq, count, ts, index, resent)
        if self.hold and self._held:
            delivered += self._release()
        return delivered

    def _deliver(self, pkt: bytes, seq: int, count: int, ts: int, index: int, resent: bool = False) -> int:
        # walk the blocks, skipping those already delivered (an overlapping retransmission)
        pos, skip, end = HEADER.size, self.next_seq - seq, len(pkt)
        start = pos
        for i in range(count):
            nxt = pos + 2 + ((pkt[pos] << 8) | pkt[pos + 1]) if pos + 2 <= end else end + 1
            if nxt > end:
                self.bad_packets.append((index, f"truncated_block_{i}"))
                count = i
                break
            if i == skip:
                start = pos
            pos = nxt
        delivered = max(count - skip, 0)
        if delivered:
            self._chunks.append(pkt[start:pos])
            self._chunk_ts.append(ts)
            self.next_seq += delivered
            self.messages += delivered
            if resent:
                self.resent_messages += delivered
        self.high_seq = max(self.high_seq, self.next_seq)
        return delivered

    def _hold(self, pkt: bytes, seq: int, count: int, ts: int, index: int, resent: bool) -> None:
        old = self._held.get(seq)
        if old is not None and old[1] >= count:
            self.duplicates += 1
            return
        if old is None:
            heapq.heappush(self._heap, seq)
        self._held[seq] = (pkt, count, ts, index, resent)
        self.high_seq = max(self.high_seq, seq + count)
        if len(self._held) > self.max_held:  # no room left: the oldest gap is given up (and recorded)
            self.skip(self._heap[0] - 1)

    def _release(self) -> int:
        """Deliver the held packets that now follow on; returns the messages delivered."""
        out = 0
        while self._heap and self._heap[0] <= self.next_seq:
            seq = heapq.heappop(self._heap)
            pkt, count, ts, index, resent = self._held.pop(seq)
            if seq + count <= self.next_seq:
                self.duplicates += 1  # a retransmission got there first
                continue
            out += self._deliver(pkt, seq, count, ts, index, resent)
        return out

    @property
    def held(self) -> int:
        """Packets held behind a gap (hold mode)."""
        return len(self._held)

    def pending(self) -> list[tuple[int, int]]:
        """(first, last) sequence numbers still missing ahead of ``next_seq`` (hold mode), in order."""
        out: list[tuple[int, int]] = []
        cur = self.next_seq
        for seq in sorted(self._held):
            if seq > cur:
                out.append((cur, seq - 1))
            cur = max(cur, seq + self._held[seq][1])
        if self.high_seq > cur:
            out.append((cur, self.high_seq - 1))
        return out

    def skip(self, last: int) -> int:
        """Give up sequence numbers ``next_seq..last``: recorded in ``gaps``, then the held packets that follow
        are delivered; returns the messages delivered."""
        if last < self.next_seq:
            return 0
        self.gaps.append((self.next_seq, last))
        self.next_seq = last + 1
        self.high_seq = max(self.high_seq, self.next_seq)
        return self._release()

    def take(self) -> tuple[list[bytes], list[int]]:
        """The messages delivered since the last take/drain, one bytes each (no framing), with the receive
        time (ns) of the packet that carried each one."""
        msgs: list[bytes] = []
        stamps: list[int] = []
        for chunk, ts in zip(self._chunks[self._drained :], self._chunk_ts[self._drained :], strict=True):
            pos, end = 0, len(chunk)
            while pos < end:
                ln = (chunk[pos] << 8) | chunk[pos + 1]
                msgs.append(chunk[pos + 2 : pos + 2 + ln])
                pos += 2 + ln
            stamps.extend([ts] * (len(msgs) - len(stamps)))
        self._mark_drained()
        return msgs, stamps

    def _mark_drained(self) -> None:
        if self.keep:
            self._drained = len(self._chunks)
        else:
            self._chunks.clear()
            self._chunk_ts.clear()
            self._drained = 0

    def feed_all(self, packets: list[bytes]) -> int:
        """Feed packets in order; returns the messages delivered."""
        return sum(self.feed(p) for p in packets)

    def stream(self) -> bytes:
        """Everything delivered so far as one length-framed ITCH stream (with ``keep=False``: what has not
        been taken yet)."""
        return b"".join(self._chunks)

    def drain(self) -> bytes:
        """What was delivered since the last drain (length-framed), for incremental consumers."""
        out = b"".join(self._chunks[self._drained :])
        self._mark_drained()
        return out

    def missing(self) -> int:
        """Messages lost in gaps."""
        return sum(b - a + 1 for a, b in self.gaps)

    def report(self) -> dict[str, object]:
        return {"packets": self.packets, "messages": self.messages, "next_seq": self.next_seq,
                "gaps": list(self.gaps), "missing": self.missing(), "duplicates": self.duplicates,
                "bad_packets": list(self.bad_packets), "ended": self.ended, "held": self.held,
                "pending": self.pending() if self.hold else []}


def drop(packets: list[bytes], indexes: list[int]) -> list[bytes]:
    """The packets without those at ``indexes`` (to simulate loss in tests and demos)."""
    gone = set(indexes)
    return [p for i, p in enumerate(packets) if i not in gone]


def as_array(stream: bytes) -> np.ndarray:
    """A stream as a uint8 array (what the ITCH decoder takes)."""
    return np.frombuffer(stream, np.uint8)
