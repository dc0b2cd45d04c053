"""A QuickFIX initiator (QuickFIX's own C++ engine, through the ``quickfix-tls`` wheel) trading on our FIX
exchange: a limit order that fills, a cancel/replace, a message with a bad field that our acceptor rejects,
a sequence gap that is recovered, market data, then a logout."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import need_module, poll_until
from greekfire.core.settings import load_settings
from greekfire.fix.transport import FixThread
from greekfire.trading.fixexchange import FixExchange

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def test_a_quickfix_initiator_trades_on_our_exchange(shared_data: Path, tmp_path: Path) -> None:
    need_module("quickfix")
    import quickfix as fix

    from fixpeer import BUY, QuickfixInitiator, fields

    dd = shared_data / "fix44" / "FIX44.xml"
    settings = load_settings(overrides={
        "home": str(tmp_path / "exchange"), "fix.data_dictionary": str(dd), "fix.port": 0,
        "fix.exchange_comp_id": "GF", "fix.clients": ["QFX"], "fix.quote_interval_ms": 50.0,
    })
    thread = FixThread()
    exchange = FixExchange(settings)
    port = thread.run(exchange.start())
    peer = QuickfixInitiator(port, sender_comp_id="QFX", target_comp_id="GF", data_dictionary=dd,
                             store_dir=tmp_path / "qfx", reconnect_s=1)
    session = next(iter(exchange.clients.values())).session

    def reports(clordid: str) -> list[tuple[str, str]]:
        return [(f[150], f[39]) for f in map(fields, peer.received("8")) if f.get(11) == clordid]

    try:
        peer.start()
        peer.wait_logged_on(20)
        # market data arrives unasked: snapshots of the books
        assert peer.wait_for(lambda: len(peer.received("W")) > 0, 10)
        snap = fields(peer.received("W")[0])
        assert snap[262] == "auto" and int(snap[268]) >= 1

        # a marketable limit order fills against the simulated book (fair value about 100)
        peer.send_new_order("buy-1", "GFX", BUY, 5, 110.0)
        assert peer.wait_for(lambda: ("F", "2") in reports("buy-1"), 10), reports("buy-1")
        fill = next(f for f in map(fields, peer.received("8")) if f.get(11) == "buy-1" and f[150] == "F")
        assert float(fill[31]) <= 110.0 and fill[14] == "5" and fill[151] == "0"

        # a resting order, replaced, then canceled
        peer.send_new_order("rest-1", "GFX", BUY, 5, 80.0)
        assert peer.wait_for(lambda: reports("rest-1") == [("0", "0")], 10), reports("rest-1")
        peer.send_replace("rest-2", "rest-1", "GFX", BUY, 7, 80.5)
        assert peer.wait_for(lambda: ("5", "0") in reports("rest-2"), 10), reports("rest-2")
        peer.send_cancel("rest-3", "rest-2", "GFX", BUY, 7)
        assert peer.wait_for(lambda: ("4", "4") in reports("rest-3"), 10), reports("rest-3")

        # a message with a bad field: our acceptor answers with a session-level Reject naming it
        peer.send_raw("35=D|11=bad-1|21=1|38=5|40=w|44=90|54=1|55=GFX|60=20270101-00:00:00.000")
        assert peer.wait_for(lambda: len(peer.received_admin("3")) > 0, 10)
        reject = fields(peer.received_admin("3")[-1])
        assert (reject[371], reject[373], reject[372]) == ("40", "5", "D")

        # a sequence gap from QuickFIX: our exchange asks for the missing messages and trades on
        gaps = session.counters["gaps"]
        qf = fix.Session.lookupSession(peer._session_id)
        qf.setNextSenderMsgSeqNum(qf.getExpectedSenderNum() + 3)
        peer.send_new_order("buy-2", "GFX", BUY, 3, 110.0)
        assert peer.wait_for(lambda: ("F", "2") in reports("buy-2"), 15), reports("buy-2")
        assert session.counters["gaps"] > gaps
        assert poll_until(lambda: session.next_target_seq == qf.getExpectedSenderNum(), 10)

        # logout
        peer.stop()
        assert poll_until(lambda: not session.is_logged_on, 10)
        assert peer.errors == []
        assert exchange.stats()["fills"] >= 2
    finally:
        peer.stop(force=True)
        thread.run(exchange.stop())
        thread.stop()
