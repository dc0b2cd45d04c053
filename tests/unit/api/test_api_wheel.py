"""The wheel dashboard's feed and routes in process: what a poll publishes, the WebSocket's credentials,
snapshot and live update, and a database that fails."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from greekfire.api.auth import ApiKeyStore
from greekfire.api.wheel import POLL_ERRORS, WheelFeed, build_wheel_app
from greekfire.core.errors import ConfigError
from greekfire.core.settings import load_settings
from greekfire.strategies.wheel.db import WheelDB
from greekfire.strategies.wheel.state import Transition, WheelState

S = WheelState


@pytest.fixture
def db(tmp_path: Path) -> Any:
    d = WheelDB(f"sqlite:///{tmp_path / 'wheel.db'}")
    j = d.journal("r1")
    j.transition(Transition("SPY", S.CASH, S.SHORT_PUT, "open_put", "sold a put", 1_000, {}))
    j.snapshot(date(2026, 9, 1), 100_000.0, 50_000.0, {})
    yield d
    d.close()


def test_a_poll_publishes_only_what_changed(db: Any) -> None:
    feed = WheelFeed(db, queue_size=10, poll_s=1.0, full_every_s=3600)
    first = feed.poll()
    assert first is not None and first["kind"] == "snapshot"
    assert [t["event"] for t in first["transitions"]] == ["open_put"] and first["states"][0]["state"] == "SHORT_PUT"
    assert feed.poll() is None  # nothing new
    db.journal("r1").transition(Transition("SPY", S.SHORT_PUT, S.SHARES, "assigned", "assigned at 560", 2_000, {}))
    db.journal("r1").snapshot(date(2026, 9, 2), 99_000.0, 0.0, {})
    up = feed.poll()
    assert up is not None and up["kind"] == "update"
    assert [t["event"] for t in up["transitions"]] == ["assigned"]  # only the new one
    assert up["states"] == [{"symbol": "SPY", "state": "SHARES", "since_ns": 2_000, "event": "assigned",
                             "reason": "assigned at 560"}]
    assert up["equity"] == [{"date": "2026-09-02", "equity": 99_000.0, "cash": 0.0}] and up["equity_reset"] is False
    assert feed.poll() is None
    snap = feed.snapshot()
    assert [t["event"] for t in snap["transitions"]] == ["open_put", "assigned"] and len(snap["equity"]) == 2


def test_snapshots_without_a_transition_arrive_on_the_full_refresh(db: Any) -> None:
    feed = WheelFeed(db, queue_size=10, poll_s=1.0, full_every_s=0.0)
    feed.poll()
    db.journal("r1").snapshot(date(2026, 9, 2), 101_000.0, 50_000.0, {})
    up = feed.poll()
    assert up is not None and "transitions" not in up and [r["equity"] for r in up["equity"]] == [101_000.0]


def test_a_bad_poll_interval_is_refused(db: Any) -> None:
    with pytest.raises(ConfigError, match="poll_s"):
        WheelFeed(db, queue_size=10, poll_s=0.0)


def test_a_failing_database_is_counted_and_the_feed_goes_on() -> None:
    class Broken:
        calls = 0

        def transitions(self, limit: int) -> list[dict[str, Any]]:
            Broken.calls += 1
            raise OSError("database is gone")

    before = POLL_ERRORS._value.get()

    async def go() -> None:
        feed = WheelFeed(Broken(), queue_size=10, poll_s=0.01)
        task = asyncio.create_task(feed.run())
        while Broken.calls < 3:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(go())
    assert POLL_ERRORS._value.get() >= before + 2


@pytest.fixture
def client(db: Any, tmp_path: Path) -> Any:
    store = ApiKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    _, key = store.create("t", ["read"])
    app = build_wheel_app(load_settings(overrides={"home": str(tmp_path / "home")}), db, store=store, poll_s=0.05)
    with TestClient(app) as c:
        yield c, key
    store.close()


def test_the_stream_refuses_no_credentials_then_sends_a_snapshot_and_live_updates(client: Any, db: Any) -> None:
    c, key = client
    with c.websocket_connect("/v1/wheel/stream") as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    assert closed.value.code == 1008
    token = c.post("/token", json={"api_key": key}).json()["access_token"]
    with c.websocket_connect(f"/v1/wheel/stream?token={token}") as ws:
        ws.send_json({"op": "subscribe", "topics": ["quotes"]})
        err = ws.receive_json()
        assert err["topic"] == "error" and err["data"]["field"] == "topics" and err["data"]["value"] == "quotes"
        ws.send_json({"op": "subscribe", "topics": ["wheel"]})
        snap = ws.receive_json()
        assert snap["topic"] == "wheel" and snap["data"]["kind"] == "snapshot"
        assert snap["data"]["states"][0]["state"] == "SHORT_PUT"
        assert ws.receive_json()["topic"] == "subscribed"
        db.journal("r1").transition(Transition("SPY", S.SHORT_PUT, S.CASH, "expired", "expired worthless", 3_000, {}))
        up = ws.receive_json()
        assert up["data"]["kind"] == "update" and up["seq"] == snap["seq"] + 1
        assert [t["event"] for t in up["data"]["transitions"]] == ["expired"]


def test_routes_need_the_read_scope_and_validate_the_limit(client: Any) -> None:
    c, key = client
    assert c.get("/v1/wheel/positions").status_code == 401
    assert c.get("/v1/wheel/transitions", params={"limit": 5000}, headers={"X-API-Key": key}).status_code == 422
    assert c.post("/token", json={}).status_code == 422
    assert c.post("/token", json={"api_key": "gfk_nope"}).status_code == 401
    assert c.get("/health").json()["status"] == "ok"
    assert c.get("/", follow_redirects=False).headers["location"] == "/wheel"


def test_the_trading_server_serves_the_dashboard_too(db: Any, tmp_path: Path) -> None:
    from greekfire.api.trading import build_app
    from greekfire.trading.build import build_engine

    settings = load_settings(overrides={"home": str(tmp_path / "home"), "trading.venues": 1})
    store = ApiKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    _, key = store.create("t", ["read"])
    app = build_app(settings, build_engine(settings, strategies=[], store=False), store=store, wheel_db=db)
    with TestClient(app) as c:
        assert "wheel.js" in c.get("/wheel").text
        states = c.get("/v1/wheel/states", headers={"X-API-Key": key}).json()
        assert [(s["symbol"], s["state"]) for s in states] == [("SPY", "SHORT_PUT")]
        assert c.get("/v1/wheel/states").status_code == 401
        with c.websocket_connect("/v1/wheel/stream", headers={"X-API-Key": key}) as ws:
            ws.send_json({"op": "subscribe", "topics": ["wheel"]})
            assert ws.receive_json()["data"]["kind"] == "snapshot"
    store.close()


@pytest.mark.parametrize("url,code,says", [
    ("nosuch://x", 2, "bad setting --db='nosuch://x'"),
    ("sqlite:////nonexistent-folder/x/wheel.db", 1, "cannot use sqlite:////nonexistent-folder/x/wheel.db"),
])
def test_serve_wheel_on_a_bad_database_ends_in_one_line(tmp_settings_env: Path, url: str, code: int, says: str) -> None:
    from typer.testing import CliRunner

    from greekfire.cli import app

    r = CliRunner().invoke(app, ["serve", "wheel", "--db", url, "--port", "1"])
    assert r.exit_code == code, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.output
