"""The FIX session store: sequence numbers and sent messages in memory and in a SQLite file, a restart
that resumes exactly, reset, range queries, a message replaced under the same sequence number, sessions
that share a database without seeing each other, and clear errors for a bad URL or a bad argument."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from conftest import free_port
from greekfire.core.errors import UnavailableError
from greekfire.fix.store import MemoryStore, SessionStore, SqlStore, open_store

SID = "FIX.4.4:ISLD->TW44"


def frame(seq: int, body: str = "D") -> bytes:
    """A stand-in for an outgoing frame: bytes that differ by sequence number (with a SOH and a NUL, so a
    store that treats the message as text would garble it)."""
    return f"8=FIX.4.4\x0135={body}\x0134={seq}\x01".encode() + b"\x00\xff"


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    s: SessionStore = (
        MemoryStore(SID) if request.param == "memory" else SqlStore(f"sqlite:///{tmp_path / 'fix.db'}", SID)
    )
    yield s
    s.close()


@pytest.fixture
def reopen(tmp_path: Path) -> Iterator[Callable[..., SqlStore]]:
    """Open a SqlStore on one SQLite file (a new object each call, as after a restart); all closed at the end."""
    opened: list[SqlStore] = []

    def _open(session_id: str = SID) -> SqlStore:
        s = SqlStore(f"sqlite:///{tmp_path / 'fix.db'}", session_id)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


# --- the contract, for both stores -------------------------------------------------------------------


def test_a_new_session_starts_at_one_with_no_messages_and_a_recent_utc_creation_time(
    store: SessionStore,
) -> None:
    assert store.next_sender_seq() == 1
    assert store.next_target_seq() == 1
    assert store.sent(1, 1_000_000) == []
    created = store.creation_time
    assert created.tzinfo is not None and created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=1)


def test_save_sent_stores_the_message_and_moves_the_sender_sequence_number(store: SessionStore) -> None:
    store.save_sent(1, frame(1))
    assert store.next_sender_seq() == 2
    store.save_sent(2, frame(2))
    assert store.next_sender_seq() == 3
    assert store.next_target_seq() == 1
    assert store.sent(1, 2) == [(1, frame(1)), (2, frame(2))]


def test_sent_returns_the_inclusive_range_in_ascending_order(store: SessionStore) -> None:
    for seq in (5, 3, 9, 1, 7):  # stored out of order
        store.save_sent(seq, frame(seq))
    assert [s for s, _ in store.sent(1, 9)] == [1, 3, 5, 7, 9]
    assert store.sent(3, 7) == [(3, frame(3)), (5, frame(5)), (7, frame(7))]
    assert store.sent(4, 4) == []
    assert store.sent(9, 9) == [(9, frame(9))]
    assert store.sent(10, 20) == []
    assert store.sent(7, 3) == []
    assert all(isinstance(raw, bytes) for _, raw in store.sent(1, 9))


def test_save_sent_of_an_existing_sequence_number_replaces_the_message(store: SessionStore) -> None:
    store.save_sent(1, frame(1))
    store.save_sent(2, frame(2))
    store.save_sent(2, frame(2, "F"))
    assert store.sent(1, 2) == [(1, frame(1)), (2, frame(2, "F"))]
    assert store.next_sender_seq() == 3


def test_the_sequence_numbers_are_set_independently(store: SessionStore) -> None:
    store.set_next_target_seq(17)
    store.set_next_sender_seq(40)
    assert (store.next_sender_seq(), store.next_target_seq()) == (40, 17)
    store.set_next_sender_seq(3)  # a SequenceReset may move it back
    assert store.next_sender_seq() == 3


def test_reset_returns_to_one_drops_the_messages_and_renews_the_creation_time(store: SessionStore) -> None:
    for seq in range(1, 6):
        store.save_sent(seq, frame(seq))
    store.set_next_target_seq(9)
    before = store.creation_time
    store.reset()
    assert (store.next_sender_seq(), store.next_target_seq()) == (1, 1)
    assert store.sent(1, 100) == []
    assert store.creation_time >= before
    assert store.creation_time.utcoffset() == timedelta(0)
    store.save_sent(1, frame(1, "A"))  # the session goes on from 1
    assert store.sent(1, 100) == [(1, frame(1, "A"))]


@pytest.mark.parametrize("bad", [0, -1, 1.0, "2", True, None])
def test_a_sequence_number_below_one_or_not_a_whole_number_is_refused_by_name(
    store: SessionStore, bad: object
) -> None:
    with pytest.raises(ValueError, match="next_sender_seq") as exc:
        store.set_next_sender_seq(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(exc.value)
    with pytest.raises(ValueError, match="next_target_seq"):
        store.set_next_target_seq(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seq"):
        store.save_sent(bad, b"x")  # type: ignore[arg-type]
    assert (store.next_sender_seq(), store.next_target_seq()) == (1, 1)
    assert store.sent(-10, 10) == []


# --- SQLite: persistence, isolation, the settings it runs with --------------------------------------


def test_a_reopened_sqlite_store_resumes_exactly(reopen: Callable[..., SqlStore]) -> None:
    first = reopen()
    for seq in range(1, 11):
        first.save_sent(seq, frame(seq))
    first.save_sent(4, frame(4, "G"))  # replaced: now next_sender_seq is 5 (save_sent sets seq + 1)
    first.set_next_sender_seq(11)
    first.set_next_target_seq(23)
    created = first.creation_time
    first.close()

    second = reopen()
    assert second.next_sender_seq() == 11
    assert second.next_target_seq() == 23
    assert second.creation_time == created
    expected = [(s, frame(s, "G") if s == 4 else frame(s)) for s in range(1, 11)]
    assert second.sent(1, 10) == expected
    second.save_sent(11, frame(11))
    second.close()

    third = reopen()
    assert third.next_sender_seq() == 12
    assert third.sent(10, 11) == [(10, frame(10)), (11, frame(11))]


def test_a_reset_survives_a_restart(reopen: Callable[..., SqlStore]) -> None:
    first = reopen()
    for seq in range(1, 4):
        first.save_sent(seq, frame(seq))
    first.set_next_target_seq(5)
    old = first.creation_time
    first.reset()
    renewed = first.creation_time
    first.close()
    second = reopen()
    assert (second.next_sender_seq(), second.next_target_seq()) == (1, 1)
    assert second.sent(1, 100) == []
    assert second.creation_time == renewed
    assert renewed >= old


def test_sessions_in_one_database_do_not_see_each_other(reopen: Callable[..., SqlStore]) -> None:
    a = reopen("FIX.4.4:ISLD->TW44")
    b = reopen("FIX.4.4:ISLD->TW45")
    a.save_sent(1, frame(1, "A"))
    a.save_sent(2, frame(2, "A"))
    a.set_next_target_seq(8)
    b.save_sent(1, frame(1, "B"))
    assert a.sent(1, 10) == [(1, frame(1, "A")), (2, frame(2, "A"))]
    assert b.sent(1, 10) == [(1, frame(1, "B"))]
    assert (b.next_sender_seq(), b.next_target_seq()) == (2, 1)
    b.reset()  # resets only b
    assert a.sent(1, 10) == [(1, frame(1, "A")), (2, frame(2, "A"))]
    a.close()
    b.close()
    a2, b2 = reopen("FIX.4.4:ISLD->TW44"), reopen("FIX.4.4:ISLD->TW45")
    assert (a2.next_sender_seq(), a2.next_target_seq()) == (3, 8)
    assert (b2.next_sender_seq(), b2.next_target_seq()) == (1, 1)
    assert b2.sent(1, 10) == []


def test_every_write_is_committed_at_once_for_another_connection_to_read(tmp_path: Path) -> None:
    path = tmp_path / "fix.db"
    s = SqlStore(f"sqlite:///{path}", SID)
    s.save_sent(1, frame(1))
    s.set_next_target_seq(4)
    with closing(sqlite3.connect(path)) as other:  # a second, independent connection (no SQLAlchemy)
        row = other.execute(
            "SELECT next_sender_seq, next_target_seq FROM fix_sessions WHERE session_id = ?", (SID,)
        ).fetchone()
        raw = other.execute(
            "SELECT raw FROM fix_messages WHERE session_id = ? AND seq = 1", (SID,)
        ).fetchone()
    assert row == (2, 4)
    assert raw == (frame(1),)
    s.close()


def test_sqlite_runs_in_wal_mode_with_synchronous_normal(tmp_path: Path) -> None:
    s = SqlStore(f"sqlite:///{tmp_path / 'fix.db'}", SID)
    with s.db.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    s.close()


def test_a_failed_write_raises_unavailable_and_leaves_the_sequence_numbers_as_they_were(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fix.db"
    s = SqlStore(f"sqlite:///{path}", SID)
    s.save_sent(1, frame(1))
    with closing(sqlite3.connect(path)) as other:  # the table goes away under the store
        other.execute("DROP TABLE fix_messages")
    with pytest.raises(UnavailableError, match="sent message 2") as exc:
        s.save_sent(2, frame(2))
    assert str(path) in str(exc.value)
    assert s.next_sender_seq() == 2  # not moved: the message was not stored
    s.close()


def test_close_is_idempotent(tmp_path: Path) -> None:
    s = SqlStore(f"sqlite:///{tmp_path / 'fix.db'}", SID)
    s.close()
    s.close()


# --- open_store and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, "memory", "MEMORY"])
def test_open_store_without_a_database_gives_a_memory_store(url: str | None, tmp_path: Path) -> None:
    s = open_store(url, SID, tmp_path)
    assert isinstance(s, MemoryStore)
    s.save_sent(1, frame(1))
    assert s.next_sender_seq() == 2
    assert list(tmp_path.iterdir()) == []  # nothing written to disk


def test_open_store_places_a_relative_sqlite_path_under_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    s = open_store("sqlite:///state/fix.db", SID, home)
    assert isinstance(s, SqlStore)
    s.save_sent(1, frame(1))
    s.close()
    assert (home / "state" / "fix.db").is_file()
    again = open_store("sqlite:///state/fix.db", SID, home)
    assert again.next_sender_seq() == 2
    again.close()


def test_open_store_keeps_an_absolute_sqlite_path(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "fix.db"
    path.parent.mkdir()
    s = open_store(f"sqlite:///{path}", SID, tmp_path / "home")
    s.close()
    assert path.is_file()
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("url", ["nosuchdb://somewhere/fix", "not a url at all"])
def test_a_bad_url_raises_unavailable_naming_it(url: str) -> None:
    with pytest.raises(UnavailableError) as exc:
        SqlStore(url, SID)
    assert url.split("://")[0] in str(exc.value)
    assert "FIX session store" in str(exc.value)


def test_a_sqlite_file_in_a_missing_folder_raises_unavailable_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "folder" / "fix.db"
    with pytest.raises(UnavailableError) as exc:
        open_store(f"sqlite:///{path}", SID)
    assert str(path) in str(exc.value)


def test_a_database_that_does_not_answer_raises_unavailable_with_the_password_masked() -> None:
    url = f"postgresql+psycopg://fixuser:s3cret-pw@127.0.0.1:{free_port()}/fix"  # nothing listens there
    with pytest.raises(UnavailableError) as exc:
        SqlStore(url, SID)
    message = str(exc.value)
    assert "s3cret-pw" not in message
    assert "fixuser" in message and "127.0.0.1" in message


@pytest.mark.parametrize("session_id", ["", "x" * 256])
def test_a_bad_session_id_is_refused_by_name(session_id: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="session_id"):
        open_store(f"sqlite:///{tmp_path / 'fix.db'}", session_id)
    with pytest.raises(ValueError, match="session_id"):
        open_store(None, session_id)


def test_without_an_upsert_a_message_is_still_replaced(tmp_path: Path) -> None:
    """The path for a database with no INSERT ... ON CONFLICT (a DELETE and an INSERT in one transaction)."""
    s = SqlStore(f"sqlite:///{tmp_path / 'fix.db'}", SID)
    s._upsert = None
    s.save_sent(1, frame(1))
    s.save_sent(1, frame(1, "F"))
    s.save_sent(2, frame(2))
    assert s.sent(1, 2) == [(1, frame(1, "F")), (2, frame(2))]
    assert s.next_sender_seq() == 3
    s.close()
