"""Nasdaq OUCH 4.2 over SoupBinTCP 3.0: the codec, an exchange simulator that speaks it, and the gateway.

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

:class:`OuchServer` is the exchange simulator on this wire: one :class:`~greekfire.market.matching.MatchingEngine`
per symbol, one SoupBinTCP session whose sequenced messages are kept per user (a user logging in again with
a requested sequence number gets what it missed), heartbeats both ways, fills reported to the order's owner,
run by a selector loop on its own thread. :class:`OuchGateway` is the client: it logs in, sends the orders of
an :class:`~greekfire.hft.orders.OrderPool` (the order token is the pool's order id and a replace version), and
:meth:`OuchGateway.poll` reads what came back without blocking and moves the pool's orders.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from greekfire.core.errors import DataError, UnavailableError
from greekfire.core.metrics import counter
from greekfire.hft.orders import STATUS_CODE, OrderPool
from greekfire.market.matching import ExecKind, ExecReport, MatchingEngine, OrderType, Side, TimeInForce
from greekfire.trading.orders import FillProblem, IllegalTransition, OrderStatus

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


# ------------------------------------------------------------------------------------------------ server
_CANCEL_REASON = {"ioc_remainder": "I", "no_liquidity": "I", "self_trade": "Q", "canceled": "U", "end_of_day": "Z"}
_REJECT_REASON = {"off_tick": "X", "missing_price": "X", "bad_qty": "Z", "fractional_qty": "Z", "unknown_symbol": "S",
                  "halted": "H", "post_only_would_cross": "X"}


@dataclass(slots=True)
class _Live:
    user: _User
    token: str
    symbol: str
    side: str
    tif: int
    firm: str
    display: str


@dataclass(slots=True)
class _User:
    name: str
    owner: int
    log: list[bytes] = field(default_factory=list)  # every sequenced OUCH message sent to this user
    tokens: dict[str, int] = field(default_factory=dict)  # token -> engine order id (live orders)
    seen: set[str] = field(default_factory=set)  # every token used (duplicates are ignored)
    conn: _Conn | None = None


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    reader: SoupReader = field(default_factory=SoupReader)
    user: _User | None = None
    last_rx: float = 0.0
    last_tx: float = 0.0
    out: list[bytes] = field(default_factory=list)  # packets waiting for the next flush


class OuchServer:
    """The exchange simulator over OUCH 4.2 / SoupBinTCP (see the module docstring).

    ``port`` 0 picks a free one (:meth:`start` returns it). ``symbols``: the books (None: a book is opened for
    any symbol on its first order). ``users``: username -> password (None: anyone may log in). ``tick_size``
    in currency (prices must be whole ticks). ``cancel_on_disconnect``: a user's live orders are canceled
    when its connection drops. ``counters``: orders, accepted, rejected, executions, cancels, replaces,
    cancel_rejects, duplicate_tokens, bad_messages, logins, logouts.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        symbols: Sequence[str] | None = None,
        users: Mapping[str, str] | None = None,
        session: str = "GREEKFIRE",
        tick_size: float = 0.01,
        heartbeat_s: float = 1.0,
        timeout_s: float = 15.0,
        cancel_on_disconnect: bool = False,
        stp: str = "cancel_newest",
    ) -> None:
        self.host, self.port = host, port
        self.session = session[:10]
        self.units_per_tick = round(tick_size * PRICE_SCALE)
        if self.units_per_tick <= 0 or abs(self.units_per_tick - tick_size * PRICE_SCALE) > 1e-6:
            raise DataError("tick_size", tick_size, f"a whole number of 1/{PRICE_SCALE} currency units")
        self.heartbeat_s, self.timeout_s = heartbeat_s, timeout_s
        self.cancel_on_disconnect = cancel_on_disconnect
        self.stp = stp
        self.fixed_symbols = symbols is not None
        self.books: dict[str, MatchingEngine] = {s: MatchingEngine(i, stp=stp) for i, s in enumerate(symbols or ())}
        self.users_allowed = dict(users) if users is not None else None
        self._users: dict[str, _User] = {}
        self._live: dict[int, _Live] = {}
        self._dirty: list[_Conn] = []  # connections with packets to flush
        self._next_id = 1
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sel: selectors.DefaultSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self.counters = dict.fromkeys(
            ("orders", "accepted", "rejected", "executions", "cancels", "replaces", "cancel_rejects",
             "duplicate_tokens", "bad_messages", "logins", "logouts"), 0)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Listen and start the server thread; returns the bound port."""
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(16)
        ls.setblocking(False)
        self.port = ls.getsockname()[1]
        self._listener = ls
        self._sel = selectors.DefaultSelector()
        self._sel.register(ls, selectors.EVENT_READ, None)
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="greekfire-ouch-server", daemon=True)
        self._thread.start()
        return self.port

    def stop(self, timeout_s: float = 5.0) -> None:
        """End of Session to every logged-in client, close every connection, stop the thread."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def __enter__(self) -> OuchServer:
        self.start()
        return self

    def serve(self, stop: threading.Event | float | None = None, on_listening: Callable[[int], None] | None = None,
              ) -> dict[str, int]:
        """Run until ``stop`` (an Event that gets set, or a duration in seconds; None: until interrupted);
        returns the counters. ``on_listening(port)`` is called once the socket listens."""
        port = self.start()
        log.info("OUCH exchange %s listening on %s:%d", self.session, self.host, port)
        if on_listening is not None:
            on_listening(port)
        t_end = time.monotonic() + stop if isinstance(stop, int | float) else None
        try:
            while not (isinstance(stop, threading.Event) and stop.is_set()):
                if t_end is not None and time.monotonic() >= t_end:
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
        return dict(self.counters)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- queries (any thread)
    def open_orders(self, username: str | None = None) -> int:
        """Live orders on the books (of ``username`` only, when given)."""
        with self._lock:
            if username is None:
                return sum(len(b) for b in self.books.values())
            u = self._users.get(username)
            return 0 if u is None else len(u.tokens)

    def rest(self, symbol: str, side: Side, qty: int, price_ticks: int) -> int:
        """Put a resting order of the house (owner 0, no session) on ``symbol``'s book; returns its order id."""
        with self._lock:
            book = self._book(symbol)
            if book is None:
                raise DataError("symbol", symbol, "one of the server's symbols")
            eid = self._next_id
            self._next_id += 1
            self._dispatch(book.submit(eid, 0, side, qty, price_ticks, ts_ns=time.time_ns()))
            self._flush()
            return eid

    def _book(self, symbol: str) -> MatchingEngine | None:
        book = self.books.get(symbol)
        if book is None and not self.fixed_symbols and symbol:
            book = self.books[symbol] = MatchingEngine(len(self.books), stp=self.stp)
        return book

    # ---------------------------------------------------------------- the loop
    def _run(self) -> None:
        assert self._sel is not None
        sel = self._sel
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=min(0.1, self.heartbeat_s)):
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(64)
                    else:
                        self._readable(key.data)
                self._heartbeats()
        except Exception:  # pragma: no cover - the loop must say why it died
            log.exception("OUCH server loop failed")
        finally:
            for key in list(sel.get_map().values()):
                if isinstance(key.data, _Conn):
                    with contextlib.suppress(OSError):
                        if key.data.user is not None:
                            self._send(key.data, soup_packet(Soup.END_OF_SESSION))
                    self._close(key.data)
            sel.close()
            if self._listener is not None:
                self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(5.0)  # sends block (bounded); reads only follow readiness
        now = time.monotonic()
        conn = _Conn(sock, last_rx=now, last_tx=now)
        self._sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, conn: _Conn) -> None:
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        u = conn.user
        if u is not None and u.conn is conn:
            u.conn = None
            if self.cancel_on_disconnect:
                with self._lock:
                    for eid in list(u.tokens.values()):
                        self._cancel_id(eid)
                    self._flush()

    def _send(self, conn: _Conn, data: bytes) -> None:
        conn.sock.sendall(data)
        conn.last_tx = time.monotonic()

    def _flush(self) -> None:
        """Send every connection's waiting packets, one write each (under the lock)."""
        dirty = self._dirty
        while dirty:
            conn = dirty.pop()
            data = b"".join(conn.out)
            conn.out.clear()
            try:
                self._send(conn, data)
            except OSError:
                self._close(conn)

    def _heartbeats(self) -> None:
        assert self._sel is not None
        now = time.monotonic()
        for key in list(self._sel.get_map().values()):
            conn = key.data
            if not isinstance(conn, _Conn):
                continue
            if now - conn.last_rx > self.timeout_s:
                log.warning("OUCH client silent for %.1f s: dropped", now - conn.last_rx)
                self._close(conn)
            elif conn.user is not None and now - conn.last_tx >= self.heartbeat_s:
                with self._lock:
                    try:
                        self._send(conn, soup_packet(Soup.SERVER_HEARTBEAT))
                    except OSError:
                        self._close(conn)

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.last_rx = time.monotonic()
        conn.reader.feed(data)
        try:
            for ptype, payload in conn.reader:
                if not self._packet(conn, ptype, payload):
                    return
        except DataError as e:  # broken framing: nothing after it can be trusted
            self._bad(f"framing: {e}")
            self._close(conn)
        except OSError:
            self._close(conn)

    def _bad(self, what: str) -> None:
        self.counters["bad_messages"] += 1
        BAD_MESSAGES.labels("server").inc()
        log.warning("OUCH server: bad message (%s)", what)

    def _packet(self, conn: _Conn, ptype: bytes, payload: bytes) -> bool:
        """Handle one packet; False when the connection was closed."""
        if conn.user is None:
            if ptype != Soup.LOGIN_REQUEST:
                self._bad(f"packet {ptype!r} before login")
                self._close(conn)
                return False
            return self._login(conn, payload)
        if ptype == Soup.UNSEQUENCED:
            try:
                msg = decode_inbound(payload)
            except DataError as e:
                self._bad(str(e))
                return True
            with self._lock:
                self._order_message(conn.user, msg)
                self._flush()
        elif ptype == Soup.LOGOUT_REQUEST:
            self.counters["logouts"] += 1
            self._close(conn)
            return False
        elif ptype not in (Soup.CLIENT_HEARTBEAT, Soup.DEBUG):
            self._bad(f"client packet type {ptype!r}")
        return True

    def _login(self, conn: _Conn, payload: bytes) -> bool:
        try:
            username, password, session, seq = parse_login_request(payload)
        except (DataError, UnicodeDecodeError) as e:
            self._bad(f"login request: {e}")
            self._close(conn)
            return False
        reject = b""
        if self.users_allowed is not None and self.users_allowed.get(username) != password:
            reject = b"A"
        elif session and session != self.session:
            reject = b"S"
        with self._lock:
            u = self._users.get(username)
            if not reject and u is not None and u.conn is not None:
                reject = b"A"  # one connection per user
            if reject:
                with contextlib.suppress(OSError):
                    self._send(conn, soup_packet(Soup.LOGIN_REJECTED, reject))
                self._close(conn)
                return False
            if u is None:
                u = self._users[username] = _User(username, owner=len(self._users) + 1)
            nxt = len(u.log) + 1
            start = nxt if seq <= 0 else min(seq, nxt)
            conn.user, u.conn = u, conn
            self.counters["logins"] += 1
            conn.out.append(login_accepted(self.session, start))
            conn.out.extend(soup_packet(Soup.SEQUENCED, m) for m in u.log[start - 1 :])
            self._dirty.append(conn)
            self._flush()
        return True

    # ---------------------------------------------------------------- orders (under the lock)
    def _emit(self, user: _User, msg: OuchMessage) -> None:
        data = encode(msg)
        user.log.append(data)
        conn = user.conn
        if conn is not None:
            if not conn.out:
                self._dirty.append(conn)
            conn.out.append(soup_packet(Soup.SEQUENCED, data))

    def _order_message(self, user: _User, msg: OuchMessage) -> None:
        if type(msg) is EnterOrder:
            self._enter(user, msg)
        elif type(msg) is ReplaceOrder:
            self._replace(user, msg)
        elif type(msg) is CancelOrder:
            eid = user.tokens.get(msg.token)
            if eid is None:
                self.counters["cancel_rejects"] += 1
                self._emit(user, CancelReject(midnight_ns(), msg.token))
            elif msg.shares == 0:
                self._cancel_id(eid)
            else:
                self._reduce(user, eid, msg)

    def _enter(self, user: _User, m: EnterOrder) -> None:
        self.counters["orders"] += 1
        if m.token in user.seen:
            self.counters["duplicate_tokens"] += 1  # OUCH ignores a reused token
            return
        user.seen.add(m.token)
        book = self._book(m.stock)
        reason = ""
        if book is None:
            reason = "unknown_symbol"
        elif m.side not in ("B", "S", "T", "E"):
            reason = "bad_side"
        elif m.price != MARKET_PRICE and (m.price == 0 or m.price % self.units_per_tick):
            reason = "off_tick"
        if reason or book is None:
            self.counters["rejected"] += 1
            self._emit(user, Rejected(midnight_ns(), m.token, _REJECT_REASON.get(reason, "O")))
            return
        eid = self._next_id
        self._next_id += 1
        market = m.price == MARKET_PRICE
        self._live[eid] = _Live(user, m.token, m.stock, m.side, m.tif, m.firm, m.display)
        user.tokens[m.token] = eid
        reports = book.submit(
            eid, user.owner, Side.BUY if m.side == "B" else Side.SELL, m.shares,
            None if market else m.price // self.units_per_tick, OrderType.MARKET if market else OrderType.LIMIT,
            TimeInForce.IOC if m.tif == TIF_IOC else TimeInForce.GTC, ts_ns=time.time_ns(),
        )
        self._dispatch(reports)

    def _replace(self, user: _User, m: ReplaceOrder) -> None:
        eid = user.tokens.get(m.existing_token)
        if m.replacement_token in user.seen:
            self.counters["duplicate_tokens"] += 1
            return
        user.seen.add(m.replacement_token)
        live = self._live.get(eid) if eid is not None else None
        reason = ""
        if eid is None or live is None:
            reason = "unknown_order"
        elif m.price == MARKET_PRICE or m.price == 0 or m.price % self.units_per_tick:
            reason = "off_tick"
        if reason or eid is None or live is None:
            self.counters["rejected"] += 1
            self._emit(user, Rejected(midnight_ns(), m.replacement_token, _REJECT_REASON.get(reason, "O")))
            return
        reports = self.books[live.symbol].replace(eid, m.shares, m.price // self.units_per_tick, time.time_ns())
        if reports and reports[0].kind == ExecKind.REPLACED:
            del user.tokens[live.token]
            user.tokens[m.replacement_token] = eid
            prev, live.token, live.tif, live.display = live.token, m.replacement_token, m.tif, m.display
            self._dispatch(reports, previous_token=prev)
        else:
            self.counters["rejected"] += 1
            r = reports[0].reason if reports else ""
            self._emit(user, Rejected(midnight_ns(), m.replacement_token, _REJECT_REASON.get(r, "O")))

    def _reduce(self, user: _User, eid: int, m: CancelOrder) -> None:
        live = self._live[eid]
        book = self.books[live.symbol]
        o = book.order(eid)
        if o is None or m.shares >= o.leaves_qty:
            return
        reports = book.replace(eid, o.cum_qty + m.shares, o.price, time.time_ns())
        if reports and reports[0].kind == ExecKind.REPLACED:
            self.counters["cancels"] += 1
            self._emit(user, Canceled(midnight_ns(), live.token, o.leaves_qty - m.shares, "U"))

    def _cancel_id(self, eid: int) -> None:
        live = self._live.get(eid)
        if live is not None:
            self._dispatch(self.books[live.symbol].cancel(eid, time.time_ns()))

    def _dispatch(self, reports: list[ExecReport], previous_token: str = "") -> None:
        """Turn the matching engine's reports into OUCH messages to each order's owner."""
        upt = self.units_per_tick
        for r in reports:
            live = self._live.get(r.order_id)
            if live is None:
                continue  # a house order (owner 0)
            u, now = live.user, midnight_ns()
            side = live.side
            k = r.kind
            if k == ExecKind.ACCEPTED:
                self.counters["accepted"] += 1
                px = r.price * upt if r.price else MARKET_PRICE
                self._emit(u, Accepted(now, live.token, side, r.qty, live.symbol, px, live.tif, live.firm,
                                       live.display or "Y", r.order_id, "A", "N", 0, "N", "L", ""))
            elif k == ExecKind.REPLACED:
                self.counters["replaces"] += 1
                self._emit(u, Replaced(now, live.token, side, r.leaves_qty, live.symbol, r.price * upt, live.tif,
                                       live.firm, live.display or "Y", r.order_id, "A", "N", 0, "N", "L",
                                       previous_token, ""))
            elif k == ExecKind.TRADE:
                self.counters["executions"] += 1
                self._emit(u, Executed(now, live.token, r.qty, r.price * upt, "R" if r.liquidity == "T" else "A",
                                       r.trade_id))
                if r.leaves_qty == 0:
                    self._forget(r.order_id)
            elif k in (ExecKind.CANCELED, ExecKind.EXPIRED):
                self.counters["cancels"] += 1
                self._emit(u, Canceled(now, live.token, max(r.qty - r.cum_qty, 0), _CANCEL_REASON.get(r.reason, "Z")))
                self._forget(r.order_id)
            elif k == ExecKind.REJECTED:
                self.counters["rejected"] += 1
                self._emit(u, Rejected(now, live.token, _REJECT_REASON.get(r.reason, "O")))
                self._forget(r.order_id)

    def _forget(self, eid: int) -> None:
        live = self._live.pop(eid, None)
        if live is not None:
            live.user.tokens.pop(live.token, None)


# ------------------------------------------------------------------------------------------------ gateway
class OuchEvent(NamedTuple):
    """What :meth:`OuchGateway.poll` reports: ``kind`` accepted, executed, canceled, replaced, rejected,
    cancel_rejected, system, end_of_session; ``qty`` units (executed: this fill; canceled: the decrement);
    ``price_ticks`` ticks; ``reason`` the OUCH reason code; ``seq`` the SoupBinTCP sequence number."""

    kind: str
    slot: int
    order_id: int
    qty: int
    price_ticks: int
    reason: str
    seq: int


_SIDE_CODE = {1: "B", -1: "S"}
_PENDING = (STATUS_CODE[OrderStatus.PENDING_CANCEL], STATUS_CODE[OrderStatus.PENDING_REPLACE])
_SUBMITTED = STATUS_CODE[OrderStatus.SUBMITTED]


class OuchGateway:
    """An OUCH 4.2 client over SoupBinTCP for the orders of an :class:`~greekfire.hft.orders.OrderPool`.

    ``symbols`` maps the pool's instrument number to the exchange symbol (a sequence: by index).
    ``tick_size`` in currency. The token of an order is its pool order id (12 hex digits) and a replace
    version (2 hex digits), so a reply finds its slot without a lookup table (at most 255 replaces per order).
    Not thread-safe: one thread calls everything. ``counters``: sent, received, heartbeats, bad_events.
    """

    def __init__(
        self,
        host: str,
        port: int,
        pool: OrderPool | None = None,
        *,
        symbols: Sequence[str] | Mapping[int, str] = (),
        username: str = "GF",
        password: str = "",
        session: str = "",
        tick_size: float = 0.01,
        firm: str = "",
        heartbeat_s: float = 1.0,
    ) -> None:
        self.host, self.port = host, port
        self.pool = pool if pool is not None else OrderPool()
        self.symbols: Mapping[int, str] = symbols if isinstance(symbols, Mapping) else dict(enumerate(symbols))
        self.username, self.password, self.session = username, password, session
        self.units_per_tick = round(tick_size * PRICE_SCALE)
        self.firm = firm
        self.heartbeat_s = heartbeat_s
        self.sock: socket.socket | None = None
        self.next_seq = 1  # the sequence number of the next sequenced message we expect
        self.stopped = False
        self.connected = False
        self._reader = SoupReader()
        self._rbuf = bytearray(1 << 16)
        self._version = np.zeros(self.pool.capacity, np.uint8)  # confirmed replace version per slot
        self._last_tx = 0.0
        self.counters = {"sent": 0, "received": 0, "heartbeats": 0, "bad_events": 0}

    # ---------------------------------------------------------------- session
    def connect(self, timeout_s: float = 5.0) -> None:
        """Connect and log in (asking for every message from ``next_seq``); UnavailableError naming
        host:port when the exchange cannot be reached or refuses the login."""
        target = f"OUCH exchange {self.host}:{self.port}"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        except OSError as e:
            raise UnavailableError(target, f"cannot connect: {e}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(login_request(self.username, self.password, self.session, self.next_seq))
        deadline = time.monotonic() + timeout_s
        reader = self._reader
        while True:
            packet = next(iter(reader), None)
            if packet is not None:
                ptype, payload = packet
                break
            if time.monotonic() > deadline:
                sock.close()
                raise UnavailableError(target, f"no login answer within {timeout_s:g} s")
            data = sock.recv(65536)
            if not data:
                sock.close()
                raise UnavailableError(target, "connection closed during login")
            reader.feed(data)
        if ptype == Soup.LOGIN_REJECTED:
            sock.close()
            why = {b"A": "not authorized", b"S": "session not available"}.get(payload[:1], repr(payload))
            raise UnavailableError(target, f"login rejected as {self.username!r}: {why}")
        if ptype != Soup.LOGIN_ACCEPTED:
            sock.close()
            raise UnavailableError(target, f"unexpected packet {ptype!r} during login")
        self.session, self.next_seq = parse_login_accepted(payload)
        sock.settimeout(None)  # blocking sends; reads never wait (MSG_DONTWAIT)
        self.sock = sock
        self.connected, self.stopped = True, False
        self._last_tx = time.monotonic()

    def _check_connected(self) -> None:
        if self.sock is None or not self.connected:
            raise UnavailableError(f"OUCH exchange {self.host}:{self.port}", "the gateway is not connected")

    def _send(self, data: bytes) -> None:
        self._check_connected()
        assert self.sock is not None
        try:
            self.sock.sendall(data)
        except OSError as e:
            self.connected = False
            raise UnavailableError(f"OUCH exchange {self.host}:{self.port}", f"send failed: {e}") from None
        self._last_tx = time.monotonic()
        self.counters["sent"] += 1

    def stop(self, drain_s: float = 1.0) -> None:
        """Log out and close. What the exchange sent before it closed the connection (for example the
        answers to a cancel-all just sent) is applied to the pool first, waiting up to ``drain_s`` seconds."""
        if self.sock is not None and self.connected:
            with contextlib.suppress(OSError):
                self.sock.sendall(soup_packet(Soup.LOGOUT_REQUEST))
            deadline = time.monotonic() + drain_s
            while self.connected and time.monotonic() < deadline:
                select.select([self.sock], [], [], 0.05)
                self._read()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.connected = False
        self.stopped = True

    # ---------------------------------------------------------------- orders
    def token(self, slot: int, version: int | None = None) -> str:
        """The OUCH order token of ``slot`` (its confirmed version unless ``version`` is given)."""
        v = int(self._version[slot]) if version is None else version
        return f"{int(self.pool._oid[slot]):012X}{v:02X}"

    def enter(self, slot: int, t_ns: int | None = None) -> None:
        """Send the pool order in ``slot`` (Enter Order) and mark it SUBMITTED, stamped ``t_ns``
        (default ``time.perf_counter_ns()``)."""
        p = self.pool
        inst = int(p._inst[slot])
        symbol = self.symbols.get(inst)
        if symbol is None:
            raise DataError("instrument", inst, "an instrument number the gateway has a symbol for", slot)
        side = _SIDE_CODE.get(int(p._side[slot]))
        if side is None:
            raise DataError("side", int(p._side[slot]), "+1 (buy) or -1 (sell)", slot)
        self._version[slot] = 0
        price = int(p._px[slot])
        msg = EnterOrder(
            self.token(slot, 0), side, int(p._qty[slot]), symbol,
            price * self.units_per_tick if price > 0 else MARKET_PRICE,
            TIF_IOC if int(p._tif[slot]) in (2, 3) else TIF_SYSTEM_HOURS, self.firm,
        )
        data = soup_packet(Soup.UNSEQUENCED, encode(msg))
        self._check_connected()
        p.on_sent(slot, time.perf_counter_ns() if t_ns is None else t_ns)
        self._send(data)

    def replace(self, slot: int, qty: int, price_ticks: int) -> None:
        """Replace the working order: new total ``qty`` (units) and limit (ticks); PENDING_REPLACE until
        the exchange answers."""
        v = int(self._version[slot])
        if v >= 255:
            raise DataError("replace", v, "at most 255 replaces per order (the token's version)")
        msg = ReplaceOrder(self.token(slot, v), self.token(slot, v + 1), qty, price_ticks * self.units_per_tick,
                           TIF_IOC if int(self.pool._tif[slot]) in (2, 3) else TIF_SYSTEM_HOURS)
        self._check_connected()
        self.pool.on_replace_request(slot)
        self._send(soup_packet(Soup.UNSEQUENCED, encode(msg)))

    def cancel(self, slot: int) -> None:
        """Cancel the working order (PENDING_CANCEL until the exchange answers)."""
        self._check_connected()
        self.pool.on_cancel_request(slot)
        self._send(soup_packet(Soup.UNSEQUENCED, encode(CancelOrder(self.token(slot), 0))))

    def cancel_all(self) -> int:
        """Cancel every working order of the pool in one write; returns how many cancels were sent."""
        p = self.pool
        self._check_connected()
        out = []
        for slot in p.open_slots().tolist():
            if int(p._st[slot]) == _PENDING[0]:
                continue  # a cancel is already on its way
            p.on_cancel_request(slot)
            out.append(soup_packet(Soup.UNSEQUENCED, encode(CancelOrder(self.token(slot), 0))))
        if out:
            self._send(b"".join(out))
        return len(out)

    # ---------------------------------------------------------------- replies
    def poll(self, timeout_s: float = 0.0) -> list[OuchEvent]:
        """Read what has arrived, apply it to the pool, return the events. With nothing there, wait up to
        ``timeout_s`` seconds for something (0: never block; a loop that shares its cores waits rather than
        spins). Sends a Client Heartbeat when nothing was sent for ``heartbeat_s``."""
        if not self.connected:
            return []
        events = self._read()
        if not events and timeout_s > 0 and self.sock is not None and self.connected and not self._reader.buf:
            select.select([self.sock], [], [], timeout_s)
            events = self._read()
        if self.connected and time.monotonic() - self._last_tx >= self.heartbeat_s:
            with contextlib.suppress(OSError):
                self._send(soup_packet(Soup.CLIENT_HEARTBEAT))
                self.counters["heartbeats"] += 1
        return events

    def _read(self) -> list[OuchEvent]:
        assert self.sock is not None
        events: list[OuchEvent] = []
        while True:
            try:
                n = self.sock.recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                n = 0
            if n == 0:
                self.connected = False
                break
            self._reader.feed(memoryview(self._rbuf)[:n])
            if n < len(self._rbuf):
                break
        try:
            for ptype, payload in self._reader:
                if ptype == Soup.SEQUENCED:
                    self.next_seq += 1
                    self._apply(payload, events)
                elif ptype == Soup.END_OF_SESSION:
                    events.append(OuchEvent("end_of_session", -1, 0, 0, 0, "", self.next_seq))
                    self.connected = False
        except DataError as e:
            self._bad(f"framing: {e}")
            self.connected = False
        return events

    def _bad(self, what: str) -> None:
        self.counters["bad_events"] += 1
        BAD_MESSAGES.labels("gateway").inc()
        log.warning("OUCH gateway: %s", what)

    def _slot(self, token: str) -> tuple[int, int]:
        try:
            oid, version = int(token[:12], 16), int(token[12:14], 16)
        except ValueError:
            return -1, 0
        return self.pool.slot_of(oid), version

    def _apply(self, payload: bytes, events: list[OuchEvent]) -> None:
        self.counters["received"] += 1
        seq = self.next_seq - 1
        try:
            m = decode_outbound(payload)
        except DataError as e:
            self._bad(str(e))
            return
        if type(m) is SystemEvent:
            events.append(OuchEvent("system", -1, 0, 0, 0, m.event_code, seq))
            return
        token = m.replacement_token if type(m) is Replaced else m.token  # type: ignore[union-attr]
        slot, version = self._slot(token)
        if slot < 0:
            self._bad(f"{type(m).__name__} for unknown token {token!r}")
            return
        p, t = self.pool, time.perf_counter_ns()
        oid = int(p._oid[slot])
        upt = self.units_per_tick
        try:
            if type(m) is Accepted:
                p.on_ack(slot, t)
                events.append(OuchEvent("accepted", slot, oid, m.shares, m.price // upt, "", seq))
            elif type(m) is Executed:
                p.on_fill(slot, m.shares, m.price // upt, t)
                events.append(OuchEvent("executed", slot, oid, m.shares, m.price // upt, m.liquidity, seq))
            elif type(m) is Canceled:
                p.on_cancel(slot, t, m.decrement)
                events.append(OuchEvent("canceled", slot, oid, m.decrement, 0, m.reason, seq))
            elif type(m) is Replaced:
                self._version[slot] = version
                p.on_replaced(slot, int(p._filled[slot]) + m.shares, m.price // upt)
                events.append(OuchEvent("replaced", slot, oid, m.shares, m.price // upt, "", seq))
            elif type(m) is Rejected:
                st = int(p._st[slot])
                if version == 0 and st == _SUBMITTED:
                    p.on_reject(slot, t_ns=t)
                elif version == 0 and p._t_ack[slot] == 0:  # refused before it was accepted, a cancel pending
                    p.on_cancel(slot, t)
                else:  # a refused replace: the order works on as it was
                    p.on_cancel_reject(slot)
                events.append(OuchEvent("rejected", slot, oid, 0, 0, m.reason, seq))
            elif type(m) is CancelReject:
                p.on_cancel_reject(slot)
                events.append(OuchEvent("cancel_rejected", slot, oid, 0, 0, "", seq))
        except (IllegalTransition, FillProblem) as e:
            self._bad(str(e))
