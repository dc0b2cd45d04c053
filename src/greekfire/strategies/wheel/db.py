"""The wheel's position database (SQLAlchemy 2 + Alembic): accounts, runs, positions, share lots (cost basis),
trades, option legs, state transitions and daily snapshots.

:class:`WheelDB` opens a URL (``sqlite:///path`` by default, ``postgresql+psycopg://...``) and brings the
schema to the newest migration at once (Alembic ``upgrade head``, the migrations ship in the package, their
version in the table ``wheel_alembic_version``; every table is named ``wheel_*``, so the database may be the
trading engine's own). :meth:`WheelDB.journal` gives the strategy its :class:`SqlJournal` (the wheel's
``Journal`` protocol); the paper runner records the engine's fills and settlements (each once, by id) and
the positions; the read side (:meth:`WheelDB.positions`, :meth:`~WheelDB.states`, :meth:`~WheelDB.transitions`,
:meth:`~WheelDB.equity`, :meth:`~WheelDB.performance`, :meth:`~WheelDB.runs`) returns plain JSON-ready data
for the dashboard. Money in currency, prices per share, times in ns since the epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Date,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from greekfire.core.db import db_error_reason, masked_url, resolve_url
from greekfire.core.errors import UnavailableError
from greekfire.strategies.wheel.state import Transition, WheelState

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "wheel_alembic_version"
DEFAULT_URL = "sqlite:///.greekfire/wheel.db"

_md = MetaData()  # the tables as the migrations leave them (queries only: the schema comes from Alembic)
accounts = Table("wheel_accounts", _md, Column("account", String(64), primary_key=True),
                 Column("starting_cash", Float), Column("created_ns", BigInteger), Column("updated_ns", BigInteger),
                 Column("state", JSON))
runs = Table("wheel_runs", _md, Column("run_id", String(64), primary_key=True), Column("account", String(64)),
             Column("mode", String(16)), Column("status", String(16)), Column("started_ns", BigInteger),
             Column("ended_ns", BigInteger), Column("config", JSON), Column("summary", JSON))
positions = Table("wheel_positions", _md, Column("account", String(64), primary_key=True),
                  Column("instrument_id", Integer, primary_key=True), Column("instrument", String(64)),
                  Column("symbol", String(32)), Column("kind", String(8)), Column("strike", Float),
                  Column("expiry_ns", BigInteger), Column("multiplier", Float), Column("qty", Integer),
                  Column("avg_cost", Float), Column("realized_pnl", Float), Column("fees", Float),
                  Column("mark", Float), Column("updated_ns", BigInteger))
lots = Table("wheel_lots", _md, Column("id", Integer, primary_key=True, autoincrement=True),
             Column("account", String(64)), Column("symbol", String(32)), Column("qty", Integer),
             Column("qty_open", Integer), Column("cost", Float), Column("realized_pnl", Float),
             Column("opened_ns", BigInteger), Column("closed_ns", BigInteger))
trades = Table("wheel_trades", _md, Column("account", String(64), primary_key=True),
               Column("trade_id", String(200), primary_key=True), Column("run_id", String(64)),
               Column("source", String(16)), Column("ts_ns", BigInteger), Column("symbol", String(32)),
               Column("instrument", String(64)), Column("instrument_id", Integer), Column("side", Integer),
               Column("qty", Integer), Column("price", Float), Column("fee", Float), Column("kind", String(16)))
legs = Table("wheel_option_legs", _md, Column("id", Integer, primary_key=True, autoincrement=True),
             Column("account", String(64)), Column("symbol", String(32)), Column("instrument", String(64)),
             Column("instrument_id", Integer), Column("right", String(1)), Column("strike", Float),
             Column("expiry_ns", BigInteger), Column("qty", Integer), Column("premium", Float),
             Column("status", String(16)), Column("opened_ns", BigInteger), Column("closed_ns", BigInteger))
transitions = Table("wheel_transitions", _md, Column("id", Integer, primary_key=True, autoincrement=True),
                    Column("account", String(64)), Column("run_id", String(64)), Column("symbol", String(32)),
                    Column("old", String(16)), Column("new", String(16)), Column("event", String(32)),
                    Column("reason", String(500)), Column("ts_ns", BigInteger), Column("data", JSON))
snapshots = Table("wheel_snapshots", _md, Column("account", String(64), primary_key=True),
                  Column("day", Date, primary_key=True), Column("equity", Float), Column("cash", Float),
                  Column("positions", JSON), Column("ts_ns", BigInteger))


def _json(value: Any) -> Any:
    """``value`` with every key a string and every leaf JSON-serialisable (enums and dates as text)."""
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class WheelDB:
    """The position database at ``url`` (a relative SQLite path is put under ``home`` when given), for one
    ``account``. Opening it applies the migrations; UnavailableError (naming the URL, password masked) when
    the server or the file cannot be used."""

    def __init__(self, url: str = DEFAULT_URL, *, account: str = "paper", home: Path | None = None,
                 echo: bool = False) -> None:
        self.url = resolve_url(url, home) if home is not None else url
        self.account = account
        try:
            self.db: Engine = create_engine(self.url, echo=echo)
            self.migrate()
        except (SQLAlchemyError, ImportError, OSError) as exc:
            raise UnavailableError(masked_url(self.url),
                                   f"the wheel database cannot be opened: {db_error_reason(exc)}") from None
        except CommandError as exc:  # a schema newer than this version's migrations (or a broken history)
            raise UnavailableError(masked_url(self.url), f"the wheel database's schema is not one this version "
                                   f"knows ({exc}): upgrade greekfire, or use another database") from None

    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic ``upgrade head``; nothing when it is there)."""
        logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines say each step of every open
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.set_main_option("version_table", VERSION_TABLE)
        with self.db.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        """The schema's migration revision (None before any)."""
        with self.db.connect() as conn:
            row = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").first()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self.db.dispose()

    # ---------------------------------------------------------------- accounts and runs
    def ensure_account(self, starting_cash: float) -> dict[str, Any]:
        """The account's row, made with ``starting_cash`` (currency) the first time."""
        with self.db.begin() as conn:
            row = conn.execute(select(accounts).where(accounts.c.account == self.account)).first()
            if row is None:
                now = time.time_ns()
                conn.execute(insert(accounts).values(account=self.account, starting_cash=float(starting_cash),
                                                     created_ns=now, updated_ns=now, state={}))
                return {"account": self.account, "starting_cash": float(starting_cash), "state": {}}
            return dict(row._mapping)

    def account_state(self) -> dict[str, Any]:
        """What a runner keeps between restarts (its clock, its market), as it last saved it."""
        with self.db.connect() as conn:
            row = conn.execute(select(accounts.c.state).where(accounts.c.account == self.account)).first()
        return dict(row[0] or {}) if row is not None else {}

    def save_account_state(self, state: dict[str, Any]) -> None:
        with self.db.begin() as conn:
            conn.execute(update(accounts).where(accounts.c.account == self.account)
                         .values(state=_json(state), updated_ns=time.time_ns()))

    def start_run(self, run_id: str, mode: str, config: dict[str, Any]) -> None:
        """Record a run (``mode``: paper, backtest) of this account as running."""
        with self.db.begin() as conn:
            conn.execute(insert(runs).values(run_id=run_id, account=self.account, mode=mode, status="running",
                                             started_ns=time.time_ns(), config=_json(config)))

    def end_run(self, run_id: str, status: str = "finished", summary: dict[str, Any] | None = None) -> None:
        with self.db.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id)
                         .values(status=status, ended_ns=time.time_ns(), summary=_json(summary or {})))

    def interrupt_runs(self) -> list[str]:
        """Mark the account's runs still recorded as running (a process killed before it could say) as
        ``interrupted``; returns their ids. Call before starting a new run of the account."""
        with self.db.begin() as conn:
            ids = list(conn.execute(select(runs.c.run_id).where(runs.c.account == self.account,
                                                                runs.c.status == "running")).scalars())
            if ids:
                conn.execute(update(runs).where(runs.c.run_id.in_(ids)).values(status="interrupted"))
        return ids

    def clear(self) -> None:
        """Delete every row of this account (a fresh start)."""
        with self.db.begin() as conn:
            for t in (snapshots, transitions, legs, trades, lots, positions, runs, accounts):
                conn.execute(delete(t).where(t.c.account == self.account))

    def journal(self, run_id: str, *, multiplier: float = 100.0) -> SqlJournal:
        """The strategy's journal for ``run_id`` (option premiums counted at ``multiplier`` shares a contract)."""
        return SqlJournal(self, run_id, multiplier=multiplier)

    # ---------------------------------------------------------------- what the runner records
    def record_trades(self, run_id: str, rows: Iterable[dict[str, Any]], source: str) -> int:
        """Insert each trade (a dict with ``trade_id`` and the trade columns) unless its id is already stored;
        returns how many were new. An engine fill's id is its fill id; a settlement's ``settle:<id>:<ts>``."""
        rows = list(rows)
        if not rows:
            return 0
        with self.db.begin() as conn:
            ids = [r["trade_id"] for r in rows]
            have: set[str] = set()
            for i in range(0, len(ids), 500):
                have.update(conn.execute(select(trades.c.trade_id).where(
                    trades.c.account == self.account, trades.c.trade_id.in_(ids[i:i + 500]))).scalars())
            new = [{"account": self.account, "run_id": run_id, "source": source, **r}
                   for r in rows if r["trade_id"] not in have]
            new = list({r["trade_id"]: r for r in new}.values())
            if new:
                conn.execute(insert(trades), new)
        return len(new)

    def set_positions(self, rows: list[dict[str, Any]], now_ns: int) -> None:
        """Replace the account's positions with ``rows`` (the engine's, one per instrument held) and keep the
        option legs in step: a new short or long option opens a leg, a leg whose position is gone is closed
        with ``status`` = the last settlement kind of that instrument, else ``closed``."""
        held = {r["instrument_id"]: r for r in rows if r["qty"]}
        with self.db.begin() as conn:
            conn.execute(delete(positions).where(positions.c.account == self.account))
            if held:
                conn.execute(insert(positions), [
                    {"account": self.account, "updated_ns": now_ns, **r} for r in held.values()])
            keep: set[int] = set()
            for leg in conn.execute(select(legs).where(legs.c.account == self.account, legs.c.status == "open")).all():
                cur = held.get(leg.instrument_id)
                if cur is not None and cur["qty"] == leg.qty:
                    keep.add(leg.instrument_id)
                    continue
                status = "closed"
                if cur is None:
                    status = conn.execute(select(trades.c.kind).where(
                        trades.c.account == self.account, trades.c.instrument_id == leg.instrument_id,
                        trades.c.source == "settlement", trades.c.ts_ns >= leg.opened_ns,
                    ).order_by(trades.c.ts_ns.desc())).scalar() or "closed"
                conn.execute(update(legs).where(legs.c.id == leg.id).values(status=status, closed_ns=now_ns))
            for iid, r in held.items():
                if r["kind"] == "stock" or iid in keep:
                    continue
                conn.execute(insert(legs).values(
                    account=self.account, symbol=r["symbol"], instrument=r["instrument"], instrument_id=iid,
                    right="C" if r["kind"] == "call" else "P", strike=r["strike"], expiry_ns=r["expiry_ns"],
                    qty=r["qty"], premium=r["avg_cost"], status="open", opened_ns=now_ns))

    # ---------------------------------------------------------------- read side (dashboard, CLI, tests)
    def positions(self) -> list[dict[str, Any]]:
        """Open positions: instrument, symbol, kind (stock/put/call), strike, expiry_ns, qty, avg_cost, mark,
        market_value and unrealized P&L (currency), realized P&L and fees (currency)."""
        with self.db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(
                select(positions).where(positions.c.account == self.account).order_by(positions.c.instrument_id))]
        for r in rows:
            r.pop("account", None)
            mark = r["mark"] if r["mark"] is not None else r["avg_cost"]
            r["market_value"] = r["qty"] * mark * r["multiplier"]
            r["unrealized_pnl"] = (mark - r["avg_cost"]) * r["qty"] * r["multiplier"]
        return rows

    def trades(self, source: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Trades, oldest first (``source``: fill, settlement or strategy; all when None)."""
        q = select(trades).where(trades.c.account == self.account)
        if source:
            q = q.where(trades.c.source == source)
        q = q.order_by(trades.c.ts_ns, trades.c.trade_id)
        with self.db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        return rows[-limit:] if limit else rows

    def states(self) -> list[dict[str, Any]]:
        """Each underlying's state now: symbol, state, since_ns, event and reason of the transition into it."""
        last: dict[str, dict[str, Any]] = {}
        with self.db.connect() as conn:
            for r in conn.execute(select(transitions).where(transitions.c.account == self.account)
                                  .order_by(transitions.c.id)):
                last[r.symbol] = {"symbol": r.symbol, "state": r.new, "since_ns": r.ts_ns, "event": r.event,
                                  "reason": r.reason}
        return sorted(last.values(), key=lambda d: d["symbol"])

    def transitions(self, limit: int = 50) -> list[dict[str, Any]]:
        """The last ``limit`` transitions, newest first."""
        with self.db.connect() as conn:
            rows = conn.execute(select(transitions).where(transitions.c.account == self.account)
                                .order_by(transitions.c.id.desc()).limit(limit))
            return [{k: v for k, v in r._mapping.items() if k != "account"} for r in rows]

    def equity(self) -> list[dict[str, Any]]:
        """Daily snapshots, oldest first: date (ISO), equity and cash (currency)."""
        with self.db.connect() as conn:
            rows = conn.execute(select(snapshots.c.day, snapshots.c.equity, snapshots.c.cash)
                                .where(snapshots.c.account == self.account).order_by(snapshots.c.day))
            return [{"date": r.day.isoformat(), "equity": r.equity, "cash": r.cash} for r in rows]

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the account, newest first."""
        with self.db.connect() as conn:
            rows = conn.execute(select(runs).where(runs.c.account == self.account).order_by(runs.c.started_ns.desc()))
            return [dict(r._mapping) for r in rows]

    def lots(self, symbol: str | None = None, open_only: bool = True) -> list[dict[str, Any]]:
        """Share lots (FIFO order): symbol, qty, qty_open, cost (per share), realized_pnl, opened_ns, closed_ns."""
        q = select(lots).where(lots.c.account == self.account)
        if symbol:
            q = q.where(lots.c.symbol == symbol)
        if open_only:
            q = q.where(lots.c.qty_open != 0)
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(lots.c.id))]

    def option_legs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Option legs, oldest first (``status``: open, closed, expired, assigned, exercised; all when None)."""
        q = select(legs).where(legs.c.account == self.account)
        if status:
            q = q.where(legs.c.status == status)
        with self.db.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q.order_by(legs.c.id))]

    def premium(self, symbol: str | None = None, multiplier: float = 100.0) -> float:
        """Premium collected, net of premium paid and fees (currency), from the strategy's option trades."""
        q = select(trades).where(trades.c.account == self.account, trades.c.source == "strategy",
                                 trades.c.instrument != trades.c.symbol)
        if symbol:
            q = q.where(trades.c.symbol == symbol)
        with self.db.connect() as conn:
            return float(sum(-r.side * r.qty * r.price * multiplier - r.fee for r in conn.execute(q)))

    def performance(self) -> dict[str, Any]:
        """Headline figures: starting_cash, equity and cash (last snapshot), total_return (fraction),
        max_drawdown (fraction, <= 0), realized and unrealized P&L and fees (positions, currency), premium
        (currency), trades, assignments, expiries, days."""
        with self.db.connect() as conn:
            acct = conn.execute(select(accounts.c.starting_cash).where(accounts.c.account == self.account)).scalar()
        eq = self.equity()
        pos = self.positions()
        start = float(acct or 0.0)
        peak, mdd = -float("inf"), 0.0
        for e in eq:
            peak = max(peak, e["equity"])
            if peak > 0:
                mdd = min(mdd, e["equity"] / peak - 1.0)
        settled = self.trades("settlement")
        with self.db.connect() as conn:
            realized = conn.execute(select(positions.c.realized_pnl, positions.c.fees)
                                    .where(positions.c.account == self.account)).all()
        last = eq[-1] if eq else None
        return {
            "starting_cash": start, "equity": last["equity"] if last else start,
            "cash": last["cash"] if last else start,
            "total_return": (last["equity"] / start - 1.0) if last and start else 0.0, "max_drawdown": mdd,
            "realized_pnl": sum(r[0] for r in realized), "fees": sum(r[1] for r in realized),
            "unrealized_pnl": sum(p["unrealized_pnl"] for p in pos), "premium": self.premium(),
            "trades": len(self.trades("fill")),
            "assignments": sum(1 for f in settled if f["kind"] in ("assigned", "exercised")),
            "expiries": sum(1 for f in settled if f["kind"] == "expired"), "days": len(eq),
        }


class SqlJournal:
    """The wheel's journal in the database (the ``Journal`` protocol of ``wheel.journal``): every write is
    its own transaction, so what was journaled survives a crash."""

    def __init__(self, db: WheelDB, run_id: str, *, multiplier: float = 100.0) -> None:
        self.db, self.run_id, self.multiplier, self.account = db, run_id, multiplier, db.account
        self._seq = 0

    def _begin(self) -> Any:
        return self.db.db.begin()

    def transition(self, t: Transition) -> None:
        """Persist one state change with its reason."""
        with self._begin() as conn:
            conn.execute(insert(transitions).values(
                account=self.account, run_id=self.run_id, symbol=t.symbol, old=str(t.old.value), new=str(t.new.value),
                event=t.event, reason=t.reason[:500], ts_ns=int(t.ts_ns), data=_json(dict(t.data or {}))))

    def trade(self, run_id: str, ts_ns: int, symbol: str, instrument: str, side: int, qty: int,
              price: float, fee: float, kind: str) -> None:
        """One trade as the strategy saw it (``kind``: open, close, roll, assignment, expiry, stop); side +1
        buy / -1 sell, qty contracts or shares, price per share, fee in currency."""
        self._seq += 1
        tid = f"{run_id or self.run_id}:{ts_ns}:{instrument}:{side}:{qty}:{kind}:{self._seq}"
        self.db.record_trades(run_id or self.run_id, [{
            "trade_id": tid, "ts_ns": int(ts_ns), "symbol": symbol, "instrument": instrument, "instrument_id": None,
            "side": int(side), "qty": int(qty), "price": float(price), "fee": float(fee), "kind": kind,
        }], "strategy")

    def lots(self, symbol: str) -> list[tuple[int, float]]:
        """Open share lots of ``symbol``, oldest first: (shares, cost per share)."""
        return [(r["qty_open"], r["cost"]) for r in self.db.lots(symbol)]

    def add_lot(self, symbol: str, qty: int, cost: float, ts_ns: int) -> None:
        """``qty`` > 0 opens a lot at ``cost`` per share; ``qty`` < 0 takes shares out of the oldest lots
        first (FIFO), ``cost`` then being the price they left at (the lots keep the realized P&L)."""
        with self._begin() as conn:
            if qty > 0:
                conn.execute(insert(lots).values(account=self.account, symbol=symbol, qty=int(qty), qty_open=int(qty),
                                                 cost=float(cost), realized_pnl=0.0, opened_ns=int(ts_ns)))
                return
            _take_fifo(conn, self.account, symbol, -int(qty), float(cost), int(ts_ns))

    def premium(self, symbol: str | None = None) -> float:
        """Premium collected, net (currency)."""
        return self.db.premium(symbol, self.multiplier)

    def states(self) -> dict[str, WheelState]:
        """The last state of each underlying."""
        return {d["symbol"]: WheelState(d["state"]) for d in self.db.states()}

    def snapshot(self, day: date, equity: float, cash: float, positions: dict[str, Any]) -> None:
        """The day's account value and cash (currency) and positions; a second one for the same day replaces it."""
        with self._begin() as conn:
            conn.execute(delete(snapshots).where(snapshots.c.account == self.account, snapshots.c.day == day))
            conn.execute(insert(snapshots).values(account=self.account, day=day, equity=float(equity),
                                                  cash=float(cash), positions=_json(positions), ts_ns=time.time_ns()))

    def open_legs(self, symbol: str) -> list[dict[str, Any]]:
        """Open option legs of ``symbol``: id, instrument, right, strike, expiry_ns, qty, premium (per share)."""
        keys = ("id", "instrument", "right", "strike", "expiry_ns", "qty", "premium")
        return [{k: r[k] for k in keys} for r in self.db.option_legs("open") if r["symbol"] == symbol]


def _take_fifo(conn: Connection, account: str, symbol: str, qty: int, price: float, ts_ns: int) -> None:
    """Take ``qty`` shares out of the oldest open lots of ``symbol`` at ``price``; more than is held opens a
    negative (short) lot with the rest."""
    rows = conn.execute(select(lots).where(lots.c.account == account, lots.c.symbol == symbol, lots.c.qty_open > 0)
                        .order_by(lots.c.id)).all()
    left = qty
    for r in rows:
        if left <= 0:
            break
        take = min(left, r.qty_open)
        rest = r.qty_open - take
        conn.execute(update(lots).where(lots.c.id == r.id).values(
            qty_open=rest, realized_pnl=r.realized_pnl + (price - r.cost) * take,
            closed_ns=ts_ns if rest == 0 else None))
        left -= take
    if left > 0:
        conn.execute(insert(lots).values(account=account, symbol=symbol, qty=-left, qty_open=-left, cost=price,
                                         realized_pnl=0.0, opened_ns=ts_ns))
