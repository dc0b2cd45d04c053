"""The feed's codecs without sockets: MoldUDP64 re-requests, the retransmission buffer, file loading, the
receiver's hold mode (packets held behind a gap until it is filled or given up), the raw-socket parser."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from greekfire.core.errors import DataError, InputFileError
from greekfire.hft import feed, transport
from greekfire.market import itch, moldudp, synth


def test_request_round_trip_and_bad_requests():
    pkt = moldudp.request("SESS", 1234, 17)
    assert len(pkt) == 20
    assert moldudp.parse_request(pkt) == (b"SESS      ", 1234, 17)
    with pytest.raises(DataError, match="20 bytes"):
        moldudp.parse_request(pkt + b"x")
    with pytest.raises(DataError, match="count"):
        moldudp.request("SESS", 1, 0)
    with pytest.raises(DataError, match="count"):
        moldudp.request("SESS", 1, 0xFFFF)
    with pytest.raises(DataError):
        moldudp.parse_request(moldudp.HEADER.pack(b"SESS      ", 0, 3))  # sequence numbers start at 1
    with pytest.raises(DataError, match="10 characters"):
        moldudp.request("ELEVENCHARS", 1, 1)


def test_packetize_breaks_and_message_cap():
    msgs = [itch.encode_message("D", order_ref=i) for i in range(1, 21)]
    stream = itch.frame(msgs)
    pkts = moldudp.packetize(stream, "S", end=False, max_messages=6, breaks={4, 9})
    heads = [moldudp.HEADER.unpack_from(p)[1:] for p in pkts]
    assert heads == [(1, 3), (4, 5), (9, 6), (15, 6)]
    assert b"".join(p[20:] for p in pkts) == stream
    with pytest.raises(DataError):
        moldudp.packetize(stream, max_messages=0)


def _buffer(n: int = 500, payload: int = 300) -> tuple[feed.RetransmissionBuffer, bytes, np.ndarray]:
    stream = synth.synthetic_stream(n, n_stocks=2, seed=5)
    s, off, errors = feed.load_itch(stream)
    assert s == stream and errors == 0 and off.shape[0] == len(itch.scan(stream)) + 1
    return feed.RetransmissionBuffer(s, off, "RB", max_payload=payload), s, off


def test_retransmission_buffer_answers_exactly_the_range_asked():
    buf, stream, off = _buffer()
    n = len(buf)
    buf.published = n
    pkts = buf.packets(37, 100, max_packets=1000)
    rx = moldudp.MoldReceiver(next_seq=37)
    assert rx.feed_all(pkts) == 100 and rx.gaps == []
    assert rx.stream() == stream[off[36] : off[136]]
    assert all(len(p) - 20 <= 300 for p in pkts) and len(pkts) > 1
    assert {moldudp.HEADER.unpack_from(p)[0] for p in pkts} == {b"RB        "}
    # at most max_packets: the requester asks again for the rest
    short = buf.packets(1, n, max_packets=2)
    assert len(short) == 2 and moldudp.HEADER.unpack_from(short[0])[1:] == (1, moldudp.HEADER.unpack_from(short[0])[2])
    # only what was published; nothing past the end
    buf.published = 50
    got = buf.packets(40, 100, max_packets=1000)
    last = moldudp.HEADER.unpack_from(got[-1])
    assert last[1] + last[2] - 1 == 50
    assert buf.packets(51, 10) == [] and buf.packets(n + 5, 1) == []


def test_retransmission_buffer_one_message_larger_than_the_payload_still_goes():
    buf, _, _ = _buffer(payload=10)
    buf.published = len(buf)
    pkts = buf.packets(1, 3)
    assert [moldudp.HEADER.unpack_from(p)[1:] for p in pkts] == [(1, 1), (2, 1), (3, 1)]


def test_load_itch_zero_prefix_becomes_length_framing(tmp_path: Path):
    day = synth.synthetic_day(300, n_stocks=2, seed=9)
    length = itch.encode_stream(day, "length")
    zero = itch.encode_stream(day, "zero_prefix")
    f = tmp_path / "day.itch"
    f.write_bytes(zero)
    s, off, errors = feed.load_itch(f, "zero_prefix")
    assert s == length and errors == 0 and off[-1] == len(length)
    with pytest.raises(DataError, match="zero_prefix"):
        feed.load_itch(f, "length")
    # a bad message in the middle is skipped and counted; the rest goes on
    bad = bytearray(length)
    first = itch.scan(length).offsets
    bad[first[10]] = ord("?")  # an unknown type with a valid length: skipped by its length
    s2, off2, errors2 = feed.load_itch(bytes(bad))
    assert errors2 == 1 and off2.shape[0] == off.shape[0] - 1
    assert s2 == length[: int(off[10])] + length[int(off[11]) :]  # the stream without message 11
    empty = tmp_path / "empty.itch"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError, match="empty"):
        feed.load_itch(empty)
    with pytest.raises(InputFileError, match="no such file"):
        feed.load_itch(tmp_path / "absent.itch")
    junk = tmp_path / "junk.itch"
    junk.write_bytes(b"\x00\x01")
    with pytest.raises(InputFileError, match="no ITCH 5.0 message"):
        feed.load_itch(junk)


def _packets(n_msgs: int = 30, per: int = 3) -> tuple[list[bytes], list[bytes]]:
    msgs = [itch.encode_message("D", order_ref=i) for i in range(1, n_msgs + 1)]
    return msgs, moldudp.packetize(itch.frame(msgs), "H", max_messages=per)


def test_hold_mode_waits_for_the_gap_then_releases_in_order():
    msgs, pkts = _packets()
    rx = moldudp.MoldReceiver(hold=True, keep=False)
    assert rx.feed(pkts[0], ts=100) == 3
    assert rx.feed(pkts[2], ts=300) == 0 and rx.feed(pkts[4], ts=500) == 0  # held behind 4..6 and 10..12
    assert rx.pending() == [(4, 6), (10, 12)] and rx.held == 2 and rx.gaps == []
    assert rx.feed(pkts[2]) == 0 and rx.duplicates == 1  # the same held packet again
    assert rx.feed(pkts[1], ts=200) == 6  # fills 4..6 and releases 7..9
    assert rx.pending() == [(10, 12)]
    got, stamps = rx.take()
    assert got == msgs[:9] and stamps == [100] * 3 + [200] * 3 + [300] * 3
    assert rx.stream() == b""  # keep=False forgets what was taken
    # give 10..12 up: recorded as a gap, 13..15 released
    assert rx.skip(12) == 3 and rx.gaps == [(10, 12)] and rx.missing() == 3
    got, stamps = rx.take()
    assert got == msgs[12:15] and stamps == [500] * 3
    # a late retransmission of a given-up range is a duplicate
    assert rx.feed(pkts[3]) == 0 and rx.duplicates == 2


def test_hold_mode_end_of_session_announces_a_missing_tail():
    msgs, pkts = _packets()
    rx = moldudp.MoldReceiver(hold=True)
    rx.feed_all(pkts[:8])  # 1..24; 25..30 lost
    rx.feed(pkts[-1])  # end of session, next_seq 31
    assert rx.ended and rx.pending() == [(25, 30)]
    rx.feed(pkts[8])
    rx.feed(pkts[9])
    assert rx.pending() == [] and itch.frame(msgs) == rx.stream()


def test_hold_mode_overlapping_retransmission_and_full_hold():
    msgs, pkts = _packets()
    rx = moldudp.MoldReceiver(hold=True, max_held=2)
    rx.feed(pkts[0])
    rx.feed(pkts[2])
    rx.feed(pkts[3])
    # one retransmission covering 4..9 (overlapping the held 7..9)
    assert rx.feed(moldudp.packet("H", 4, msgs[3:9])) == 9
    assert rx.duplicates == 1 and rx.next_seq == 13
    # more than max_held packets behind a gap: the oldest gap is given up, not silently skipped
    rx.feed(pkts[5])
    rx.feed(pkts[6])
    rx.feed(pkts[7])
    assert rx.gaps == [(13, 15)] and rx.next_seq == 25 and rx.held == 0


def test_bpf_program_and_transport_protocol():
    prog = transport._bpf_udp("239.1.2.3", 26400)
    ins = [struct.unpack_from("HBBI", prog, i) for i in range(0, len(prog), 8)]
    assert len(ins) == 13 and ins[3][3] == struct.unpack(">I", socket.inet_aton("239.1.2.3"))[0]
    assert ins[10][3] == 26400 and ins[-1] == (0x06, 0, 0, 0)
    for i, (code, jt, jf, _) in enumerate(ins):  # every jump lands inside the program
        if code & 0x07 == 0x05:
            assert i + 1 + jt < len(ins) and i + 1 + jf < len(ins)
    assert feed._runs([5, 3, 4, 9, 11, 10, 20]) == [(3, 5), (9, 11), (20, 20)]
    with pytest.raises(DataError, match="multicast"):
        feed.UdpMulticast("127.0.0.1", 26400)
    with pytest.raises(DataError, match="port"):
        feed.UdpMulticast("239.1.2.3", 0)


def test_parse_ancillary_timestamps():
    sw = struct.pack("6q", 12, 345, 0, 0, 0, 0)
    hw = struct.pack("6q", 12, 345, 0, 0, 99, 7)
    assert transport.parse_ancillary([(socket.SOL_SOCKET, transport.SO_TIMESTAMPING, sw)]) == (12_000_000_345, False, -1)
    assert transport.parse_ancillary([(socket.SOL_SOCKET, transport.SO_TIMESTAMPING, hw),
                            (socket.SOL_SOCKET, transport.SO_RXQ_OVFL, struct.pack("I", 41))]) == (99_000_000_007, True, 41)
    assert transport.parse_ancillary([]) == (0, False, -1)


def test_hold_mode_heartbeat_reveals_a_lost_packet_before_the_next_one():
    msgs, pkts = _packets()
    rx = moldudp.MoldReceiver(hold=True)
    rx.feed(pkts[0])  # 1..3; 4..6 lost, and the server is idle
    rx.feed(moldudp.heartbeat("H", 7))
    assert rx.pending() == [(4, 6)] and not rx.ended and rx.gaps == []
    rx.feed(moldudp.heartbeat("H", 7))  # the same heartbeat again: nothing new
    assert rx.pending() == [(4, 6)] and rx.duplicates == 0
    assert rx.feed(pkts[1]) == 3 and rx.pending() == []


def test_hold_mode_counts_resent_messages_when_they_are_delivered():
    msgs, pkts = _packets()
    rx = moldudp.MoldReceiver(hold=True)
    rx.feed(pkts[0])
    rx.feed(pkts[4])  # 13..15 held; 4..12 missing
    assert rx.feed(pkts[3], resent=True) == 0  # 10..12 resent, held until 4..9 come
    assert rx.resent_messages == 0
    assert rx.feed(moldudp.packet("H", 4, msgs[3:9]), resent=True) == 12
    assert rx.resent_messages == 9 and rx.messages == 15


class _Memory:
    """An in-memory transport (no descriptor: the handler busy-polls)."""

    def __init__(self, packets: list[bytes]) -> None:
        self.packets = list(packets)

    def recv(self, buf: memoryview) -> tuple[int, int]:
        if not self.packets:
            return 0, 0
        pkt = self.packets.pop(0)
        buf[: len(pkt)] = pkt
        return len(pkt), 7

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        self.packets.clear()


def test_handler_without_rerequest_reports_every_gap_even_past_max_held():
    msgs, pkts = _packets(60, 3)
    assert isinstance(_Memory([]), feed.Transport)
    lossy = moldudp.drop(pkts, [2, 12])  # 7..9 and 37..39 lost
    # a gap that may wait 10 s for a late packet, but only 3 packets may wait behind it: given up early
    h = feed.FeedHandler(_Memory(lossy), None, reorder_s=10.0, max_held=3)
    got, stamps = h.collect(timeout_s=30)
    assert h.complete and h.stats["unrecovered_ranges"] == [(7, 9), (37, 39)] and h.stats["unrecovered"] == 6
    assert got == msgs[:6] + msgs[9:36] + msgs[39:] and set(stamps) == {7}
    assert h.stats["gaps"] == 2 and h.stats["recovered"] == 0 and h.stats["messages"] == 54
