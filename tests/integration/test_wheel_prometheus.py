"""The wheel's alert rules under promtool, and a real Prometheus scraping the wheel dashboard's metrics with
those rules loaded."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import httpx
import pytest

from conftest import free_port, need_binary, poll_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"


def test_promtool_wheel_rule_tests_pass() -> None:
    promtool = need_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", "wheel-rules.yml"], cwd=RULES_DIR, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 9 rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", "wheel-rules.test.yml"], cwd=RULES_DIR, capture_output=True,
                          text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


@pytest.fixture
def wheel_app(tmp_path: Path) -> Iterator[int]:
    """The dashboard app in this process over a SQLite wheel database: SPY holds a short put, and the book is
    30% below its peak (so WheelDrawdownHigh fires)."""
    import uvicorn

    from greekfire.api.auth import ApiKeyStore
    from greekfire.api.wheel import build_wheel_app
    from greekfire.core.settings import load_settings
    from greekfire.strategies.wheel.db import WheelDB
    from greekfire.strategies.wheel.state import Transition, WheelState

    db = WheelDB(f"sqlite:///{tmp_path / 'wheel.db'}")
    j = db.journal("scrape")
    j.transition(Transition("SPY", WheelState.CASH, WheelState.SHORT_PUT, "open_put", "sold 1 put", 1_000, {}))
    j.trade("scrape", 1_000, "SPY", "SPY 2026-12-18 P 560", -1, 1, 7.5, 0.65, "open")
    db.set_positions([{"instrument_id": 1001, "instrument": "SPY 20261218 560P", "symbol": "SPY", "kind": "put",
                       "strike": 560.0, "expiry_ns": 1_797_627_600_000_000_000, "multiplier": 100.0, "qty": -1,
                       "avg_cost": 7.5, "realized_pnl": 0.0, "fees": 0.65, "mark": 7.5}], 1_000)  # as the runner does
    for i, eq in enumerate((100_000.0, 120_000.0, 84_000.0)):
        j.snapshot(date(2026, 9, 1) + timedelta(days=i), eq, eq / 2, {})
    store = ApiKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    app = build_wheel_app(load_settings(overrides={"home": str(tmp_path / "home")}), db, store=store, poll_s=0.2)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert poll_until(lambda: server.started, 20, 0.1), "uvicorn did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()
        db.close()


def test_prometheus_scrapes_the_wheel_and_fires_the_drawdown_alert(tmp_path: Path, wheel_app: int) -> None:
    prometheus = need_binary("prometheus")
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES_DIR / 'wheel-rules.yml'}\n"
        "scrape_configs:\n  - job_name: greekfire-wheel\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{wheel_app}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=1h"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        assert poll_until(lambda: httpx.get(f"{base}/-/ready", timeout=2).status_code == 200, 30, 0.1,
                          ignore=(httpx.HTTPError,)), (tmp_path / "prometheus.log").read_text()[-2000:]

        def query(q: str) -> list[dict]:
            return httpx.get(f"{base}/api/v1/query", params={"query": q}, timeout=2).json()["data"]["result"]

        assert poll_until(lambda: query('greekfire_wheel_state{symbol="SPY",state="SHORT_PUT"} == 1'), 30, 0.25,
                          ignore=(httpx.HTTPError,)), "Prometheus did not scrape the wheel's state in 30 s"
        (puts,) = query('greekfire_wheel_positions{symbol="SPY",right="put"}')
        assert float(puts["value"][1]) == -1.0 and puts["metric"]["job"] == "greekfire-wheel"
        (dd,) = query("greekfire_wheel_drawdown")
        assert abs(float(dd["value"][1]) - 0.3) < 1e-9

        def firing() -> list[dict]:
            alerts = httpx.get(f"{base}/api/v1/alerts", timeout=2).json()["data"]["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "WheelDrawdownHigh" and a["state"] == "firing"]

        assert poll_until(firing, 30, 0.25, ignore=(httpx.HTTPError,)), "WheelDrawdownHigh did not fire"
        assert firing()[0]["annotations"]["summary"] == "wheel account 30% below its peak"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
