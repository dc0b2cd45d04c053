"""Rate limits of the trading API server: a token bucket per API key and route.

Each bucket holds up to ``burst`` tokens and gains ``rate_per_s`` tokens a second; a request takes one token
or is refused (HTTP 429, ``Retry-After`` whole seconds until a token is there, at least 1). A route is
counted by its path template, so ``/v1/orders/{client_id}`` is one bucket whatever the id.

:class:`MemoryRateLimiter` keeps the buckets in the process (each server process has its own limits).
:class:`RedisRateLimiter` keeps them in Redis (``api.redis_url``), so every process sharing that Redis
shares ONE limit: one Lua script refills and takes atomically, timed by the Redis server's clock (the
processes' clocks do not matter), and each bucket expires once it would be full again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from greekfire.api.auth import API_KEY_SCHEME, BEARER_SCHEME, Authenticator, Principal
from greekfire.core.errors import ConfigError, UnavailableError

if TYPE_CHECKING:
    from greekfire.core.settings import Settings

log = logging.getLogger("greekfire.api.ratelimit")


def _check(rate_per_s: float, burst: int) -> None:
    if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, int | float) or not rate_per_s > 0 \
            or not math.isfinite(rate_per_s):
        raise ConfigError("api.rate_limit_per_s", rate_per_s, "a number of requests per second > 0")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError("api.rate_limit_burst", burst, "a whole number of requests >= 1")


class RateLimiter(ABC):
    """A token bucket per key: ``rate_per_s`` tokens a second, at most ``burst`` at once."""

    rate_per_s: float
    burst: int

    @abstractmethod
    async def acquire(self, key: str) -> float:
        """Take one token of bucket ``key``: 0.0 when allowed now; when refused, the seconds (> 0) until a
        token is there."""

    async def close(self) -> None:  # noqa: B027 - nothing to close by default
        """Release connections."""


class MemoryRateLimiter(RateLimiter):
    """Buckets in this process. ``clock`` gives monotonic seconds (tests inject one). Safe in one event
    loop: :meth:`acquire` does not await, so no two calls interleave. A bucket that has filled up again
    is dropped (it is the same as a new one), so idle keys cost no memory."""

    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        _check(rate_per_s, burst)
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, clock time of that count)
        self._calls = 0

    def __repr__(self) -> str:
        return f"MemoryRateLimiter(rate_per_s={self.rate_per_s}, burst={self.burst})"

    async def acquire(self, key: str) -> float:
        return self.take(key)

    def take(self, key: str) -> float:
        """:meth:`acquire` without the coroutine."""
        now = self.clock()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (1.0 - tokens) / self.rate_per_s
        self._calls += 1
        if self._calls % 1024 == 0:
            self._drop_full(now)
        return wait

    def _drop_full(self, now: float) -> None:
        full = float(self.burst)
        self._buckets = {k: (t, ts) for k, (t, ts) in self._buckets.items()
                         if t + (now - ts) * self.rate_per_s < full}


# KEYS[1]: the bucket; ARGV: rate per second, burst. Returns the seconds to wait, as a string ("0": allowed).
# State: a hash {tokens, ts} with ts the server's TIME in seconds; the key expires when the bucket is full again.
_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local st = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(st[1])
local ts = tonumber(st[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - tokens) / rate) + 1)
return string.format('%.17g', wait)
"""
_LUA_SHA = hashlib.sha1(_LUA.encode()).hexdigest()


class RedisRateLimiter(RateLimiter):
    """Buckets in Redis at ``url`` (``redis://host:6379/0``), under keys ``prefix + key``: every process
    using the same Redis, prefix and key shares one bucket. Refill and take are one Lua script run
    atomically (EVALSHA, loaded with EVAL when the server does not know it yet). Raises
    :class:`UnavailableError` from :meth:`acquire` when Redis does not answer."""

    def __init__(self, url: str, rate_per_s: float, burst: int, prefix: str = "greekfire:rl:") -> None:
        _check(rate_per_s, burst)
        import redis.asyncio as aioredis

        from greekfire.core.db import masked_url

        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self.prefix = prefix
        self._where = masked_url(url)
        try:
            self.redis: Any = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        except ValueError as exc:
            raise ConfigError("api.redis_url", self._where, f"a Redis URL such as redis://127.0.0.1:6379/0 ({exc})") from None

    def __repr__(self) -> str:
        return f"RedisRateLimiter({self._where!r}, rate_per_s={self.rate_per_s}, burst={self.burst}, prefix={self.prefix!r})"

    async def acquire(self, key: str) -> float:
        from redis.exceptions import NoScriptError, RedisError

        args = (1, self.prefix + key, repr(self.rate_per_s), str(self.burst))
        try:
            try:
                out = await self.redis.evalsha(_LUA_SHA, *args)
            except NoScriptError:
                out = await self.redis.eval(_LUA, *args)  # loads it: the next EVALSHA finds it
        except RedisError as exc:
            raise UnavailableError(f"Redis {self._where} (api.redis_url)",
                                   f"the rate limit cannot be checked: {type(exc).__name__}: {exc}") from None
        return max(0.0, float(out))

    async def close(self) -> None:
        await self.redis.aclose()


def make_limiter(settings: Settings) -> RateLimiter:
    """The limiter ``settings.api`` asks for: in Redis when ``api.redis_url`` is set, else in memory."""
    api = settings.api
    if api.redis_url:
        return RedisRateLimiter(api.redis_url, api.rate_limit_per_s, api.rate_limit_burst)
    return MemoryRateLimiter(api.rate_limit_per_s, api.rate_limit_burst)


def retry_after(wait_s: float) -> int:
    """``Retry-After`` for a wait of ``wait_s`` seconds: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait_s))


def route_template(request: Request) -> str:
    """The path template of the route ``request`` matched (``/v1/orders/{client_id}``), else its path."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or request.url.path


def rate_limited(limiter: RateLimiter, auth: Authenticator) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency: authenticates the request (401 as :meth:`Authenticator.require`), takes a
    token of the bucket of (its API key, its route's path template) and returns the principal. Over the
    limit: HTTPException 429 with ``Retry-After``. Redis not answering: 503."""

    async def rate_limit(
        request: Request,
        _key: str | None = Security(API_KEY_SCHEME),
        _bearer: HTTPAuthorizationCredentials | None = Security(BEARER_SCHEME),
    ) -> Principal:
        principal = await auth.authenticate(request)
        bucket = f"{principal.key_id}:{route_template(request)}"
        try:
            wait = await limiter.acquire(bucket)
        except UnavailableError as exc:
            log.error("%s", exc)
            raise HTTPException(503, "the rate limiter is unavailable; try again later") from None
        if wait > 0:
            after = retry_after(wait)
            raise HTTPException(429, f"rate limit of API key {principal.key_id} on {route_template(request)} "
                                     f"exceeded ({limiter.rate_per_s:g}/s, burst {limiter.burst}); "
                                     f"retry in {after} s", headers={"Retry-After": str(after)})
        return principal

    return rate_limit
