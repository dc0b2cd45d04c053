"""API keys, bearer tokens and scopes of the trading API server.

An API key looks like ``gfk_<key_id>_<secret>``: ``key_id`` is 12 characters of A-Z a-z 0-9 (it names the key
in listings, logs and rate limits; it is not secret; ids made by earlier versions may also hold ``-`` and
``_``), ``secret`` is 32 random bytes, URL-safe base64 (43 characters). The key is shown once, when it is
created; the database (table ``api_keys``) keeps only its argon2 hash, so a lost key cannot be recovered,
only revoked and replaced.

A client authenticates each request with ONE of:

* ``X-API-Key: gfk_...`` (checked first when both are sent), or
* ``Authorization: Bearer <token>``, a JWT (HS256, claims ``sub`` = key id, ``scopes``, ``iat``, ``exp``,
  ``iss`` = ``greekfire``) that :meth:`Authenticator.issue_token` gives in exchange for an API key. A token
  of a key revoked since it was issued is refused.

Scopes: ``read`` < ``trade`` < ``admin``; a key granted ``admin`` may also trade and read, one granted
``trade`` may also read. :class:`Principal` carries the expanded set.

Verifying an API key costs one argon2 hash (about 50 ms of CPU, on purpose), so a successful verification is
remembered in this process for :data:`VERIFY_CACHE_TTL_S` seconds, keyed by the SHA-256 of the key (the key
itself is never kept). Revoking a key forgets it at once in the process that revokes it; ANOTHER process
(a second server behind the same database) may honour a revoked key, and tokens of it, for up to
:data:`VERIFY_CACHE_TTL_S` seconds.

No secret (API key, its hash, a token or the JWT key) is ever written to a log, a repr, an exception or a
response.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
import string
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Column, DateTime, MetaData, String, Table, create_engine, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from greekfire.core.db import db_error_reason, masked_url
from greekfire.core.errors import ConfigError, DataError, UnavailableError

log = logging.getLogger("greekfire.api.auth")

SCOPES = ("read", "trade", "admin")
"""Scopes a key may be granted, weakest first; each implies the ones before it."""

KEY_PREFIX = "gfk_"
KEY_ID_LEN = 12
SECRET_LEN = 43  # 32 bytes, URL-safe base64 without padding
VERIFY_CACHE_TTL_S = 60.0
"""Seconds a verified key (and a key's active/revoked state, for tokens) is remembered in one process."""
LAST_USED_INTERVAL_S = 60.0
"""``last_used_at`` of a key is written at most once per this many seconds per key and process."""
JWT_ISSUER = "greekfire"
JWT_ALGORITHM = "HS256"
JWT_MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key is at least as long as the hash

_URLSAFE = r"[A-Za-z0-9_-]"
_ID_ALPHABET = string.ascii_letters + string.digits
_KEY_RE = re.compile(rf"gfk_({_URLSAFE}{{{KEY_ID_LEN}}})_({_URLSAFE}{{{SECRET_LEN}}})")
_KEY_ID_RE = re.compile(rf"{_URLSAFE}{{{KEY_ID_LEN}}}")
_NAME_MAX = 128

metadata = MetaData()

api_keys_table = Table(
    "api_keys",
    metadata,
    Column("key_id", String(KEY_ID_LEN), primary_key=True),
    Column("name", String(_NAME_MAX), nullable=False),
    Column("scopes", String(64), nullable=False),  # granted scopes, space separated (not expanded)
    Column("secret_hash", String(255), nullable=False),  # argon2id hash of the whole key
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: the API key's id and name and its scopes, expanded (``admin`` -> all three)."""

    key_id: str
    name: str
    scopes: frozenset[str]


def expand_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes ``scopes`` grant, implied ones included (``{"trade"}`` -> ``{"read", "trade"}``).
    Raises :class:`DataError` (field ``scopes``) for an unknown scope or an empty list."""
    if isinstance(scopes, str):
        scopes = scopes.replace(",", " ").split()
    granted = list(scopes)
    if not granted:
        raise DataError("scopes", granted, f"give at least one scope of {', '.join(SCOPES)}")
    out: set[str] = set()
    for s in granted:
        if s not in SCOPES:
            raise DataError("scopes", s, f"unknown scope; one of {', '.join(SCOPES)}")
        out.update(SCOPES[: SCOPES.index(s) + 1])
    return frozenset(out)


def _ordered(scopes: Iterable[str]) -> list[str]:
    return [s for s in SCOPES if s in set(scopes)]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(ts: datetime | None) -> datetime | None:
    """SQLite gives back naive datetimes; every time in this table is UTC."""
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


def _digest(api_key: str) -> bytes:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).digest()


def new_key_id() -> str:
    """A fresh key id: :data:`KEY_ID_LEN` characters of A-Z a-z 0-9 (about 71 random bits).

    Never ``-`` or ``_``: an id that began with ``-`` would read as an option on the command line
    (``greekfire api-key revoke -x...``). Ids made before this rule may hold both and are still accepted."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(KEY_ID_LEN))


def key_id_of(api_key: str) -> str | None:
    """The ``key_id`` of a well-formed ``gfk_<key_id>_<secret>`` key, else ``None``.

    Both parts may hold ``_`` themselves, so the key is read by position, never split on ``_``."""
    m = _KEY_RE.fullmatch(api_key) if isinstance(api_key, str) else None
    return m.group(1) if m else None


def mask_key(api_key: str) -> str:
    """``api_key`` safe to show: ``gfk_<key_id>_***`` for a well-formed key, else ``***``."""
    key_id = key_id_of(api_key)
    return f"{KEY_PREFIX}{key_id}_***" if key_id else "***"


class _Unavailable(Exception):
    pass


class ApiKeyStore:
    """API keys in a database (SQLAlchemy 2 Core, table ``api_keys``, created if absent): SQLite by file or
    PostgreSQL by URL, the one of ``database.url``. Safe to share between threads."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        try:
            self.db: Engine = create_engine(url, echo=echo, future=True)
            metadata.create_all(self.db)
        except (SQLAlchemyError, ImportError) as exc:  # no server, bad URL, or its driver not installed
            raise UnavailableError(masked_url(url), f"the database (database.url) cannot be opened: {db_error_reason(exc)}") from None
        self._hasher = PasswordHasher()
        self._lock = threading.Lock()
        # sha256(key) -> (monotonic expiry, principal): successful argon2 verifications
        self._verified: dict[bytes, tuple[float, Principal]] = {}
        # key_id -> (monotonic expiry, principal or None when revoked/unknown): for bearer tokens
        self._states: dict[str, tuple[float, Principal | None]] = {}
        self._touched: dict[str, float] = {}  # key_id -> monotonic time last_used_at was last written
        self._dummy_hash: str | None = None
        self.clock: Callable[[], float] = time.monotonic

    def __repr__(self) -> str:
        return f"ApiKeyStore({masked_url(self.url)!r})"

    # -- management -----------------------------------------------------------------------------------

    def create(self, name: str, scopes: Iterable[str]) -> tuple[str, str]:
        """Create a key named ``name`` granting ``scopes`` (of :data:`SCOPES`). Returns ``(key_id, api_key)``;
        ``api_key`` is shown this once and stored only as its argon2 hash. Raises :class:`DataError` for an
        empty or too long name or an unknown scope."""
        if not isinstance(name, str) or not name.strip() or len(name) > _NAME_MAX:
            raise DataError("name", name, f"give a non-empty name of at most {_NAME_MAX} characters")
        granted = list(scopes) if not isinstance(scopes, str) else scopes.replace(",", " ").split()
        expand_scopes(granted)
        stored = " ".join(_ordered(granted))
        for _ in range(5):  # a key id collision (2^-71 per pair) is retried, not surfaced
            key_id = new_key_id()
            api_key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            row = {"key_id": key_id, "name": name.strip(), "scopes": stored,
                   "secret_hash": self._hasher.hash(api_key), "created_at": _utcnow()}
            try:
                with self.db.begin() as conn:
                    if conn.execute(select(api_keys_table.c.key_id).where(api_keys_table.c.key_id == key_id)).first():
                        continue
                    conn.execute(insert(api_keys_table), [row])
            except SQLAlchemyError as exc:
                raise UnavailableError(masked_url(self.url), f"cannot write the API key: {db_error_reason(exc)}") from None
            log.info("API key %s created (name %r, scopes %s)", key_id, row["name"], stored)
            return key_id, api_key
        raise RuntimeError("could not draw an unused API key id")  # pragma: no cover

    def list(self) -> list[dict[str, Any]]:
        """Every key, oldest first: ``key_id``, ``name``, ``scopes`` (as granted, a list), ``created_at``,
        ``revoked_at``, ``last_used_at`` (UTC datetimes or None). Never the hash."""
        t = api_keys_table
        try:
            with self.db.connect() as conn:
                rows = conn.execute(select(t.c.key_id, t.c.name, t.c.scopes, t.c.created_at, t.c.revoked_at,
                                           t.c.last_used_at).order_by(t.c.created_at, t.c.key_id)).all()
        except SQLAlchemyError as exc:
            raise UnavailableError(masked_url(self.url), f"cannot read the API keys: {db_error_reason(exc)}") from None
        return [{"key_id": r.key_id, "name": r.name, "scopes": r.scopes.split(), "created_at": _aware(r.created_at),
                 "revoked_at": _aware(r.revoked_at), "last_used_at": _aware(r.last_used_at)} for r in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke key ``key_id``: True if it was active, False if unknown or already revoked. This process
        forgets it at once; another process may still honour it for up to :data:`VERIFY_CACHE_TTL_S` s.
        Raises :class:`DataError` (field ``key_id``) when given a whole API key instead of its id."""
        if isinstance(key_id, str) and key_id.startswith(KEY_PREFIX):
            raise DataError("key_id", mask_key(key_id), "give the key id (12 characters), not the API key itself")
        if not isinstance(key_id, str) or not _KEY_ID_RE.fullmatch(key_id):
            raise DataError("key_id", key_id, f"an API key id is {KEY_ID_LEN} characters of A-Z a-z 0-9 - _")
        t = api_keys_table
        try:
            with self.db.begin() as conn:
                n = conn.execute(update(t).where(t.c.key_id == key_id, t.c.revoked_at.is_(None))
                                 .values(revoked_at=_utcnow())).rowcount
        except SQLAlchemyError as exc:
            raise UnavailableError(masked_url(self.url), f"cannot revoke the API key: {db_error_reason(exc)}") from None
        self._forget(key_id)
        if n:
            log.info("API key %s revoked", key_id)
        return bool(n)

    def _forget(self, key_id: str) -> None:
        with self._lock:
            for d, (_, p) in list(self._verified.items()):
                if p.key_id == key_id:
                    del self._verified[d]
            self._states.pop(key_id, None)

    # -- verification ---------------------------------------------------------------------------------

    def verify(self, api_key: str) -> Principal | None:
        """The principal of ``api_key``, or None when it is malformed, unknown or revoked. Constant-time in
        the secret (argon2 verify; an unknown key id costs the same hash). Blocks for about 50 ms on a cache
        miss: call it from a thread, not an event loop. Raises :class:`UnavailableError` when the database
        cannot be read."""
        hit = self._lookup(api_key)
        if hit is not None:
            if hit[1]:
                self._touch(hit[0].key_id, self.clock())
            return hit[0]
        key_id = key_id_of(api_key)
        if key_id is None:
            return None
        row = self._row(key_id)
        if row is None:
            self._burn(api_key)
            return None
        try:
            self._hasher.verify(row.secret_hash, api_key)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        principal = Principal(key_id, row.name, expand_scopes(row.scopes.split())) if row.revoked_at is None else None
        now = self.clock()
        with self._lock:
            self._states[key_id] = (now + VERIFY_CACHE_TTL_S, principal)
            if principal is not None:
                self._verified[_digest(api_key)] = (now + VERIFY_CACHE_TTL_S, principal)
                self._prune(now)
        if principal is not None:
            self._touch(key_id, now)
        return principal

    def cached(self, api_key: str) -> Principal | None:
        """The principal of ``api_key`` if it was verified in this process less than
        :data:`VERIFY_CACHE_TTL_S` s ago and ``last_used_at`` needs no write; else None (then call
        :meth:`verify`). Never blocks: an event loop may call it."""
        hit = self._lookup(api_key)
        return hit[0] if hit is not None and not hit[1] else None

    def _lookup(self, api_key: str) -> tuple[Principal, bool] | None:
        """(principal, whether last_used_at is due) of a key verified here less than the TTL ago."""
        if not isinstance(api_key, str):
            return None
        now = self.clock()
        with self._lock:
            hit = self._verified.get(_digest(api_key))
            if hit is None or hit[0] <= now:
                return None
            principal = hit[1]
            return principal, now - self._touched.get(principal.key_id, -1e18) >= LAST_USED_INTERVAL_S

    def key_state(self, key_id: str) -> Principal | None:
        """The principal of key ``key_id`` when it exists and is not revoked, else None; remembered for
        :data:`VERIFY_CACHE_TTL_S` s (bearer tokens are checked against it). May read the database."""
        hit = self.cached_state(key_id)
        if hit is not False:
            return hit  # type: ignore[return-value]
        row = self._row(key_id)
        principal = (Principal(key_id, row.name, expand_scopes(row.scopes.split()))
                     if row is not None and row.revoked_at is None else None)
        now = self.clock()
        with self._lock:
            self._states[key_id] = (now + VERIFY_CACHE_TTL_S, principal)
            self._prune(now)
        if principal is not None:
            self._touch(key_id, now)
        return principal

    def cached_state(self, key_id: str) -> Principal | None | bool:
        """:meth:`key_state` from memory only: the principal, None (revoked/unknown) or False (not known
        here, or ``last_used_at`` is due: call :meth:`key_state`). Never blocks."""
        now = self.clock()
        with self._lock:
            hit = self._states.get(key_id)
            if hit is None or hit[0] <= now:
                return False
            if hit[1] is not None and now - self._touched.get(key_id, -1e18) >= LAST_USED_INTERVAL_S:
                return False
            return hit[1]

    def _row(self, key_id: str) -> Any:
        t = api_keys_table
        try:
            with self.db.connect() as conn:
                return conn.execute(select(t.c.name, t.c.scopes, t.c.secret_hash, t.c.revoked_at)
                                    .where(t.c.key_id == key_id)).first()
        except SQLAlchemyError as exc:
            raise UnavailableError(masked_url(self.url), f"cannot read the API keys: {db_error_reason(exc)}") from None

    def _burn(self, api_key: str) -> None:
        """Spend one argon2 verify on a dummy hash, so an unknown key id takes as long as a wrong secret."""
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))
        with contextlib.suppress(VerificationError, InvalidHashError):
            self._hasher.verify(self._dummy_hash, api_key)

    def _touch(self, key_id: str, now: float) -> None:
        """Write ``last_used_at`` unless this process wrote it less than a minute ago."""
        with self._lock:
            if now - self._touched.get(key_id, -1e18) < LAST_USED_INTERVAL_S:
                return
            self._touched[key_id] = now
        t = api_keys_table
        try:
            with self.db.begin() as conn:
                conn.execute(update(t).where(t.c.key_id == key_id).values(last_used_at=_utcnow()))
        except SQLAlchemyError as exc:  # bookkeeping only: the request goes on
            log.warning("cannot record the use of API key %s in %s: %s", key_id, masked_url(self.url), db_error_reason(exc))

    def _prune(self, now: float) -> None:
        """Drop expired cache entries once the caches grow (called with the lock held)."""
        if len(self._verified) + len(self._states) < 4096:
            return
        self._verified = {d: v for d, v in self._verified.items() if v[0] > now}
        self._states = {k: v for k, v in self._states.items() if v[0] > now}

    def close(self) -> None:
        """Close the database connections."""
        self.db.dispose()


class _AuthFailure(Exception):
    """Why a request is not authenticated (a message safe to send: it never holds a secret)."""

    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.error = error  # RFC 6750 error code for WWW-Authenticate


def _unauthorized(f: _AuthFailure) -> HTTPException:
    challenge = f'Bearer error="{f.error}"' if f.error else "Bearer"
    return HTTPException(401, f.detail, headers={"WWW-Authenticate": challenge})


MISSING = ("missing credentials: send the header 'X-API-Key: <api key>' or 'Authorization: Bearer <token>' "
           "(a token comes from POST /token)")
BAD_KEY = "invalid API key: unknown, malformed or revoked"
BAD_SCHEME = "the Authorization header must be 'Bearer <token>'"
BAD_TOKEN = "invalid bearer token: malformed or badly signed; get a new one from POST /token"
EXPIRED = "bearer token expired; get a new one from POST /token"
REVOKED = "the bearer token's API key is revoked or unknown"


# OpenAPI security schemes (the "Authorize" button of /docs); the dependencies read the headers themselves
API_KEY_SCHEME = APIKeyHeader(name="X-API-Key", scheme_name="ApiKey", auto_error=False,
                              description="an API key, gfk_<key_id>_<secret> (`greekfire api-key create`)")
BEARER_SCHEME = HTTPBearer(scheme_name="BearerToken", bearerFormat="JWT", auto_error=False,
                           description="a token from POST /token")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    if v is None and not hasattr(headers, "getlist"):  # a plain dict: look case-insensitively
        v = next((val for k, val in headers.items() if k.lower() == name), None)
    return v


class Authenticator:
    """Authenticates requests by API key or bearer token and issues tokens. ``jwt_secret`` is the HS256
    key (at least 32 bytes; None: a random key of this process, so its tokens die with it and are not
    accepted by another process); ``jwt_ttl_s`` the lifetime of a token, seconds."""

    def __init__(self, store: ApiKeyStore, jwt_secret: str | None, jwt_ttl_s: int) -> None:
        if jwt_secret is not None and hasattr(jwt_secret, "get_secret_value"):
            jwt_secret = jwt_secret.get_secret_value()  # a pydantic SecretStr
        if jwt_secret is None:
            jwt_secret = secrets.token_urlsafe(32)
        elif len(jwt_secret.encode()) < JWT_MIN_SECRET_BYTES:
            raise ConfigError("api.jwt_secret", "***", f"at least {JWT_MIN_SECRET_BYTES} bytes "
                              f"(this one has {len(jwt_secret.encode())}); e.g. `openssl rand -base64 48`")
        if isinstance(jwt_ttl_s, bool) or not isinstance(jwt_ttl_s, int) or jwt_ttl_s < 1:
            raise ConfigError("api.jwt_ttl_s", jwt_ttl_s, "a whole number of seconds >= 1")
        self.store = store
        self._secret = jwt_secret
        self.jwt_ttl_s = jwt_ttl_s
        self.clock: Callable[[], float] = time.time  # wall clock of iat/exp, seconds since the epoch

    def __repr__(self) -> str:
        return f"Authenticator(store={self.store!r}, jwt_ttl_s={self.jwt_ttl_s})"

    # -- tokens ---------------------------------------------------------------------------------------

    def issue_token(self, api_key: str) -> dict[str, Any]:
        """A bearer token for ``api_key``: ``{"access_token", "token_type": "bearer", "expires_in"}``
        (seconds). HTTPException 401 when the key is bad. Blocks (argon2) on a cache miss."""
        try:
            principal = self.store.verify(api_key) if isinstance(api_key, str) else None
        except UnavailableError as exc:
            log.error("cannot issue a token: %s", exc)
            raise HTTPException(503, "the API key database is unavailable; try again later") from None
        if principal is None:
            log.info("token refused: invalid API key %s", mask_key(api_key) if isinstance(api_key, str) else "***")
            raise _unauthorized(_AuthFailure(BAD_KEY, "invalid_token"))
        now = int(self.clock())
        claims = {"sub": principal.key_id, "scopes": _ordered(principal.scopes), "iat": now,
                  "exp": now + self.jwt_ttl_s, "iss": JWT_ISSUER}
        token = jwt.encode(claims, self._secret, algorithm=JWT_ALGORITHM)
        log.info("bearer token issued to API key %s for %d s", principal.key_id, self.jwt_ttl_s)
        return {"access_token": token, "token_type": "bearer", "expires_in": self.jwt_ttl_s}

    def _claims(self, token: str) -> tuple[str, frozenset[str]]:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[JWT_ALGORITHM], issuer=JWT_ISSUER,
                                options={"require": ["sub", "exp", "iat", "iss"]}, leeway=0)
        except jwt.ExpiredSignatureError:
            raise _AuthFailure(EXPIRED, "invalid_token") from None
        except jwt.PyJWTError:
            raise _AuthFailure(BAD_TOKEN, "invalid_token") from None
        sub, scopes = claims.get("sub"), claims.get("scopes")
        if not isinstance(sub, str) or not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise _AuthFailure(BAD_TOKEN, "invalid_token")
        return sub, frozenset(scopes)

    # -- request authentication -----------------------------------------------------------------------

    def _credentials(self, headers: Mapping[str, str], query_token: str | None) -> tuple[str, str]:
        """("key", api key) or ("token", jwt) from the headers (X-API-Key first) or the query token."""
        api_key = _header(headers, "x-api-key")
        if api_key:
            return "key", api_key.strip()
        auth = _header(headers, "authorization")
        if auth:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise _AuthFailure(BAD_SCHEME, "invalid_request")
            return "token", value.strip()
        if query_token:
            return "token", query_token
        raise _AuthFailure(MISSING)

    def _fast(self, kind: str, cred: str) -> Principal | None:
        """The principal from memory alone (no database, no argon2), or None when that is not enough."""
        if kind == "key":
            return self.store.cached(cred)
        key_id, scopes = self._claims(cred)
        state = self.store.cached_state(key_id)
        if state is False:
            return None
        if state is None:
            raise _AuthFailure(REVOKED, "invalid_token")
        return Principal(key_id, state.name, state.scopes & scopes)  # type: ignore[union-attr]

    def _slow(self, kind: str, cred: str) -> Principal:
        if kind == "key":
            p = self.store.verify(cred)
            if p is None:
                log.info("request refused: invalid API key %s", mask_key(cred))
                raise _AuthFailure(BAD_KEY, "invalid_token")
            return p
        key_id, scopes = self._claims(cred)
        state = self.store.key_state(key_id)
        if state is None:
            log.info("request refused: bearer token of revoked or unknown API key %s", key_id)
            raise _AuthFailure(REVOKED, "invalid_token")
        return Principal(key_id, state.name, state.scopes & scopes)

    def _authenticate(self, headers: Mapping[str, str], query_token: str | None) -> Principal:
        kind, cred = self._credentials(headers, query_token)
        return self._fast(kind, cred) or self._slow(kind, cred)

    def principal(self, request: Request) -> Principal:
        """The principal of ``request`` (header ``X-API-Key`` or ``Authorization: Bearer``); HTTPException
        401 with ``WWW-Authenticate: Bearer`` otherwise. Blocks on a cache miss (argon2, the database);
        the dependencies of :meth:`require` run that part in a thread."""
        try:
            return self._authenticate(request.headers, None)
        except _AuthFailure as f:
            raise _unauthorized(f) from None
        except UnavailableError as exc:
            log.error("cannot authenticate a request: %s", exc)
            raise HTTPException(503, "the API key database is unavailable; try again later") from None

    def principal_from_headers(self, headers: Mapping[str, str], query_token: str | None = None) -> Principal | None:
        """The principal of a WebSocket handshake (its headers, or ``query_token``, a bearer token passed in
        the URL's query), or None when it is not authenticated. Blocks on a cache miss."""
        try:
            return self._authenticate(headers, query_token)
        except _AuthFailure:
            return None

    async def authenticate_headers(self, headers: Mapping[str, str], query_token: str | None = None) -> Principal | None:
        """:meth:`principal_from_headers` for async code (a WebSocket endpoint): memory first, then the
        blocking part (argon2, the database) in a worker thread. None when not authenticated."""
        try:
            kind, cred = self._credentials(headers, query_token)
            p = self._fast(kind, cred)
            return p if p is not None else await run_in_threadpool(self._slow, kind, cred)
        except (_AuthFailure, UnavailableError):
            return None

    async def authenticate(self, request: HTTPConnection) -> Principal:
        """:meth:`principal` for async code: memory first, then the blocking part in a worker thread. The
        result is kept on the request, so several dependencies of one request authenticate it once.
        HTTPException 401 (or 503 when the key database cannot be read)."""
        cached = getattr(request.state, "greekfire_principal", None)
        if isinstance(cached, Principal):
            return cached
        try:
            kind, cred = self._credentials(request.headers, None)
            p = self._fast(kind, cred)
            if p is None:
                p = await run_in_threadpool(self._slow, kind, cred)
        except _AuthFailure as f:
            raise _unauthorized(f) from None
        except UnavailableError as exc:
            log.error("cannot authenticate a request: %s", exc)
            raise HTTPException(503, "the API key database is unavailable; try again later") from None
        request.state.greekfire_principal = p
        return p

    def require(self, scope: str) -> Callable[..., Awaitable[Principal]]:
        """A FastAPI dependency giving the request's principal: 401 when unauthenticated, 403 when it lacks
        ``scope`` (one of :data:`SCOPES`)."""
        if scope not in SCOPES:
            raise DataError("scope", scope, f"unknown scope; one of {', '.join(SCOPES)}")

        async def require_scope(
            request: Request,
            _key: str | None = Security(API_KEY_SCHEME),
            _bearer: HTTPAuthorizationCredentials | None = Security(BEARER_SCHEME),
        ) -> Principal:
            p = await self.authenticate(request)
            if scope not in p.scopes:
                raise HTTPException(403, f"API key {p.key_id} lacks scope {scope!r} "
                                         f"(it has: {', '.join(_ordered(p.scopes)) or 'none'})")
            return p

        require_scope.__name__ = f"require_{scope}"
        return require_scope
