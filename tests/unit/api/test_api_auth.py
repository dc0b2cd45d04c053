"""API keys and bearer tokens of the trading API: the key format, argon2 hashing (never the key stored),
verification and its cache, revocation (in this process at once, in another after the cache TTL), scopes and
their implications, last_used_at written at most once a minute, JWT expiry and tampering, the FastAPI
dependencies (401/403 through a tiny app), the key management functions of the CLI, and no secret in logs,
reprs, exceptions or responses."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import Depends, FastAPI, HTTPException

from greekfire.api.auth import (
    BAD_KEY,
    EXPIRED,
    KEY_PREFIX,
    MISSING,
    REVOKED,
    SCOPES,
    SECRET_LEN,
    VERIFY_CACHE_TTL_S,
    ApiKeyStore,
    Authenticator,
    Principal,
    expand_scopes,
    key_id_of,
    mask_key,
    new_key_id,
)
from greekfire.api.keys import create_key, list_keys, revoke_key
from greekfire.core.errors import ConfigError, DataError, UnavailableError
from greekfire.core.settings import load_settings

KEY_RE = re.compile(r"gfk_([A-Za-z0-9_-]{12})_([A-Za-z0-9_-]{43})")
JWT_SECRET = "s3cret-for-tests-" + "x" * 32


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[ApiKeyStore]:
    s = ApiKeyStore(db_url)
    s.clock = FakeClock()
    yield s
    s.close()


def rows(db_url: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as c:
        return c.execute("SELECT * FROM api_keys").fetchall()


def test_key_format_and_only_an_argon2_hash_is_stored(store: ApiKeyStore, db_url: str) -> None:
    key_id, api_key = store.create("desk-1", ["trade"])
    m = KEY_RE.fullmatch(api_key)
    assert m is not None and m.group(1) == key_id
    assert len(base64.urlsafe_b64decode(m.group(2) + "=")) == 32  # 32 random bytes
    (row,) = rows(db_url)
    flat = " ".join(str(v) for v in row)
    assert api_key not in flat and m.group(2) not in flat
    assert any(str(v).startswith("$argon2id$") for v in row)
    listed = store.list()
    assert [(k["key_id"], k["name"], k["scopes"], k["revoked_at"], k["last_used_at"]) for k in listed] == [
        (key_id, "desk-1", ["trade"], None, None)]
    assert set(listed[0]) == {"key_id", "name", "scopes", "created_at", "revoked_at", "last_used_at"}
    assert listed[0]["created_at"].tzinfo is not None
    # two keys never share an id or a secret
    key_id2, api_key2 = store.create("desk-2", ["read"])
    m2 = KEY_RE.fullmatch(api_key2)
    assert m2 is not None and key_id2 != key_id and m2.group(2) != m.group(2)


def test_new_key_ids_are_letters_and_digits_so_none_reads_as_an_option() -> None:
    """An id is typed on the command line (`api-key revoke ID`); one that began with `-` would be read as an
    option (1 in 64 of the URL-safe ids made before). 20,000 draws: all 12 characters of A-Z a-z 0-9, all 62
    of them seen in the first place, and each parses back out of a key built around it."""
    ids = [new_key_id() for _ in range(20_000)]
    assert all(len(i) == 12 and i.isascii() and i.isalnum() for i in ids)
    assert len({i[0] for i in ids}) == 62
    assert len(set(ids)) == len(ids)
    secret = "x" * SECRET_LEN
    assert all(key_id_of(f"{KEY_PREFIX}{i}_{secret}") == i for i in ids[:1000])


@pytest.mark.parametrize("key_id", ["_juMwupg7B-p", "ab_cd_ef_gh_", "I9RwfMyJDk0T"])
def test_key_id_is_read_by_position_when_parts_hold_underscores(key_id: str) -> None:
    secret = "O_" + "x" * (SECRET_LEN - 4) + "_o"  # "_" inside and at both ends of the parts
    api_key = f"{KEY_PREFIX}{key_id}_{secret}"
    assert key_id_of(api_key) == key_id
    assert mask_key(api_key) == f"{KEY_PREFIX}{key_id}_***"
    for bad in ("gfk_nope_nope", api_key + "x", api_key[1:], "", None):
        assert key_id_of(bad) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("granted", "expanded"), [
    (["read"], {"read"}), (["trade"], {"read", "trade"}), (["admin"], {"read", "trade", "admin"}),
    (["read", "admin"], {"read", "trade", "admin"}),
])
def test_scopes_imply_the_weaker_ones(granted: list[str], expanded: set[str]) -> None:
    assert expand_scopes(granted) == frozenset(expanded)
    assert SCOPES == ("read", "trade", "admin")


def test_verify_good_wrong_malformed_and_unknown(store: ApiKeyStore) -> None:
    key_id, api_key = store.create("bot", ["admin"])
    assert store.verify(api_key) == Principal(key_id, "bot", frozenset(SCOPES))
    prefix, secret = api_key[: -len(api_key.split("_", 2)[2])], api_key.split("_", 2)[2]
    wrong = prefix + ("A" if secret[0] != "A" else "B") + secret[1:]
    assert store.verify(wrong) is None  # same key id, another secret
    other_id = ("Z" if key_id[0] != "Z" else "Y") + key_id[1:]
    assert store.verify(f"gfk_{other_id}_{secret}") is None  # unknown key id
    for bad in ["", "gfk_", api_key[:-1], api_key + "x", "Bearer " + api_key, api_key.replace("gfk_", "gfx_"),
                api_key[:20] + "!" + api_key[21:]]:
        assert store.verify(bad) is None, bad


def test_verification_is_cached_for_the_ttl_by_hash_only(store: ApiKeyStore, db_url: str) -> None:
    key_id, api_key = store.create("bot", ["read"])
    assert store.verify(api_key) is not None
    # garble the stored hash: a cached verification does not look at it again ...
    with closing(sqlite3.connect(db_url.removeprefix("sqlite:///"))) as c:
        c.execute("UPDATE api_keys SET secret_hash = '$argon2id$v=19$m=65536,t=3,p=4$garbled'")
        c.commit()
    assert store.verify(api_key) is not None
    assert store.cached(api_key) is not None
    assert api_key not in repr(vars(store))  # the cache holds a digest, never the key
    # ... until the TTL is over
    store.clock.t += VERIFY_CACHE_TTL_S + 1  # type: ignore[attr-defined]
    assert store.cached(api_key) is None
    assert store.verify(api_key) is None


def test_revoke_here_at_once_elsewhere_after_the_ttl(store: ApiKeyStore, db_url: str) -> None:
    key_id, api_key = store.create("bot", ["trade"])
    other = ApiKeyStore(db_url)  # a second server process on the same database
    other.clock = FakeClock()
    try:
        assert store.verify(api_key) is not None and other.verify(api_key) is not None
        assert store.revoke(key_id) is True
        assert store.verify(api_key) is None  # the revoking process forgets it at once
        assert other.verify(api_key) is not None  # documented: another process, until its cache expires
        other.clock.t += VERIFY_CACHE_TTL_S + 1  # type: ignore[attr-defined]
        assert other.verify(api_key) is None
    finally:
        other.close()
    assert store.revoke(key_id) is False  # already revoked
    assert store.revoke("AAAAAAAAAAAA") is False  # no such key
    (listed,) = store.list()
    assert listed["revoked_at"] is not None and listed["revoked_at"] >= listed["created_at"]


def test_bad_arguments_name_the_field_and_value(store: ApiKeyStore) -> None:
    with pytest.raises(DataError, match=r"bad scopes='root'.*one of read, trade, admin") as e:
        store.create("bot", ["read", "root"])
    assert e.value.field == "scopes" and e.value.value == "root"
    with pytest.raises(DataError, match="bad scopes=") as e:
        store.create("bot", [])
    assert e.value.field == "scopes"
    with pytest.raises(DataError, match="bad name=''") as e:
        store.create("", ["read"])
    assert e.value.field == "name"
    with pytest.raises(DataError, match="bad key_id='short'") as e:
        store.revoke("short")
    assert e.value.field == "key_id"
    _, api_key = store.create("bot", ["read"])
    with pytest.raises(DataError, match="not the API key itself") as e:
        store.revoke(api_key)  # a whole key given where its id is wanted: the error does not repeat it
    assert api_key not in str(e.value) and api_key.split("_", 2)[2] not in repr(e.value.value)
    assert store.list()[0]["revoked_at"] is None
    with pytest.raises(DataError, match="bad scope='write'"):
        Authenticator(store, None, 60).require("write")


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'keys.db'}"
    with pytest.raises(UnavailableError, match=r"database \(database.url\) cannot be opened"):
        ApiKeyStore(url)
    with pytest.raises(UnavailableError, match=r"postgresql\+psycopg://u:\*\*\*@127.0.0.1:1/db") as e:
        ApiKeyStore("postgresql+psycopg://u:hunter2pw@127.0.0.1:1/db")
    assert "hunter2pw" not in str(e.value)


def test_last_used_at_is_written_at_most_once_a_minute(store: ApiKeyStore) -> None:
    key_id, api_key = store.create("bot", ["read"])
    assert store.list()[0]["last_used_at"] is None
    store.verify(api_key)
    first = store.list()[0]["last_used_at"]
    assert first is not None
    store.clock.t += 30  # type: ignore[attr-defined]
    store.verify(api_key)
    assert store.list()[0]["last_used_at"] == first
    store.clock.t += 31  # type: ignore[attr-defined]
    store.verify(api_key)
    assert store.list()[0]["last_used_at"] > first


# -- bearer tokens ---------------------------------------------------------------------------------------


def _bearer(auth: Authenticator, token: str) -> Principal | None:
    return auth.principal_from_headers({"Authorization": f"Bearer {token}"}, None)


def test_token_claims_and_use(store: ApiKeyStore) -> None:
    key_id, api_key = store.create("bot", ["trade"])
    auth = Authenticator(store, JWT_SECRET, 300)
    out = auth.issue_token(api_key)
    assert out["token_type"] == "bearer" and out["expires_in"] == 300
    claims = jwt.decode(out["access_token"], JWT_SECRET, algorithms=["HS256"], issuer="greekfire")
    assert claims["sub"] == key_id and claims["scopes"] == ["read", "trade"] and claims["iss"] == "greekfire"
    assert claims["exp"] - claims["iat"] == 300
    assert _bearer(auth, out["access_token"]) == Principal(key_id, "bot", frozenset({"read", "trade"}))
    # a WebSocket passes the token in the query; header names are case-insensitive
    assert auth.principal_from_headers({}, out["access_token"]) is not None
    assert auth.principal_from_headers({"x-api-key": api_key}, None) is not None
    assert auth.principal_from_headers({}, None) is None
    with pytest.raises(HTTPException) as e:
        auth.issue_token(api_key[:-1] + ("A" if api_key[-1] != "A" else "B"))
    assert e.value.status_code == 401 and e.value.detail == BAD_KEY
    assert e.value.headers is not None and e.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_expired_tampered_foreign_and_revoked_tokens_are_refused(store: ApiKeyStore) -> None:
    key_id, api_key = store.create("bot", ["admin"])
    auth = Authenticator(store, JWT_SECRET, 60)
    good = auth.issue_token(api_key)["access_token"]
    assert _bearer(auth, good) is not None

    auth.clock = lambda: time.time() - 3600  # issued an hour ago: long expired
    expired = auth.issue_token(api_key)["access_token"]
    auth.clock = time.time
    assert _bearer(auth, expired) is None

    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scopes"] = ["read", "trade", "admin", "root"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    flipped_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    unsigned = jwt.encode({**claims, "scopes": ["admin"]}, None, algorithm="none")
    foreign = jwt.encode(claims, "another-key-of-at-least-32-bytes-long!!", algorithm="HS256")
    no_exp = jwt.encode({k: v for k, v in claims.items() if k != "exp"}, JWT_SECRET, algorithm="HS256")
    wrong_iss = jwt.encode({**claims, "iss": "someone"}, JWT_SECRET, algorithm="HS256")
    for bad in [f"{head}.{forged_payload}.{sig}", f"{head}.{payload}.{flipped_sig}", unsigned, foreign, no_exp,
                wrong_iss, "garbage", good[:-3]]:
        assert _bearer(auth, bad) is None, bad

    # another process with another random secret does not accept this process's tokens
    assert _bearer(Authenticator(store, None, 60), good) is None

    assert store.revoke(key_id)
    assert _bearer(auth, good) is None  # a revoked key's tokens die with it


def test_short_jwt_secret_is_a_config_error(store: ApiKeyStore) -> None:
    with pytest.raises(ConfigError, match=r"api.jwt_secret='\*\*\*'.*at least 32 bytes") as e:
        Authenticator(store, "tooshort-secret", 60)
    assert "tooshort-secret" not in str(e.value)


# -- FastAPI dependencies, through a tiny app ------------------------------------------------------------


def tiny_app(auth: Authenticator) -> FastAPI:
    app = FastAPI()

    @app.post("/token")
    def token(body: dict[str, str]) -> dict[str, Any]:
        return auth.issue_token(body.get("api_key", ""))

    for scope in SCOPES:
        @app.get(f"/{scope}")
        async def route(p: Principal = Depends(auth.require(scope))) -> dict[str, Any]:
            return {"key_id": p.key_id, "scopes": sorted(p.scopes)}

    return app


def call(app: FastAPI, requests: list[tuple[str, str, dict[str, str], Any]]) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            return [await c.request(m, path, headers=h, json=body) for m, path, h, body in requests]
    return asyncio.run(go())


def test_dependencies_answer_401_and_403(store: ApiKeyStore) -> None:
    read_id, read_key = store.create("viewer", ["read"])
    _, admin_key = store.create("root", ["admin"])
    auth = Authenticator(store, JWT_SECRET, 60)
    app = tiny_app(auth)
    token = call(app, [("POST", "/token", {}, {"api_key": read_key})])[0].json()["access_token"]
    r = call(app, [
        ("GET", "/read", {"X-API-Key": read_key}, None),
        ("GET", "/read", {"Authorization": f"Bearer {token}"}, None),
        ("GET", "/trade", {"X-API-Key": read_key}, None),
        ("GET", "/admin", {"X-API-Key": admin_key}, None),
        ("GET", "/read", {}, None),
        ("GET", "/read", {"X-API-Key": read_key[:-2]}, None),
        ("GET", "/read", {"Authorization": f"Basic {read_key}"}, None),
        ("GET", "/read", {"Authorization": f"Bearer {token[:-2]}"}, None),
        ("POST", "/token", {}, {"api_key": "gfk_nope"}),
    ])
    assert [x.status_code for x in r] == [200, 200, 403, 200, 401, 401, 401, 401, 401]
    assert r[0].json() == {"key_id": read_id, "scopes": ["read"]}
    assert r[2].json()["detail"] == f"API key {read_id} lacks scope 'trade' (it has: read)"
    assert r[3].json()["scopes"] == ["admin", "read", "trade"]
    assert r[4].json()["detail"] == MISSING and r[4].headers["WWW-Authenticate"] == "Bearer"
    assert r[5].json()["detail"] == BAD_KEY
    for x in r[5:]:
        assert x.headers["WWW-Authenticate"].startswith("Bearer")
    assert r[7].headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

    auth.clock = lambda: time.time() - 3600
    old = auth.issue_token(read_key)["access_token"]
    auth.clock = time.time
    store.revoke(read_id)
    late = call(app, [("GET", "/read", {"Authorization": f"Bearer {old}"}, None),
                      ("GET", "/read", {"Authorization": f"Bearer {token}"}, None),
                      ("GET", "/read", {"X-API-Key": read_key}, None)])
    assert [(x.status_code, x.json()["detail"]) for x in late] == [(401, EXPIRED), (401, REVOKED), (401, BAD_KEY)]


def test_key_management_functions_of_the_cli(tmp_settings_env: Path) -> None:
    settings = load_settings()
    made = create_key(settings, "ci-bot", ["trade"])
    m = KEY_RE.fullmatch(made["api_key"])
    assert m is not None and m.group(1) == made["key_id"]
    assert made["scopes"] == ["trade"] and made["name"] == "ci-bot" and made["created_at"] is not None
    listed = list_keys(settings)
    assert [k["key_id"] for k in listed] == [made["key_id"]] and "api_key" not in listed[0]
    # the default database is the SQLite file under settings.home
    assert [p.name for p in (tmp_settings_env / "home").rglob("*.db")] == ["greekfire.db"]
    assert revoke_key(settings, made["key_id"]) is True
    assert revoke_key(settings, made["key_id"]) is False
    assert list_keys(settings)[0]["revoked_at"] is not None
    with pytest.raises(DataError, match="bad scopes='superuser'"):
        create_key(settings, "x", ["superuser"])


# -- no secret anywhere ----------------------------------------------------------------------------------


def test_no_secret_in_logs_reprs_exceptions_or_responses(store: ApiKeyStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key_id, api_key = store.create("bot", ["read"])
    secret = api_key.split("_", 2)[2]
    auth = Authenticator(store, JWT_SECRET, 60)
    app = tiny_app(auth)
    wrong = api_key[:-4] + ("AAAA" if not api_key.endswith("AAAA") else "BBBB")
    token_resp, *others = call(app, [
        ("POST", "/token", {}, {"api_key": api_key}),
        ("POST", "/token", {}, {"api_key": wrong}),
        ("GET", "/read", {"X-API-Key": api_key}, None),
        ("GET", "/read", {"X-API-Key": wrong}, None),
        ("GET", "/trade", {"X-API-Key": api_key}, None),
        ("GET", "/read", {"Authorization": "Bearer " + api_key}, None),
    ])
    token = token_resp.json()["access_token"]
    others += call(app, [("GET", "/read", {"Authorization": f"Bearer {token}x"}, None),
                         ("GET", "/trade", {"Authorization": f"Bearer {token}"}, None)])
    errors: list[str] = []
    for bad in [lambda: auth.issue_token(wrong), lambda: store.revoke(api_key),
                lambda: Authenticator(store, JWT_SECRET[:20], 60)]:
        try:
            bad()
        except Exception as exc:  # noqa: BLE001 - every error's text is checked below
            errors += [str(exc), repr(exc), repr(getattr(exc, "detail", "")), repr(vars(exc))]
    store.revoke(key_id)
    assert len(errors) == 12
    seen = "\n".join([caplog.text, repr(store), repr(auth), repr(store.verify(api_key)), repr(Principal(key_id, "bot", frozenset())),
                      *errors, *(r.text + repr(r.headers) for r in others)])
    assert key_id in caplog.text  # the log names the key by its id ...
    for s in (api_key, secret, wrong, wrong.split("_", 2)[2], JWT_SECRET, JWT_SECRET[:20], token):
        assert s not in seen  # ... and never holds a secret
    assert "$argon2" not in seen
    assert [r.status_code for r in others] == [401, 200, 401, 403, 401, 401, 403]


def test_openapi_lists_both_ways_to_authenticate(store: ApiKeyStore) -> None:
    schema = tiny_app(Authenticator(store, None, 60)).openapi()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": schemes["ApiKey"]["description"]}
    assert schemes["BearerToken"]["scheme"] == "bearer" and schemes["BearerToken"]["bearerFormat"] == "JWT"
    assert {"ApiKey": []} in schema["paths"]["/trade"]["get"]["security"]
    assert "security" not in schema["paths"]["/token"]["post"]


def test_websocket_style_authentication_off_the_event_loop(store: ApiKeyStore) -> None:
    key_id, api_key = store.create("ws", ["read"])
    auth = Authenticator(store, JWT_SECRET, 60)
    token = auth.issue_token(api_key)["access_token"]

    async def go() -> list[Principal | None]:
        return [await auth.authenticate_headers({"X-API-Key": api_key}),
                await auth.authenticate_headers({}, token),
                await auth.authenticate_headers({}, token + "x"),
                await auth.authenticate_headers({}, None)]

    got = asyncio.run(go())
    assert [p.key_id if p else None for p in got] == [key_id, key_id, None, None]
