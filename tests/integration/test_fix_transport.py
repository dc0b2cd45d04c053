"""Our FIX initiator and acceptor over real TCP on loopback: logon, orders both ways, TLS, and an initiator
that reconnects by itself (with back-off) after the acceptor restarts, recovering what it missed."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from conftest import need_binary, poll_until
from greekfire.fix.dictionary import DataDictionary
from greekfire.fix.message import FixMessage
from greekfire.fix.session import Application, Session, SessionConfig
from greekfire.fix.store import SqlStore
from greekfire.fix.transport import FixAcceptor, FixInitiator, FixThread


class Recorder(Application):
    def __init__(self) -> None:
        self.messages: list[FixMessage] = []

    def on_message(self, session: Session, msg: FixMessage) -> None:
        self.messages.append(msg)


def order(clordid: str) -> FixMessage:
    return FixMessage([(35, "D"), (11, clordid), (21, "1"), (38, "5"), (40, "2"), (44, "1.25"), (54, "1"),
                       (55, "X"), (60, "20270101-00:00:00")])


@pytest.fixture(scope="module")
def fix44(shared_data: Path) -> DataDictionary:
    return DataDictionary.load(shared_data / "fix44" / "FIX44.xml")


def _sessions(tmp_path: Path, dd: DataDictionary) -> tuple[Session, Session, Recorder, Recorder]:
    ra, rb = Recorder(), Recorder()
    trader = Session(SessionConfig("TRADER", "EXCH", initiator=True, heartbeat_s=5), ra,
                     SqlStore(f"sqlite:///{tmp_path / 'trader.db'}", "trader"), dd)
    exch = Session(SessionConfig("EXCH", "TRADER"), rb, SqlStore(f"sqlite:///{tmp_path / 'exch.db'}", "exch"), dd)
    return trader, exch, ra, rb


def test_orders_cross_tcp_and_the_initiator_reconnects_after_the_acceptor_restarts(
    tmp_path: Path, fix44: DataDictionary,
) -> None:
    thread = FixThread()
    trader, exch, ra, rb = _sessions(tmp_path, fix44)
    acceptor = FixAcceptor([exch])
    port = thread.run(acceptor.start())
    initiator = FixInitiator(trader, "127.0.0.1", port, reconnect_s=0.2, max_reconnect_s=1.0)
    thread.spawn(initiator.run())
    try:
        assert poll_until(lambda: trader.is_logged_on and exch.is_logged_on, 10)
        thread.call(trader.send, order("o1"))
        assert poll_until(lambda: [m.get(11) for m in rb.messages] == ["o1"], 5)
        thread.call(exch.send, FixMessage([(35, "D"), (11, "back"), (21, "1"), (40, "1"), (54, "2"), (55, "Y"),
                                           (60, "20270101-00:00:00")]))
        assert poll_until(lambda: [m.get(11) for m in ra.messages] == ["back"], 5)
        # the acceptor goes away; what the trader sends meanwhile is stored and delivered after it returns
        thread.run(acceptor.stop())
        assert poll_until(lambda: not trader.is_connected, 5)
        thread.call(trader.send, order("while-down"))
        acceptor = FixAcceptor([exch], port=port)
        thread.run(acceptor.start())
        assert poll_until(lambda: [m.get(11) for m in rb.messages] == ["o1", "while-down"], 15)
        assert initiator.connects >= 2
        assert poll_until(lambda: exch.next_target_seq == trader.next_sender_seq, 5)
    finally:
        thread.run(initiator.stop())
        thread.run(acceptor.stop())
        thread.stop()


def test_tls_when_the_acceptor_has_a_certificate(tmp_path: Path, fix44: DataDictionary) -> None:
    openssl = need_binary("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    client.check_hostname = False
    thread = FixThread()
    trader, exch, _, rb = _sessions(tmp_path, fix44)
    acceptor = FixAcceptor([exch], ssl=server)
    port = thread.run(acceptor.start())
    initiator = FixInitiator(trader, "127.0.0.1", port, ssl=client)
    thread.spawn(initiator.run())
    try:
        assert poll_until(lambda: trader.is_logged_on, 10)
        thread.call(trader.send, order("over-tls"))
        assert poll_until(lambda: [m.get(11) for m in rb.messages] == ["over-tls"], 5)
    finally:
        thread.run(initiator.stop())
        thread.run(acceptor.stop())
        thread.stop()
