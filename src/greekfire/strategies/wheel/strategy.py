"""The wheel: sell cash-secured puts; when assigned, sell covered calls on the shares; when called away,
start again.

:class:`WheelStrategy` acts once per trading day (:meth:`WheelStrategy.cycle`, which the engine's timer
calls at the first tick of each New York date, and a backtest calls at each close). Each cycle it:

1. records the day's close (and at-the-money IV when an IV-rank floor is set) of each underlying;
2. reconciles its per-underlying state with the account's positions (:meth:`WheelStrategy.reconcile`) and
   cancels its own orders left from an earlier cycle (a resting order is re-priced by being re-sent);
3. decides per underlying, by state: CASH -> write a put; SHORT_PUT -> stop, exit filter, close, roll or
   hold; SHARES -> write a call (never below the shares' cost basis unless allowed), or the drawdown stop;
   SHORT_CALL -> stop, close, roll or hold;
4. scores every candidate contract for every new leg in one :func:`~.select.select` call;
5. sends limit orders through ``ctx.submit`` (prices in integer ticks via ``ctx.ticks``). A DENIED order
   is logged with its reason (``denials``) and the same decision is taken again next cycle.

Fills move the state (:meth:`on_fill`) when an order is done; a new leg that ended partly filled (the rest
canceled at the close) moves it for the contracts sold, before reconciling; expiry and assignment come as settlements (:meth:`on_settlement`):
an assigned put adds a lot of shares at the strike to the journal, a called-away call removes it. Every
transition goes to the journal with its reason. The strategy reads only its context, so the same object
runs in the backtest harness (:mod:`.backtest`) and on the trading engine.

It is one module: the daily decisions (write, manage, roll, stop, settle, reconcile) all read and move the
strategy's per-symbol state and its journal.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import torch

from greekfire.data.indicators import rsi_tensor, sma_tensor
from greekfire.strategies.wheel.config import WheelConfig, target_delta, target_dte, weights
from greekfire.strategies.wheel.journal import Journal, MemoryJournal, cost_basis
from greekfire.strategies.wheel.select import Candidates, select
from greekfire.strategies.wheel.state import (
    IllegalWheelTransition,
    Transition,
    WheelEvent,
    WheelState,
    next_state,
)
from greekfire.trading.strategy import (
    Fill,
    Instrument,
    OrderStatus,
    OrderType,
    Reason,
    Settlement,
    SettlementKind,
    Side,
    Strategy,
    TimeInForce,
)

log = logging.getLogger(__name__)
NY = ZoneInfo("America/New_York")
DAY_NS = 86_400 * 10**9
E, W = WheelEvent, WheelState
# risk denials a smaller order can pass
_SIZE_REASONS = frozenset(r.value for r in (
    Reason.MAX_QTY, Reason.MAX_NOTIONAL, Reason.POSITION_LIMIT, Reason.UNDERLYING_POSITION_LIMIT, Reason.DELTA_LIMIT,
    Reason.GAMMA_LIMIT, Reason.VEGA_LIMIT, Reason.THETA_LIMIT, Reason.TOTAL_DELTA_LIMIT, Reason.TOTAL_GAMMA_LIMIT,
    Reason.TOTAL_VEGA_LIMIT, Reason.TOTAL_THETA_LIMIT, Reason.VAR_LIMIT, Reason.MC_VAR, Reason.INSUFFICIENT_MARGIN,
))


@dataclass
class _Order:
    """What one of our orders is for."""

    symbol: str
    action: str  # open | close | stop | roll_close | roll_open | shares
    event: WheelEvent
    reason: str
    data: dict[str, Any] = field(default_factory=dict)
    then: tuple[int, int, int] | None = None  # roll: (instrument id, qty, limit ticks) of the new leg
    children: tuple[str, ...] = ()  # the client ids it went out as (several when the router swept venues)
    filled: int = 0  # contracts or shares filled, over all its child orders
    value: float = 0.0  # sum of price x qty of those fills (currency per share x contracts or shares)
    qty: int = 0  # contracts or shares sent (after any resizing)
    done: bool = False  # the state moved for it


@dataclass
class _Want:
    """A new leg to choose: symbol, right, why, and its constraints."""

    symbol: str
    right: float
    qty: int
    action: str
    strike_min: float = -math.inf
    strike_max: float = math.inf
    exclude: int = -1
    old: Instrument | None = None
    buyback: float = 0.0  # currency per share the old leg costs to close (rolls)


class WheelStrategy(Strategy):
    """The wheel on ``config.symbols``; ``journal`` (default a :class:`MemoryJournal`) persists what it
    does; ``device`` overrides ``config.device`` for strike scoring; ``capital`` (currency) is the account
    value at start, to which ``ctx.pnl()['total']`` adds (default 1,000,000); ``run_id`` tags trades."""

    name = "wheel"

    def __init__(self, config: WheelConfig, journal: Journal | None = None, *, name: str = "wheel",
                 device: str | None = None, capital: float = 1_000_000.0, run_id: str = "wheel") -> None:
        super().__init__(name, capital=capital)
        self.config = config
        self.journal: Journal = journal if journal is not None else MemoryJournal()
        self.device = device
        self.capital = float(capital)
        self.run_id = run_id
        restored = self.journal.states()
        self.state: dict[str, WheelState] = {s: restored.get(s, W.CASH) for s in config.symbols}
        self.transitions: list[Transition] = []
        self.denials: list[dict[str, Any]] = []
        self.closes: dict[str, list[float]] = {s: [] for s in config.symbols}
        self.atm_ivs: dict[str, list[float]] = {s: [] for s in config.symbols}
        self.entry_spot: dict[str, float] = {}
        self.premium_of: dict[int, float] = {}  # short leg instrument id -> premium received per share
        self._orders: dict[str, _Order] = {}
        self._roll_due: dict[str, tuple[str, dict[str, Any], WheelEvent, WheelEvent]] = {}
        self._day: date | None = None
        self._now = 0

    # ---------------------------------------------------------------- hooks
    def on_start(self) -> None:
        for sym in self.config.symbols:  # premiums of the legs open before a restart
            for leg in self.journal.open_legs(sym):
                inst = self.ctx.by_symbol.get(str(leg["id"]))
                if inst is not None:
                    self.premium_of[inst.instrument_id] = float(leg["premium"])
        self.reconcile()

    def on_timer(self, now_ns: int) -> None:
        """The engine's timer: the day's cycle at the first tick at or after ``wheel.cycle_time`` (New York)."""
        local = datetime.fromtimestamp(now_ns / 1e9, UTC).astimezone(NY)
        if local.date() != self._day and local.strftime("%H:%M") >= self.config.cycle_time:
            self.cycle(now_ns)

    def on_fill(self, fill: Fill) -> None:
        o = self._orders.get(fill.client_id)
        if o is None:
            return
        inst = self.ctx.instruments[fill.instrument_id]
        kind = {"open": "open", "roll_open": "roll", "roll_close": "roll", "close": "close", "stop": "stop",
                "shares": "stop"}[o.action]
        self.journal.trade(self.run_id, fill.ts_ns or self._now, o.symbol, inst.symbol, int(fill.side), fill.qty,
                           fill.price, fill.fee, kind)
        if inst.is_option and fill.side == Side.SELL:
            iid = inst.instrument_id
            held = max(0, -self.ctx.positions.get(iid, 0) - fill.qty)  # short before this fill
            prev = self.premium_of.get(iid, fill.price)
            self.premium_of[iid] = (prev * held + fill.price * fill.qty) / (held + fill.qty)
        o.filled += fill.qty
        o.value += fill.price * fill.qty
        order = self.ctx.order(fill.client_id)
        if order is not None and order.status != OrderStatus.FILLED:
            return  # partly filled: the state moves when the order is done
        del self._orders[fill.client_id]
        if any(self._working(c) for c in o.children if c != fill.client_id):
            return  # a sweep: the state moves once, when the last of its child orders is done
        o.done = True
        data = {**o.data, "price": o.value / o.filled, "qty": o.filled}
        if o.action == "shares":
            self.journal.add_lot(o.symbol, -o.filled, data["price"], fill.ts_ns or self._now)
        if o.action == "roll_close":
            self.premium_of.pop(fill.instrument_id, None)
            assert o.then is not None
            iid, qty, ticks = o.then
            new = self._send(o.symbol, iid, Side.SELL, qty, ticks,
                             _Order(o.symbol, "roll_open", o.event, o.reason, data))
            if not new:  # the old leg is bought back and the new one refused: the leg is closed
                self._move(o.symbol, E.PUT_CLOSED if o.event == E.PUT_ROLLED else E.CALL_CLOSED,
                           f"{o.reason}; the new leg was refused", data)
            return
        if o.action in ("close", "stop"):
            self.premium_of.pop(fill.instrument_id, None)
        self._complete(o, o.reason, data)
        if o.data.get("sell_shares"):  # the drawdown stop bought the call back: now the shares
            self._sell_shares(o.symbol, o.reason)

    def _complete(self, o: _Order, reason: str, data: dict[str, Any]) -> None:
        """Move the state for a done order (a new put sold: its entry spot is the stop's reference)."""
        self._move(o.symbol, o.event, reason, data)
        if o.action == "open" and o.event == E.PUT_SOLD:
            self.entry_spot[o.symbol] = self.ctx.spots.get(o.symbol, 0.0)

    def _forget_ended(self) -> None:
        """Drop our orders that ended unfilled or partly filled (canceled, expired, rejected); a new leg partly
        sold moves the state for what was sold (:meth:`_ended`)."""
        for cid in list(self._orders):
            seen = self.ctx.order(cid)
            if seen is None or not seen.is_open:
                self._ended(self._orders.pop(cid))

    def _ended(self, o: _Order) -> None:
        """An order that ended before it filled in full. A new leg that ended partly filled (the rest canceled at the close, expired or rejected): the state
        moves for what was sold, as for a filled order (before, only reconcile moved it, as a repair, and the
        put's entry spot was never set). A close, stop or roll buy-back that ended partly filled leaves the
        leg short: the state holds and the next cycle decides on the rest. A roll whose new leg ended unfilled
        (the old one bought back) closed the leg: ``put_closed`` / ``call_closed``."""
        if o.done or o.action not in ("open", "roll_open") or any(self._working(c) for c in o.children):
            return
        if not o.filled:
            right = -1.0 if o.event == E.PUT_ROLLED else 1.0
            if o.action == "roll_open" and self._short_qty(o.symbol, right) == 0:
                o.done = True
                self._move(o.symbol, E.PUT_CLOSED if right < 0 else E.CALL_CLOSED,
                           f"{o.reason}; the new leg ended unfilled", o.data)
            return
        o.done = True
        data = {**o.data, "price": o.value / o.filled, "qty": o.filled}
        try:
            self._complete(o, f"{o.reason}; {o.filled} of {o.qty} filled, the rest ended unfilled", data)
        except IllegalWheelTransition:  # the state moved already (a settlement): reconcile decides
            log.info("wheel %s: %s partly filled (%d of %d) in state %s: left to reconcile", o.symbol, o.action,
                     o.filled, o.qty, self.state[o.symbol].value)

    def on_settlement(self, settlement: Settlement) -> None:
        s = settlement
        sym = s.underlying
        if sym not in self.state:
            return
        inst = self.ctx.instruments.get(s.instrument_id)
        right = inst.right if inst is not None else (-1.0 if s.underlying_qty > 0 else 1.0)
        name = inst.symbol if inst is not None else str(s.instrument_id)
        self.premium_of.pop(s.instrument_id, None)
        ts = s.ts_ns or self._now
        data = {"strike": s.price, "qty": s.qty, "early": s.early, "instrument": name}
        if s.kind == SettlementKind.EXPIRED:
            self.journal.trade(self.run_id, ts, sym, name, Side.BUY, abs(s.qty), 0.0, 0.0, "expiry")
            ev = E.PUT_EXPIRED if right < 0 else E.CALL_EXPIRED
            why = f"{name} expired out of the money"
        else:
            self.journal.trade(self.run_id, ts, sym, name, Side.BUY, abs(s.qty), 0.0, 0.0, "assignment")
            self.journal.trade(self.run_id, ts, sym, sym, 1 if s.underlying_qty > 0 else -1, abs(s.underlying_qty),
                               s.price, 0.0, "assignment")
            self.journal.add_lot(sym, s.underlying_qty, s.price, ts)
            ev = E.PUT_ASSIGNED if right < 0 else E.CALLED_AWAY
            why = f"{name} assigned{' early' if s.early else ''}: {s.underlying_qty:+d} shares at {s.price:g}"
            if s.reason:
                why += f" ({s.reason})"
        if self._short_qty(sym, right) > 0:  # more legs of that right remain: the state holds
            return
        want = W.SHORT_PUT if right < 0 else W.SHORT_CALL
        if self.state[sym] == want:
            self._move(sym, ev, why, data)

    # ---------------------------------------------------------------- the daily cycle
    def cycle(self, now_ns: int) -> None:
        """One day of the wheel (module doc) at ``now_ns`` (ns since the epoch)."""
        ctx = self.ctx
        self._now = now_ns
        day = _ny_date(now_ns)
        self._record(day)
        self._day = day
        self._forget_ended()
        for order in ctx.open_orders():  # yesterday's orders: re-decided (and re-priced) today
            if order.client_id in self._orders:
                ctx.cancel(order)
                self._ended(self._orders.pop(order.client_id))
        self.reconcile()
        allowed = self.entry_filters()
        wants: list[_Want] = []
        for sym in self.config.symbols:
            if ctx.spots.get(sym) is None:
                continue
            st = self.state[sym]
            if st == W.CASH:
                w = self._want_put(sym, allowed)
            elif st == W.SHARES:
                w = self._want_call(sym, allowed)
            else:
                w = self._manage(sym, st)
            if w is not None:
                wants.append(w)
        if wants:
            self._write(wants)

    def _record(self, day: date) -> None:
        for sym in self.config.symbols:
            spot = self.ctx.spots.get(sym)
            if spot is None:
                continue
            hist = self.closes[sym]
            if day == self._day and hist:
                hist[-1] = spot
            else:
                hist.append(spot)
            if self.config.iv_rank_min > 0:
                iv = self._atm_iv(sym, spot)
                if iv is not None:
                    ivs = self.atm_ivs[sym]
                    if day == self._day and ivs:
                        ivs[-1] = iv
                    else:
                        ivs.append(iv)
            keep = max(self.config.sma_days, self.config.rsi_days + 1, self.config.sigma_days + 1,
                       self.config.iv_rank_days, 2) + 5
            del hist[:-keep]
            del self.atm_ivs[sym][:-keep]

    def _atm_iv(self, sym: str, spot: float) -> float | None:
        best, best_key = None, (math.inf, math.inf)
        for inst in self._options(sym):
            key = (abs(inst.expiry_ns - self._now - 30 * DAY_NS) / DAY_NS // 7, abs(inst.strike - spot))
            if key < best_key:
                best, best_key = inst, key
        if best is None:
            return None
        v = self.ctx.vol(best.instrument_id)
        return v if math.isfinite(v) and v > 0 else None

    def _options(self, sym: str) -> list[Instrument]:
        return [i for i in self.ctx.instruments.values()
                if i.is_option and i.underlying == sym and i.expiry_ns > self._now]

    # ---------------------------------------------------------------- entry filters (tensors)
    def entry_filters(self) -> dict[tuple[str, float], str]:
        """(symbol, right) -> '' when a new leg may be written, else the reason it may not. The day-move
        filters need the previous close; the SMA, RSI and IV-rank filters let a leg be written until they have
        the history they need. Computed on tensors for all symbols at once."""
        cfg = self.config
        syms = [s for s in cfg.symbols if self.closes[s]]
        out: dict[tuple[str, float], str] = {}
        if not syms:
            return out
        n = min(len(self.closes[s]) for s in syms)
        x = torch.tensor([self.closes[s][-n:] for s in syms], dtype=torch.float64)
        last = x[:, -1]
        prev = x[:, -2] if n >= 2 else torch.full_like(last, math.nan)
        move = last / prev - 1.0
        sma = sma_tensor(x, cfg.sma_days)[:, -1] if cfg.sma_days else torch.full_like(last, math.nan)
        rsi_on = cfg.put_rsi_max < 100.0 or cfg.call_rsi_min > 0.0
        rsi = rsi_tensor(x, cfg.rsi_days)[:, -1] if rsi_on else torch.full_like(last, math.nan)
        logr = torch.log(x[:, 1:] / x[:, :-1])[:, -cfg.sigma_days:] if n > cfg.sigma_days else None
        sigma = logr.std(dim=1) if logr is not None else torch.full_like(last, math.nan)
        for k, sym in enumerate(syms):
            mv, sd = float(move[k]), float(sigma[k])
            for right, when in ((-1.0, cfg.put_write_when), (1.0, cfg.call_write_when)):
                why = ""
                moves = when != "always" or cfg.write_threshold > 0 or cfg.write_threshold_sigma > 0
                if moves and not math.isfinite(mv):
                    why = "no previous close yet for the day-move filters"
                elif math.isfinite(mv):
                    if when == "green" and mv <= 0 or when == "red" and mv >= 0:
                        why = f"{when} days only: the close moved {mv:+.2%}"
                    elif cfg.write_threshold_sigma > 0 and math.isfinite(sd):
                        if abs(math.log1p(mv)) < cfg.write_threshold_sigma * sd:
                            why = f"move {mv:+.2%} under {cfg.write_threshold_sigma:g} sigma ({sd:.2%})"
                    elif cfg.write_threshold > 0 and abs(mv) < cfg.write_threshold:
                        why = f"move {mv:+.2%} under the {cfg.write_threshold:.2%} threshold"
                r = float(rsi[k])
                if not why and right < 0 and math.isfinite(float(sma[k])) and float(last[k]) < float(sma[k]):
                    why = f"close {float(last[k]):g} below its {cfg.sma_days}-day SMA {float(sma[k]):.2f}"
                if not why and right < 0 and math.isfinite(r) and r > cfg.put_rsi_max:
                    why = f"RSI {r:.1f} above {cfg.put_rsi_max:g}"
                if not why and right > 0 and math.isfinite(r) and r < cfg.call_rsi_min:
                    why = f"RSI {r:.1f} below {cfg.call_rsi_min:g}"
                out[(sym, right)] = why
        return out

    def _iv_rank(self, sym: str) -> float:
        ivs = self.atm_ivs[sym][-self.config.iv_rank_days:]
        if len(ivs) < 2 or max(ivs) <= min(ivs):
            return 1.0
        return (ivs[-1] - min(ivs)) / (max(ivs) - min(ivs))

    # ---------------------------------------------------------------- sizing
    def equity(self) -> float:
        """Account value: the capital at start plus the P&L since (currency)."""
        return self.capital + float(self.ctx.pnl().get("total", 0.0))

    def _committed(self, sym: str) -> float:
        ctx = self.ctx
        out = 0.0
        for iid, q in ctx.positions.items():
            inst = ctx.instruments.get(iid)
            if inst is None or inst.underlying != sym:
                continue
            if inst.is_option and inst.right < 0 and q < 0:
                out += -q * inst.strike * inst.multiplier
            elif not inst.is_option:
                out += q * ctx.spots.get(sym, 0.0)
        return out

    def _budget(self, sym: str) -> float:
        cfg = self.config
        total = self.equity() * cfg.buying_power * (1.0 - cfg.cash_reserve)
        free = total - sum(self._committed(s) for s in cfg.symbols)
        mine = total * min(weights(cfg)[sym], cfg.max_symbol_fraction) - self._committed(sym)
        return max(0.0, min(free, mine))

    def _shares(self, sym: str) -> int:
        und = self.ctx.by_symbol.get(sym)
        return int(self.ctx.positions.get(und.instrument_id, 0)) if und is not None else 0

    def _short_legs(self, sym: str, right: float) -> list[tuple[Instrument, int]]:
        ctx = self.ctx
        out = []
        for iid, q in ctx.positions.items():
            inst = ctx.instruments.get(iid)
            if inst is not None and inst.is_option and inst.underlying == sym and inst.right == right and q < 0:
                out.append((inst, -q))
        return out

    def _short_qty(self, sym: str, right: float) -> int:
        return sum(q for _, q in self._short_legs(sym, right))

    # ---------------------------------------------------------------- decisions
    def _want_put(self, sym: str, allowed: dict[tuple[str, float], str]) -> _Want | None:
        why = allowed.get((sym, -1.0), "")
        if why:
            log.debug("wheel %s: no put today: %s", sym, why)
            return None
        budget = self._budget(sym)
        spot = self.ctx.spots[sym]
        qty = min(self.config.max_contracts, int(budget // (spot * 100.0)))  # refined at the strike below
        if qty < 1:
            return None
        o = self.config.symbol_overrides.get(sym)
        limit = o.put_strike_limit if o is not None and o.put_strike_limit is not None else math.inf
        return _Want(sym, -1.0, qty, "open", strike_max=limit)

    def _want_call(self, sym: str, allowed: dict[tuple[str, float], str]) -> _Want | None:
        cfg = self.config
        dd = cfg.stop_underlying_drawdown
        spot = self.ctx.spots[sym]
        basis = cost_basis(self.journal, sym)
        ref = self.entry_spot.get(sym) or basis
        if dd is not None and ref and spot <= ref * (1.0 - dd):
            self._sell_shares(sym, f"underlying drawdown stop: {spot:g} <= {ref:g} x (1 - {dd:g})")
            return None
        why = allowed.get((sym, 1.0), "")
        if why:
            log.debug("wheel %s: no call today: %s", sym, why)
            return None
        qty = min(cfg.max_contracts, int(self._shares(sym) * cfg.call_cap_factor // 100))
        if qty < 1:
            return None
        lo = -math.inf if cfg.call_below_cost_basis or basis is None else basis
        o = cfg.symbol_overrides.get(sym)
        if o is not None and o.call_strike_limit is not None:
            lo = max(lo, o.call_strike_limit)
        return _Want(sym, 1.0, qty, "open", strike_min=lo)

    def _manage(self, sym: str, st: WheelState) -> _Want | None:
        """Rules for an open short leg: stops, exit filter, close at P&L, roll."""
        cfg, ctx = self.config, self.ctx
        right = -1.0 if st == W.SHORT_PUT else 1.0
        legs = self._short_legs(sym, right)
        if not legs:
            return None
        inst, qty = legs[0]
        q = ctx.quotes.get(inst.instrument_id)
        if q is None or not (q.ask > 0):
            log.info("wheel %s: no quote for %s: holding", sym, inst.symbol)
            return None
        spot = ctx.spots[sym]
        mid = 0.5 * (q.bid + q.ask) if q.bid > 0 else q.ask
        prem = self.premium_of.get(inst.instrument_id, mid)
        pnl = (prem - mid) / prem if prem > 0 else 0.0
        dte = (inst.expiry_ns - self._now) / DAY_NS
        itm = spot < inst.strike if right < 0 else spot > inst.strike
        put = right < 0
        data = {"instrument": inst.symbol, "strike": inst.strike, "premium": prem, "mid": mid, "pnl": round(pnl, 6),
                "dte": round(dte, 3), "spot": spot}
        ev_close, ev_stop, ev_roll = ((E.PUT_CLOSED, E.PUT_STOPPED, E.PUT_ROLLED) if put
                                      else (E.CALL_CLOSED, E.CALL_STOPPED, E.CALL_ROLLED))
        # stops first
        ref = self.entry_spot.get(sym) or cost_basis(self.journal, sym)
        dd = cfg.stop_underlying_drawdown
        if dd is not None and ref and spot <= ref * (1.0 - dd):
            self._close(sym, inst, qty, q.ask, ev_stop, "stop",
                        f"underlying drawdown stop: {spot:g} <= {ref:g} x (1 - {dd:g})",
                        {**data, "sell_shares": not put})
            return None
        if cfg.stop_option_loss is not None and prem > 0 and mid - prem >= cfg.stop_option_loss * prem:
            self._close(sym, inst, qty, q.ask, ev_stop, "stop",
                        f"option loss stop: {mid - prem:.2f} >= {cfg.stop_option_loss:g} x premium {prem:.2f}", data)
            return None
        if put and cfg.exit_below_sma and cfg.sma_days and len(self.closes[sym]) >= cfg.sma_days:
            sma = sum(self.closes[sym][-cfg.sma_days:]) / cfg.sma_days
            if spot < sma:
                self._close(sym, inst, qty, q.ask, ev_close, "close",
                            f"exit filter: close {spot:g} below its {cfg.sma_days}-day SMA {sma:.2f}", data)
                return None
        if cfg.close_at_pnl is not None and pnl >= cfg.close_at_pnl:
            self._close(sym, inst, qty, q.ask, ev_close, "close", f"close at P&L {pnl:.1%} >= {cfg.close_at_pnl:.0%}",
                        data)
            return None
        rule = cfg.put_itm if put else cfg.call_itm
        if cfg.roll_max_dte is not None and dte > cfg.roll_max_dte:
            return None
        due = ""
        if itm and rule == "always_roll":
            due = f"in the money ({spot:g} vs strike {inst.strike:g}): always roll"
        elif pnl >= cfg.roll_pnl:
            due = f"P&L {pnl:.1%} >= {cfg.roll_pnl:.0%} of the premium"
        elif dte <= cfg.roll_dte and pnl >= cfg.roll_min_pnl:
            due = f"{dte:.1f} days to expiry <= {cfg.roll_dte} with P&L {pnl:.1%} >= {cfg.roll_min_pnl:.0%}"
        if not due:
            return None
        if itm and rule == "hold":
            return None
        if itm and rule == "close":
            self._close(sym, inst, qty, q.ask, ev_close, "close", f"{due}; in the money: closed", data)
            return None
        lo, hi = -math.inf, math.inf
        if not put:
            basis = cost_basis(self.journal, sym)
            if basis is not None and not cfg.call_below_cost_basis:
                lo = basis
            if cfg.maintain_high_water_mark:
                lo = max(lo, inst.strike)
        w = _Want(sym, right, qty, "roll", strike_min=lo, strike_max=hi, exclude=inst.instrument_id, old=inst,
                  buyback=q.ask)
        self._roll_due[sym] = (due, data, ev_roll, ev_close)
        return w

    # ---------------------------------------------------------------- writing new legs
    def _write(self, wants: list[_Want]) -> None:
        """Score every candidate for every wanted leg in one call, then send the orders."""
        ctx, cfg = self.ctx, self.config
        syms = list(dict.fromkeys(w.symbol for w in wants))
        parts: list[dict[str, np.ndarray]] = []
        for w in wants:  # each wanted leg's candidates: the symbol's quoted options of that right, not expired
            chain = ctx.option_chain(w.symbol)
            keep = (chain["right"] == w.right) & (chain["expiry_ns"] > self._now)
            ch = {k: v[keep] for k, v in chain.items()}
            n = len(ch["id"])
            dte, mx = target_dte(cfg, w.symbol)
            vol = ch["vol"]
            part = {
                "id": ch["id"], "sym": np.full(n, syms.index(w.symbol), dtype=np.int64), "right": ch["right"],
                "strike": ch["strike"], "dte": (ch["expiry_ns"] - self._now) / DAY_NS,
                "bid": np.where(np.isfinite(ch["bid"]), ch["bid"], 0.0),
                "ask": np.where(np.isfinite(ch["ask"]), ch["ask"], 0.0),
                "open_interest": ch["open_interest"].astype(np.float64), "volume": ch["volume"].astype(np.float64),
                "iv": np.where(np.isfinite(vol) & (vol > 0), vol, 0.3),
                "spot": np.full(n, ctx.spots[w.symbol]),
                "target_delta": np.full(n, target_delta(cfg, w.symbol, w.right)),
                "dte_target": np.full(n, float(dte)), "max_dte": np.full(n, float(mx)),
                "strike_min": np.full(n, w.strike_min), "strike_max": np.full(n, w.strike_max),
                "iv_rank": np.full(n, self._iv_rank(w.symbol) if cfg.iv_rank_min > 0 else 1.0),
                "allowed": ch["id"] != w.exclude,
            }
            parts.append(part)
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        ids: list[int] = cols.pop("id").tolist()
        picks: dict[tuple[str, float], int] = {}
        if ids:
            sel = select(Candidates.from_columns(syms, cols), cfg, self.device)
            picks = {k: ids[r] for k, r in sel.best.items()}
        for w in wants:
            iid = picks.get((w.symbol, w.right))
            if w.action == "roll":
                self._roll(w, iid)
            elif iid is None:
                log.info("wheel %s: no %s qualifies today", w.symbol, "call" if w.right > 0 else "put")
            else:
                self._open(w, iid)

    def _sell_limit(self, iid: int) -> int | None:
        """Limit of a sell in ticks: bid + limit_fraction x spread, down to the tick grid (>= 1 tick)."""
        q = self.ctx.quotes[iid]
        inst = self.ctx.instruments[iid]
        px = q.bid + self.config.limit_fraction * (q.ask - q.bid)
        ticks = math.floor(px / inst.tick_size + 1e-9)
        return self.ctx.ticks(iid, inst.from_ticks(ticks)) if ticks >= 1 else None

    def _buy_limit(self, iid: int, ask: float) -> int:
        q = self.ctx.quotes[iid]
        inst = self.ctx.instruments[iid]
        bid = q.bid if q.bid > 0 else 0.0
        px = ask - self.config.limit_fraction * (ask - bid)
        return self.ctx.ticks(iid, inst.from_ticks(max(1, math.ceil(px / inst.tick_size - 1e-9))))

    def _open(self, w: _Want, iid: int) -> None:
        inst = self.ctx.instruments[iid]
        ticks = self._sell_limit(iid)
        if ticks is None:
            return
        qty = w.qty
        if w.right < 0:  # cash-secured: the collateral at this strike must fit the budget
            qty = min(qty, int(self._budget(w.symbol) // (inst.strike * inst.multiplier)))
            if qty < 1:
                return
        ev = E.PUT_SOLD if w.right < 0 else E.CALL_SOLD
        px = inst.from_ticks(ticks)
        why = (f"sell {qty} {inst.symbol} at {px:g}: delta target {target_delta(self.config, w.symbol, w.right):g}, "
               f"{(inst.expiry_ns - self._now) / DAY_NS:.0f} days")
        self._send(w.symbol, iid, Side.SELL, qty, ticks, _Order(w.symbol, "open", ev, why,
                                                                {"instrument": inst.symbol, "strike": inst.strike}))

    def _roll(self, w: _Want, iid: int | None) -> None:
        assert w.old is not None
        due, data, ev_roll, ev_close = self._roll_due.pop(w.symbol)
        old = w.old
        if iid is None:
            if self.config.close_if_unable_to_roll:
                self._close(w.symbol, old, w.qty, w.buyback, ev_close, "close", f"{due}; no contract to roll to: closed",
                            data)
            else:
                log.info("wheel %s: roll due (%s) but no contract qualifies: holding", w.symbol, due)
            return
        new = self.ctx.instruments[iid]
        qty = w.qty
        if w.right < 0:  # cash-secured: the new strike's collateral must fit the budget once the old one is free
            free = self._budget(w.symbol) + w.qty * old.strike * old.multiplier
            qty = min(qty, int(free // (new.strike * new.multiplier)))
        sell = self._sell_limit(iid)
        buy = self._buy_limit(old.instrument_id, w.buyback)
        if sell is None or qty < 1:
            return
        credit = new.from_ticks(sell) - old.from_ticks(buy)
        if self.config.roll_credit_only and credit <= 0:
            if self.config.close_if_unable_to_roll:
                self._close(w.symbol, old, w.qty, w.buyback, ev_close, "close", f"{due}; no credit roll: closed", data)
            else:
                log.info("wheel %s: roll due but net %.2f is no credit: holding", w.symbol, credit)
            return
        why = f"roll {old.symbol} -> {new.symbol} ({due}; net {credit:+.2f}/share)"
        rec = _Order(w.symbol, "roll_close", ev_roll, why, {**data, "new": new.symbol, "new_strike": new.strike,
                                                            "credit": round(credit, 6)}, then=(iid, qty, sell))
        self._send(w.symbol, old.instrument_id, Side.BUY, w.qty, buy, rec)

    def _close(self, sym: str, inst: Instrument, qty: int, ask: float, ev: WheelEvent, action: str, why: str,
               data: dict[str, Any]) -> None:
        ticks = self._buy_limit(inst.instrument_id, ask)
        self._send(sym, inst.instrument_id, Side.BUY, qty, ticks, _Order(sym, action, ev, why, data))

    def _sell_shares(self, sym: str, why: str) -> None:
        und = self.ctx.by_symbol.get(sym)
        n = self._shares(sym)
        if und is None or n <= 0:
            return
        q = self.ctx.quotes.get(und.instrument_id)
        spot = self.ctx.spots[sym]
        px = q.bid if q is not None and q.bid > 0 else spot
        ticks = self.ctx.ticks(und.instrument_id, und.from_ticks(max(1, math.floor(px / und.tick_size + 1e-9))))
        self._send(sym, und.instrument_id, Side.SELL, n, ticks, _Order(sym, "shares", E.SHARES_SOLD, why, {"spot": spot}))

    def _send(self, sym: str, iid: int, side: Side, qty: int, ticks: int, rec: _Order) -> bool:
        """Submit one limit order; a denied one is logged with its reason and left for the next cycle. A new
        leg denied for its size (a Greek, position, notional, margin or VaR limit) is tried again at once
        with half the contracts, down to one."""
        sent = self.ctx.submit(iid, side, qty, ticks, OrderType.LIMIT, TimeInForce.DAY)
        while (rec.action in ("open", "roll_open") and qty > 1 and sent and sent[0].status == OrderStatus.DENIED
               and sent[0].reason in _SIZE_REASONS):
            log.info("wheel %s: %d contracts denied (%s): trying %d", sym, qty, sent[0].reason, qty // 2)
            qty //= 2
            sent = self.ctx.submit(iid, side, qty, ticks, OrderType.LIMIT, TimeInForce.DAY)
        if not sent or sent[0].status == OrderStatus.DENIED:
            reason = sent[0].reason if sent else "no order"
            self.denials.append({"ts_ns": self._now, "symbol": sym, "instrument_id": iid, "side": int(side),
                                 "qty": qty, "reason": reason, "action": rec.action})
            log.warning("wheel %s: order denied (%s): %s; retried next cycle", sym, reason, rec.reason)
            return False
        rec.children = tuple(o.client_id for o in sent)
        rec.qty = qty
        for o in sent:
            self._orders[o.client_id] = rec
        return True

    def _working(self, client_id: str) -> bool:
        """Whether one of our orders is still ours to hear from and open at its venue."""
        seen = self.ctx.order(client_id)
        return client_id in self._orders and seen is not None and seen.is_open

    # ---------------------------------------------------------------- state
    def _move(self, sym: str, ev: WheelEvent, reason: str, data: dict[str, Any] | None = None,
              target: WheelState | None = None) -> Transition:
        old = self.state[sym]
        new = next_state(sym, old, ev, target)
        t = Transition(sym, old, new, ev.value, reason, self._now or self.ctx.now_ns(), dict(data or {}))
        self.state[sym] = new
        self.transitions.append(t)
        self.journal.transition(t)
        log.info("wheel %s: %s -> %s (%s): %s", sym, old.value, new.value, ev.value, reason)
        if new == W.CASH:
            self.entry_spot.pop(sym, None)
        return t

    def reconcile(self) -> list[str]:
        """Compare each underlying's state with the account's positions and repair it (the positions are the
        truth); also brings the journal's share lots to the position. Underlyings with one of our orders in
        flight are left alone. Returns what was repaired, one line each."""
        ctx = self.ctx
        self._forget_ended()  # a new leg that ended partly sold moves the state first, as a sale, not a repair
        busy = {self._orders[o.client_id].symbol for o in ctx.open_orders() if o.client_id in self._orders}
        fixed: list[str] = []
        for sym in self.config.symbols:
            if sym in busy:
                continue
            shares = self._shares(sym)
            puts, calls = self._short_qty(sym, -1.0), self._short_qty(sym, 1.0)
            want = (W.SHORT_CALL if calls else W.SHORT_PUT if puts else W.SHARES if shares > 0 else W.CASH)
            lots = sum(q for q, _ in self.journal.lots(sym))
            if lots != max(shares, 0):
                spot = ctx.spots.get(sym, 0.0)
                self.journal.add_lot(sym, max(shares, 0) - lots, spot, self._now or ctx.now_ns())
                line = f"{sym}: journal lots {lots} shares -> position {shares} (difference at {spot:g})"
                fixed.append(line)
                log.warning("wheel reconcile %s", line)
            if want != self.state[sym]:
                line = (f"{sym}: state {self.state[sym].value} -> {want.value} (positions: {shares} shares, "
                        f"{puts} short puts, {calls} short calls)")
                self._move(sym, E.RECONCILED, line, {"shares": shares, "short_puts": puts, "short_calls": calls},
                           target=want)
                fixed.append(line)
        return fixed


def _ny_date(now_ns: int) -> date:
    return datetime.fromtimestamp(now_ns / 1e9, UTC).astimezone(NY).date()
