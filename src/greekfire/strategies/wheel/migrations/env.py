"""Alembic environment of the wheel's position database: run by :class:`greekfire.strategies.wheel.db.WheelDB`
on the connection it opened (``config.attributes["connection"]``), with its own version table so the database
may be shared with the trading engine's tables."""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic runner is supported
    raise RuntimeError("the wheel migrations run through WheelDB (greekfire.strategies.wheel.db), on its connection")
context.configure(connection=connection, target_metadata=None,
                  version_table=config.get_main_option("version_table") or "wheel_alembic_version")
with context.begin_transaction():
    context.run_migrations()
