"""The FIX session store: sequence numbers and sent messages of one session, kept across a restart.

A FIX session is identified by a ``session_id`` string such as ``'FIX.4.4:ISLD->TW44'``. Its store holds
the next MsgSeqNum (34) we send, the next one we expect from the counterparty, the messages we sent (to
answer a ResendRequest) and the time the session's sequence numbers started (``creation_time``, UTC).

:class:`MemoryStore` keeps all of it in the process (nothing survives a restart). :class:`SqlStore` writes it
to a database (SQLAlchemy 2 Core; SQLite file or PostgreSQL by URL), in tables ``fix_sessions`` (one row a
session) and ``fix_messages`` (one row a sent message, keyed by session and sequence number). The two
sequence numbers are cached in memory and written through: a read never touches the database, a write is
one short transaction. SQLite runs in WAL journal mode with ``synchronous=NORMAL`` (a commit is not synced
to disk on every call; a power cut may lose the last commits, a process crash does not).

Several sessions may share one database: every row carries its ``session_id`` and a store sees only its own.

Example::

    >>> store = open_store(None, "FIX.4.4:ISLD->TW44")
    >>> store.save_sent(1, b"8=FIX.4.4|...")
    >>> store.next_sender_seq()
    2
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from greekfire.core.db import db_error_reason, masked_url, resolve_url
from greekfire.core.errors import UnavailableError

SESSION_ID_MAX = 255

metadata = MetaData()

sessions_table = Table(
    "fix_sessions",
    metadata,
    Column("session_id", String(SESSION_ID_MAX), primary_key=True),
    Column("creation_time", DateTime(timezone=True), nullable=False),
    Column("next_sender_seq", BigInteger, nullable=False),
    Column("next_target_seq", BigInteger, nullable=False),
)
messages_table = Table(
    "fix_messages",
    metadata,
    Column("session_id", String(SESSION_ID_MAX), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("raw", LargeBinary, nullable=False),
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _check_seq(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {n!r}")
    return n


def _check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not session_id or len(session_id) > SESSION_ID_MAX:
        raise ValueError(
            f"session_id must be a non-empty string of at most {SESSION_ID_MAX} characters, got {session_id!r}"
        )
    return session_id


class SessionStore(ABC):
    """Sequence numbers and sent messages of ONE FIX session (identified by a session_id string such as
    'FIX.4.4:ISLD->TW44'). Sequence numbers start at 1. Every store keeps both numbers and the creation time
    in memory (reads never touch its storage); the writes are its own."""

    _creation_time: datetime
    _sender: int
    _target: int

    @property
    def creation_time(self) -> datetime:
        """When this session's sequence numbers started (UTC): set at creation and at :meth:`reset`."""
        return self._creation_time

    def next_sender_seq(self) -> int:
        """The next MsgSeqNum (34) we send."""
        return self._sender

    def next_target_seq(self) -> int:
        """The next MsgSeqNum (34) we expect from the counterparty."""
        return self._target

    @abstractmethod
    def set_next_sender_seq(self, n: int) -> None:
        """Set the next MsgSeqNum we send (``n`` >= 1)."""

    @abstractmethod
    def set_next_target_seq(self, n: int) -> None:
        """Set the next MsgSeqNum we expect (``n`` >= 1)."""

    @abstractmethod
    def save_sent(self, seq: int, raw: bytes) -> None:
        """Store the outgoing message ``raw`` (the whole frame) under ``seq`` (replacing one already stored
        there) and set the next sender sequence number to ``seq + 1``, both at once."""

    @abstractmethod
    def sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        """The stored outgoing messages with ``begin <= seq <= end``, as ``(seq, raw)`` in ascending order."""

    @abstractmethod
    def reset(self) -> None:
        """Both sequence numbers back to 1, the stored messages dropped, a new creation time."""

    def close(self) -> None:  # noqa: B027 - a store without resources has nothing to release
        """Release the store's resources (a database connection pool). Idempotent."""


class MemoryStore(SessionStore):
    """A session store in the process memory: nothing survives a restart."""

    def __init__(self, session_id: str = "") -> None:
        self.session_id = session_id
        self._creation_time = _utcnow()
        self._sender = 1
        self._target = 1
        self._messages: dict[int, bytes] = {}

    def set_next_sender_seq(self, n: int) -> None:
        self._sender = _check_seq("next_sender_seq", n)

    def set_next_target_seq(self, n: int) -> None:
        self._target = _check_seq("next_target_seq", n)

    def save_sent(self, seq: int, raw: bytes) -> None:
        _check_seq("seq", seq)
        self._messages[seq] = bytes(raw)
        self._sender = seq + 1

    def sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        return sorted((s, m) for s, m in self._messages.items() if begin <= s <= end)

    def reset(self) -> None:
        self._messages.clear()
        self._sender = 1
        self._target = 1
        self._creation_time = _utcnow()


class SqlStore(SessionStore):
    """A session store in a database (``sqlite:///path`` or ``postgresql+psycopg://...``): reopened on the same
    URL and ``session_id`` it resumes with the same sequence numbers, messages and creation time.

    Raises :class:`~greekfire.core.errors.UnavailableError` (naming the URL, password masked) where the
    database cannot be opened, read or written. Safe to call from several threads (one lock)."""

    def __init__(self, url: str, session_id: str, *, echo: bool = False) -> None:
        self.url = url
        self.session_id = _check_session_id(session_id)
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.db: Engine = create_engine(url, echo=echo)
            if self.db.dialect.name == "sqlite":
                event.listen(self.db, "connect", _sqlite_pragmas)
            metadata.create_all(self.db)
            row = self._load_or_create()
        except (SQLAlchemyError, ImportError) as exc:  # no server, bad URL, or its driver not installed
            if hasattr(self, "db"):
                self.db.dispose()
            raise UnavailableError(
                masked_url(url),
                f"the FIX session store (session {session_id!r}) cannot be opened: {db_error_reason(exc)}",
            ) from None
        self._creation_time = _as_utc(row.creation_time)
        self._sender = int(row.next_sender_seq)
        self._target = int(row.next_target_seq)
        self._prepare()
        self._fast: _SqliteWriter | None = None
        if self.db.dialect.name == "sqlite" and self.db.url.database not in (None, "", ":memory:"):
            self._fast = _SqliteWriter(str(self.db.url.database), self.session_id)

    def _load_or_create(self) -> Any:
        where = sessions_table.c.session_id == self.session_id
        with self.db.begin() as conn:
            row = conn.execute(select(sessions_table).where(where)).first()
        if row is not None:
            return row
        fresh = {
            "session_id": self.session_id,
            "creation_time": _utcnow(),
            "next_sender_seq": 1,
            "next_target_seq": 1,
        }
        try:
            with self.db.begin() as conn:
                conn.execute(insert(sessions_table), fresh)
        except IntegrityError:  # another process created the session at the same moment: use its row
            pass
        with self.db.connect() as conn:
            return conn.execute(select(sessions_table).where(where)).one()

    def _prepare(self) -> None:
        """Build the statements of the per-message calls once (building one costs more than running it).

        A message is stored by an INSERT that replaces one under the same (session_id, seq); where the
        dialect has no such upsert, by a DELETE and an INSERT in the same transaction."""
        m, s = messages_table.c, sessions_table.c
        mine = s.session_id == self.session_id
        self._set_sender = update(sessions_table).where(mine).values(next_sender_seq=bindparam("n"))
        self._set_target = update(sessions_table).where(mine).values(next_target_seq=bindparam("n"))
        self._delete_one = delete(messages_table).where(
            m.session_id == self.session_id, m.seq == bindparam("q")
        )
        self._insert = insert(messages_table)
        self._upsert: Any = None
        dialect_insert: Any = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(
            self.db.dialect.name
        )
        if dialect_insert is not None:
            stmt = dialect_insert(messages_table)
            self._upsert = stmt.on_conflict_do_update(
                index_elements=[m.session_id, m.seq], set_={"raw": stmt.excluded.raw}
            )

    def _failed(self, what: str, exc: BaseException) -> UnavailableError:
        return UnavailableError(
            masked_url(self.url),
            f"the FIX session store (session {self.session_id!r}) cannot {what}: {db_error_reason(exc)}",
        )

    def _set_seq(self, stmt: Any, what: str, n: int) -> None:
        try:
            with self.db.begin() as conn:
                conn.execute(stmt, {"n": n})
        except SQLAlchemyError as exc:
            raise self._failed(f"write {what}", exc) from None

    def set_next_sender_seq(self, n: int) -> None:
        self._write_seq("next_sender_seq", n)
        self._sender = n

    def set_next_target_seq(self, n: int) -> None:
        self._write_seq("next_target_seq", n)
        self._target = n

    def _write_seq(self, what: str, n: int) -> None:
        """Write one of the two sequence numbers (``what``: its column) before the cache takes it."""
        _check_seq(what, n)
        sender = what == "next_sender_seq"
        with self._lock:
            if self._fast is not None:
                self._fast_write(self._fast.set_sender if sender else self._fast.set_target, f"write {what}", n)
            else:
                self._set_seq(self._set_sender if sender else self._set_target, what, n)

    def _fast_write(self, fn: Any, what: str, *args: Any) -> None:
        try:
            fn(*args)
        except sqlite3.Error as exc:
            raise self._failed(what, exc) from None

    def save_sent(self, seq: int, raw: bytes) -> None:
        _check_seq("seq", seq)
        row = {"session_id": self.session_id, "seq": seq, "raw": bytes(raw)}
        with self._lock:
            if self._fast is not None:
                self._fast_write(self._fast.save_sent, f"store sent message {seq}", seq, bytes(raw))
                self._sender = seq + 1
                return
            try:
                with self.db.begin() as conn:
                    if self._upsert is not None:
                        conn.execute(self._upsert, row)
                    else:
                        conn.execute(self._delete_one, {"q": seq})
                        conn.execute(self._insert, row)
                    conn.execute(self._set_sender, {"n": seq + 1})
            except SQLAlchemyError as exc:
                raise self._failed(f"store sent message {seq}", exc) from None
            self._sender = seq + 1

    def sent(self, begin: int, end: int) -> list[tuple[int, bytes]]:
        c = messages_table.c
        stmt = (
            select(c.seq, c.raw)
            .where(c.session_id == self.session_id, c.seq >= begin, c.seq <= end)
            .order_by(c.seq)
        )
        try:
            with self.db.connect() as conn:
                return [(int(s), bytes(r)) for s, r in conn.execute(stmt)]
        except SQLAlchemyError as exc:
            raise self._failed(f"read sent messages {begin}..{end}", exc) from None

    def reset(self) -> None:
        now = _utcnow()
        with self._lock:
            try:
                with self.db.begin() as conn:
                    conn.execute(delete(messages_table).where(messages_table.c.session_id == self.session_id))
                    conn.execute(
                        update(sessions_table)
                        .where(sessions_table.c.session_id == self.session_id)
                        .values(creation_time=now, next_sender_seq=1, next_target_seq=1)
                    )
            except SQLAlchemyError as exc:
                raise self._failed("reset", exc) from None
            self._sender = 1
            self._target = 1
            self._creation_time = now

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._fast is not None:
                self._fast.close()
            self.db.dispose()


class _SqliteWriter:
    """The per-message writes of a SQLite store on one plain ``sqlite3`` connection.

    A FIX session writes on every message (the sent message and the next sender number before the bytes go
    out; the next target number after a message is handled), so these writes are on the order round trip.
    Through SQLAlchemy they cost ~85 us each; on a plain connection ~20 us. WAL mode with
    ``synchronous=NORMAL``: a commit is in the OS before the call returns (a killed process loses nothing), and
    the checkpoints that sync the WAL into the database run in a background thread every second instead of
    stalling a commit every ~1,000 pages (what made the round trip's p99 several milliseconds)."""

    CHECKPOINT_S = 1.0

    def __init__(self, path: str, session_id: str) -> None:
        self.session_id = session_id
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0"):
            self.conn.execute(f"PRAGMA {pragma}")
        # storing a sent message moves the session's next sender number in the same statement (one call,
        # atomic), instead of BEGIN, INSERT, UPDATE, COMMIT: four calls on every message sent
        for change in ("INSERT", "UPDATE OF raw"):
            name = "fix_messages_next_sender_" + change.split()[0].lower()
            self.conn.execute(
                f"CREATE TRIGGER IF NOT EXISTS {name} AFTER {change} ON fix_messages BEGIN "
                "UPDATE fix_sessions SET next_sender_seq = NEW.seq + 1 WHERE session_id = NEW.session_id; END"
            )
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoints, args=(path,), daemon=True,
                                              name="fix-store-checkpoint")
        self._checkpointer.start()

    def save_sent(self, seq: int, raw: bytes) -> None:
        self.conn.execute("INSERT INTO fix_messages (session_id, seq, raw) VALUES (?, ?, ?) "
                          "ON CONFLICT (session_id, seq) DO UPDATE SET raw = excluded.raw", (self.session_id, seq, raw))

    def set_sender(self, n: int) -> None:
        self.conn.execute("UPDATE fix_sessions SET next_sender_seq = ? WHERE session_id = ?", (n, self.session_id))

    def set_target(self, n: int) -> None:
        self.conn.execute("UPDATE fix_sessions SET next_target_seq = ? WHERE session_id = ?", (n, self.session_id))

    def _checkpoints(self, path: str) -> None:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(self.CHECKPOINT_S):
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._checkpointer.join(timeout=5)
        self.conn.close()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL journal (readers do not block the writer) and no fsync on every commit (synchronous=NORMAL)."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def _as_utc(t: datetime) -> datetime:
    """SQLite gives back a naive datetime (stored as UTC); PostgreSQL an aware one in its session time zone."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def open_store(url: str | None, session_id: str, home: Path | None = None) -> SessionStore:
    """The store of FIX session ``session_id``: a :class:`MemoryStore` for ``None`` or ``'memory'``, else a
    :class:`SqlStore` on ``url``. A relative SQLite path (``sqlite:///fix.db``) is placed under ``home`` where
    one is given (as the trading database is), else left relative to the working folder."""
    if url is None or url.strip().lower() == "memory":
        return MemoryStore(_check_session_id(session_id))
    return SqlStore(resolve_url(url, home) if home is not None else url, session_id)
