"""Rate limits (a minimal in-memory stand-in of the shared interface)."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request

from greekfire.api.auth import Authenticator, Principal


class RateLimiter(ABC):
    @abstractmethod
    async def acquire(self, key: str) -> float: ...

    async def close(self) -> None:
        pass


class MemoryRateLimiter(RateLimiter):
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, burst
        self._b: dict[str, tuple[float, float]] = {}

    async def acquire(self, key: str) -> float:
        now = time.monotonic()
        tokens, last = self._b.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._b[key] = (tokens - 1.0, now)
            return 0.0
        self._b[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def make_limiter(settings: Any) -> RateLimiter:
    return MemoryRateLimiter(settings.api.rate_limit_per_s, settings.api.rate_limit_burst)


def rate_limited(limiter: RateLimiter, auth: Authenticator) -> Callable[..., Awaitable[Principal]]:
    async def dep(request: Request) -> Principal:
        p = auth.principal(request)
        route = request.scope.get("route")
        wait = await limiter.acquire(f"{p.key_id}:{getattr(route, 'path', request.url.path)}")
        if wait > 0:
            raise HTTPException(429, "rate limit", headers={"Retry-After": str(max(1, math.ceil(wait)))})
        return p

    return dep
