"""The QuickFIX peers used against greekfire's FIX engine, checked against each other first: a QuickFIX
client (initiator) trades with the QuickFIX exchange (acceptor) over loopback, and every ExecutionReport
carries the FIX 4.4 fields the exchange promises."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import need_module
from fixpeer import BUY, SELL, QuickfixAcceptor, QuickfixInitiator, fields

pytestmark = pytest.mark.integration

# every ExecutionReport: OrderID, ExecID, ExecType, OrdStatus, Symbol, Side, LeavesQty, CumQty, AvgPx, ClOrdID
ER_REQUIRED = (37, 17, 150, 39, 55, 54, 151, 14, 6, 11)


@pytest.fixture
def dictionary(shared_data: Path) -> Path:
    need_module("quickfix")
    return shared_data / "fix44" / "FIX44.xml"


@pytest.fixture
def pair(dictionary: Path, tmp_path: Path) -> Iterator[tuple[QuickfixAcceptor, QuickfixInitiator]]:
    exchange = QuickfixAcceptor(data_dictionary=dictionary, store_dir=tmp_path / "exchange")
    client = QuickfixInitiator(
        exchange.port,
        sender_comp_id="GF",
        target_comp_id="QFX",
        data_dictionary=dictionary,
        store_dir=tmp_path / "client",
    )
    with exchange, client:
        client.wait_logged_on()
        assert exchange.wait_for(lambda: exchange.logged_on, 10)
        yield exchange, client
    assert exchange.errors == [] and client.errors == []


def reports(client: QuickfixInitiator, count: int) -> list[dict[int, str]]:
    assert client.wait_for(lambda: len(client.received()) >= count, 10), client.received()
    got = [fields(m) for m in client.received()]
    assert len(got) == count, got
    return got


def check_er(f: dict[int, str], exec_type: str, ord_status: str) -> None:
    assert f[35] == "8", f
    missing = [t for t in ER_REQUIRED if t not in f]
    assert missing == [], f"ExecutionReport without {missing}: {f}"
    assert (f[150], f[39]) == (exec_type, ord_status), f
    assert (f[49], f[56]) == ("QFX", "GF")


def test_marketable_limit_order_is_acknowledged_then_filled(
    pair: tuple[QuickfixAcceptor, QuickfixInitiator],
) -> None:
    exchange, client = pair
    client.send_new_order("B-1", "AAPL", BUY, 300, 100.5, account="ACC1")
    new, fill = reports(client, 2)
    check_er(new, "0", "0")
    assert (new[11], new[55], new[54], new[38], new[44]) == ("B-1", "AAPL", "1", "300", "100.5")
    assert (new[151], new[14], new[6]) == ("300", "0", "0")
    check_er(fill, "F", "2")
    assert fill[37] == new[37] and fill[17] != new[17]
    assert (fill[31], fill[32], fill[14], fill[151], fill[6]) == ("100", "300", "300", "0", "100")
    # the exchange recorded the order as it came over the wire
    (order,) = exchange.received("D")
    assert (fields(order)[11], fields(order)[1], fields(order)[44]) == ("B-1", "ACC1", "100.5")

    client.send_new_order("S-1", "MSFT", SELL, 10, 99.0)
    new, fill = reports(client, 4)[2:]
    check_er(new, "0", "0")
    check_er(fill, "F", "2")
    assert (fill[54], fill[31], fill[32]) == ("2", "100", "10")


def test_resting_order_is_replaced_then_canceled(pair: tuple[QuickfixAcceptor, QuickfixInitiator]) -> None:
    exchange, client = pair
    client.send_new_order("R-1", "AAPL", BUY, 100, 99.5)
    (new,) = reports(client, 1)
    check_er(new, "0", "0")
    assert exchange.orders()["R-1"]["status"] == "0"  # rests: below the exchange's 100.00

    client.send_replace("R-2", "R-1", "AAPL", BUY, 150, 99.75)
    replaced = reports(client, 2)[1]
    check_er(replaced, "5", "0")
    assert (replaced[11], replaced[41], replaced[37]) == ("R-2", "R-1", new[37])
    assert (replaced[38], replaced[44], replaced[151], replaced[14]) == ("150", "99.75", "150", "0")

    client.send_cancel("R-3", "R-2", "AAPL", BUY, 150)
    canceled = reports(client, 3)[2]
    check_er(canceled, "4", "4")
    assert (canceled[11], canceled[41], canceled[37], canceled[151]) == ("R-3", "R-2", new[37], "0")

    # the order is gone: a second cancel and a replace of an order never seen are rejected
    client.send_cancel("R-4", "R-2", "AAPL", BUY, 150)
    client.send_replace("R-5", "NOPE", "AAPL", BUY, 1, 99.0)
    rej_cancel, rej_replace = reports(client, 5)[3:]
    assert (rej_cancel[35], rej_cancel[434], rej_cancel[41], rej_cancel[11]) == ("9", "1", "R-2", "R-4")
    assert (rej_replace[35], rej_replace[434], rej_replace[102], rej_replace[37]) == ("9", "2", "1", "NONE")
    assert [fields(m)[35] for m in exchange.received()] == ["D", "G", "F", "F", "G"]


def test_replace_to_a_marketable_price_fills(pair: tuple[QuickfixAcceptor, QuickfixInitiator]) -> None:
    _, client = pair
    client.send_new_order("M-1", "AAPL", SELL, 40, 101.0)
    client.send_replace("M-2", "M-1", "AAPL", SELL, 40, 100.0)
    new, replaced, fill = reports(client, 3)
    check_er(new, "0", "0")
    check_er(replaced, "5", "0")
    check_er(fill, "F", "2")
    assert (fill[11], fill[32], fill[151]) == ("M-2", "40", "0")


def test_raw_message_and_duplicate_order(pair: tuple[QuickfixAcceptor, QuickfixInitiator]) -> None:
    exchange, client = pair
    client.send_raw("35=D|11=X-1|55=IBM|54=2|60=20261206-12:00:00.000|38=5|40=2|44=120.5|59=0")
    client.send_raw("35=D|11=X-1|55=IBM|54=2|60=20261206-12:00:00.000|38=5|40=2|44=120.5|59=0")
    new, dup = reports(client, 2)
    check_er(new, "0", "0")
    assert (new[11], new[55], new[54], new[44]) == ("X-1", "IBM", "2", "120.5")  # a sell above 100: rests
    check_er(dup, "8", "8")
    assert (dup[11], dup[103], dup[37]) == ("X-1", "6", "NONE")
    assert len(exchange.received("D")) == 2 and len(client.sent()) == 2
    assert exchange.orders()["X-1"]["status"] == "0"  # the first order is untouched


def client_session(exchange: QuickfixAcceptor, dictionary: Path, store: Path, cl_ord_id: str) -> list[int]:
    """Log a client on (store in ``store``), trade one order, log out; the reports' MsgSeqNum (34)."""
    client = QuickfixInitiator(exchange.port, "GF", "QFX", data_dictionary=dictionary, store_dir=store)
    with client:
        client.wait_logged_on()
        client.send_new_order(cl_ord_id, "AAPL", BUY, 1, 100.0)
        assert client.wait_for(lambda: len(client.received("8")) == 2, 10), client.received()
        seqs = [int(fields(m)[34]) for m in client.received("8")]
    assert client.errors == []
    return seqs


def test_sequence_numbers_carry_over_a_client_restart(dictionary: Path, tmp_path: Path) -> None:
    with QuickfixAcceptor(data_dictionary=dictionary, store_dir=tmp_path / "exchange") as exchange:
        # first run: Logon is 1, the two reports 2 and 3, then Logout 4
        assert client_session(exchange, dictionary, tmp_path / "client", "P-0") == [2, 3]
        assert exchange.wait_for(lambda: not exchange.logged_on, 10)
        # a new client on the same store: both sides carry on (Logon 5, reports 6 and 7)
        assert client_session(exchange, dictionary, tmp_path / "client", "P-1") == [6, 7]
        assert exchange.wait_for(lambda: not exchange.logged_on, 10)
        assert exchange.logons == 2 and exchange.errors == []
