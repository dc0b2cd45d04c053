"""QuickFIX counterparties for tests and benchmarks: a small exchange (acceptor) and a client (initiator).

Both run QuickFIX's C++ engine in this process (its own threads) through the ``quickfix`` module of the
``quickfix-tls`` wheel (a dev extra); the ``quickfix`` import happens when a peer is built, so importing
this package works without the wheel (a test calls ``need_module("quickfix")`` first).

Example::

    with QuickfixAcceptor(data_dictionary=dd, store_dir=tmp / "x") as exchange, QuickfixInitiator(
        exchange.port, sender_comp_id="GF", target_comp_id="QFX", data_dictionary=dd, store_dir=tmp / "c"
    ) as client:
        client.wait_logged_on()
        client.send_new_order("O1", "AAPL", BUY, 100, 101.0)
        client.wait_for(lambda: len(client.received("8")) == 2)
"""

from fixpeer.peer import (
    BUY,
    FILL_PRICE,
    SELL,
    QuickfixAcceptor,
    QuickfixInitiator,
    QuickfixPeer,
    fields,
    free_port,
)

__all__ = [
    "BUY",
    "FILL_PRICE",
    "SELL",
    "QuickfixAcceptor",
    "QuickfixInitiator",
    "QuickfixPeer",
    "fields",
    "free_port",
]
