"""The OUCH 4.2 exchange simulator: :class:`OuchServer`, one
:class:`~greekfire.market.matching.MatchingEngine` per symbol behind one SoupBinTCP session whose sequenced
messages are kept per user (a user logging in again with a requested sequence number gets what it missed),
heartbeats both ways, fills reported to the order's owner, run by a selector loop on its own thread. The wire
format is :mod:`greekfire.hft.ouch`'s.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from greekfire.core.clock import stop_when
from greekfire.core.errors import DataError
from greekfire.hft.ouch import (
    BAD_MESSAGES,
    MARKET_PRICE,
    PRICE_SCALE,
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
    decode_inbound,
    encode,
    login_accepted,
    midnight_ns,
    parse_login_request,
    soup_packet,
)
from greekfire.market.matching import ExecKind, ExecReport, MatchingEngine, OrderType, Side, TimeInForce

log = logging.getLogger("greekfire.hft.ouch_server")

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
        done = stop_when(stop)
        try:
            while not done():
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
