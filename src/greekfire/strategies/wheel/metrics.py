"""Prometheus metrics of the wheel, on the process registry of :mod:`greekfire.core.metrics`.

Two kinds of writer:

* the process that RUNS the strategy (a paper run) counts events as they happen: :func:`record_transition`,
  :func:`record_denial`, :func:`record_reconcile`, :func:`record_cycle` (or wraps its journal in
  :class:`MeteredJournal`, which counts every transition it writes);
* any process that READS the position database (the dashboard server) sets the book's gauges from it with
  :func:`update_from_db` (positions, premium, P&L, equity, drawdown, state per underlying, next expiry, last
  snapshot), so ``/metrics`` of ``greekfire serve wheel`` shows the book of a run in another process.

Metrics (currency amounts in the account's currency; timestamps in seconds since the epoch)::

    greekfire_wheel_positions{symbol,right}            gauge   shares (right="shares") or option contracts,
                                                               signed (a short put is -1 per contract)
    greekfire_wheel_premium_collected{symbol}          gauge   net premium collected so far (sold - bought back)
    greekfire_wheel_pnl{kind}                          gauge   kind = realized | unrealized
    greekfire_wheel_equity                             gauge   account value at the last snapshot
    greekfire_wheel_drawdown                           gauge   fraction below the equity peak (0.25 = 25% down)
    greekfire_wheel_state{symbol,state}                gauge   1 for the underlying's current state, 0 otherwise
    greekfire_wheel_state_since_timestamp_seconds{symbol}  gauge  when the current state began
    greekfire_wheel_next_expiry_timestamp_seconds{symbol}  gauge  earliest expiry of the open option legs
    greekfire_wheel_last_snapshot_timestamp_seconds    gauge   the newest daily snapshot (its day, 00:00 UTC)
    greekfire_wheel_transitions_total{event}           counter state machine transitions by event
    greekfire_wheel_denials_total{reason}              counter orders the risk checks refused, by reason
    greekfire_wheel_reconcile_mismatches_total{symbol} counter state machine vs positions repaired
    greekfire_wheel_cycles_total                       counter daily cycles run
    greekfire_wheel_last_cycle_timestamp_seconds       gauge   when the last cycle ran
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from greekfire.core.metrics import counter, gauge

STATES = ("CASH", "SHORT_PUT", "SHARES", "SHORT_CALL")
"""The states of an underlying's state machine (the values of the ``state`` label)."""

POSITIONS = gauge("greekfire_wheel_positions", "wheel positions: shares or option contracts (signed)", ["symbol", "right"])
PREMIUM = gauge("greekfire_wheel_premium_collected", "wheel net premium collected, currency", ["symbol"])
PNL = gauge("greekfire_wheel_pnl", "wheel P&L, currency", ["kind"])
EQUITY = gauge("greekfire_wheel_equity", "wheel account value at the last snapshot, currency")
DRAWDOWN = gauge("greekfire_wheel_drawdown", "wheel equity below its peak, fraction (0.25 = 25% down)")
STATE = gauge("greekfire_wheel_state", "1 for the underlying's current wheel state, 0 otherwise", ["symbol", "state"])
STATE_SINCE = gauge("greekfire_wheel_state_since_timestamp_seconds", "when the underlying's current state began",
                    ["symbol"])
NEXT_EXPIRY = gauge("greekfire_wheel_next_expiry_timestamp_seconds", "earliest expiry of the underlying's open legs",
                    ["symbol"])
LAST_SNAPSHOT = gauge("greekfire_wheel_last_snapshot_timestamp_seconds", "day of the newest daily snapshot (00:00 UTC)")
TRANSITIONS = counter("greekfire_wheel_transitions", "wheel state machine transitions", ["event"])
DENIALS = counter("greekfire_wheel_denials", "wheel orders refused by the risk checks", ["reason"])
RECONCILE = counter("greekfire_wheel_reconcile_mismatches", "wheel state vs positions mismatches repaired", ["symbol"])
CYCLES = counter("greekfire_wheel_cycles", "wheel daily cycles run")
LAST_CYCLE = gauge("greekfire_wheel_last_cycle_timestamp_seconds", "when the last wheel cycle ran")


# ------------------------------------------------------------------------------------------ events
def record_transition(t: Any) -> None:
    """Count one transition (a :class:`~greekfire.strategies.wheel.state.Transition` or a dict with ``event``,
    ``symbol``, ``new``, ``ts_ns``) and set its underlying's state gauges."""
    get = t.get if isinstance(t, Mapping) else lambda k, d=None: getattr(t, k, d)
    TRANSITIONS.labels(str(get("event", "unknown"))).inc()
    symbol, new = get("symbol"), get("new")
    if symbol is not None and new is not None:
        _set_state(str(symbol), str(new), get("ts_ns"))


def record_denial(reason: str) -> None:
    """Count one order the risk checks refused (``reason``: the risk code, e.g. ``MAX_NOTIONAL``)."""
    DENIALS.labels(reason or "unknown").inc()


def record_reconcile(mismatches: Iterable[str], symbol: str | None = None) -> None:
    """Count the mismatches a reconciliation repaired (the list ``WheelStrategy.reconcile`` returns). Each is
    counted under ``symbol``, or under the first word of the message when ``symbol`` is None."""
    for m in mismatches:
        RECONCILE.labels(symbol or (str(m).split(maxsplit=1) or ["?"])[0].rstrip(":")).inc()


def start_run(symbols: Iterable[str]) -> None:
    """A paper run starts: its counters' series exist from now at 0 (denials for every risk reason code,
    reconcile mismatches for every traded symbol), so ``increase()`` sees their first event."""
    from greekfire.trading.denials import Reason

    for reason in Reason:
        DENIALS.labels(str(reason))
    for symbol in symbols:
        RECONCILE.labels(str(symbol))
    CYCLES.inc(0)


def record_cycle(now_ns: int) -> None:
    """Count one daily cycle run at ``now_ns`` (ns since the epoch)."""
    CYCLES.inc()
    LAST_CYCLE.set(now_ns / 1e9)


def _set_state(symbol: str, state: str, since_ns: Any = None) -> None:
    for s in STATES if state in STATES else (*STATES, state):
        STATE.labels(symbol, s).set(1.0 if s == state else 0.0)
    if isinstance(since_ns, int | float) and since_ns > 0:
        STATE_SINCE.labels(symbol).set(since_ns / 1e9)


class MeteredJournal:
    """A journal that counts every transition in :data:`TRANSITIONS` and writes everything through to
    ``inner`` (any :class:`~greekfire.strategies.wheel.journal.Journal`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def transition(self, t: Any) -> None:
        """Write ``t`` to the inner journal, then count it."""
        self.inner.transition(t)
        record_transition(t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ------------------------------------------------------------------------------------------ the book
def _right(row: Mapping[str, Any]) -> str:
    r = str(row.get("right") or row.get("kind") or "").strip().lower()
    if r in ("p", "put"):
        return "put"
    if r in ("c", "call"):
        return "call"
    return "shares"


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _day_seconds(d: Any) -> float | None:
    if isinstance(d, datetime):
        return d.timestamp() if d.tzinfo else d.replace(tzinfo=UTC).timestamp()
    if isinstance(d, date):
        return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
    if isinstance(d, str):
        try:
            return _day_seconds(date.fromisoformat(d[:10]))
        except ValueError:
            return None
    return None


def set_book(positions: list[dict[str, Any]], states: list[dict[str, Any]], equity: list[dict[str, Any]],
             performance: Mapping[str, Any]) -> None:
    """Set the book's gauges from the database's read side (rows as ``WheelDB`` returns them): positions
    (``symbol``, ``right`` P/C or None for shares, ``qty``, optional ``expiry_ns``/``expiry``), states
    (``symbol``, ``state``, ``since_ns``), daily equity (``date``, ``equity``) and performance
    (``premium_collected`` or ``premium``, per symbol in ``premium_by_symbol``, ``realized_pnl``,
    ``unrealized_pnl``). A position gone since the last call is set to 0, not left at its old value."""
    seen: dict[tuple[str, str], float] = {}
    expiry: dict[str, float] = {}
    for p in positions:
        sym = str(p.get("symbol", "?"))
        key = (sym, _right(p))
        seen[key] = seen.get(key, 0.0) + (_num(p.get("qty")) or 0.0)
        exp = _num(p.get("expiry_ns"))
        exp_s = exp / 1e9 if exp else _day_seconds(p.get("expiry"))
        if key[1] != "shares" and exp_s:
            expiry[sym] = min(expiry.get(sym, math.inf), exp_s)
    for labels in _labels(POSITIONS):
        if labels not in seen:
            POSITIONS.labels(*labels).set(0.0)
    for (sym, right), qty in seen.items():
        POSITIONS.labels(sym, right).set(qty)
    for (sym,) in _labels(NEXT_EXPIRY):
        if sym not in expiry:
            NEXT_EXPIRY.remove(sym)
    for sym, t in expiry.items():
        NEXT_EXPIRY.labels(sym).set(t)
    for s in states:
        if s.get("symbol") is not None and s.get("state") is not None:
            _set_state(str(s["symbol"]), str(s["state"]), s.get("since_ns", s.get("ts_ns")))
    values = [v for v in (_num(r.get("equity")) for r in equity) if v is not None]
    if values:
        EQUITY.set(values[-1])
        peak = max(values)
        DRAWDOWN.set(1.0 - values[-1] / peak if peak > 0 else 0.0)
        last_day = _day_seconds(equity[-1].get("date"))
        if last_day is not None:
            LAST_SNAPSHOT.set(last_day)
    by_symbol = performance.get("premium_by_symbol")
    if isinstance(by_symbol, Mapping):
        for sym, v in by_symbol.items():
            if _num(v) is not None:
                PREMIUM.labels(str(sym)).set(_num(v) or 0.0)
    else:
        total = _num(performance.get("premium_collected", performance.get("premium")))
        if total is not None:
            PREMIUM.labels("ALL").set(total)
    for kind in ("realized", "unrealized"):
        v = _num(performance.get(f"{kind}_pnl"))
        if v is not None:
            PNL.labels(kind).set(v)


def _labels(metric: Any) -> list[tuple[str, ...]]:
    """The label values a labelled metric has children for."""
    return list(metric._metrics.keys())  # prometheus_client keeps no public list of children


def update_from_db(db: Any) -> None:
    """:func:`set_book` from a ``WheelDB``'s read side (blocking: the database)."""
    set_book(db.positions(), db.states(), db.equity(), db.performance())
