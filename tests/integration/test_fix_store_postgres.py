"""The FIX session store on the PostgreSQL server on loopback: a reopened store resumes exactly, reset,
range queries, a message replaced under the same sequence number, and sessions that share the database
without seeing each other. Every test uses its own session ids (and deletes its rows), so reruns and
parallel runs do not collide."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete

from greekfire.fix.store import SqlStore, messages_table, open_store, sessions_table

pytestmark = pytest.mark.integration


def frame(seq: int, body: str = "D") -> bytes:
    return f"8=FIX.4.4\x0135={body}\x0134={seq}\x01".encode() + b"\x00\xff"


@pytest.fixture
def reopen(postgres_url: str) -> Iterator[Callable[..., SqlStore]]:
    """``reopen(name)`` opens a new SqlStore for this test's session ``name`` (a new object each call, as
    after a restart). The test's rows are deleted and every store closed at the end."""
    tag = uuid.uuid4().hex[:10]
    opened: list[SqlStore] = []
    ids: set[str] = set()

    def _open(name: str = "A") -> SqlStore:
        sid = f"FIX.4.4:T{tag}->{name}"
        ids.add(sid)
        s = SqlStore(postgres_url, sid)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()
    if ids:
        cleaner = SqlStore(postgres_url, f"FIX.4.4:T{tag}->cleanup")
        ids.add(cleaner.session_id)
        with cleaner.db.begin() as conn:
            for t in (messages_table, sessions_table):
                conn.execute(delete(t).where(t.c.session_id.in_(sorted(ids))))
        cleaner.close()


def test_a_reopened_postgresql_store_resumes_exactly(reopen: Callable[..., SqlStore]) -> None:
    first = reopen()
    assert (first.next_sender_seq(), first.next_target_seq()) == (1, 1)
    for seq in range(1, 8):
        first.save_sent(seq, frame(seq))
    first.save_sent(3, frame(3, "G"))  # replaced (and next_sender_seq is now 4)
    first.set_next_sender_seq(8)
    first.set_next_target_seq(31)
    created = first.creation_time
    first.close()

    second = reopen()
    assert (second.next_sender_seq(), second.next_target_seq()) == (8, 31)
    assert second.creation_time == created
    assert second.creation_time.utcoffset() == timedelta(0)
    assert second.sent(1, 7) == [(s, frame(s, "G") if s == 3 else frame(s)) for s in range(1, 8)]
    assert second.sent(2, 4) == [(2, frame(2)), (3, frame(3, "G")), (4, frame(4))]
    assert second.sent(8, 100) == []


def test_a_postgresql_reset_survives_a_restart(reopen: Callable[..., SqlStore]) -> None:
    first = reopen()
    for seq in range(1, 4):
        first.save_sent(seq, frame(seq))
    first.set_next_target_seq(6)
    old = first.creation_time
    first.reset()
    assert (first.next_sender_seq(), first.next_target_seq()) == (1, 1)
    renewed = first.creation_time
    first.close()
    second = reopen()
    assert (second.next_sender_seq(), second.next_target_seq()) == (1, 1)
    assert second.sent(1, 100) == []
    assert second.creation_time == renewed >= old


def test_postgresql_sessions_do_not_see_each_other(reopen: Callable[..., SqlStore]) -> None:
    a, b = reopen("A"), reopen("B")
    a.save_sent(1, frame(1, "A"))
    a.save_sent(2, frame(2, "A"))
    a.set_next_target_seq(5)
    b.save_sent(1, frame(1, "B"))
    b.reset()
    a.close()
    b.close()
    a2, b2 = reopen("A"), reopen("B")
    assert a2.sent(1, 10) == [(1, frame(1, "A")), (2, frame(2, "A"))]
    assert (a2.next_sender_seq(), a2.next_target_seq()) == (3, 5)
    assert b2.sent(1, 10) == []
    assert (b2.next_sender_seq(), b2.next_target_seq()) == (1, 1)


def test_open_store_on_a_postgresql_url_gives_a_persistent_store(postgres_url: str) -> None:
    sid = f"FIX.4.4:T{uuid.uuid4().hex[:10]}->open"
    s = open_store(postgres_url, sid)
    try:
        assert isinstance(s, SqlStore)
        s.save_sent(1, frame(1))
        s.close()
        s = open_store(postgres_url, sid)
        assert s.sent(1, 1) == [(1, frame(1))]
        assert s.next_sender_seq() == 2
    finally:
        s.reset()  # no rows of this test's messages are left behind
        assert isinstance(s, SqlStore)
        with s.db.begin() as conn:
            conn.execute(delete(sessions_table).where(sessions_table.c.session_id == sid))
        s.close()
