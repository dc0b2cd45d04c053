"""QuickFIX (its own C++ engine, through the ``quickfix-tls`` wheel) as the other side of our FIX engine.

Our initiator logs on to a QuickFIX acceptor (a small exchange, ``tests/fixpeer``): a limit order that
fills, a cancel/replace, a message with a bad field that QuickFIX rejects, a sequence gap in each direction
that is recovered, then a logout. The other direction, a QuickFIX initiator trading on our FIX exchange,
is in ``test_fix_exchange_quickfix.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import need_module, poll_until
from greekfire.fix.dictionary import DataDictionary
from greekfire.fix.message import FixMessage
from greekfire.fix.session import Application, Session, SessionConfig
from greekfire.fix.store import SqlStore
from greekfire.fix.transport import FixInitiator, FixThread


class Recorder(Application):
    def __init__(self) -> None:
        self.app: list[FixMessage] = []
        self.admin: list[FixMessage] = []

    def on_message(self, session: Session, msg: FixMessage) -> None:
        self.app.append(msg)

    def on_admin(self, session: Session, msg: FixMessage) -> None:
        self.admin.append(msg)

    def reports(self, clordid: str) -> list[tuple[str, str]]:
        """(ExecType, OrdStatus) of the ExecutionReports for ``clordid``, in order."""
        return [(m.get(150) or "", m.get(39) or "") for m in self.app if m.msg_type == "8" and m.get(11) == clordid]


def nos(clordid: str, price: str, qty: str = "10", side: str = "1") -> FixMessage:
    return FixMessage([(35, "D"), (11, clordid), (21, "1"), (38, qty), (40, "2"), (44, price), (54, side),
                       (55, "GFX"), (60, "20270101-00:00:00")])


@pytest.fixture
def quickfix_exchange(shared_data: Path, tmp_path: Path) -> Any:
    need_module("quickfix")
    from fixpeer import QuickfixAcceptor

    peer = QuickfixAcceptor(port=0, sender_comp_id="QFX", target_comp_id="GF",
                            data_dictionary=shared_data / "fix44" / "FIX44.xml", store_dir=tmp_path / "qfx")
    peer.start()
    yield peer
    peer.stop()


def test_our_initiator_trades_with_a_quickfix_acceptor(quickfix_exchange: Any, shared_data: Path, tmp_path: Path) -> None:
    import quickfix as fix

    peer = quickfix_exchange
    dd = DataDictionary.load(shared_data / "fix44" / "FIX44.xml")
    rec = Recorder()
    session = Session(SessionConfig("GF", "QFX", initiator=True, heartbeat_s=5), rec,
                      SqlStore(f"sqlite:///{tmp_path / 'gf.db'}", "gf"), dd)
    thread = FixThread()
    initiator = FixInitiator(session, "127.0.0.1", peer.port, reconnect_s=0.2)
    thread.spawn(initiator.run())
    try:
        assert poll_until(lambda: session.is_logged_on and peer.logged_on, 15)

        # a limit order that fills (the peer fills a buy at or above 100.00)
        thread.call(session.send, nos("fill-1", "100.5"))
        assert poll_until(lambda: rec.reports("fill-1") == [("0", "0"), ("F", "2")], 10), rec.reports("fill-1")
        fill = [m for m in rec.app if m.get(11) == "fill-1" and m.get(150) == "F"][0]
        assert (fill.get(31), fill.get(32), fill.get(14), fill.get(151)) == ("100", "10", "10", "0")

        # a resting order, replaced, then canceled
        thread.call(session.send, nos("rest-1", "99"))
        assert poll_until(lambda: rec.reports("rest-1") == [("0", "0")], 10)
        replace = FixMessage([(35, "G"), (11, "rest-2"), (41, "rest-1"), (21, "1"), (38, "20"), (40, "2"), (44, "99.5"),
                              (54, "1"), (55, "GFX"), (60, "20270101-00:00:00")])
        thread.call(session.send, replace)
        assert poll_until(lambda: rec.reports("rest-2") == [("5", "0")], 10), rec.reports("rest-2")
        cancel = FixMessage([(35, "F"), (11, "rest-3"), (41, "rest-2"), (38, "20"), (54, "1"), (55, "GFX"),
                             (60, "20270101-00:00:00")])
        thread.call(session.send, cancel)
        assert poll_until(lambda: rec.reports("rest-3") == [("4", "4")], 10), rec.reports("rest-3")

        # a message with a bad field: QuickFIX answers with a session-level Reject naming the tag
        bad = nos("bad-1", "99")
        bad.set(40, "w")
        thread.call(session.send, bad)
        assert poll_until(lambda: any(m.msg_type == "3" for m in rec.admin), 10)
        reject = [m for m in rec.admin if m.msg_type == "3"][-1]
        assert (reject.get(371), reject.get(373), reject.get(372)) == ("40", "5", "D")
        assert session.is_logged_on

        # a gap we cause: two of our sequence numbers never go out; QuickFIX asks for them and we gap-fill
        def skip_two() -> None:
            session.store.set_next_sender_seq(session.next_sender_seq + 2)
            session.send(nos("after-gap", "100.25"))
        thread.call(skip_two)
        assert poll_until(lambda: rec.reports("after-gap") == [("0", "0"), ("F", "2")], 10)
        asked = [m for m in rec.admin if m.msg_type == "2"]
        assert len(asked) == 1, "QuickFIX asked once for the two missing messages"

        # a gap QuickFIX causes: its next sequence number jumps; we ask for the missing ones and get a gap fill
        gaps_before = session.counters["gaps"]
        qf = fix.Session.lookupSession(peer._session_id)
        qf.setNextSenderMsgSeqNum(qf.getExpectedSenderNum() + 3)
        thread.call(session.send, nos("fill-2", "101"))
        assert poll_until(lambda: rec.reports("fill-2") == [("0", "0"), ("F", "2")], 10), rec.reports("fill-2")
        assert session.counters["gaps"] > gaps_before
        assert poll_until(lambda: session.next_target_seq == qf.getExpectedSenderNum(), 10)

        # logout: both sides agree and the connection closes
        thread.run(initiator.stop())
        assert poll_until(lambda: not peer.logged_on, 10)
        assert peer.errors == []
    finally:
        thread.run(initiator.stop(logout=False))
        thread.stop()
