"""A request's trace id through the trading stack: the trading API on loopback (a real engine on simulated
venues under uvicorn) takes the client's X-Request-ID (or makes one), returns it, and the JSON log lines of the
API handler, the engine's order entry and the venue's send all carry it as ``trace_id``. The FIX venue sends
on its own thread: the id travels with the order there (a FIX exchange simulator on loopback)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api_trading import TradingServer
from test_fix_exchange import exchange_and_venue, make_settings

from conftest import poll_until
from greekfire.core.logging import configure_logging, trace_context
from greekfire.core.metrics import sample_value
from greekfire.trading.build import default_instruments
from greekfire.trading.model import OrderType, Side, TimeInForce
from greekfire.trading.orders import Order

pytestmark = pytest.mark.integration


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The process's logging configured the way ``--log-json`` does, into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buf = io.StringIO()
    configure_logging("INFO", json_format=True, stream=buf)
    yield buf
    for h in list(root.handlers):
        if h not in saved:
            root.removeHandler(h)
    for h in saved:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


def _lines(buf: io.StringIO, trace_id: str) -> list[dict[str, Any]]:
    out = []
    for line in buf.getvalue().splitlines():
        rec = json.loads(line)  # every line is one JSON object
        if rec.get("trace_id") == trace_id:
            out.append(rec)
    return out


LAYERS = {"greekfire.api.trading", "greekfire.trading.entry", "greekfire.trading.simvenue"}


def test_one_trace_id_from_the_api_through_the_engine_to_the_venue(tmp_path: Path, json_logs: io.StringIO) -> None:
    with TradingServer(tmp_path) as srv, srv.client("trade") as http:
        assert poll_until(lambda: srv.ask(http, "GFX") is not None, 20, 0.05), "no quote"
        ask = srv.ask(http, "GFX")
        assert ask is not None
        order = {"symbol": "GFX", "side": "buy", "qty": 1, "price": round(ask + 0.05, 2), "tif": "IOC"}
        given = http.post("/v1/orders", json=order, headers={"X-Request-ID": "client-req-42"})
        made = http.post("/v1/orders", json=order)
        bad = http.post("/v1/orders", json=order, headers={"X-Request-ID": "no spaces\tor tabs"})
        read = http.get("/v1/orders", params={"limit": 1})
    assert given.status_code == made.status_code == bad.status_code == 201, (given.text, made.text)
    assert given.headers["X-Request-ID"] == "client-req-42"
    made_id, bad_id = made.headers["X-Request-ID"], bad.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made_id) and re.fullmatch(r"[0-9a-f]{32}", bad_id) and made_id != bad_id
    assert re.fullmatch(r"[0-9a-f]{32}", read.headers["X-Request-ID"])  # every route, not only orders

    for trace_id, resp in (("client-req-42", given), (made_id, made)):
        lines = _lines(json_logs, trace_id)
        assert {r["logger"] for r in lines} >= LAYERS, lines
        cid = resp.json()["client_id"]
        for r in lines:
            if r["logger"] in LAYERS:
                assert r["client_id"] == cid, r
        venue_line = next(r for r in lines if r["logger"] == "greekfire.trading.simvenue")
        assert venue_line["venue"] == resp.json()["venue"]
    # the other request's lines do not carry this id, and orders of the market maker carry none
    assert not any(r["client_id"] == given.json()["client_id"] for r in _lines(json_logs, made_id))
    assert all(json.loads(line).get("trace_id") is not None for line in json_logs.getvalue().splitlines()
               if json.loads(line)["logger"] == "greekfire.trading.simvenue")


def test_the_fix_venue_logs_its_send_on_its_own_thread_with_the_orders_trace_id(
    tmp_path: Path, shared_data: Path, json_logs: io.StringIO,
) -> None:
    with exchange_and_venue(make_settings(tmp_path, shared_data), default_instruments()) as (_, _, venue):
        sid = {"session": venue.session.config.session_id}
        assert sample_value("greekfire_fix_session_logged_on", sid) == 1
        order = Order("t.1", 1, Side.BUY, 1, 1, OrderType.LIMIT, TimeInForce.DAY, trace_id="fix-req-7")
        with trace_context("caller-context"):  # the caller's context is not what the FIX thread sees
            venue.submit(order, 0)
        assert poll_until(lambda: any(r["logger"] == "greekfire.fix.venue" for r in _lines(json_logs, "fix-req-7")),
                          10, 0.02), json_logs.getvalue()[-2000:]
        line = next(r for r in _lines(json_logs, "fix-req-7") if r["logger"] == "greekfire.fix.venue")
        assert line["client_id"] == "t.1" and line["venue"] == venue.name
    assert sample_value("greekfire_fix_session_logged_on", sid) == 0
