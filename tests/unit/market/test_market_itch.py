"""ITCH 5.0 codec, framing, MoldUDP64 sequencing and per-stock books."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from greekfire.core.errors import DataError
from greekfire.market import itch, moldudp, synth
from greekfire.market.book import ADD, OrderBooks, make_events

# lengths from the TotalView-ITCH 5.0 specification, type byte included
SPEC_LENGTHS = dict(S=12, R=39, H=25, Y=20, L=26, V=35, W=12, K=28, J=35, h=21, A=36, F=40, E=31, C=36, X=23,
                    D=19, U=35, P=44, Q=40, B=19, I=50, N=20, O=48)


def random_messages(msg_type: str, n: int, rng: np.random.Generator, seq0: int) -> np.ndarray:
    arr = np.zeros(n, itch.DTYPES[msg_type])
    arr["seq"] = np.arange(seq0, seq0 + n)
    for name, _off, ln, kind in itch.LAYOUTS[msg_type]:
        if kind == "s":
            letters = rng.integers(ord("A"), ord("Z") + 1, size=(n, ln), dtype=np.uint8)
            arr[name] = np.ascontiguousarray(letters).view(f"S{ln}").ravel()
        else:
            hi = 2 ** (8 * ln) - 1 if ln < 8 else 2**63 - 1
            arr[name] = rng.integers(0, hi, size=n, dtype=np.uint64, endpoint=True)
    return arr


def test_lengths_match_the_spec():
    assert itch.SIZES == SPEC_LENGTHS
    assert set(itch.MESSAGE_TYPES) == set("SRHYLVWKJhAFECXDUPQBINO")


@pytest.mark.parametrize("msg_type", list(SPEC_LENGTHS))
def test_round_trip_every_type(msg_type):
    rng = np.random.default_rng(ord(msg_type))
    arr = random_messages(msg_type, 50, rng, 0)
    buf = itch.encode_stream({msg_type: arr})
    assert len(buf) == 50 * (SPEC_LENGTHS[msg_type] + 2)
    out = itch.decode(buf)
    assert out.errors == [] and len(out) == 50
    np.testing.assert_array_equal(out.by_type[msg_type], arr)
    one = itch.encode_message(msg_type, **{k: arr[0][k] for k in arr.dtype.names if k != "seq"})
    assert one == buf[2 : 2 + SPEC_LENGTHS[msg_type]]


def test_mixed_stream_keeps_order_and_field_values():
    rng = np.random.default_rng(1)
    by_type, seq = {}, 0
    for t in SPEC_LENGTHS:
        by_type[t] = random_messages(t, 3, rng, 0)
    # interleave: give every message a distinct global sequence number
    allseq = rng.permutation(3 * len(SPEC_LENGTHS))
    for t in SPEC_LENGTHS:
        by_type[t]["seq"] = allseq[seq : seq + 3]
        seq += 3
    out = itch.decode(itch.encode_stream(by_type))
    for t, a in by_type.items():
        np.testing.assert_array_equal(out.by_type[t], np.sort(a, order="seq"))
    add = itch.encode_message("A", stock_locate=1, timestamp=34_200_000_000_123, order_ref=7, side="B", shares=100,
                              stock="AAPL", price=1_234_500)
    a = itch.decode(itch.frame([add])).by_type["A"][0]
    assert itch.text(a["stock"]) == "AAPL" and a["stock"] == b"AAPL    " and a["price"] == 1_234_500
    assert a["timestamp"] == 34_200_000_000_123 and a["side"] == b"B"
    with pytest.raises(DataError, match="not a field"):
        itch.encode_message("A", bogus=1)


def test_bad_input_is_counted_with_position():
    good = itch.encode_message("D", order_ref=5)
    unknown = b"Z" + b"\x00" * 10
    wrong_len = itch.encode_message("D", order_ref=6)[:-1]
    stream = itch.frame([good, unknown, good, wrong_len, good])
    out = itch.decode(stream)
    assert len(out) == 3  # the three good ones
    assert out.errors == [(21, "unknown_message_type"), (55, "length_mismatch")]
    truncated = itch.frame([good, good])[:-5]
    out = itch.decode(truncated)
    assert len(out) == 1 and out.errors == [(21, "truncated_message")]
    # book events: unknown order id and negative size are counted, with positions
    books = OrderBooks(2, 16, 8)
    ev = make_events(3)
    ev["kind"] = ADD
    ev["order_id"] = [1, 2, 3]
    ev["side"] = 1
    ev["price"] = 10
    ev["qty"] = [5, -5, 5]
    res = books.apply(ev)
    assert res.first_bad == [(1, "bad_size")]
    _, _, res2 = itch.build_books(itch.frame([itch.encode_message("X", order_ref=99, canceled_shares=1)]))
    assert res2.first_bad == [(0, "unknown_order_id")]


def test_odd_framing_sample_is_detected_and_read_with_the_option(shared_data):
    path = shared_data / "itch" / "ex20101224.TEST_ITCH_50.gz"
    with pytest.raises(DataError, match="zero_prefix"):
        itch.read_file(path)
    msgs = itch.read_file(path, framing="zero_prefix")
    assert len(msgs) == 12_012 and msgs.n_errors == 0
    assert msgs.counts() == {"S": 6, "R": 3, "H": 3, "A": 4997, "F": 3, "E": 198, "X": 45, "D": 1745, "U": 12,
                             "P": 5000}
    assert msgs.stock_directory() == {1: "ALC", 2: "BOB", 3: "CHAR"}
    last = chr(msgs.types[-1])
    assert int(msgs.offsets[-1]) + itch.SIZES[last] == len(msgs.buffer)  # every byte consumed
    books, _, res = itch.build_books(path, framing="zero_prefix")
    assert res.applied == 4997 + 3 + 198 + 45 + 1745 + 12
    assert books.n_books == 3 and books.locates.tolist() == [1, 2, 3]
    assert books.stats(books.book_of(2))["messages"] > 0


def test_gzip_file_and_synthetic_day_books(tmp_path):
    day = synth.synthetic_day(20_000, n_stocks=3, seed=3)
    stream = itch.encode_stream(day)
    p = tmp_path / "day.itch.gz"
    p.write_bytes(gzip.compress(stream))
    msgs = itch.read_file(p)
    assert len(msgs) == 20_000 + 3 + 2 and msgs.n_errors == 0
    for t, a in day.items():
        np.testing.assert_array_equal(msgs.by_type[t], a)
    books, _, res = itch.build_books(p)
    assert res.bad == 0
    assert books.locates.tolist() == [1, 2, 3]
    for b in range(3):
        assert books.check(b) == []
        bb, ba = books.best_bid(b), books.best_ask(b)
        assert bb is not None and ba is not None and bb[0] < ba[0]


def test_moldudp64_day_with_a_dropped_packet():
    stream = synth.synthetic_stream(5_000, n_stocks=2, seed=11)
    packets = moldudp.packetize(stream, session="TESTSESS01", max_payload=1000)
    # lossless: the stream comes back byte for byte
    rx = moldudp.MoldReceiver()
    assert rx.feed_all(packets) == 5_000 + 2 + 2
    assert rx.stream() == stream and rx.gaps == [] and rx.ended
    # drop packet 7: the receiver reports exactly its sequence numbers as the gap
    _, seq7, count7 = moldudp.HEADER.unpack_from(packets[7])
    lossy = moldudp.MoldReceiver()
    lossy.feed_all(moldudp.drop(packets, [7]))
    assert lossy.gaps == [(seq7, seq7 + count7 - 1)] and lossy.missing() == count7
    # duplicates and an out-of-date retransmission are ignored; a heartbeat after the end shows no new gap
    lossy.feed(packets[3])
    assert lossy.duplicates == 1
    lossy.feed(moldudp.heartbeat("TESTSESS01", lossy.next_seq))
    assert lossy.gaps == [(seq7, seq7 + count7 - 1)]
    assert lossy.feed(moldudp.packet("OTHERSESS", 1, [b"x"])) == 0 and lossy.bad_packets[-1][1] == "wrong_session"
    # the books built from the lossy stream see orders they never saw added: counted, not raised
    _, msgs, res = itch.build_books(lossy.stream())
    assert len(msgs) == 5_004 - count7 and msgs.n_errors == 0
    _, _, full_res = itch.build_books(stream)
    assert full_res.bad == 0
    assert res.bad > 0 or count7 == 0


def test_moldudp_overlapping_retransmission_delivers_only_new_messages():
    msgs = [itch.encode_message("D", order_ref=i) for i in range(1, 7)]
    rx = moldudp.MoldReceiver()
    assert rx.feed(moldudp.packet("S", 1, msgs[:3])) == 3
    assert rx.feed(moldudp.packet("S", 2, msgs[1:5])) == 2  # 2,3 already seen; 4,5 new
    assert rx.feed(moldudp.packet("S", 5, msgs[4:6])) == 1
    out = itch.decode(rx.stream())
    assert out.by_type["D"]["order_ref"].tolist() == [1, 2, 3, 4, 5, 6]
    assert rx.feed(b"short") == 0 and rx.bad_packets[-1][1] == "short_header"


def test_corrupted_streams_never_crash():
    stream = np.frombuffer(synth.synthetic_stream(2_000, n_stocks=2, seed=5), np.uint8)
    rng = np.random.default_rng(9)
    for trial in range(60):
        buf = stream.copy()
        hits = rng.integers(0, buf.size, 1 + trial % 20)
        buf[hits] = rng.integers(0, 256, hits.size)
        cut = buf[: rng.integers(1, buf.size)]
        for framing in ("length", "zero_prefix"):
            try:
                msgs = itch.decode(cut, framing)
            except DataError as exc:  # only the framing sniff at offset 0 may refuse outright
                assert exc.position == 0
                continue
            assert len(msgs) <= cut.size // 14 + 1
            _, decoded, res = itch.build_books(cut, framing)
            # every book event of what decoded is counted once, each refusal has a reason and a real position
            assert res.applied == itch.book_events(decoded)[0].shape[0]
            assert res.bad == sum(res.by_reason.values()) <= res.applied
            assert all(0 <= i < len(decoded) for i, _ in res.first_bad)


def test_stream_books_from_packets_match_the_file_books():
    stream = synth.synthetic_stream(20_000, n_stocks=3, seed=13)
    packets = moldudp.packetize(stream, session="LIVE", max_payload=600)
    live = itch.StreamBooks(n_locates=8, max_orders=1 << 15, max_levels=256)
    rx = moldudp.MoldReceiver()
    for pkt in packets:
        rx.feed(pkt)
        live.feed(rx.drain())
    assert live.messages == 20_000 + 5 and live.bad_events == 0 and live.pending_bytes == 0
    books, _, _ = itch.build_books(stream)
    for locate in (1, 2, 3):
        assert live.books.depth(locate, 10) == books.depth(books.book_of(locate), 10)
    # pieces cut anywhere: a partial message waits; a zero length is reported with its offset and skipped
    pieces = itch.StreamBooks(n_locates=8, max_orders=1 << 15)
    for i in range(0, len(stream), 777):
        pieces.feed(stream[i : i + 777])
    assert pieces.messages == 20_005 and pieces.books.depth(2, 5) == live.books.depth(2, 5)
    bad = itch.StreamBooks(n_locates=8, max_orders=64)
    bad.feed(itch.frame([itch.encode_message("D", order_ref=1)]) + b"\x00\x00" + itch.frame([b"Z" * 5]))
    assert bad.first_input_errors == [(21, "zero_length"), (23, "unknown_message_type")]
    assert bad.bad_by_reason == {"unknown_order_id": 1}
