"""API keys, bearer tokens and scopes (a minimal in-memory stand-in of the shared interface)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from fastapi import HTTPException, Request

SCOPES = ("read", "trade", "admin")


def _expand(scopes: Iterable[str]) -> frozenset[str]:
    out: set[str] = set()
    for s in scopes:
        out.update(SCOPES[: SCOPES.index(s) + 1])
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    name: str
    scopes: frozenset[str]


class ApiKeyStore:
    """Keys in memory (the real store keeps argon2 hashes in the database of ``url``)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self._keys: dict[str, tuple[str, str, frozenset[str], bool]] = {}

    def create(self, name: str, scopes: Iterable[str]) -> tuple[str, str]:
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(24)
        self._keys[key_id] = (secret, name, _expand(scopes), False)
        return key_id, f"gfk_{key_id}_{secret}"

    def list(self) -> list[dict[str, Any]]:
        return [{"key_id": k, "name": v[1], "scopes": sorted(v[2]), "revoked_at": v[3]} for k, v in self._keys.items()]

    def revoke(self, key_id: str) -> bool:
        v = self._keys.get(key_id)
        if v is None:
            return False
        self._keys[key_id] = (v[0], v[1], v[2], True)
        return True

    def verify(self, api_key: str) -> Principal | None:
        parts = api_key.split("_", 2) if isinstance(api_key, str) else []
        if len(parts) != 3 or parts[0] != "gfk":
            return None
        v = self._keys.get(parts[1])
        if v is None or v[3] or not secrets.compare_digest(v[0], parts[2]):
            return None
        return Principal(parts[1], v[1], v[2])

    def close(self) -> None:
        pass


def _unauthorized(msg: str) -> HTTPException:
    return HTTPException(401, msg, headers={"WWW-Authenticate": "Bearer"})


class Authenticator:
    def __init__(self, store: ApiKeyStore, jwt_secret: str | None, jwt_ttl_s: int) -> None:
        self.store = store
        self.secret = jwt_secret or secrets.token_hex(32)
        self.ttl = jwt_ttl_s

    def issue_token(self, api_key: str) -> dict[str, Any]:
        p = self.store.verify(api_key)
        if p is None:
            raise _unauthorized("invalid API key")
        now = int(time.time())
        tok = jwt.encode({"sub": p.key_id, "name": p.name, "scopes": sorted(p.scopes), "iat": now,
                          "exp": now + self.ttl}, self.secret, algorithm="HS256")
        return {"access_token": tok, "token_type": "bearer", "expires_in": self.ttl}

    def _from_token(self, token: str) -> Principal | None:
        try:
            c = jwt.decode(token, self.secret, algorithms=["HS256"])
            return Principal(str(c["sub"]), str(c["name"]), frozenset(c["scopes"]))
        except (jwt.PyJWTError, KeyError, TypeError):
            return None

    def principal_from_headers(self, headers: Mapping[str, str], query_token: str | None) -> Principal | None:
        key = headers.get("x-api-key")
        if key:
            return self.store.verify(key)
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return self._from_token(auth[7:].strip())
        if query_token:
            return self._from_token(query_token)
        return None

    def principal(self, request: Request) -> Principal:
        p = self.principal_from_headers(request.headers, None)
        if p is None:
            raise _unauthorized("missing or invalid credentials")
        return p

    def require(self, scope: str) -> Callable[..., Awaitable[Principal]]:
        async def dep(request: Request) -> Principal:
            p = self.principal(request)
            if scope not in p.scopes:
                raise HTTPException(403, f"needs scope {scope!r}")
            return p

        return dep
