"""Two `greekfire serve trading` processes with `api.redis_url` set share one rate limit: requests spread over
both servers draw on the same bucket of the key and route, and the one past the burst gets 429 with
Retry-After from whichever server it reaches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import command_env, free_port, need, poll_until, port_open

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]


def test_two_trading_servers_share_one_rate_limit_through_redis(tmp_path: Path) -> None:
    need(port_open("127.0.0.1", 6379), "no Redis on 127.0.0.1:6379 (scripts/test-services.sh starts one)")
    burst = 4
    env = command_env(
        GREEKFIRE_HOME=str(tmp_path / "home"), GREEKFIRE_API__REDIS_URL="redis://127.0.0.1:6379/15",
        GREEKFIRE_API__RATE_LIMIT_PER_S="0.01", GREEKFIRE_API__RATE_LIMIT_BURST=str(burst),
        GREEKFIRE_TRADING__STRATEGY="none",
    )
    created = subprocess.run(CLI + ["api-key", "create", "--name", "two-servers", "--scope", "read", "--json"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["api_key"]
    ports = [free_port(), free_port()]
    servers: list[subprocess.Popen[str]] = []  # started one after the other (see below)
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        # one after the other: both use the same database (the keys, and the engine state), which the first
        # creates; two processes creating the same SQLite tables at once can find it locked
        for port, url in zip(ports, urls, strict=True):
            log = tmp_path / f"server-{port}.log"
            with log.open("w") as err:  # a file, not a pipe: a server's log never blocks it
                server = subprocess.Popen(CLI + ["serve", "trading", "--port", str(port)], env=env,
                                          stdout=subprocess.DEVNULL, stderr=err, text=True)
            servers.append(server)
            if not poll_until(lambda u=url: httpx.get(f"{u}/health", timeout=2).status_code == 200, 60, 0.2,
                              ignore=(httpx.HTTPError,)):
                raise AssertionError(f"{url} did not answer /health: {log.read_text()[-3000:]}")
        answers = []
        for k in range(burst + 2):  # alternate between the two servers
            r = httpx.get(f"{urls[k % 2]}/v1/instruments", headers={"X-API-Key": key}, timeout=10)
            answers.append((k % 2, r.status_code, r.headers.get("retry-after")))
        assert [s for _, s, _ in answers[:burst]] == [200] * burst
        # past the shared burst both servers refuse: each alone has seen only half of the requests
        assert [(i, s) for i, s, _ in answers[burst:]] == [(burst % 2, 429), ((burst + 1) % 2, 429)]
        assert all(ra is not None and int(ra) >= 1 for _, _, ra in answers[burst:])
    finally:
        for s in servers:
            s.terminate()
            try:
                s.wait(15)
            except subprocess.TimeoutExpired:
                s.kill()
