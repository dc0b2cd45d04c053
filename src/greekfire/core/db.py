"""Database URLs shared by every store (the trading engine's snapshots, FIX sessions)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url


def resolve_url(url: str, home: Path) -> str:
    """A relative SQLite path is put under ``home`` (so the default works from any folder)."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        rel = Path(url[len(prefix):])
        if not rel.is_absolute():
            path = home / rel.name if rel.parts and rel.parts[0] == home.name else home / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(path)
    return url


def masked_url(url: str) -> str:
    """``url`` with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL has no password we could find; show only its scheme
        return url.split("://", 1)[0] + "://..."


def db_error_reason(exc: BaseException) -> str:
    """A database error as one short line (the driver's own error where SQLAlchemy wraps one), for messages
    that say why a store cannot be used."""
    cause = getattr(exc, "orig", None) or exc
    return " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
