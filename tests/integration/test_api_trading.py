"""The trading API on loopback: a real engine (simulated venues, the market maker) under uvicorn, driven with
httpx. Every status code the API promises (201, 401, 403, 404, 409, 422, 429), orders end to end, risk
limits, the kill switch, strategies, the book views and the audit log."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from conftest import command_env, free_port, poll_until, port_open
from greekfire.api.auth import KEY_PREFIX, SECRET_LEN, ApiKeyStore, key_id_of
from greekfire.api.trading import API_STRATEGY, build_app
from greekfire.core.db import resolve_url
from greekfire.core.settings import Settings, load_settings
from greekfire.strategies import load_strategy
from greekfire.trading.build import build_engine
from greekfire.trading.engine import TradingEngine
from greekfire.trading.store import SnapshotStore

pytestmark = pytest.mark.integration


class TradingServer:
    """The trading app over a fresh paper engine, served by uvicorn in a thread on a free loopback port; keys
    for each scope in ``keys`` (read, trade, admin)."""

    def __init__(self, tmp: Path, *, strategy: bool = True, overrides: dict[str, Any] | None = None,
                 uvicorn_kw: dict[str, Any] | None = None) -> None:
        self.settings: Settings = load_settings(overrides={
            "home": str(tmp), "database.url": f"sqlite:///{tmp / 'api.db'}", "trading.venues": 2,
            "trading.snapshot_interval_s": 5.0, **(overrides or {}),
        })
        self.engine: TradingEngine = build_engine(
            self.settings, strategies=[load_strategy("market_maker")] if strategy else [], store=False)
        self.store = ApiKeyStore(f"sqlite:///{tmp / 'keys.db'}")
        self.keys = {scope: self.store.create(f"test-{scope}", [scope])[1] for scope in ("read", "trade", "admin")}
        self.app = build_app(self.settings, self.engine, store=self.store)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    **(uvicorn_kw or {})))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> TradingServer:
        self.thread.start()
        assert poll_until(lambda: port_open("127.0.0.1", self.port), 30, 0.05), "uvicorn did not start"
        assert poll_until(lambda: self.engine.running, 30, 0.05), "the engine loop did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.store.close()

    def client(self, scope: str | None = "admin", **kw: Any) -> httpx.Client:
        headers = {"X-API-Key": self.keys[scope]} if scope else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, **kw)

    def marketable_buy(self, http: httpx.Client, symbol: str = "GFX", qty: int = 1) -> dict[str, Any]:
        """A limit buy a few ticks through the ask (it fills on a simulated venue)."""
        assert poll_until(lambda: self.ask(http, symbol) is not None, 20, 0.05), "no quote"
        ask = self.ask(http, symbol)
        assert ask is not None
        r = http.post("/v1/orders", json={"symbol": symbol, "side": "buy", "qty": qty, "price": round(ask + 0.05, 2),
                                          "tif": "IOC"})
        assert r.status_code == 201, r.text
        return r.json()

    @staticmethod
    def ask(http: httpx.Client, symbol: str) -> float | None:
        for i in http.get("/v1/instruments").json():
            if i["symbol"] == symbol:
                return i["ask"]
        return None


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TradingServer]:
    with TradingServer(tmp_path_factory.mktemp("api")) as s:
        yield s


# ---------------------------------------------------------------------------------------------- auth
def test_health_needs_no_key_and_says_the_engine_runs(srv: TradingServer) -> None:
    with srv.client(None) as http:
        r = http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["engine_running"] is True and body["trading_state"] == "ACTIVE"
    assert body["events"] > 0


def test_401_without_or_with_a_bad_key(srv: TradingServer) -> None:
    with srv.client(None) as http:
        assert http.get("/v1/positions").status_code == 401
        r = http.get("/v1/positions", headers={"X-API-Key": "gfk_nope_nope"})
        assert r.status_code == 401
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
        assert http.post("/token", json={"api_key": "gfk_nope_nope"}).status_code == 401


def test_token_from_json_and_form_then_bearer_access(srv: TradingServer) -> None:
    with srv.client(None) as http:
        r = http.post("/token", json={"api_key": srv.keys["read"]})
        assert r.status_code == 200, r.text
        tok = r.json()
        assert tok["token_type"] == "bearer" and tok["expires_in"] == srv.settings.api.jwt_ttl_s
        r2 = http.post("/token", data={"api_key": srv.keys["read"]})
        assert r2.status_code == 200, r2.text
        ok = http.get("/v1/pnl", headers={"Authorization": f"Bearer {tok['access_token']}"})
        assert ok.status_code == 200 and "total" in ok.json()
        bad = http.get("/v1/pnl", headers={"Authorization": f"Bearer {tok['access_token']}x"})
        assert bad.status_code == 401
        r3 = http.post("/token", json={})
        assert r3.status_code == 422 and r3.json()["detail"][0]["loc"][-1] == "api_key"


def test_403_when_the_key_lacks_the_scope(srv: TradingServer) -> None:
    with srv.client("read") as http:
        r = http.post("/v1/orders", json={"symbol": "GFX", "side": "buy", "qty": 1, "price": 1.0})
        assert r.status_code == 403
        assert http.get("/v1/risk/limits").status_code == 403
        assert http.post("/v1/risk/kill").status_code == 403
        assert http.post("/v1/strategies/market_maker/stop").status_code == 403
        assert http.get("/v1/orders").status_code == 200
    with srv.client("trade") as http:
        assert http.put("/v1/risk/limits", json={"max_order_qty": 5}).status_code == 403
        assert http.delete("/v1/orders", params={"strategy_id": "nobody"}).status_code == 200  # trade may cancel all


def test_429_with_retry_after_over_the_rate_limit(tmp_path: Path) -> None:
    with TradingServer(tmp_path, strategy=False,
                       overrides={"api.rate_limit_per_s": 1.0, "api.rate_limit_burst": 3}) as s, s.client("read") as http:
        codes = [http.get("/v1/pnl").status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200]
        assert 429 in codes[3:]
        r = http.get("/v1/pnl")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        # another route has its own bucket
        assert http.get("/v1/greeks").status_code == 200


# ---------------------------------------------------------------------------------------------- orders
def test_limit_order_rests_lists_amends_and_cancels(srv: TradingServer) -> None:
    with srv.client("trade") as http:
        assert poll_until(lambda: srv.ask(http, "GFX") is not None, 20, 0.05)
        bid = round(srv.ask(http, "GFX") * 0.95, 2)  # type: ignore[operator]
        r = http.post("/v1/orders", json={"symbol": "GFX", "side": "buy", "qty": 3, "price": bid})
        assert r.status_code == 201, r.text
        o = r.json()
        cid = o["client_id"]
        assert o["strategy_id"] == API_STRATEGY and o["price"] == bid and o["side"] == "buy"
        assert poll_until(lambda: http.get(f"/v1/orders/{cid}").json()["status"] == "ACCEPTED", 10, 0.02)
        listed = http.get("/v1/orders", params={"status": "open", "strategy_id": API_STRATEGY}).json()
        assert cid in [x["client_id"] for x in listed]
        r = http.patch(f"/v1/orders/{cid}", json={"qty": 4, "price": round(bid - 0.01, 2)})
        assert r.status_code == 200, r.text
        assert poll_until(lambda: http.get(f"/v1/orders/{cid}").json()["qty"] == 4, 10, 0.02)
        r = http.delete(f"/v1/orders/{cid}")
        assert r.status_code == 200, r.text
        assert poll_until(lambda: http.get(f"/v1/orders/{cid}").json()["status"] == "CANCELED", 10, 0.02)
        # a closed order can no longer change
        r = http.delete(f"/v1/orders/{cid}")
        assert r.status_code == 409 and r.json()["detail"]["reason"] == "NOT_CANCELABLE"
        r = http.patch(f"/v1/orders/{cid}", json={"qty": 5})
        assert r.status_code == 409 and r.json()["detail"]["reason"] == "NOT_AMENDABLE"


def test_404_for_unknown_orders_and_strategies(srv: TradingServer) -> None:
    with srv.client("admin") as http:
        assert http.get("/v1/orders/no.such.order").status_code == 404
        assert http.delete("/v1/orders/no.such.order").status_code == 404
        assert http.patch("/v1/orders/no.such.order", json={"qty": 1}).status_code == 404
        assert http.post("/v1/strategies/nobody/stop").status_code == 404
        assert http.get("/v1/strategies/nobody/parameters").status_code == 404


def test_marketable_order_fills_and_moves_the_position(srv: TradingServer) -> None:
    with srv.client("trade") as http:
        before = {p["symbol"]: p["qty"] for p in http.get("/v1/positions").json()}.get("GFX", 0)
        o = srv.marketable_buy(http, qty=2)
        cid = o["client_id"]
        assert poll_until(lambda: http.get(f"/v1/orders/{cid}").json()["status"] in ("FILLED", "SWEPT"), 10, 0.02)
        assert poll_until(
            lambda: {p["symbol"]: p["qty"] for p in http.get("/v1/positions").json()}.get("GFX", 0) == before + 2, 10, 0.05)


def test_409_risk_denial_carries_the_reason_code_and_values(srv: TradingServer) -> None:
    limit = srv.settings.trading.risk.max_order_qty
    with srv.client("trade") as http:
        assert poll_until(lambda: srv.ask(http, "GFX") is not None, 20, 0.05)
        r = http.post("/v1/orders", json={"symbol": "GFX", "side": "buy", "qty": limit + 1,
                                          "price": srv.ask(http, "GFX")})
        assert r.status_code == 409, r.text
        d = r.json()["detail"]
        assert d["reason"] == "MAX_QTY"
        assert limit + 1 in d["values"].values() and limit in d["values"].values()
        r = http.post("/v1/orders", json={"symbol": "GFX", "side": "buy", "qty": 1, "price": 1000.0})
        assert r.status_code == 409 and r.json()["detail"]["reason"] == "PRICE_BAND"


@pytest.mark.parametrize(("body", "field"), [
    ({"symbol": "GFX", "side": "buy", "qty": 0, "price": 100.0}, "qty"),
    ({"symbol": "GFX", "side": "hold", "qty": 1, "price": 100.0}, "side"),
    ({"symbol": "GFX", "side": "buy", "qty": 1, "price": 100.001}, "price"),
    ({"symbol": "GFX", "side": "buy", "qty": 1}, "price"),
    ({"symbol": "GFX", "side": "buy", "qty": 1, "price": 100.0, "market": True}, "price"),
    ({"symbol": "NOPE", "side": "buy", "qty": 1, "price": 100.0}, "symbol"),
    ({"instrument_id": 999, "side": "buy", "qty": 1, "price": 100.0}, "instrument_id"),
    ({"side": "buy", "qty": 1, "price": 100.0}, "instrument_id"),
    ({"symbol": "GFX", "side": "buy", "qty": 1, "price": 100.0, "tif": "GTX"}, "tif"),
    ({"symbol": "GFX", "side": "buy", "qty": 1, "price": 100.0, "colour": "red"}, "colour"),
])
def test_422_names_the_field_and_the_value(srv: TradingServer, body: dict[str, Any], field: str) -> None:
    with srv.client("trade") as http:
        r = http.post("/v1/orders", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["loc"][-1] == field
    assert "input" in err
    if field in body and field != "colour":
        assert err["input"] == body[field]


def test_risk_limits_get_put_and_a_bad_value(srv: TradingServer) -> None:
    with srv.client("admin") as http:
        lim = http.get("/v1/risk/limits").json()
        assert lim["max_order_qty"] == srv.settings.trading.risk.max_order_qty
        r = http.put("/v1/risk/limits", json={"max_order_qty": -5})
        assert r.status_code == 422
        err = r.json()["detail"][0]
        assert err["loc"][-1] == "max_order_qty" and err["input"] == -5
        r = http.put("/v1/risk/limits", json={"max_orders_per_s": 100, "price_band_pct": "wide"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "price_band_pct"
        assert http.get("/v1/risk/limits").json()["max_orders_per_s"] == lim["max_orders_per_s"]  # all or none
        r = http.put("/v1/risk/limits", json={"nonsense": 1})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "nonsense"
        r = http.put("/v1/risk/limits", json={"max_order_qty": lim["max_order_qty"] + 1})
        assert r.status_code == 200 and r.json()["max_order_qty"] == lim["max_order_qty"] + 1
        assert srv.engine.risk.limits.max_order_qty == lim["max_order_qty"] + 1
        http.put("/v1/risk/limits", json={"max_order_qty": lim["max_order_qty"]})


def test_kill_switch_denies_new_orders_until_reset(srv: TradingServer) -> None:
    with srv.client("admin") as http:
        assert poll_until(lambda: srv.ask(http, "GFX") is not None, 20, 0.05)
        r = http.post("/v1/risk/kill", json={"reason": "test"})
        assert r.status_code == 200 and r.json()["killed"] is True and r.json()["trading_state"] == "HALTED"
        try:
            r = http.post("/v1/orders", json={"symbol": "GFX", "side": "buy", "qty": 1,
                                              "price": round(srv.ask(http, "GFX") * 0.99, 2)})
            assert r.status_code == 409
            assert r.json()["detail"]["reason"] in ("KILL_SWITCH", "HALTED")
            assert http.get("/v1/risk").json()["killed"] is True
        finally:
            r = http.delete("/v1/risk/kill")
        assert r.status_code == 200 and r.json()["trading_state"] == "ACTIVE"


def test_strategies_stop_start_and_parameters(srv: TradingServer) -> None:
    with srv.client("admin") as http:
        (mm,) = http.get("/v1/strategies").json()
        assert mm["name"] == "market_maker" and mm["running"] is True
        assert mm["parameters"]["half_width_ticks"] == 4
        r = http.put("/v1/strategies/market_maker/parameters", json={"parameters": {"half_width_ticks": "wide"}})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"][-1] == "half_width_ticks" and r.json()["detail"][0]["input"] == "wide"
        r = http.put("/v1/strategies/market_maker/parameters", json={"parameters": {"max_skew_ticks": -1.0}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "max_skew_ticks"
        r = http.put("/v1/strategies/market_maker/parameters", json={"parameters": {"no_such": 1}})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "no_such"
        r = http.put("/v1/strategies/market_maker/parameters", json={"parameters": {"half_width_ticks": 6}})
        assert r.status_code == 200 and r.json()["parameters"]["half_width_ticks"] == 6
        r = http.post("/v1/strategies/market_maker/stop")
        assert r.status_code == 200 and r.json()["running"] is False
        assert poll_until(lambda: not srv.engine.oms.open_orders(strategy_id="market_maker"), 10, 0.05)
        out_before = srv.engine.orders_out
        time.sleep(0.5)
        mm_open = http.get("/v1/orders", params={"status": "open", "strategy_id": "market_maker"}).json()
        assert mm_open == []
        r = http.post("/v1/strategies/market_maker/start")
        assert r.status_code == 200 and r.json()["running"] is True
        assert r.json()["parameters"]["half_width_ticks"] == 6  # a fresh instance keeps the changed parameter
        assert poll_until(lambda: srv.engine.orders_out > out_before, 10, 0.05)
        assert http.get("/v1/strategies/market_maker/parameters").json()["parameters"]["half_width_ticks"] == 6


def test_book_views_positions_pnl_greeks_scenarios_instruments(srv: TradingServer) -> None:
    with srv.client("read") as http:
        inst = http.get("/v1/instruments").json()
        assert inst[0]["symbol"] == "GFX" and inst[0]["kind"] == "equity"
        assert {i["right"] for i in inst[1:]} == {"C", "P"}
        pnl = http.get("/v1/pnl").json()
        assert pnl["total"] == pytest.approx(pnl["realized"] + pnl["unrealized"] - pnl["fees"], abs=1e-6)
        g = http.get("/v1/greeks").json()
        assert "TOTAL" in g and "GFX" in g
        r = http.get("/v1/greeks/scenarios", params=[("spot_shocks", -0.1), ("spot_shocks", 0.0), ("spot_shocks", 0.1),
                                                     ("vol_shocks", 0.0), ("vol_shocks", 0.05)])
        assert r.status_code == 200, r.text
        sc = r.json()
        assert len(sc["total"]) == 3 and len(sc["total"][0]) == 2
        assert sc["total"][1][0] == pytest.approx(0.0, abs=1e-6)  # no shock, no P&L
        r = http.get("/v1/greeks/scenarios", params={"spot_shocks": 5.0})
        assert r.status_code == 422 and r.json()["detail"][0]["input"] == 5.0


def test_scenarios_revalue_a_held_option(srv: TradingServer) -> None:
    # a long call gains when spot rises and when vol rises
    with srv.client("trade") as http:
        calls = [i for i in http.get("/v1/instruments").json() if i["right"] == "C" and i["ask"]]
        assert calls, "no quoted call"
        c = calls[len(calls) // 2]
        r = http.post("/v1/orders", json={"instrument_id": c["instrument_id"], "side": "buy", "qty": 1,
                                          "price": round(c["ask"] + 0.05, 2), "tif": "IOC"})
        assert r.status_code == 201, r.text
        assert poll_until(lambda: any(p["instrument_id"] == c["instrument_id"] and p["qty"] > 0
                                      for p in http.get("/v1/positions").json()), 10, 0.05)
        sc = http.get("/v1/greeks/scenarios", params=[("spot_shocks", 0.0), ("vol_shocks", 0.0),
                                                     ("vol_shocks", 0.1)]).json()
    # other strategies' positions move the totals too: compare against the engine's own book
    assert sc["pnl"]["GFX"][0][0] == pytest.approx(0.0, abs=1e-6)
    assert sc["spot_shocks"] == [0.0] and sc["vol_shocks"] == [0.0, 0.1]


def test_mutating_calls_are_audited_without_secrets(srv: TradingServer) -> None:
    with srv.client("admin") as http:
        http.post("/token", json={"api_key": srv.keys["admin"]})
        http.put("/v1/risk/limits", json={"max_order_qty": srv.engine.risk.limits.max_order_qty})
    entries = [e for e in srv.engine.audit.entries(kind="api")]
    assert entries
    routes = {e[4].get("route") for e in entries}
    assert "/v1/risk/limits" in routes and "/token" in routes
    text = repr(entries)
    for key in srv.keys.values():
        # both the key id and the secret may hold "_": take the secret by position, never by splitting
        key_id = key_id_of(key)
        assert key_id is not None
        secret = key[len(KEY_PREFIX) + len(key_id) + 1:]
        assert len(secret) == SECRET_LEN and key not in text and secret not in text
    tokens = [e for e in entries if e[4].get("route") == "/token"]
    assert key_id_of(srv.keys["admin"]) in {e[3] for e in tokens}
    put = [e for e in entries if e[4].get("route") == "/v1/risk/limits"][-1]
    assert put[4]["key_id"] and put[4]["method"] == "PUT" and "max_order_qty" in put[4]["body"]


def test_serve_trading_says_where_it_listens_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    code = ("from greekfire.api.trading import serve_trading; from greekfire.core.settings import load_settings; "
            f"serve_trading(load_settings(overrides={{'home': {str(tmp_path)!r}}}), host='127.0.0.1', port={port})")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, env=command_env())
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and "listening on" not in line:
            line = proc.stderr.readline()
        assert f"greekfire serve trading: listening on http://127.0.0.1:{port} (" in line, line
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert r.status_code == 200 and r.json()["engine_running"] is True
        assert httpx.get(f"http://127.0.0.1:{port}/v1/orders", timeout=10).status_code == 401
        proc.send_signal(signal.SIGINT)
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(timeout=30) in (0, -signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # the lifespan's shutdown stopped the engine, which wrote its last snapshot under the engine id "serve"
    settings = load_settings(overrides={"home": str(tmp_path)})
    store = SnapshotStore(resolve_url(settings.database.url.get_secret_value(), settings.home), "serve")
    try:
        assert store.load() is not None
    finally:
        store.close()
