"""The wheel's position database: accounts, runs, positions, lots, trades, option legs, transitions, snapshots.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wheel_accounts",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("starting_cash", sa.Float, nullable=False),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.Column("updated_ns", sa.BigInteger, nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
    )
    op.create_table(
        "wheel_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("account", sa.String(64), sa.ForeignKey("wheel_accounts.account"), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_ns", sa.BigInteger, nullable=False),
        sa.Column("ended_ns", sa.BigInteger, nullable=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("summary", sa.JSON, nullable=True),
    )
    op.create_table(
        "wheel_positions",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("instrument_id", sa.Integer, primary_key=True),
        sa.Column("instrument", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("strike", sa.Float, nullable=False),
        sa.Column("expiry_ns", sa.BigInteger, nullable=False),
        sa.Column("multiplier", sa.Float, nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("avg_cost", sa.Float, nullable=False),
        sa.Column("realized_pnl", sa.Float, nullable=False),
        sa.Column("fees", sa.Float, nullable=False),
        sa.Column("mark", sa.Float, nullable=True),
        sa.Column("updated_ns", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "wheel_lots",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("qty_open", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("realized_pnl", sa.Float, nullable=False),
        sa.Column("opened_ns", sa.BigInteger, nullable=False),
        sa.Column("closed_ns", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_wheel_lots_account_symbol", "wheel_lots", ["account", "symbol"])
    op.create_table(
        "wheel_trades",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("trade_id", sa.String(200), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("ts_ns", sa.BigInteger, nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("instrument", sa.String(64), nullable=False),
        sa.Column("instrument_id", sa.Integer, nullable=True),
        sa.Column("side", sa.Integer, nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("price", sa.Float, nullable=False),
        sa.Column("fee", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
    )
    op.create_index("ix_wheel_trades_account_symbol", "wheel_trades", ["account", "symbol"])
    op.create_table(
        "wheel_option_legs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("instrument", sa.String(64), nullable=False),
        sa.Column("instrument_id", sa.Integer, nullable=False),
        sa.Column("right", sa.String(1), nullable=False),
        sa.Column("strike", sa.Float, nullable=False),
        sa.Column("expiry_ns", sa.BigInteger, nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("premium", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("opened_ns", sa.BigInteger, nullable=False),
        sa.Column("closed_ns", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_wheel_option_legs_account_status", "wheel_option_legs", ["account", "status"])
    op.create_table(
        "wheel_transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("old", sa.String(16), nullable=False),
        sa.Column("new", sa.String(16), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("ts_ns", sa.BigInteger, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_wheel_transitions_account", "wheel_transitions", ["account", "id"])
    op.create_table(
        "wheel_snapshots",
        sa.Column("account", sa.String(64), primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("equity", sa.Float, nullable=False),
        sa.Column("cash", sa.Float, nullable=False),
        sa.Column("positions", sa.JSON, nullable=False),
        sa.Column("ts_ns", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for name in ("wheel_snapshots", "wheel_transitions", "wheel_option_legs", "wheel_trades", "wheel_lots",
                 "wheel_positions", "wheel_runs", "wheel_accounts"):
        op.drop_table(name)
