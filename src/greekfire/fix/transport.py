"""FIX over TCP (optionally TLS) with asyncio: an acceptor that serves several sessions on one port, an
initiator that connects and reconnects with back-off, and :class:`FixThread` to run either beside
synchronous code (the trading engine, a command).

The session logic is :class:`greekfire.fix.session.Session`; this module only moves bytes and time.

Example (an acceptor for one counterparty)::

    session = Session(SessionConfig("EXCH", "CLIENT"), app, MemoryStore(), dictionary)
    acceptor = FixAcceptor([session], port=9878)
    thread = FixThread()
    port = thread.run(acceptor.start())      # the bound port
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from greekfire.fix.message import GarbledMessage, frames, parse
from greekfire.fix.session import Session

log = logging.getLogger("greekfire.fix")
T = TypeVar("T")
TICK_S = 0.1


class _Connection:
    """One TCP connection bound to (at most) one session."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.open = True
        self.session: Session | None = None

    def write(self, data: bytes) -> None:
        if self.open:
            self.writer.write(data)

    def close(self) -> None:
        self.open = False
        with contextlib.suppress(Exception):
            self.writer.close()

    async def pump(self, bind: Callable[[bytes], Session | None]) -> None:
        """Read frames until the connection closes; ``bind`` picks the session from the first frame."""
        buf = bytearray()
        ticker: asyncio.Task[None] | None = None
        try:
            while self.open:
                data = await self.reader.read(65536)
                if not data:
                    break
                buf += data
                for frame in frames(buf):
                    if self.session is None:
                        self.session = bind(frame)
                        if self.session is None:
                            self.close()
                            return
                        ticker = asyncio.get_running_loop().create_task(_tick(self.session, self))
                    self.session.receive(frame)
                    if not self.open:
                        return
        except (ConnectionError, OSError) as e:
            log.info("FIX connection lost: %s", e)
        finally:
            if ticker is not None:
                ticker.cancel()
            if self.session is not None and self.open:
                self.session.disconnect("connection closed by the counterparty")
            self.close()


async def _tick(session: Session, conn: _Connection) -> None:
    while conn.open:
        await asyncio.sleep(TICK_S)
        try:
            session.tick()
        except Exception:  # a timer must not kill the connection silently
            log.exception("FIX %s: timer failed", session.config.session_id)


class FixAcceptor:
    """Serve ``sessions`` on ``host:port`` (port 0: any free port); the first message of a connection, a
    Logon, picks the session by its CompIDs and BeginString. Unknown counterparties, a session already
    connected, or a first message that is not a valid Logon get the connection closed."""

    def __init__(
        self, sessions: list[Session], host: str = "127.0.0.1", port: int = 0,
        ssl: ssl_.SSLContext | None = None,
    ) -> None:
        self.sessions = {(s.config.begin_string, s.config.sender_comp_id, s.config.target_comp_id): s
                         for s in sessions}
        self.host, self.port, self.ssl = host, port, ssl
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("FIX acceptor listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection (sessions keep their sequence numbers)."""
        if self._server is not None:
            self._server.close()
        for c in list(self._connections):
            if c.session is not None and c.open:
                c.session.disconnect("acceptor stopping")
            c.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _bind(self, conn: _Connection, frame: bytes) -> Session | None:
        try:
            msg = parse(frame)
        except GarbledMessage as e:
            log.warning("FIX acceptor: closing a connection whose first message is garbled: %s", e)
            return None
        key = (msg.begin_string, msg.get(56) or "", msg.get(49) or "")
        session = self.sessions.get(key)
        if msg.msg_type != "A" or session is None:
            log.warning("FIX acceptor: closing a connection that opened with %s from %s to %s (%s)",
                        msg.msg_type, key[2], key[1], key[0])
            return None
        if session.is_connected:
            log.warning("FIX acceptor: %s is already connected; closing the second connection",
                        session.config.session_id)
            return None
        if not session.in_window():
            log.warning("FIX acceptor: %s logon outside its session window", session.config.session_id)
            return None
        session.connected(conn.write, conn.close)
        return session

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer)
        self._connections.add(conn)
        try:
            await conn.pump(lambda frame: self._bind(conn, frame))
        finally:
            self._connections.discard(conn)


class FixInitiator:
    """Connect ``session`` to ``host:port`` and keep it connected: on a lost connection, reconnect after
    ``reconnect_s`` seconds, doubling up to ``max_reconnect_s`` (reset once a logon succeeds)."""

    def __init__(
        self, session: Session, host: str, port: int, ssl: ssl_.SSLContext | None = None,
        reconnect_s: float = 1.0, max_reconnect_s: float = 30.0,
    ) -> None:
        self.session, self.host, self.port, self.ssl = session, host, port, ssl
        self.reconnect_s, self.max_reconnect_s = reconnect_s, max_reconnect_s
        self._stopping = False
        self._conn: _Connection | None = None
        self.connects = 0

    async def run(self) -> None:
        """Connect, log on, and reconnect until :meth:`stop`."""
        delay = self.reconnect_s
        while not self._stopping:
            try:
                if self.session.in_window():
                    reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl)
                    self.connects += 1
                    conn = self._conn = _Connection(reader, writer)
                    conn.session = self.session
                    self.session.connected(conn.write, conn.close)
                    ticker = asyncio.get_running_loop().create_task(_tick(self.session, conn))
                    try:
                        await conn.pump(lambda frame: self.session)
                    finally:
                        ticker.cancel()
                    if self.session.counters["received"]:
                        delay = self.reconnect_s
            except (ConnectionError, OSError) as e:
                log.info("FIX %s: cannot connect to %s:%d: %s", self.session.config.session_id, self.host,
                         self.port, e)
            if self._stopping:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_reconnect_s)

    async def stop(self, logout: bool = True, timeout_s: float = 2.0) -> None:
        """Log out (waiting up to ``timeout_s`` for the reply) and stop reconnecting."""
        self._stopping = True
        s = self.session
        if logout and s.is_logged_on:
            s.logout()
            for _ in range(int(timeout_s / 0.02)):
                if not s.is_connected:
                    break
                await asyncio.sleep(0.02)
        if s.is_connected:
            s.disconnect("initiator stopping")


class FixThread:
    """An asyncio event loop in a daemon thread, for FIX beside synchronous code.

    :meth:`run` runs a coroutine there and waits for its result; :meth:`spawn` starts one and returns its
    future; :meth:`call` runs a plain function there (the session is not thread-safe: touch it only there).
    """

    def __init__(self, name: str = "greekfire-fix") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[..., T], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def call_wait(self, fn: Callable[..., T], *args: Any, timeout_s: float = 10.0) -> T:
        async def _c() -> T:
            return fn(*args)
        return self.run(_c(), timeout_s)

    def stop(self) -> None:
        """Cancel what still runs on the loop (a reconnect wait, a timer), then end the thread."""
        if self.loop.is_running():
            async def _cancel_all() -> None:
                me = asyncio.current_task()
                tasks = [t for t in asyncio.all_tasks() if t is not me]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                self.run(_cancel_all(), timeout_s=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
