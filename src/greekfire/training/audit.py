"""The promotion and rollback history of registered models, in our database (MLflow keeps none).

MLflow's aliases say which version is ``champion`` now, not who moved it, when, why, or from which version.
Every change the registry makes (and every promotion the gate refuses) is one row of the table
``model_audit`` on ``models.audit_url`` (default: ``database.url``, SQLite under ``home``; PostgreSQL in
production). The table is created when absent.

Example::

    log = AuditLog("sqlite:///audit.db")
    log.record(model="greekfire-pricing", action="promote", alias="champion", from_version=None,
               to_version="1", actor="alice", reason="first model")
    for entry in log.history("greekfire-pricing"):
        print(entry.at, entry.action, entry.from_version, "->", entry.to_version, entry.actor, entry.reason)
"""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from greekfire.core.db import db_error_reason, masked_url, resolve_url
from greekfire.core.errors import UnavailableError
from greekfire.core.settings import Settings

Action = Literal["promote", "rollback", "refused", "retire"]
ACTIONS: tuple[str, ...] = ("promote", "rollback", "refused", "retire")

_md = MetaData()
audit_table = Table(
    "model_audit", _md,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False, index=True),
    Column("action", String(16), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("from_version", String(32)),
    Column("to_version", String(32)),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("details", Text, nullable=False, default="{}"),
)


@dataclass(frozen=True)
class AuditEntry:
    """One change of an alias: ``action`` moved ``alias`` from ``from_version`` to ``to_version`` (None: the
    alias was unset before / is unset after), by ``actor`` at ``at`` (UTC) because of ``reason``."""

    id: int
    model: str
    action: str
    alias: str
    from_version: str | None
    to_version: str | None
    actor: str
    reason: str
    at: datetime
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``at`` as ISO 8601)."""
        d = asdict(self)
        d["at"] = self.at.isoformat()
        return d


def default_actor() -> str:
    """Who is acting when no one is named: the operating-system user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def audit_url(settings: Settings) -> str:
    """``models.audit_url``, else ``database.url``; a relative SQLite path is put under ``home``."""
    raw = settings.models.audit_url or settings.database.url
    return resolve_url(raw.get_secret_value(), Path(settings.home))


class AuditLog:
    """The ``model_audit`` table at ``url`` (created when absent). UnavailableError (URL masked) when the
    database cannot be used."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        try:
            self.db: Engine = create_engine(url, echo=echo)
            _md.create_all(self.db)
        except (SQLAlchemyError, ImportError, OSError) as exc:
            raise UnavailableError(masked_url(url), f"the model audit table cannot be opened: "
                                   f"{db_error_reason(exc)}") from None

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditLog:
        """The audit log on ``models.audit_url`` (default ``database.url``)."""
        return cls(audit_url(settings), echo=settings.database.echo)

    def record(self, *, model: str, action: str, alias: str, from_version: str | None, to_version: str | None,
               actor: str | None = None, reason: str = "", details: dict[str, Any] | None = None,
               at: datetime | None = None) -> AuditEntry:
        """Append one entry and return it (``at`` defaults to now, UTC; ``actor`` to the OS user)."""
        if action not in ACTIONS:
            raise ValueError(f"action {action!r}: one of {ACTIONS}")
        row = {
            "model": model, "action": action, "alias": alias, "from_version": from_version,
            "to_version": to_version, "actor": actor or default_actor(), "reason": reason,
            "at": at or datetime.now(UTC), "details": json.dumps(details or {}, default=str, sort_keys=True),
        }
        try:
            with self.db.begin() as conn:
                new_id = conn.execute(insert(audit_table).values(**row)).inserted_primary_key
        except SQLAlchemyError as exc:
            raise UnavailableError(masked_url(self.url), f"cannot write the model audit: {db_error_reason(exc)}") from None
        assert new_id is not None
        return _entry({**row, "id": int(new_id[0]), "details": row["details"]})

    def history(self, model: str, *, limit: int | None = None) -> list[AuditEntry]:
        """Entries of ``model``, oldest first (the newest ``limit`` when given)."""
        q = select(audit_table).where(audit_table.c.model == model).order_by(audit_table.c.id.desc())
        if limit is not None:
            q = q.limit(limit)
        try:
            with self.db.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(q)]
        except SQLAlchemyError as exc:
            raise UnavailableError(masked_url(self.url), f"cannot read the model audit: {db_error_reason(exc)}") from None
        return [_entry(r) for r in reversed(rows)]

    def close(self) -> None:
        """Release the connection pool."""
        self.db.dispose()


def _entry(row: dict[str, Any]) -> AuditEntry:
    at = row["at"]
    if at.tzinfo is None:  # SQLite keeps no zone: we always write UTC
        at = at.replace(tzinfo=UTC)
    details = row["details"]
    return AuditEntry(
        id=int(row["id"]), model=row["model"], action=row["action"], alias=row["alias"],
        from_version=row["from_version"], to_version=row["to_version"], actor=row["actor"], reason=row["reason"],
        at=at, details=json.loads(details) if isinstance(details, str) else dict(details or {}),
    )
