"""MoldUDP64: Nasdaq's packet framing for ITCH over UDP multicast.

A packet is a 20-byte header -- session (10 alpha), sequence number of the first message (uint64 BE),
message count (uint16 BE) -- followed by ``count`` message blocks, each a 2-byte big-endian length and
the message. A count of 0 is a heartbeat (the sequence number is the next one expected); 0xFFFF marks the
end of the session. Because a message block is framed exactly as in Nasdaq's binary files, the payloads
of consecutive packets concatenate into a length-framed ITCH stream.

:class:`MoldReceiver` puts packets back in order, drops duplicates, and records every gap (the
sequence numbers it never saw) -- a gap is reported, never silently skipped over.
"""

from __future__ import annotations

import struct
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


def packetize(stream: bytes, session: bytes | str = "GREEKFIRE", first_seq: int = 1, max_payload: int = 1400,
              end: bool = True) -> list[bytes]:
    """Cut a length-framed ITCH stream into MoldUDP64 packets of at most ``max_payload`` payload bytes.

    Appends the end-of-session packet when ``end``.
    """
    sess = _session_bytes(session)
    buf = memoryview(stream)
    out: list[bytes] = []
    pos, seq, n = 0, first_seq, len(stream)
    while pos < n:
        start, count = pos, 0
        while pos < n and count < END_OF_SESSION - 1:
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
    """

    session: bytes | None = None
    next_seq: int = 1
    gaps: list[tuple[int, int]] = field(default_factory=list)
    bad_packets: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    packets: int = 0
    messages: int = 0
    ended: bool = False
    _chunks: list[bytes] = field(default_factory=list)
    _drained: int = 0

    def feed(self, pkt: bytes) -> int:
        """Take one packet; returns the number of new in-order messages it delivered."""
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
            if seq > self.next_seq:
                self.gaps.append((self.next_seq, seq - 1))
                self.next_seq = seq
            self.ended = self.ended or count == END_OF_SESSION
            return 0
        if seq + count <= self.next_seq:
            self.duplicates += 1
            return 0
        if seq > self.next_seq:
            self.gaps.append((self.next_seq, seq - 1))
            self.next_seq = seq
        # walk the blocks, skipping those already delivered (an overlapping retransmission)
        pos, skip, end = HEADER.size, self.next_seq - seq, len(pkt)
        start = pos
        for i in range(count):
            if pos + 2 > end or pos + 2 + int.from_bytes(pkt[pos : pos + 2], "big") > end:
                self.bad_packets.append((index, f"truncated_block_{i}"))
                count = i
                break
            if i == skip:
                start = pos
            pos += 2 + int.from_bytes(pkt[pos : pos + 2], "big")
        delivered = max(count - skip, 0)
        if delivered:
            self._chunks.append(pkt[start:pos])
            self.next_seq += delivered
            self.messages += delivered
        return delivered

    def feed_all(self, packets: list[bytes]) -> int:
        """Feed packets in order; returns the messages delivered."""
        return sum(self.feed(p) for p in packets)

    def stream(self) -> bytes:
        """Everything delivered so far as one length-framed ITCH stream."""
        return b"".join(self._chunks)

    def drain(self) -> bytes:
        """What was delivered since the last drain (length-framed), for incremental consumers."""
        out = b"".join(self._chunks[self._drained :])
        self._drained = len(self._chunks)
        return out

    def missing(self) -> int:
        """Messages lost in gaps."""
        return sum(b - a + 1 for a, b in self.gaps)

    def report(self) -> dict[str, object]:
        return {"packets": self.packets, "messages": self.messages, "next_seq": self.next_seq,
                "gaps": list(self.gaps), "missing": self.missing(), "duplicates": self.duplicates,
                "bad_packets": list(self.bad_packets), "ended": self.ended}


def drop(packets: list[bytes], indexes: list[int]) -> list[bytes]:
    """The packets without those at ``indexes`` (to simulate loss in tests and demos)."""
    gone = set(indexes)
    return [p for i, p in enumerate(packets) if i not in gone]


def as_array(stream: bytes) -> np.ndarray:
    """A stream as a uint8 array (what the ITCH decoder takes)."""
    return np.frombuffer(stream, np.uint8)
