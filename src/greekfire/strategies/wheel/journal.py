"""Where the wheel writes what it does: the :class:`Journal` protocol and :class:`MemoryJournal`.

Every state change goes in with its reason (:meth:`Journal.transition`), every trade with its kind, share
lots with their cost, daily snapshots of the account. The strategy reads back its last states, its open
option legs and its lots after a restart. The database journal (``wheel.db``) implements the same protocol.

Conventions: ``instrument`` is the instrument's symbol (``"SPY 20240119 450P"`` for an option, as
:func:`greekfire.trading.model.option` writes it; the underlying's symbol for shares); ``side`` +1 buy / -1
sell; ``qty`` contracts or shares (> 0); ``price`` currency per share; ``fee`` currency. Premium is
``-side x qty x price x multiplier - fee`` summed over option trades (net of buy-backs and fees).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol, runtime_checkable

from greekfire.strategies.wheel.state import Transition, WheelState

TRADE_KINDS = ("open", "close", "roll", "assignment", "expiry", "stop")
_OPTION = re.compile(r"^(?P<und>.+) (?P<ymd>\d{8}) (?P<strike>[0-9.eE+-]+)(?P<right>[CP])$")


@runtime_checkable
class Journal(Protocol):
    """What the wheel persists and reads back (units in the module doc)."""

    def transition(self, t: Transition) -> None:
        """Record one state change with its reason."""

    def trade(self, run_id: str, ts_ns: int, symbol: str, instrument: str, side: int, qty: int,
              price: float, fee: float, kind: str) -> None:
        """Record one trade; ``kind`` is open, close, roll, assignment, expiry or stop."""

    def lots(self, symbol: str) -> list[tuple[int, float]]:
        """Open share lots of ``symbol``, oldest first: (shares, cost per share)."""

    def add_lot(self, symbol: str, qty: int, cost: float, ts_ns: int) -> None:
        """Add a lot of ``qty`` shares at ``cost`` per share; a negative ``qty`` removes shares FIFO."""

    def premium(self, symbol: str | None = None) -> float:
        """Net premium collected (currency), of one symbol or all."""

    def states(self) -> dict[str, WheelState]:
        """The last state of each symbol."""

    def snapshot(self, day: date, equity: float, cash: float, positions: dict[str, Any]) -> None:
        """Record the account at the end of ``day`` (currency)."""

    def open_legs(self, symbol: str) -> list[dict[str, Any]]:
        """Open option legs of ``symbol``: dicts with id (the instrument symbol), right (+1/-1), strike,
        expiry_ns (the expiry date, 00:00 UTC), qty (signed contracts) and premium (currency per share, the
        average opening price)."""


def parse_option(instrument: str) -> tuple[str, float, float, int] | None:
    """``(underlying, right, strike, expiry_ns)`` of an option symbol, None for anything else."""
    m = _OPTION.match(instrument)
    if m is None:
        return None
    day = datetime.strptime(m["ymd"], "%Y%m%d").replace(tzinfo=UTC)
    return m["und"], 1.0 if m["right"] == "C" else -1.0, float(m["strike"]), int(day.timestamp()) * 10**9


@dataclass(slots=True)
class _Leg:
    symbol: str
    right: float
    strike: float
    expiry_ns: int
    qty: int = 0
    premium: float = 0.0


class MemoryJournal:
    """A :class:`Journal` in memory (backtests, tests); ``multiplier`` is the contract size behind
    :meth:`premium`. Its lists (``transitions``, ``trades``, ``snapshots``) may be read directly."""

    def __init__(self, multiplier: float = 100.0) -> None:
        self.multiplier = multiplier
        self.transitions: list[Transition] = []
        self.trades: list[dict[str, Any]] = []
        self.snapshots: list[dict[str, Any]] = []
        self._lots: dict[str, list[list[float]]] = defaultdict(list)
        self._legs: dict[str, _Leg] = {}
        self._premium: dict[str, float] = defaultdict(float)
        self._states: dict[str, WheelState] = {}

    def transition(self, t: Transition) -> None:
        self.transitions.append(t)
        self._states[t.symbol] = t.new

    def trade(self, run_id: str, ts_ns: int, symbol: str, instrument: str, side: int, qty: int,
              price: float, fee: float, kind: str) -> None:
        if kind not in TRADE_KINDS:
            raise ValueError(f"trade kind {kind!r}: one of {', '.join(TRADE_KINDS)}")
        self.trades.append({"run_id": run_id, "ts_ns": ts_ns, "symbol": symbol, "instrument": instrument,
                            "side": int(side), "qty": int(qty), "price": float(price), "fee": float(fee),
                            "kind": kind})
        opt = parse_option(instrument)
        if opt is None:
            return
        self._premium[symbol] += -side * qty * price * self.multiplier - fee
        leg = self._legs.get(instrument)
        if leg is None:
            leg = self._legs[instrument] = _Leg(symbol, opt[1], opt[2], opt[3])
        signed = int(side) * int(qty)
        if signed < 0 and leg.qty <= 0:  # adding to a short: average the opening price
            total = -leg.qty + qty
            leg.premium = (leg.premium * -leg.qty + price * qty) / total
        leg.qty += signed
        if leg.qty == 0:
            del self._legs[instrument]

    def lots(self, symbol: str) -> list[tuple[int, float]]:
        return [(int(q), c) for q, c in self._lots.get(symbol, [])]

    def add_lot(self, symbol: str, qty: int, cost: float, ts_ns: int) -> None:
        lots = self._lots[symbol]
        if qty >= 0:
            if qty:
                lots.append([qty, float(cost)])
            return
        left = -qty
        while left and lots:
            take = min(left, int(lots[0][0]))
            lots[0][0] -= take
            left -= take
            if lots[0][0] == 0:
                lots.pop(0)

    def premium(self, symbol: str | None = None) -> float:
        if symbol is None:
            return float(sum(self._premium.values()))
        return float(self._premium.get(symbol, 0.0))

    def states(self) -> dict[str, WheelState]:
        return dict(self._states)

    def snapshot(self, day: date, equity: float, cash: float, positions: dict[str, Any]) -> None:
        self.snapshots.append({"date": day, "equity": equity, "cash": cash, "positions": dict(positions)})

    def open_legs(self, symbol: str) -> list[dict[str, Any]]:
        return [{"id": k, "right": v.right, "strike": v.strike, "expiry_ns": v.expiry_ns, "qty": v.qty,
                 "premium": v.premium} for k, v in self._legs.items() if v.symbol == symbol]


def cost_basis(journal: Journal, symbol: str) -> float | None:
    """Average cost per share of ``symbol``'s open lots (None without shares)."""
    lots = journal.lots(symbol)
    n = sum(q for q, _ in lots)
    return sum(q * c for q, c in lots) / n if n > 0 else None
