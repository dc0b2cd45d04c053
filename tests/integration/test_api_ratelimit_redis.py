"""The Redis rate limiter on a real Redis (127.0.0.1:6379, database 15, a key prefix of its own per test): two
uvicorn server processes share ONE limit per API key and route, the Lua script refills by the Redis server's
clock and sets a TTL on each bucket, and it is loaded again (EVAL) after the server forgot it (NOSCRIPT)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import command_env, free_port, need, poll_until, port_open
from greekfire.api.auth import ApiKeyStore
from greekfire.api.ratelimit import _LUA_SHA, RedisRateLimiter

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/15"
APP_DIR = Path(__file__).resolve().parent


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    need(port_open("127.0.0.1", 6379), "no Redis on 127.0.0.1:6379 (scripts/test-services.sh starts one)")
    import redis

    p = f"greekfire:test:{uuid.uuid4().hex}:"
    yield p
    with redis.Redis.from_url(REDIS_URL) as r:
        for k in r.scan_iter(match=p + "*"):
            r.delete(k)


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api_ratelimit_app:app", "--app-dir", str(APP_DIR),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return proc, f"http://127.0.0.1:{port}"


def test_two_server_processes_share_one_limit(tmp_path: Path, prefix: str) -> None:
    burst = 6
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    store = ApiKeyStore(db)
    key_id, api_key = store.create("shared", ["trade"])
    store.close()
    env = command_env(GREEKFIRE_TEST_KEYS_DB=db, GREEKFIRE_TEST_REDIS_URL=REDIS_URL, GREEKFIRE_TEST_RL_PREFIX=prefix,
                      GREEKFIRE_TEST_RL_RATE="0.001", GREEKFIRE_TEST_RL_BURST=str(burst))
    servers = [_serve(env), _serve(env)]
    try:
        for proc, url in servers:
            up = poll_until(lambda u=url: httpx.get(f"{u}/health", timeout=5).status_code == 200, 60, 0.1,
                            ignore=(httpx.HTTPError,))
            assert up, f"server {url} did not start: {proc.poll()=}"
        urls = [url for _, url in servers]
        headers = {"X-API-Key": api_key}
        with httpx.Client(headers=headers, timeout=30) as c:
            # the burst, spread over both processes, each request with another order id (one route template)
            first = [c.get(f"{urls[i % 2]}/v1/orders/o{i}") for i in range(burst)]
            assert [r.status_code for r in first] == [200] * burst
            assert len({r.json()["pid"] for r in first}) == 2  # both processes answered
            # the (burst+1)-th request overall is refused, whichever process gets it
            over = [c.get(f"{url}/v1/orders/late") for url in urls]
            # another route is another bucket
            other = c.get(f"{urls[1]}/v1/positions")
        assert [r.status_code for r in over] == [429, 429]
        for r in over:
            assert int(r.headers["Retry-After"]) >= 1
            assert key_id in r.json()["detail"] and "/v1/orders/{client_id}" in r.json()["detail"]
        assert other.status_code == 200
        import redis

        with redis.Redis.from_url(REDIS_URL) as r:
            buckets = sorted(k.decode() for k in r.scan_iter(match=prefix + "*"))
            assert buckets == [f"{prefix}{key_id}:/v1/orders/{{client_id}}", f"{prefix}{key_id}:/v1/positions"]
            assert all(r.ttl(k) > 0 for k in buckets)  # every bucket expires on its own
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_lua_refills_by_server_time_sets_ttl_and_survives_script_flush(prefix: str) -> None:
    import redis

    async def go() -> tuple[list[float], float]:
        lim = RedisRateLimiter(REDIS_URL, 0.5, 5, prefix=prefix)
        try:
            burst = [await lim.acquire("k") for _ in range(6)]
            # an empty bucket whose last update the Redis server saw 6 s ago (by its own clock)
            with redis.Redis.from_url(REDIS_URL) as r:
                sec, usec = r.time()
                r.hset(prefix + "k", mapping={"tokens": "0", "ts": repr(sec + usec / 1e6 - 6.0)})
                r.script_flush()  # the server forgets the script: the next call gets NOSCRIPT and loads it
                assert r.script_exists(_LUA_SHA) == [False]
            refilled = await lim.acquire("k")
            return burst, refilled
        finally:
            await lim.close()

    burst, refilled = asyncio.run(go())
    assert burst[:5] == [0.0] * 5 and 1.0 < burst[5] <= 2.0  # a token every 2 s
    assert refilled == 0.0
    with redis.Redis.from_url(REDIS_URL) as r:
        assert r.script_exists(_LUA_SHA) == [True]
        tokens = float(r.hget(prefix + "k", "tokens") or "nan")
        assert 2.0 <= tokens < 2.5  # 6 s at 0.5/s = 3 tokens, one taken
        assert 1 <= r.ttl(prefix + "k") <= 7  # until the bucket is full again (6 s), plus one
