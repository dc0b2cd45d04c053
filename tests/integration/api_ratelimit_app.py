"""A tiny app using the trading API's auth and rate-limit dependencies, served by uvicorn processes that
tests/integration/test_api_ratelimit_redis.py starts. Configured by environment variables:
GREEKFIRE_TEST_KEYS_DB (SQLAlchemy URL of the API keys), GREEKFIRE_TEST_REDIS_URL, GREEKFIRE_TEST_RL_PREFIX,
GREEKFIRE_TEST_RL_RATE (tokens a second) and GREEKFIRE_TEST_RL_BURST."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from greekfire.api.auth import ApiKeyStore, Authenticator, Principal
from greekfire.api.ratelimit import RedisRateLimiter, rate_limited

store = ApiKeyStore(os.environ["GREEKFIRE_TEST_KEYS_DB"])
auth = Authenticator(store, None, 60)
limiter = RedisRateLimiter(os.environ["GREEKFIRE_TEST_REDIS_URL"], float(os.environ["GREEKFIRE_TEST_RL_RATE"]),
                           int(os.environ["GREEKFIRE_TEST_RL_BURST"]), prefix=os.environ["GREEKFIRE_TEST_RL_PREFIX"])
limit = rate_limited(limiter, auth)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await limiter.close()
    store.close()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, int]:
    return {"pid": os.getpid()}


@app.get("/v1/orders/{client_id}")
async def order(client_id: str, p: Principal = Depends(limit)) -> dict[str, object]:
    return {"pid": os.getpid(), "client_id": client_id, "key_id": p.key_id}


@app.get("/v1/positions")
async def positions(p: Principal = Depends(limit)) -> dict[str, object]:
    return {"pid": os.getpid(), "key_id": p.key_id}
