"""OUCH 4.2 codec: every message round trips at its specified size, bad input names the field, SoupBinTCP
framing splits a stream cut anywhere, and the vectorised batch decode agrees with the one-by-one decode."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from greekfire.core.errors import DataError
from greekfire.hft.ouch import (
    MARKET_PRICE,
    OUTBOUND_DTYPES,
    TIF_IOC,
    Accepted,
    Canceled,
    CancelOrder,
    CancelReject,
    EnterOrder,
    Executed,
    OuchMessage,
    Rejected,
    Replaced,
    ReplaceOrder,
    Soup,
    SoupReader,
    SystemEvent,
    decode_batch,
    decode_inbound,
    decode_outbound,
    encode,
    login_accepted,
    login_request,
    parse_login_accepted,
    parse_login_request,
    soup_packet,
)

INBOUND: list[tuple[OuchMessage, int]] = [
    (EnterOrder("000000000001A0", "B", 100, "AAPL", 1_902_500, TIF_IOC, "GFIR", "Y", "A", "N", 0, "N", "R"), 49),
    (EnterOrder("T2", "S", 1, "MSFT", MARKET_PRICE), 49),
    (ReplaceOrder("000000000001A0", "000000000001A1", 250, 1_903_000, 99_999, "Y", "N", 0), 47),
    (CancelOrder("000000000001A1", 0), 19),
    (CancelOrder("X9", 40), 19),
]
OUTBOUND: list[tuple[OuchMessage, int]] = [
    (SystemEvent(34_200_000_000_000, "S"), 10),
    (Accepted(1, "TOK1", "B", 100, "AAPL", 1_902_500, 99_999, "GFIR", "Y", 987_654_321, "A", "N", 0, "N", "L", ""), 66),
    (Replaced(2, "TOK2", "S", 50, "AAPL", 1_903_000, 0, "", "Y", 5, "A", "N", 0, "N", "L", "TOK1", ""), 80),
    (Canceled(3, "TOK2", 50, "U"), 28),
    (Executed(4, "TOK1", 40, 1_902_500, "R", 2**40 + 7), 40),
    (Rejected(5, "TOK3", "X"), 24),
    (CancelReject(6, "TOK4"), 23),
]


@pytest.mark.parametrize(("msg", "size"), INBOUND)
def test_inbound_round_trip(msg: OuchMessage, size: int) -> None:
    data = encode(msg)
    assert len(data) == size
    assert data[:1] in (b"O", b"U", b"X")
    assert decode_inbound(data) == msg


@pytest.mark.parametrize(("msg", "size"), OUTBOUND)
def test_outbound_round_trip(msg: OuchMessage, size: int) -> None:
    data = encode(msg)
    assert len(data) == size
    assert decode_outbound(data) == msg


def test_wire_layout_of_enter_order() -> None:
    data = encode(EnterOrder("ABC", "B", 300, "SPY", 4_501_200, 0, "GFIR"))
    assert data[0:1] == b"O" and data[1:15] == b"ABC".ljust(14) and data[15:16] == b"B"
    assert struct.unpack(">I", data[16:20])[0] == 300 and data[20:28] == b"SPY     "
    assert struct.unpack(">I", data[28:32])[0] == 4_501_200 and struct.unpack(">I", data[32:36])[0] == 0
    assert data[36:40] == b"GFIR"


def test_bad_values_name_the_field() -> None:
    with pytest.raises(DataError) as e:
        encode(EnterOrder("T" * 15, "B", 1, "AAPL", 100))
    assert e.value.field == "token"
    with pytest.raises(DataError) as e:
        encode(CancelOrder("T", -1))
    assert e.value.field == "shares"
    with pytest.raises(DataError) as e:
        decode_outbound(b"Q" + bytes(10))
    assert e.value.field == "message_type"
    with pytest.raises(DataError) as e:
        decode_outbound(encode(Rejected(1, "T", "X"))[:-1])
    assert e.value.field == "length"


def test_login_packets() -> None:
    req = login_request("GF", "secret", "", 42)
    assert req[:2] == struct.pack(">H", 47) and req[2:3] == Soup.LOGIN_REQUEST
    assert parse_login_request(req[3:]) == ("GF", "secret", "", 42)
    acc = login_accepted("GREEKFIRE", 1001)
    assert parse_login_accepted(acc[3:]) == ("GREEKFIRE", 1001)
    with pytest.raises(DataError):
        login_request("TOOLONGUSER")


def test_soup_reader_reassembles_any_cut() -> None:
    packets = [
        soup_packet(Soup.SEQUENCED, encode(m)) for m, _ in OUTBOUND
    ] + [soup_packet(Soup.SERVER_HEARTBEAT), soup_packet(Soup.END_OF_SESSION)]
    stream = b"".join(packets)
    for cut in (1, 2, 3, 7, 40, len(stream) - 1):
        r = SoupReader()
        got: list[tuple[bytes, bytes]] = []
        for chunk in (stream[:cut], stream[cut:]):
            r.feed(chunk)
            got.extend(r)
        assert [t for t, _ in got] == [b"S"] * len(OUTBOUND) + [b"H", b"Z"]
        assert [decode_outbound(p) for t, p in got if t == b"S"] == [m for m, _ in OUTBOUND]
        assert not r.buf
    r = SoupReader()
    r.feed(b"\x00\x00")
    with pytest.raises(DataError):
        list(r)


def test_decode_batch_matches_single_decode() -> None:
    rng = np.random.default_rng(7)
    msgs: list[OuchMessage] = []
    for i in range(300):
        k = rng.integers(0, 3)
        if k == 0:
            msgs.append(Executed(i, f"T{i}", int(rng.integers(1, 1000)), int(rng.integers(1, 10**7)), "A", i * 3))
        elif k == 1:
            msgs.append(Canceled(i, f"T{i}", int(rng.integers(0, 1000)), "U"))
        else:
            msgs.append(Accepted(i, f"T{i}", "S", 10, "AAPL", 100, 0, "", "Y", i, "A", "N", 0, "N", "L", " "))
    buf = b"".join(soup_packet(Soup.SEQUENCED, encode(m)) for m in msgs) + soup_packet(Soup.SERVER_HEARTBEAT)
    out = decode_batch(buf)
    ex = [m for m in msgs if type(m) is Executed]
    arr = out[b"E"]
    assert arr.dtype == OUTBOUND_DTYPES[b"E"] and len(arr) == len(ex)
    assert arr["shares"].tolist() == [m.shares for m in ex]
    assert arr["price"].tolist() == [m.price for m in ex]
    assert [t.decode().strip() for t in arr["token"]] == [m.token for m in ex]
    assert out[b"C"]["decrement"].tolist() == [m.decrement for m in msgs if type(m) is Canceled]
    assert len(out[b"A"]) == sum(type(m) is Accepted for m in msgs)
    assert b"J" not in out
