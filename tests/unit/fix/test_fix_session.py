"""The FIX session state machine, two sessions wired back to back in memory with a clock the test moves:
logon, heartbeats and test requests, time-outs, gaps and their recovery, resend with gap fill, rejects,
restart from a store, reset on logon, the session window. (The socket transport and QuickFIX's own
acceptance scripts are tested in tests/integration.)"""

from __future__ import annotations

from datetime import time as dtime
from pathlib import Path

import pytest

from greekfire.core.metrics import sample_value
from greekfire.fix.dictionary import DataDictionary
from greekfire.fix.message import FixMessage, frames, parse
from greekfire.fix.session import Application, Session, SessionConfig
from greekfire.fix.store import MemoryStore, SessionStore, SqlStore


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class Recorder(Application):
    def __init__(self) -> None:
        self.messages: list[FixMessage] = []
        self.logons = 0
        self.logouts = 0

    def on_logon(self, session: Session) -> None:
        self.logons += 1

    def on_logout(self, session: Session) -> None:
        self.logouts += 1

    def on_message(self, session: Session, msg: FixMessage) -> None:
        self.messages.append(msg)


class Wire:
    """Connects an initiator and an acceptor: what one writes the other receives (unless dropped)."""

    def __init__(self, a: Session, b: Session) -> None:
        self.a, self.b = a, b
        self.drop_to_b: set[int] = set()   # sequence numbers of a's messages lost on the way
        self.sent_by: dict[str, list[FixMessage]] = {"a": [], "b": []}
        self.closed = False

    def connect(self) -> None:
        self.closed = False
        self.b.connected(lambda data: self._deliver(data, self.a, self.b, "b"), self.close)
        self.a.connected(lambda data: self._deliver(data, self.b, self.a, "a"), self.close)

    def _deliver(self, data: bytes, to: Session, frm: Session, who: str) -> None:
        msg = parse(data)
        self.sent_by[who].append(msg)
        if who == "a" and int(msg.get(34) or 0) in self.drop_to_b and msg.get(43) != "Y":
            return
        if to.is_connected:
            to.receive(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for s in (self.a, self.b):
                if s.is_connected:
                    s.disconnect("wire closed")


def pair(
    clock: Clock, a_store: SessionStore | None = None, b_store: SessionStore | None = None,
    dd: DataDictionary | None = None, **kw: object,
) -> tuple[Session, Session, Recorder, Recorder, Wire]:
    ra, rb = Recorder(), Recorder()
    a = Session(SessionConfig("TRADER", "EXCH", initiator=True, heartbeat_s=10, **kw),  # type: ignore[arg-type]
                ra, a_store or MemoryStore(), dd, clock)
    b = Session(SessionConfig("EXCH", "TRADER", **kw), rb, b_store or MemoryStore(), dd, clock)  # type: ignore[arg-type]
    wire = Wire(a, b)
    wire.connect()
    return a, b, ra, rb, wire


def order(clordid: str) -> FixMessage:
    return FixMessage([(35, "D"), (11, clordid), (21, "1"), (38, "5"), (40, "2"), (44, "1.25"), (54, "1"),
                       (55, "X"), (60, "20270101-00:00:00")])


@pytest.fixture(scope="module")
def fix44(shared_data: Path) -> DataDictionary:
    return DataDictionary.load(shared_data / "fix44" / "FIX44.xml")


def test_logon_then_messages_flow_in_order_with_sequence_numbers() -> None:
    clock = Clock()
    a, b, ra, rb, wire = pair(clock)
    assert a.is_logged_on and b.is_logged_on
    assert b.heartbeat_s == 10  # the acceptor takes the initiator's HeartBtInt
    assert (ra.logons, rb.logons) == (1, 1)
    for i in range(3):
        a.send(order(f"o{i}"))
    assert [m.get(11) for m in rb.messages] == ["o0", "o1", "o2"]
    assert [m.get(34) for m in rb.messages] == ["2", "3", "4"]
    assert b.next_target_seq == 5 and a.next_sender_seq == 5


def test_heartbeat_after_a_quiet_interval_then_test_request_then_timeout() -> None:
    clock = Clock()
    a, b, _, _, wire = pair(clock)
    # nothing for 10 s: each side sends a heartbeat and the other hears it
    clock.t += 10.0
    a.tick()
    assert wire.sent_by["a"][-1].msg_type == "0"
    # b goes deaf: a stops hearing anything
    b_write = b._write
    b._write = lambda data: None
    clock.t += 12.0
    a.tick()
    assert wire.sent_by["a"][-1].msg_type == "1" and wire.sent_by["a"][-1].get(112) == "TEST"
    clock.t += 12.0
    a.tick()
    assert not a.is_connected, "no answer for 2.4 heartbeat intervals disconnects"
    assert b_write is not None


def test_a_lost_message_is_detected_by_the_gap_and_resent_with_possdup() -> None:
    clock = Clock()
    a, b, _, rb, wire = pair(clock)
    wire.drop_to_b = {3}
    for i in range(4):
        a.send(order(f"o{i}"))
    # o1 (seq 3) was lost: b asked for it and got it again, marked PossDup, then processed the queue
    assert [m.get(11) for m in rb.messages] == ["o0", "o1", "o2", "o3"]
    resend_requests = [m for m in wire.sent_by["b"] if m.msg_type == "2"]
    assert len(resend_requests) == 1 and resend_requests[0].get(7) == "3"
    resent = [m for m in wire.sent_by["a"] if m.get(43) == "Y"]
    assert [m.get(11) for m in resent if m.msg_type == "D"] == ["o1", "o2"]  # o3 was not sent yet
    assert all(m.get(122) for m in resent)
    assert b.counters["gaps"] >= 1 and b.next_target_seq == a.next_sender_seq


def test_logged_on_gauge_and_gap_counter_move() -> None:
    clock = Clock()
    a, b, _, _, wire = pair(clock)
    sid = {"session": b.config.session_id}
    gap_series = {**sid, "event": "gaps"}  # the one gap count the alert rule and the dashboard both read
    assert sample_value("greekfire_fix_session_logged_on", sid) == 1
    gaps = sample_value("greekfire_fix_session_events_total", gap_series) or 0.0
    wire.drop_to_b = {3}
    for i in range(3):
        a.send(order(f"o{i}"))
    assert sample_value("greekfire_fix_session_events_total", gap_series) == gaps + b.counters["gaps"] > gaps
    wire.close()
    assert sample_value("greekfire_fix_session_logged_on", sid) == 0


def test_admin_messages_are_gap_filled_not_resent() -> None:
    clock = Clock()
    a, b, _, _, wire = pair(clock)
    a.send(order("o0"))
    clock.t += 10.0
    a.tick()  # a heartbeat (admin) as seq 3
    a.send(order("o1"))
    before = len(wire.sent_by["a"])
    a._resend(1, 0 or a.next_sender_seq - 1)
    replay = wire.sent_by["a"][before:]
    kinds = [(m.msg_type, m.get(34), m.get(36)) for m in replay]
    assert kinds == [("4", "1", "2"), ("D", "2", None), ("4", "3", "4"), ("D", "4", None)]


def test_messages_sent_while_disconnected_arrive_after_reconnect(tmp_path: Path) -> None:
    clock = Clock()
    a_store = SqlStore(f"sqlite:///{tmp_path / 'a.db'}", "a")
    b_store = SqlStore(f"sqlite:///{tmp_path / 'b.db'}", "b")
    a, b, _, rb, wire = pair(clock, a_store, b_store)
    a.send(order("before"))
    wire.close()
    a.send(order("while-down-1"))
    a.send(order("while-down-2"))
    # both processes restart: the stores are reopened from disk
    a_store.close()
    b_store.close()
    a.store = SqlStore(f"sqlite:///{tmp_path / 'a.db'}", "a")
    b.store = SqlStore(f"sqlite:///{tmp_path / 'b.db'}", "b")
    assert a.next_sender_seq == 5 and b.next_target_seq == 3
    wire.connect()
    assert [m.get(11) for m in rb.messages] == ["before", "while-down-1", "while-down-2"]
    assert b.next_target_seq == a.next_sender_seq


def test_a_duplicate_resent_with_possdup_is_ignored_not_delivered_twice() -> None:
    clock = Clock()
    a, b, _, rb, wire = pair(clock)
    a.send(order("o0"))
    dup = wire.sent_by["a"][-1].copy()
    dup.set(43, "Y")
    dup.set(122, dup.get(52))
    b.receive(dup.encode())
    assert [m.get(11) for m in rb.messages] == ["o0"]
    assert b.is_connected


def test_too_low_without_possdup_logs_out_with_the_reason() -> None:
    clock = Clock()
    a, b, _, _, wire = pair(clock)
    a.send(order("o0"))
    stale = wire.sent_by["a"][-1].encode()
    b.receive(stale)
    logout = wire.sent_by["b"][-1]
    assert logout.msg_type == "5"
    assert logout.get(58) == "MsgSeqNum too low, expecting 3 but received 2"
    assert not b.is_connected


def test_a_message_that_breaks_the_dictionary_is_rejected_and_the_session_goes_on(
    fix44: DataDictionary,
) -> None:
    clock = Clock()
    a, b, _, rb, wire = pair(clock, dd=fix44, check_latency=False)
    bad = order("bad")
    bad.set(40, "w")  # not an OrdType
    a.send(bad)
    reject = wire.sent_by["b"][-1]
    assert (reject.msg_type, reject.get(45), reject.get(371), reject.get(372), reject.get(373)) == (
        "3", "2", "40", "D", "5")
    a.send(order("good"))
    assert [m.get(11) for m in rb.messages] == ["good"]
    assert b.counters["rejected"] == 1 and b.is_logged_on


def test_reset_on_logon_starts_both_sides_at_one() -> None:
    clock = Clock()
    a, b, _, _, wire = pair(clock)
    for i in range(3):
        a.send(order(f"o{i}"))
    wire.close()
    a.config.send_reset_on_logon = True
    a.store.reset()
    wire.connect()
    logon = [m for m in wire.sent_by["b"] if m.msg_type == "A"][-1]
    assert logon.get(141) == "Y" and logon.get(34) == "1"
    assert a.is_logged_on and b.next_target_seq == 2


def test_outside_its_window_a_session_is_off_and_a_new_window_resets_it() -> None:
    clock = Clock()  # 2027-01-15 08:00 UTC
    store = MemoryStore()
    s = Session(SessionConfig("EXCH", "TRADER", start=dtime(9, 0), end=dtime(17, 0)), Recorder(), store,
                clock=clock)
    assert not s.in_window()
    clock.t += 2 * 3600
    assert s.in_window()
    store.set_next_target_seq(40)
    clock.t += 24 * 3600  # the next day's window: the store was created before it opened
    s.connected(lambda data: None, lambda: None)
    assert store.next_target_seq() == 1


def test_frames_take_complete_messages_and_leave_the_rest() -> None:
    raw = order("o").set(34, 1).set(49, "A").set(56, "B").set(52, "20270101-00:00:00").encode()
    buf = bytearray(b"noise" + raw + raw[:20])
    assert list(frames(buf)) == [raw]
    assert bytes(buf) == raw[:20]


def test_session_events_logons_and_state_reach_prometheus() -> None:
    """The session's counters, logons and logged-on state are Prometheus series of the session id (one
    process holds many sessions of that id in this module: deltas, not absolute values)."""
    from greekfire.core.metrics import sample_value

    clock = Clock()
    a, b, _, _, wire = pair(clock)
    sid = b.config.session_id

    def value(name: str, **labels: str) -> float:
        v = sample_value(name, {"session": sid, **labels})
        assert v is not None, (name, labels)
        return v

    before = {e: value("greekfire_fix_session_events_total", event=e) for e in ("received", "gaps", "garbled")}
    logons = value("greekfire_fix_logons_total")
    assert value("greekfire_fix_session_logged_on") == 1.0
    wire.drop_to_b = {3}
    for i in range(3):
        a.send(order(f"m{i}"))
    assert value("greekfire_fix_session_events_total", event="gaps") > before["gaps"]
    assert value("greekfire_fix_session_events_total", event="received") >= before["received"] + 3
    assert value("greekfire_fix_session_events_total", event="garbled") == before["garbled"]  # present, unchanged
    wire.close()
    assert value("greekfire_fix_session_logged_on") == 0.0
    wire.connect()
    assert value("greekfire_fix_session_logged_on") == 1.0 and value("greekfire_fix_logons_total") == logons + 1
