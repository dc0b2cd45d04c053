"""Option expiry, exercise and assignment on the engine, and the traded volume of each instrument.

:class:`ExpirySettler` hears the engine's ``timers`` topic. At each tick it ends every option position of
the account whose expiry has come, by the underlying's spot at that moment:

- in the money by at least :attr:`SettlementRules.exercise_threshold` (currency per share): a long option
  is EXERCISED, a short one ASSIGNED; with the underlying traded on the engine, ``contracts x multiplier``
  shares move at the strike and cash follows (``-shares x strike``); without it the option is cash-settled
  at its intrinsic value;
- otherwise it EXPIRED: the option goes, nothing else moves (a short keeps its premium as realized P&L).

Before expiry, a short American option deep in the money may be assigned early (when the rules say the
options are American: ``early=True``), as :meth:`SettlementRules.early_reason` decides from its inputs (spot, strike, the option's mark, the next
ex-dividend date and amount): a call when the dividend going ex within ``call_dividend_days`` exceeds its
time value, a put when its time value is gone (at most ``put_time_value``).

Each settlement moves positions and cash through :meth:`Portfolio.settle`, cancels the option's open orders,
is written to the audit log (kind ``settlement``) and, with a store, snapshotted at once (so a restart never
settles twice), then published on the bus topic ``settlements`` as a
:class:`~greekfire.trading.model.Settlement` (strategies hear it in ``on_settlement``).

It also counts the volume of every print (``trades.*``) into ``engine.instrument_stats`` (units traded in
the current UTC day; open interest is left as the data source reports it, 0 here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from greekfire.trading.model import Instrument, InstrumentStats, Settlement, SettlementKind, TradeTick

if TYPE_CHECKING:
    from greekfire.trading.engine import TradingEngine

log = logging.getLogger(__name__)

NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True, slots=True)
class SettlementRules:
    """When an option is exercised at expiry and when a short American one is assigned before.

    ``exercise_threshold``: intrinsic value (currency per share) from which an option is exercised at expiry
    (0.01: the clearing house's automatic exercise); ``put_time_value``: a short put in the money whose time
    value (mark - intrinsic, currency per share) is at most this is assigned early; ``call_dividend_days``: a
    short call in the money is assigned early when an ex-dividend date falls within this many days (and the
    dividend exceeds its time value); ``min_moneyness``: "deep": intrinsic / strike at least this for an early
    assignment (0.02 = 2% in the money); ``early``: False turns early assignment off (European options).
    """

    exercise_threshold: float = 0.01
    put_time_value: float = 0.01
    call_dividend_days: float = 1.0
    min_moneyness: float = 0.0
    early: bool = True

    def intrinsic(self, inst: Instrument, spot: float) -> float:
        """Intrinsic value of one unit of ``inst`` at ``spot`` (currency per share, >= 0)."""
        return max(0.0, inst.right * (spot - inst.strike))

    def early_reason(
        self, inst: Instrument, spot: float, mark: float | None, now_ns: int,
        dividend: tuple[int, float] | None = None,
    ) -> str | None:
        """Why a SHORT position in ``inst`` (American) is assigned now, or None.

        ``mark``: the option's mid (currency per share; None when it has no two-sided quote: nothing is
        decided); ``dividend``: the next ex-dividend ``(ex_date_ns, cash per share)`` of the underlying."""
        if not self.early or mark is None or not inst.is_option or now_ns >= inst.expiry_ns:
            return None
        intrinsic = self.intrinsic(inst, spot)
        if intrinsic <= 0 or intrinsic / inst.strike < self.min_moneyness:
            return None
        time_value = mark - intrinsic
        if inst.right < 0:
            if time_value <= self.put_time_value:
                return (f"deep ITM put: spot {spot:.2f} < strike {inst.strike:g}, time value {time_value:.4f} "
                        f"<= {self.put_time_value:g}")
            return None
        if dividend is not None:
            ex_ns, amount = dividend
            if now_ns <= ex_ns <= now_ns + self.call_dividend_days * NS_PER_DAY and amount > time_value:
                day = datetime.fromtimestamp(ex_ns / 1e9, UTC).date().isoformat()
                return (f"deep ITM call before ex-dividend {day}: dividend {amount:g} > time value "
                        f"{time_value:.4f}")
        return None


class ExpirySettler:
    """Settles the account's option positions on ``engine`` (see the module text). ``dividends``: underlying
    -> ``[(ex_date_ns, cash per share), ...]`` for the early-assignment rule of calls.

    ``rules`` default to settlement at expiry only (``SettlementRules(early=False)``): an instrument does not
    say whether it is American, so a run that trades American options (the wheel's paper run) sets
    ``engine.expiry.rules`` with ``early=True``."""

    def __init__(self, engine: TradingEngine, rules: SettlementRules | None = None) -> None:
        self.engine = engine
        self.rules = rules or SettlementRules(early=False)
        self.dividends: dict[str, list[tuple[int, float]]] = {}
        self.settlements: list[Settlement] = []
        self._closed_books: set[int] = set()  # expired options whose open orders were canceled
        self._no_spot: set[str] = set()
        self._volume_day = -1
        engine.bus.subscribe("timers", self.on_timer, "expiry")
        engine.bus.subscribe("trades.*", self.on_trade, "stats")

    # ---------------------------------------------------------------- volume
    def on_trade(self, t: TradeTick) -> None:
        """Count a print's quantity into its instrument's volume of the day (UTC)."""
        stats = self.engine.instrument_stats
        day = t.ts_ns // NS_PER_DAY
        if day != self._volume_day:
            if self._volume_day >= 0:
                for iid, s in list(stats.items()):
                    stats[iid] = InstrumentStats(iid, s.open_interest, 0)
            self._volume_day = day
        old = stats.get(t.instrument_id)
        stats[t.instrument_id] = InstrumentStats(t.instrument_id, old.open_interest if old else 0,
                                                 (old.volume if old else 0) + t.qty)

    # ---------------------------------------------------------------- settlement
    def next_dividend(self, underlying: str, now_ns: int) -> tuple[int, float] | None:
        """The first ex-dividend ``(ex_date_ns, cash per share)`` of ``underlying`` at or after ``now_ns``."""
        future = [d for d in self.dividends.get(underlying, ()) if d[0] >= now_ns]
        return min(future) if future else None

    def on_timer(self, now_ns: int) -> None:
        """The engine's timer: settle what is due."""
        self.settle_due(now_ns)

    def settle_due(self, now_ns: int) -> list[Settlement]:
        """Settle every option position that expired by ``now_ns`` (ns since the epoch), and assign early the
        short ones the rules say; returns the settlements made."""
        eng = self.engine
        pf = eng.portfolio
        out: list[Settlement] = []
        for iid, pos in list(pf.positions.items()):
            if not pos.qty:
                continue
            inst = eng.instruments.get(iid)
            if inst is None or not inst.is_option:
                continue
            expired = inst.expiry_ns <= now_ns
            if not expired and pos.qty > 0:
                continue
            spot = pf.spots.get(inst.underlying)
            if spot is None:
                if expired and inst.underlying not in self._no_spot:
                    self._no_spot.add(inst.underlying)
                    log.warning("cannot settle %s: no spot of %s yet (retried every timer)", inst.symbol, inst.underlying)
                continue
            if expired:
                itm = self.rules.intrinsic(inst, spot) >= self.rules.exercise_threshold
                kind = (SettlementKind.EXPIRED if not itm else
                        SettlementKind.EXERCISED if pos.qty > 0 else SettlementKind.ASSIGNED)
                reason = f"expiry: spot {spot:.4f} vs strike {inst.strike:g}" + (" (in the money)" if itm else "")
                out.append(self._settle(inst, pos.qty, kind, spot, now_ns, reason, early=False))
            else:
                why = self.rules.early_reason(inst, spot, pf.marks.get(iid), now_ns,
                                              self.next_dividend(inst.underlying, now_ns))
                if why is not None:
                    out.append(self._settle(inst, pos.qty, SettlementKind.ASSIGNED, spot, now_ns, why, early=True))
        self._close_expired_books(now_ns)
        if out:
            eng.executions.risk_dirty = True
            if eng.store is not None:
                eng.snapshot(now_ns)  # the settlement and its audit entry in one transaction, before anyone acts
            for s in out:
                eng.bus.publish("settlements", s)
        return out

    def _settle(self, inst: Instrument, qty: int, kind: SettlementKind, spot: float, now_ns: int, reason: str,
                *, early: bool) -> Settlement:
        eng = self.engine
        und = eng.by_symbol.get(inst.underlying)
        physical = und is not None and not und.is_option
        eng.cancel_all(instrument_id=inst.instrument_id)
        if kind == SettlementKind.EXPIRED:
            eng.portfolio.settle(inst.instrument_id)
            s = Settlement(inst.instrument_id, kind, qty, inst.underlying, -1, 0, inst.strike, 0.0, now_ns, early, reason)
        elif physical:
            assert und is not None
            shares = int(round(qty * inst.right * inst.multiplier))
            eng.portfolio.settle(inst.instrument_id, underlying_id=und.instrument_id, underlying_qty=shares,
                                 price=inst.strike)
            s = Settlement(inst.instrument_id, kind, qty, inst.underlying, und.instrument_id, shares, inst.strike,
                           -shares * inst.strike * und.multiplier, now_ns, early, reason)
        else:  # no underlying to deliver: cash-settled at the intrinsic value
            value = self.rules.intrinsic(inst, spot)
            eng.portfolio.settle(inst.instrument_id, close_price=value)
            s = Settlement(inst.instrument_id, kind, qty, inst.underlying, -1, 0, inst.strike,
                           qty * value * inst.multiplier, now_ns, early, reason + " (cash-settled)")
        eng.audit.append(now_ns, "settlement", inst.symbol, settlement_dict(s))
        self.settlements.append(s)
        log.info("%s %s x%d: %s", kind.value, inst.symbol, qty, reason)
        return s

    def _close_expired_books(self, now_ns: int) -> None:
        eng = self.engine
        if not eng.oms.orders:
            return
        for o in list(eng.oms.open_orders()):
            iid = o.instrument_id
            inst = eng.instruments.get(iid)
            if inst is not None and inst.is_option and inst.expiry_ns <= now_ns and iid not in self._closed_books:
                eng.cancel_all(instrument_id=iid)
                self._closed_books.add(iid)


def settlement_dict(s: Settlement) -> dict[str, Any]:
    """A settlement as plain JSON-ready data (the audit log's and the databases' form)."""
    return {
        "instrument_id": s.instrument_id, "kind": s.kind.value, "qty": s.qty, "underlying": s.underlying,
        "underlying_id": s.underlying_id, "underlying_qty": s.underlying_qty, "price": s.price, "cash": s.cash,
        "ts_ns": s.ts_ns, "early": s.early, "reason": s.reason,
    }
