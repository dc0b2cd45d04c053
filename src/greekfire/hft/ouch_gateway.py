"""The OUCH 4.2 client: :class:`OuchGateway` logs in over SoupBinTCP, sends the orders of an
:class:`~greekfire.hft.orders.OrderPool` (the order token is the pool's order id and a replace version), and
:meth:`OuchGateway.poll` reads what came back without blocking and moves the pool's orders. The wire format is
:mod:`greekfire.hft.ouch`'s.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from greekfire.core.errors import DataError, UnavailableError
from greekfire.hft.orders import STATUS_CODE, OrderPool
from greekfire.hft.ouch import (
    BAD_MESSAGES,
    MARKET_PRICE,
    PRICE_SCALE,
    TIF_IOC,
    TIF_SYSTEM_HOURS,
    Accepted,
    Canceled,
    CancelOrder,
    CancelReject,
    EnterOrder,
    Executed,
    Rejected,
    Replaced,
    ReplaceOrder,
    Soup,
    SoupReader,
    SystemEvent,
    decode_outbound,
    encode,
    login_request,
    parse_login_accepted,
    soup_packet,
)
from greekfire.trading.orders import FillProblem, IllegalTransition, OrderStatus

log = logging.getLogger("greekfire.hft.ouch_gateway")


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
