"""Engine state in a database (SQLAlchemy 2): orders, fills, portfolio, risk state and the audit log.

The schema is created with ``metadata.create_all`` (idempotent; no migrations yet). SQLite is the default
(``settings.database.url``; a relative SQLite path is placed under ``settings.home``); PostgreSQL by URL.

A snapshot is written in ONE transaction: the new fills, the orders that changed, the portfolio and risk
state, and the new audit entries. So after a crash the database holds a consistent past state, and the fills
that happened after it are recovered from the venue by reconciliation (deduplicated by fill id).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from greekfire.core.db import db_error_reason, masked_url
from greekfire.core.errors import UnavailableError

metadata = MetaData()

state_table = Table(
    "trading_state", metadata,
    Column("engine_id", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("ts_ns", BigInteger, nullable=False),
    Column("data", JSON, nullable=False),
)
orders_table = Table(
    "trading_orders", metadata,
    Column("engine_id", String(64), primary_key=True),
    Column("client_id", String(128), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("data", JSON, nullable=False),
)
fills_table = Table(
    "trading_fills", metadata,
    Column("engine_id", String(64), primary_key=True),
    Column("fill_id", String(160), primary_key=True),  # unique: a second insert of a fill fails loudly
    Column("client_id", String(128), nullable=False),
    Column("instrument_id", Integer, nullable=False),
    Column("side", Integer, nullable=False),
    Column("qty", Integer, nullable=False),
    Column("price", Float, nullable=False),
    Column("fee", Float, nullable=False),
    Column("venue", String(64), nullable=False),
    Column("ts_ns", BigInteger, nullable=False),
)
audit_table = Table(
    "trading_audit", metadata,
    Column("engine_id", String(64), primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("ts_ns", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("ref", String(160), nullable=False),
    Column("data", JSON, nullable=False),
)


class SnapshotStore:
    """Reads and writes one engine's state. ``engine_id`` lets several engines share a database."""

    def __init__(self, url: str, engine_id: str = "paper", *, echo: bool = False) -> None:
        self.url = url
        self.engine_id = engine_id
        try:
            self.db: Engine = create_engine(url, echo=echo, future=True)
            metadata.create_all(self.db)
        except (SQLAlchemyError, ImportError) as exc:  # no server, bad URL, or its driver not installed
            reason = db_error_reason(exc)
            raise UnavailableError(masked_url(url), f"the database (database.url) cannot be opened: {reason}") from None
        self.snapshots = 0

    def save(
        self,
        ts_ns: int,
        state: dict[str, Any],
        orders: list[dict[str, Any]],
        fills: list[dict[str, Any]],
        audit: list[tuple[int, int, str, str, dict[str, Any]]],
    ) -> None:
        """Write one snapshot atomically: ``state`` key -> data, changed ``orders``, new ``fills`` and audit."""
        eid = self.engine_id
        with self.db.begin() as conn:
            if fills:
                conn.execute(insert(fills_table), [{"engine_id": eid, **f} for f in fills])
            if orders:
                ids = [o["client_id"] for o in orders]
                for i in range(0, len(ids), 500):
                    conn.execute(delete(orders_table).where(
                        orders_table.c.engine_id == eid, orders_table.c.client_id.in_(ids[i:i + 500])))
                conn.execute(insert(orders_table), [
                    {"engine_id": eid, "client_id": o["client_id"], "status": o["status"], "data": o} for o in orders
                ])
            if audit:
                conn.execute(insert(audit_table), [
                    {"engine_id": eid, "seq": s, "ts_ns": t, "kind": k, "ref": r, "data": d} for s, t, k, r, d in audit
                ])
            conn.execute(delete(state_table).where(state_table.c.engine_id == eid, state_table.c.key.in_(list(state))))
            conn.execute(insert(state_table), [
                {"engine_id": eid, "key": k, "ts_ns": ts_ns, "data": v} for k, v in state.items()
            ])
        self.snapshots += 1

    def load(self) -> dict[str, Any] | None:
        """The last snapshot: {'state': {...}, 'orders': [...], 'fill_ids': set, 'fills': [...]}; None if empty."""
        eid = self.engine_id
        with self.db.connect() as conn:
            state = {r.key: r.data for r in conn.execute(select(state_table).where(state_table.c.engine_id == eid))}
            if not state:
                return None
            orders = [r.data for r in conn.execute(select(orders_table).where(orders_table.c.engine_id == eid))]
            fills = [dict(r._mapping) for r in conn.execute(
                select(fills_table).where(fills_table.c.engine_id == eid).order_by(fills_table.c.ts_ns))]
        return {"state": state, "orders": orders, "fills": fills, "fill_ids": {f["fill_id"] for f in fills}}

    def fills(self) -> list[dict[str, Any]]:
        """Every stored fill of this engine, oldest first."""
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(fills_table).where(fills_table.c.engine_id == self.engine_id).order_by(fills_table.c.ts_ns))]

    def audit_entries(self, kind: str) -> list[dict[str, Any]]:
        """Stored audit entries of one ``kind`` (e.g. ``settlement``), oldest first: seq, ts_ns, ref, data."""
        with self.db.connect() as conn:
            rows = conn.execute(select(audit_table.c.seq, audit_table.c.ts_ns, audit_table.c.ref, audit_table.c.data)
                                .where(audit_table.c.engine_id == self.engine_id, audit_table.c.kind == kind)
                                .order_by(audit_table.c.seq))
            return [dict(r._mapping) for r in rows]

    def audit_count(self) -> int:
        with self.db.connect() as conn:
            return len(conn.execute(select(audit_table.c.seq).where(audit_table.c.engine_id == self.engine_id)).all())

    def clear(self) -> None:
        """Delete this engine's rows (tests and fresh paper runs)."""
        with self.db.begin() as conn:
            for t in (state_table, orders_table, fills_table, audit_table):
                conn.execute(delete(t).where(t.c.engine_id == self.engine_id))

    def close(self) -> None:
        self.db.dispose()
