"""The wheel dashboard end to end: `greekfire serve wheel` over a SQLite wheel database, the page in headless
Chromium (Debian's `chromium` driven by Selenium through Debian's `chromedriver`), a transition written to
the database arriving on the page live, the JSON endpoints, the metrics, and the screenshot the docs show."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import command_env, free_port, need_binary, need_module, poll_until, port_open

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "img" / "wheel-dashboard.png"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1250")


def _ns(d: date, hour: int = 16) -> int:
    return int(datetime(d.year, d.month, d.day, hour, tzinfo=UTC).timestamp() * 1e9)


def _fill(db: Any) -> None:
    """A small paper run: three underlyings in three states, legs and lots, 60 daily snapshots."""
    from greekfire.strategies.wheel.state import Transition, WheelState

    j = db.journal("paper-1")
    d0 = date(2026, 9, 1)
    S = WheelState
    for sym, old, new, event, reason, day in [  # in time order, as a run writes them
        ("SPY", S.CASH, S.SHORT_PUT, "open_put", "sold 2 SPY 2026-12-18 P 560 at 7.85 (delta -0.30, 41% ann.)", 1),
        ("QQQ", S.CASH, S.SHORT_PUT, "open_put", "sold 1 QQQ 2026-11-20 P 480 at 9.10 (delta -0.29)", 2),
        ("IWM", S.CASH, S.SHORT_PUT, "open_put", "sold 3 IWM 2026-10-16 P 215 at 3.05 (delta -0.31)", 3),
        ("QQQ", S.SHORT_PUT, S.SHARES, "assigned", "put assigned at 480.00: 100 shares", 40),
        ("IWM", S.SHORT_PUT, S.CASH, "expired", "IWM 2026-10-16 P 215 expired worthless (+915.00 premium)", 45),
    ]:
        j.transition(Transition(sym, old, new, event, reason, _ns(d0 + timedelta(days=day)), {}))
    j.trade("paper-1", _ns(d0 + timedelta(days=1)), "SPY", "SPY 2026-12-18 P 560", -1, 2, 7.85, 1.3, "open")
    j.trade("paper-1", _ns(d0 + timedelta(days=2)), "QQQ", "QQQ 2026-11-20 P 480", -1, 1, 9.10, 0.65, "open")
    j.trade("paper-1", _ns(d0 + timedelta(days=40)), "QQQ", "QQQ 2026-11-20 P 480", 1, 1, 0.0, 0.0, "assignment")
    j.add_lot("QQQ", 100, 480.0, _ns(d0 + timedelta(days=40)))
    # the engine's positions, as the paper runner copies them into the database each second
    spy_put = {"instrument_id": 1001, "instrument": "SPY 20261218 560P", "symbol": "SPY", "kind": "put",
               "strike": 560.0, "expiry_ns": _ns(date(2026, 12, 18), 21), "multiplier": 100.0, "qty": -2,
               "avg_cost": 7.85, "realized_pnl": 0.0, "fees": 1.3, "mark": 6.10}
    qqq = {"instrument_id": 2, "instrument": "QQQ", "symbol": "QQQ", "kind": "stock", "strike": 0.0,
           "expiry_ns": 0, "multiplier": 1.0, "qty": 100, "avg_cost": 480.0, "realized_pnl": 0.0, "fees": 0.0,
           "mark": 486.20}
    db.set_positions([spy_put, qqq], _ns(d0 + timedelta(days=40)))
    equity = 1_000_000.0
    for i in range(60):
        equity *= 1 + 0.0009 + 0.006 * math.sin(i / 4.0)
        j.snapshot(d0 + timedelta(days=i), round(equity, 2), round(equity * 0.55, 2), {})


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`greekfire serve wheel` on a free port over a filled SQLite wheel database, and a read key."""
    from greekfire.api.auth import ApiKeyStore
    from greekfire.strategies.wheel.db import WheelDB

    db_url = f"sqlite:///{tmp_path / 'wheel.db'}"
    keys_url = f"sqlite:///{tmp_path / 'keys.db'}"
    db = WheelDB(db_url)
    _fill(db)
    store = ApiKeyStore(keys_url)
    _, key = store.create("dashboard test", ["read"])
    store.close()
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    env = command_env(GREEKFIRE_HOME=str(tmp_path / "home"), GREEKFIRE_DATABASE__URL=keys_url)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from greekfire.cli import app; app()", "serve", "wheel", "--db", db_url,
         "--host", "127.0.0.1", "--port", str(port), "--poll", "0.2"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        up = poll_until(lambda: port_open("127.0.0.1", port), 60, 0.1)
        assert up, (tmp_path / "server.log").read_text()[-3000:]
        yield {"base": f"http://127.0.0.1:{port}", "key": key, "db": db, "log": tmp_path / "server.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        db.close()


def _browser(tmp_path: Path) -> Any:
    chromium = need_binary("chromium")
    driver_bin = need_binary("chromedriver")
    webdriver = need_module("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=driver_bin, log_output=str(tmp_path / "chromedriver.log"))
    return webdriver.Chrome(options=opts, service=service)


def test_endpoints_need_a_key_and_answer_json(server: dict[str, Any]) -> None:
    base, key = server["base"], server["key"]
    assert httpx.get(f"{base}/v1/wheel/states", timeout=10).status_code == 401
    assert httpx.get(f"{base}/v1/wheel/states", headers={"X-API-Key": key + "x"}, timeout=10).status_code == 401
    h = {"X-API-Key": key}
    states = {s["symbol"]: s["state"] for s in httpx.get(f"{base}/v1/wheel/states", headers=h, timeout=10).json()}
    assert states == {"SPY": "SHORT_PUT", "QQQ": "SHARES", "IWM": "CASH"}
    trans = httpx.get(f"{base}/v1/wheel/transitions", params={"limit": 2}, headers=h, timeout=10).json()
    assert [t["event"] for t in trans] == ["expired", "assigned"]  # newest first
    assert httpx.get(f"{base}/v1/wheel/transitions", params={"limit": 0}, headers=h, timeout=10).status_code == 422
    equity = httpx.get(f"{base}/v1/wheel/equity", headers=h, timeout=10).json()
    assert len(equity) == 60 and {"date", "equity", "cash"} <= set(equity[0])
    positions = httpx.get(f"{base}/v1/wheel/positions", headers=h, timeout=10).json()
    assert {(p["symbol"], p["qty"]) for p in positions} >= {("SPY", -2), ("QQQ", 100)}
    perf = httpx.get(f"{base}/v1/wheel/performance", headers=h, timeout=10).json()
    assert perf["max_drawdown"] < 0
    page = httpx.get(f"{base}/wheel", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "wheel.js" in page.text
    assert httpx.get(f"{base}/wheel/static/wheel.js", timeout=10).status_code == 200
    tok = httpx.post(f"{base}/token", json={"api_key": key}, timeout=10).json()["access_token"]
    auth = {"Authorization": f"Bearer {tok}"}
    assert httpx.get(f"{base}/v1/wheel/runs", headers=auth, timeout=10).status_code == 200


def test_dashboard_renders_and_updates_live_in_chromium(server: dict[str, Any], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from greekfire.strategies.wheel.state import Transition, WheelState

    browser = _browser(tmp_path)
    try:
        browser.get(server["base"] + "/wheel")
        assert poll_until(lambda: browser.find_element(By.ID, "login").is_displayed(), 20, 0.1)
        browser.find_element(By.ID, "api-key").send_keys(server["key"])
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()

        # the page redraws on every update: read the DOM in one script, never through stale element handles
        def js(expr: str) -> Any:
            return browser.execute_script(f"return {expr};")

        def state_of(sym: str) -> str:
            return js(f"document.querySelector('#states [data-symbol=\"{sym}\"] .state')?.textContent ?? ''")

        def transitions() -> list[dict[str, str]]:
            return js("[...document.querySelectorAll('#transitions tbody tr')].map(r => ({symbol: r.dataset.symbol, "
                      "event: r.dataset.event, text: r.textContent}))")

        assert poll_until(lambda: state_of("QQQ") == "SHARES", 20, 0.1), browser.page_source[:3000]
        assert state_of("SPY") == "SHORT_PUT" and state_of("IWM") == "CASH"
        assert js("document.getElementById('login').offsetParent") is None  # the key form is gone
        assert poll_until(lambda: js("document.getElementById('live').textContent") == "live", 20, 0.1), \
            server["log"].read_text()[-3000:]
        assert set(js("[...document.querySelectorAll('#positions tbody tr')].map(r => r.dataset.symbol)")) >= {"SPY", "QQQ"}
        assert [t["event"] for t in transitions()] == ["expired", "assigned", "open_put", "open_put", "open_put"]
        assert js("document.querySelectorAll('#equity-chart svg path').length") >= 1
        assert js("document.querySelector('#performance [data-key=\"max_drawdown\"] .v').textContent").endswith("%")

        # a new transition written to the database (another process's journal would do the same)
        when = _ns(date(2026, 10, 31), 15)
        server["db"].journal("paper-1").transition(Transition(
            "QQQ", WheelState.SHARES, WheelState.SHORT_CALL, "open_call",
            "sold 1 QQQ 2026-12-18 C 495 at 6.40 (delta 0.30, above cost basis 480.00)", when, {}))
        assert poll_until(lambda: state_of("QQQ") == "SHORT_CALL", 20, 0.1), "the transition did not arrive live"
        rows = transitions()
        assert len(rows) == 6 and rows[0]["event"] == "open_call" and rows[0]["symbol"] == "QQQ"
        assert "above cost basis" in rows[0]["text"]
        assert js("performance.getEntriesByType('navigation').length") == 1  # arrived without a reload

        height, chrome = js("[document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
        browser.set_window_size(1400, min(int(height) + int(chrome), 3000))  # the whole page, no scroll bar
        # the screenshot the docs show is refreshed on request (GREEKFIRE_DOCS_SCREENSHOTS=1), so a test run
        # leaves the checkout as it found it
        shot = SCREENSHOT if os.environ.get("GREEKFIRE_DOCS_SCREENSHOTS") == "1" else tmp_path / SCREENSHOT.name
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    finally:
        browser.quit()

    h = {"X-API-Key": server["key"]}
    metrics = httpx.get(server["base"] + "/metrics", headers=h, timeout=10).text
    assert 'greekfire_wheel_state{state="SHORT_CALL",symbol="QQQ"} 1.0' in metrics
    assert 'greekfire_wheel_state{state="SHARES",symbol="QQQ"} 0.0' in metrics
    assert 'greekfire_wheel_positions{right="put",symbol="SPY"} -2.0' in metrics
