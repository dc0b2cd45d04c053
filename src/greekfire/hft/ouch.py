"""Nasdaq OUCH 4.2 over SoupBinTCP 3.0: the codec and the framing. The exchange simulator that speaks it is
:mod:`greekfire.hft.ouch_server`, the client :mod:`greekfire.hft.ouch_gateway`.

Codec. Every OUCH 4.2 order message the engine needs, as a :class:`typing.NamedTuple` with the wire fields in
order: inbound (client to exchange) Enter Order ``O`` (:class:`EnterOrder`), Replace Order ``U``
(:class:`ReplaceOrder`), Cancel Order ``X`` (:class:`CancelOrder`); outbound System Event ``S``, Accepted
``A``, Replaced ``U``, Canceled ``C``, Executed ``E``, Rejected ``J`` and Cancel Reject ``I``.
:func:`encode` packs any of them (one precompiled :class:`struct.Struct` per type), :func:`decode_inbound` /
:func:`decode_outbound` read one back; :func:`decode_batch` decodes a whole buffer of SoupBinTCP packets into
one numpy record array per message type (big-endian dtypes, gathered in one vectorised step per type).
Integers are big-endian binary; alpha fields are ASCII, left-justified and space-padded; prices are
integers with four implied decimals (``PRICE_SCALE``), ``MARKET_PRICE`` (0x7FFFFFFF) marks a market order;
time in force 0 is immediate-or-cancel, anything else rests for the session.

SoupBinTCP framing: a two-byte big-endian length (counting what follows it), a one-byte packet type and the
payload: Login Request ``L`` / Accepted ``A`` / Rejected ``J``, Sequenced ``S`` and Unsequenced ``U`` Data,
Server ``H`` and Client ``R`` Heartbeats, Logout Request ``O``, End of Session ``Z``, Debug ``+``.
:class:`SoupReader` splits a byte stream into packets.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter

log = logging.getLogger("greekfire.hft.ouch")

PRICE_SCALE = 10_000
"""OUCH price units per currency unit (four implied decimals)."""
MARKET_PRICE = 0x7FFFFFFF
TIF_IOC = 0
TIF_MARKET_HOURS = 99_998
TIF_SYSTEM_HOURS = 99_999

BAD_MESSAGES = counter("greekfire_hft_ouch_bad_messages", "OUCH/SoupBinTCP messages that could not be read", ["side"])


# ------------------------------------------------------------------------------------------------ messages
class EnterOrder(NamedTuple):
    """Inbound ``O`` (49 bytes). ``side`` B buy, S sell, T sell short, E sell short exempt; ``price`` in 1/10000."""

    token: str
    side: str
    shares: int
    stock: str
    price: int
    tif: int = TIF_SYSTEM_HOURS
    firm: str = ""
    display: str = "Y"
    capacity: str = "A"
    ise: str = "N"
    min_qty: int = 0
    cross_type: str = "N"
    customer_type: str = "R"


class ReplaceOrder(NamedTuple):
    """Inbound ``U`` (47 bytes): ``shares`` is the new total size of the replacement order."""

    existing_token: str
    replacement_token: str
    shares: int
    price: int
    tif: int = TIF_SYSTEM_HOURS
    display: str = "Y"
    ise: str = "N"
    min_qty: int = 0


class CancelOrder(NamedTuple):
    """Inbound ``X`` (19 bytes): ``shares`` is the size the order may still execute (0 cancels it)."""

    token: str
    shares: int = 0


class SystemEvent(NamedTuple):
    """Outbound ``S`` (10 bytes): ``event_code`` S start of day, E end of day. Timestamps: ns since midnight."""

    timestamp: int
    event_code: str


class Accepted(NamedTuple):
    """Outbound ``A`` (66 bytes). ``order_state`` L live, D dead."""

    timestamp: int
    token: str
    side: str
    shares: int
    stock: str
    price: int
    tif: int
    firm: str
    display: str
    order_ref: int
    capacity: str
    ise: str
    min_qty: int
    cross_type: str
    order_state: str
    bbo_weight: str


class Replaced(NamedTuple):
    """Outbound ``U`` (80 bytes): ``shares`` is what the replacement order has open."""

    timestamp: int
    replacement_token: str
    side: str
    shares: int
    stock: str
    price: int
    tif: int
    firm: str
    display: str
    order_ref: int
    capacity: str
    ise: str
    min_qty: int
    cross_type: str
    order_state: str
    previous_token: str
    bbo_weight: str


class Canceled(NamedTuple):
    """Outbound ``C`` (28 bytes): ``decrement`` shares taken off; ``reason`` U user, I immediate-or-cancel,
    Q self-match prevention, S supervisory, Z system."""

    timestamp: int
    token: str
    decrement: int
    reason: str


class Executed(NamedTuple):
    """Outbound ``E`` (40 bytes): ``liquidity`` A added (maker), R removed (taker)."""

    timestamp: int
    token: str
    shares: int
    price: int
    liquidity: str
    match_number: int


class Rejected(NamedTuple):
    """Outbound ``J`` (24 bytes): ``reason`` one of REJECT_REASONS' codes."""

    timestamp: int
    token: str
    reason: str


class CancelReject(NamedTuple):
    """Outbound ``I`` (23 bytes): a cancel for a token the exchange does not know as live."""

    timestamp: int
    token: str


# field layouts: a = alpha (width), u = unsigned big-endian int (width 4 or 8)
_LAYOUT: dict[type, tuple[bytes, str]] = {
    EnterOrder: (b"O", "a14 a1 u4 a8 u4 u4 a4 a1 a1 a1 u4 a1 a1"),
    ReplaceOrder: (b"U", "a14 a14 u4 u4 u4 a1 a1 u4"),
    CancelOrder: (b"X", "a14 u4"),
    SystemEvent: (b"S", "u8 a1"),
    Accepted: (b"A", "u8 a14 a1 u4 a8 u4 u4 a4 a1 u8 a1 a1 u4 a1 a1 a1"),
    Replaced: (b"U", "u8 a14 a1 u4 a8 u4 u4 a4 a1 u8 a1 a1 u4 a1 a1 a14 a1"),
    Canceled: (b"C", "u8 a14 u4 a1"),
    Executed: (b"E", "u8 a14 u4 u4 a1 u8"),
    Rejected: (b"J", "u8 a14 a1"),
    CancelReject: (b"I", "u8 a14"),
}

REJECT_REASONS = {
    "T": "test mode", "H": "halted", "Z": "shares exceed the safety threshold", "S": "invalid stock",
    "D": "invalid display type", "C": "exchange closed", "L": "firm not authorized", "M": "outside permitted times",
    "R": "not allowed in this cross", "X": "invalid price", "N": "invalid minimum quantity", "O": "other",
}

OuchMessage = (
    EnterOrder | ReplaceOrder | CancelOrder | SystemEvent | Accepted | Replaced | Canceled | Executed | Rejected
    | CancelReject
)


@dataclass(frozen=True, slots=True)
class _Codec:
    cls: type
    kind: bytes
    st: struct.Struct
    alpha: tuple[tuple[int, int], ...]  # (field index, width) of the alpha fields
    numeric: tuple[tuple[int, int], ...]  # (field index, width in bytes) of the integers
    dtype: np.dtype

    @property
    def size(self) -> int:
        return self.st.size


def _codec(cls: type, kind: bytes, layout: str) -> _Codec:
    fmt, dt = ">c", [("type", "S1")]
    alpha: list[tuple[int, int]] = []
    numeric: list[tuple[int, int]] = []
    for i, (name, spec) in enumerate(zip(cls._fields, layout.split(), strict=True)):  # type: ignore[attr-defined]
        k, w = spec[0], int(spec[1:])
        (alpha if k == "a" else numeric).append((i, w))
        fmt += f"{w}s" if k == "a" else {4: "I", 8: "Q"}[w]
        dt.append((name, f"S{w}" if k == "a" else f">u{w}"))
    return _Codec(cls, kind, struct.Struct(fmt), tuple(alpha), tuple(numeric), np.dtype(dt))


_CODECS: dict[type, _Codec] = {cls: _codec(cls, k, lay) for cls, (k, lay) in _LAYOUT.items()}
INBOUND: dict[bytes, _Codec] = {c.kind: c for c in _CODECS.values() if c.cls in (EnterOrder, ReplaceOrder, CancelOrder)}
OUTBOUND: dict[bytes, _Codec] = {c.kind: c for c in _CODECS.values() if c.kind not in INBOUND or c.cls is Replaced}
OUTBOUND_DTYPES: dict[bytes, np.dtype] = {k: c.dtype for k, c in OUTBOUND.items()}
"""Big-endian numpy record types of the outbound messages (with their type byte), for :func:`decode_batch`."""


def encode(msg: OuchMessage) -> bytes:
    """One OUCH message (its type byte first). DataError naming the field when a value does not fit."""
    c = _CODECS[type(msg)]
    vals: list[Any] = [c.kind, *msg]
    try:
        for i, w in c.alpha:
            b = vals[i + 1].encode("ascii")
            if len(b) > w:
                raise ValueError
            vals[i + 1] = b.ljust(w)
        return c.st.pack(*vals)
    except (ValueError, AttributeError, struct.error):
        pass
    # the slow path: name the field that does not fit
    for i, w in c.alpha:
        v = msg[i]
        if not isinstance(v, str) or not v.isascii() or len(v) > w:
            raise DataError(msg._fields[i], v, f"at most {w} ASCII characters")
    for i, w in c.numeric:
        v = msg[i]
        if not isinstance(v, int) or not 0 <= v < 1 << (8 * w):
            raise DataError(msg._fields[i], v, f"an unsigned {8 * w}-bit integer")
    raise DataError(type(msg).__name__, msg, "packable values")  # pragma: no cover


def _decode(table: dict[bytes, _Codec], data: bytes | memoryview) -> OuchMessage:
    c = table.get(bytes(data[:1]))
    if c is None:
        raise DataError("message_type", bytes(data[:1]), f"one of {sorted(table)}")
    if len(data) != c.size:
        raise DataError("length", len(data), f"{c.size} bytes for {c.cls.__name__}")
    vals: list[Any] = list(c.st.unpack(data))
    try:
        for i, _ in c.alpha:
            vals[i + 1] = vals[i + 1].decode("ascii").rstrip(" ")
    except UnicodeDecodeError:
        raise DataError(c.cls._fields[i], vals[i + 1], "ASCII") from None  # type: ignore[attr-defined]
    return c.cls(*vals[1:])  # type: ignore[no-any-return]


def decode_inbound(data: bytes | memoryview) -> OuchMessage:
    """A client-to-exchange message (``O``, ``U``, ``X``); DataError when the type or length is wrong."""
    return _decode(INBOUND, data)


def decode_outbound(data: bytes | memoryview) -> OuchMessage:
    """An exchange-to-client message (``S``, ``A``, ``U``, ``C``, ``E``, ``J``, ``I``); DataError otherwise."""
    return _decode(OUTBOUND, data)


# ------------------------------------------------------------------------------------------------ SoupBinTCP
class Soup:
    """SoupBinTCP 3.0 packet types."""

    DEBUG, LOGIN_ACCEPTED, LOGIN_REJECTED, SEQUENCED, SERVER_HEARTBEAT, END_OF_SESSION = b"+", b"A", b"J", b"S", b"H", b"Z"
    LOGIN_REQUEST, UNSEQUENCED, CLIENT_HEARTBEAT, LOGOUT_REQUEST = b"L", b"U", b"R", b"O"


_LEN = struct.Struct(">H")


def soup_packet(ptype: bytes, payload: bytes = b"") -> bytes:
    """One SoupBinTCP packet: length (2 bytes, big-endian, type + payload), type, payload."""
    return _LEN.pack(len(payload) + 1) + ptype + payload


def login_request(username: str, password: str = "", session: str = "", sequence: int = 0) -> bytes:
    """Login Request ``L``: username (6), password (10), requested session (10, blank: the current one),
    requested sequence number (20 ASCII digits; 0: start with the next message)."""
    for name, v, w in (("username", username, 6), ("password", password, 10), ("session", session, 10)):
        if len(v) > w or not v.isascii():
            raise DataError(name, v, f"at most {w} ASCII characters")
    body = username.ljust(6) + password.ljust(10) + session.rjust(10) + str(sequence).rjust(20)
    return soup_packet(Soup.LOGIN_REQUEST, body.encode("ascii"))


def parse_login_request(payload: bytes) -> tuple[str, str, str, int]:
    """(username, password, session, sequence) of a Login Request payload; DataError when malformed."""
    if len(payload) != 46:
        raise DataError("login_request", len(payload), "46 bytes")
    t = payload.decode("ascii")
    seq = t[26:46].strip()
    if seq and not seq.isdigit():
        raise DataError("requested_sequence", seq, "ASCII digits")
    return t[:6].strip(), t[6:16].strip(), t[16:26].strip(), int(seq or 0)


def login_accepted(session: str, sequence: int) -> bytes:
    """Login Accepted ``A``: session (10) and the sequence number of the next sequenced message (20)."""
    return soup_packet(Soup.LOGIN_ACCEPTED, (session.rjust(10) + str(sequence).rjust(20)).encode("ascii"))


def parse_login_accepted(payload: bytes) -> tuple[str, int]:
    """(session, next sequence number) of a Login Accepted payload."""
    if len(payload) != 30:
        raise DataError("login_accepted", len(payload), "30 bytes")
    t = payload.decode("ascii")
    return t[:10].strip(), int(t[10:].strip() or 0)


class SoupReader:
    """Splits a byte stream into SoupBinTCP packets: :meth:`feed` bytes, iterate ``(type, payload)``."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes | memoryview) -> None:
        self.buf += data

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        buf = self.buf
        pos, n = 0, len(buf)
        try:
            while n - pos >= 2:
                ln = (buf[pos] << 8) | buf[pos + 1]
                if ln == 0:
                    raise DataError("packet_length", 0, "at least 1 (the packet type)", pos)
                if n - pos - 2 < ln:
                    break
                start = pos
                pos += 2 + ln  # consumed before it is handed out: a caller may stop after any packet
                yield bytes(buf[start + 2 : start + 3]), bytes(buf[start + 3 : start + 2 + ln])
        finally:
            del buf[:pos]


def scan(buf: bytes) -> tuple[np.ndarray, np.ndarray, int]:
    """Offsets of the OUCH messages in a buffer of SoupBinTCP packets (Sequenced or Unsequenced Data), their
    type bytes, and how many bytes of whole packets were read."""
    offs, types = [], []
    pos, n = 0, len(buf)
    while n - pos >= 3:
        ln = (buf[pos] << 8) | buf[pos + 1]
        if ln == 0 or n - pos - 2 < ln:
            break
        if buf[pos + 2] in (0x53, 0x55) and ln > 1:  # 'S', 'U'
            offs.append(pos + 3)
            types.append(buf[pos + 3])
        pos += 2 + ln
    return np.array(offs, dtype=np.int64), np.array(types, dtype=np.uint8), pos


def decode_batch(buf: bytes, table: Mapping[bytes, np.dtype] | None = None) -> dict[bytes, np.ndarray]:
    """Every message of a buffer of SoupBinTCP data packets, decoded in one vectorised gather per type:
    ``{type byte: record array}`` with the dtypes of ``table`` (default :data:`OUTBOUND_DTYPES`). Alpha fields
    stay bytes (space-padded), integers big-endian; rows are in stream order within a type."""
    table = OUTBOUND_DTYPES if table is None else table
    offs, types, _ = scan(buf)
    raw = np.frombuffer(buf, dtype=np.uint8)
    out: dict[bytes, np.ndarray] = {}
    for kind, dt in table.items():
        o = offs[types == kind[0]]
        if len(o) == 0:
            continue
        o = o[o + dt.itemsize <= len(raw)]
        rows = raw[o[:, None] + np.arange(dt.itemsize)]  # (n, itemsize) bytes, one gather
        out[kind] = rows.view(dt).reshape(len(o))
    return out


def midnight_ns(now_ns: int | None = None) -> int:
    """Nanoseconds since midnight UTC (OUCH timestamps)."""
    return (time.time_ns() if now_ns is None else now_ns) % 86_400_000_000_000
