"""API key management on the database of ``settings.database.url``: what ``greekfire api-key create|list|revoke``
calls. Each function opens the key store, does one thing and closes it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from greekfire.api.auth import ApiKeyStore
from greekfire.core.db import resolve_url

if TYPE_CHECKING:
    from greekfire.core.settings import Settings


def open_key_store(settings: Settings) -> ApiKeyStore:
    """The key store of ``settings.database.url`` (a relative SQLite path under ``settings.home``).
    Raises :class:`~greekfire.core.errors.UnavailableError` when the database cannot be opened."""
    url = resolve_url(settings.database.url.get_secret_value(), settings.home)
    return ApiKeyStore(url, echo=settings.database.echo)


def create_key(settings: Settings, name: str, scopes: Iterable[str]) -> dict[str, Any]:
    """Create an API key: ``{"key_id", "name", "scopes", "created_at", "api_key"}``. ``api_key`` is shown
    this once (only its hash is stored). Raises :class:`~greekfire.core.errors.DataError` (field ``name``
    or ``scopes``) for an empty name or an unknown scope."""
    store = open_key_store(settings)
    try:
        key_id, api_key = store.create(name, scopes)
        row = next(r for r in store.list() if r["key_id"] == key_id)
    finally:
        store.close()
    return {**row, "api_key": api_key}


def list_keys(settings: Settings) -> list[dict[str, Any]]:
    """Every API key, oldest first: ``key_id``, ``name``, ``scopes``, ``created_at``, ``revoked_at``,
    ``last_used_at`` (UTC datetimes or None). Never a key or its hash."""
    store = open_key_store(settings)
    try:
        return store.list()
    finally:
        store.close()


def revoke_key(settings: Settings, key_id: str) -> bool:
    """Revoke key ``key_id``: True if it was active, False if no such key or already revoked. A running
    server in another process may honour it for up to a minute more (its verification cache). Raises
    :class:`~greekfire.core.errors.DataError` (field ``key_id``) for a malformed id or a whole API key."""
    store = open_key_store(settings)
    try:
        return store.revoke(key_id)
    finally:
        store.close()
