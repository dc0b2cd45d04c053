"""Rate limits of the trading API: the in-memory token bucket on an injected clock (burst, refill, the cap,
independent keys, concurrent callers), Retry-After rounding, the FastAPI dependency (one bucket per API key and
route template, 429 with Retry-After) through a tiny app, the limiter the settings choose, bad settings, and a
Redis that does not answer (503, never a silent pass)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from conftest import free_port
from greekfire.api.auth import ApiKeyStore, Authenticator, Principal
from greekfire.api.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    make_limiter,
    rate_limited,
    retry_after,
)
from greekfire.core.errors import ConfigError, UnavailableError
from greekfire.core.settings import load_settings


class FakeClock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_bucket_burst_refill_and_cap() -> None:
    clock = FakeClock()
    lim = MemoryRateLimiter(2.0, 3, clock=clock)  # 2 tokens a second, 3 at most
    assert [lim.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("k") == pytest.approx(0.5)  # empty: one token in half a second
    clock.t += 0.25
    assert lim.take("k") == pytest.approx(0.25)  # half a token there; a refused request takes nothing
    clock.t += 0.25
    assert lim.take("k") == 0.0
    assert lim.take("k") == pytest.approx(0.5)
    clock.t += 100.0  # a long pause fills the bucket only up to the burst
    assert [lim.take("k") for _ in range(4)][-1] == pytest.approx(0.5)
    assert lim.take("other") == 0.0  # each key has its own bucket
    clock.t -= 10.0  # a clock that steps back never adds tokens
    assert lim.take("k") > 0


def test_idle_full_buckets_are_dropped() -> None:
    clock = FakeClock()
    lim = MemoryRateLimiter(10.0, 2, clock=clock)
    for i in range(1000):
        lim.take(f"key{i}")
    lim.take("busy")
    lim.take("busy")
    clock.t += 1.0  # the 1000 buckets are full again; "busy" is refilled and takes one more (1 left)
    lim.take("busy")
    for i in range(23):  # the 1024th call sweeps the full buckets away
        lim.take(f"late{i}")
    assert len(lim._buckets) < 30
    assert lim.take("busy") == 0.0 and lim.take("busy") > 0  # "busy" was not full: its state was kept


def test_concurrent_callers_share_one_bucket() -> None:
    lim = MemoryRateLimiter(1.0, 5, clock=FakeClock())

    async def many() -> list[float]:
        return list(await asyncio.gather(*(lim.acquire("k") for _ in range(50))))

    waits = asyncio.run(many())
    assert sum(w == 0.0 for w in waits) == 5
    assert all(w > 0 for w in waits if w != 0.0)


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (2.5, 3), (59.9, 60)])
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: int) -> None:
    assert retry_after(wait) == header


@pytest.mark.parametrize(("rate", "burst", "field"), [
    (0, 5, "api.rate_limit_per_s"), (-1.0, 5, "api.rate_limit_per_s"), (float("inf"), 5, "api.rate_limit_per_s"),
    (1.0, 0, "api.rate_limit_burst"), (1.0, 2.5, "api.rate_limit_burst"),
])
def test_bad_limits_name_the_setting(rate: float, burst: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=f"bad setting {field}=") as e:
        MemoryRateLimiter(rate, burst)
    assert e.value.field == field


def test_settings_choose_the_limiter(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = make_limiter(load_settings())
    assert isinstance(mem, MemoryRateLimiter) and (mem.rate_per_s, mem.burst) == (20.0, 40)
    monkeypatch.setenv("GREEKFIRE_API__REDIS_URL", "redis://:pw123@127.0.0.1:6379/3")
    monkeypatch.setenv("GREEKFIRE_API__RATE_LIMIT_BURST", "7")
    red = make_limiter(load_settings())
    assert isinstance(red, RedisRateLimiter) and red.burst == 7
    assert "pw123" not in repr(red) and "127.0.0.1:6379/3" in repr(red)
    asyncio.run(red.close())


# -- the FastAPI dependency ------------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[tuple[Authenticator, str, str]]:
    store = ApiKeyStore(f"sqlite:///{tmp_path / 'keys.db'}")
    _, a = store.create("a", ["trade"])
    _, b = store.create("b", ["read"])
    yield Authenticator(store, None, 60), a, b
    store.close()


def limited_app(limiter: RateLimiter, auth: Authenticator) -> FastAPI:
    app = FastAPI()
    limit = rate_limited(limiter, auth)

    @app.get("/v1/orders/{client_id}")
    async def order(client_id: str, p: Principal = Depends(limit)) -> dict[str, str]:
        return {"client_id": client_id, "key_id": p.key_id}

    @app.post("/v1/orders")
    async def place(p: Principal = Depends(auth.require("trade")), _: Principal = Depends(limit)) -> dict[str, str]:
        return {"key_id": p.key_id}

    return app


def send(app: FastAPI, requests: list[tuple[str, str, str]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            return [await c.request(m, path, headers={"X-API-Key": key} if key else {}) for m, path, key in requests]
    return asyncio.run(go())


def test_dependency_limits_per_key_and_route_template(keys: tuple[Authenticator, str, str]) -> None:
    auth, a, b = keys
    app = limited_app(MemoryRateLimiter(0.4, 2, clock=FakeClock()), auth)  # frozen clock: no refill
    r = send(app, [
        ("GET", "/v1/orders/x1", a), ("GET", "/v1/orders/x2", a),  # two ids, ONE bucket (the template)
        ("GET", "/v1/orders/x3", a),  # third: over the burst
        ("POST", "/v1/orders", a), ("POST", "/v1/orders", a), ("POST", "/v1/orders", a),  # another route
        ("GET", "/v1/orders/x1", b),  # another key
        ("GET", "/v1/orders/x1", None),  # no key: 401 before any bucket
        ("POST", "/v1/orders", b),  # lacks trade: 403
    ])
    assert [x.status_code for x in r] == [200, 200, 429, 200, 200, 429, 200, 401, 403]
    assert r[2].headers["Retry-After"] == "3"  # 1 token at 0.4/s: 2.5 s, rounded up
    assert "exceeded (0.4/s, burst 2)" in r[2].json()["detail"] and "/v1/orders/{client_id}" in r[2].json()["detail"]
    assert r[5].headers["Retry-After"] == "3"
    assert "Retry-After" not in r[0].headers


def test_unreachable_redis_is_503_not_a_free_pass(keys: tuple[Authenticator, str, str]) -> None:
    auth, a, _ = keys
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    lim = RedisRateLimiter(url, 1.0, 5)

    async def direct() -> None:
        try:
            with pytest.raises(UnavailableError, match=r"Redis redis://127.0.0.1:\d+/0 \(api.redis_url\)"):
                await lim.acquire("k")
        finally:
            await lim.close()

    asyncio.run(direct())
    lim2 = RedisRateLimiter(url, 1.0, 5)
    (r,) = send(limited_app(lim2, auth), [("GET", "/v1/orders/x", a)])
    assert r.status_code == 503 and r.json()["detail"] == "the rate limiter is unavailable; try again later"


def test_bad_redis_url_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"bad setting api.redis_url='http://u:\*\*\*@127.0.0.1:6379/0'") as e:
        RedisRateLimiter("http://u:topsecret@127.0.0.1:6379/0", 1.0, 5)
    assert "topsecret" not in str(e.value)
