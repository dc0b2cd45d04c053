"""Risk engine: pre-trade checks with reason codes, continuous checks, trading state and the kill switch.

Pre-trade (:meth:`RiskEngine.check`, on every submit and amend) runs cheapest first and stops at the first
denial. Greek, position and VaR checks look at the portfolio *as it would be after the order fully fills*, and
deny only an order that makes a breached measure worse (a reducing order always passes them).

Greeks come from the portfolio's per-unit cache (refreshed at each quote-batch end, never priced per order).
VaR comes from :class:`~greekfire.trading.var.VarModel`: pre-trade, its bound of the VaR after the order
decides, and only when that bound is above ``VAR_EXACT_ZONE`` of the limit is the VaR after the order computed
exactly before deciding. Monte Carlo VaR runs in the continuous check and denies risk-increasing orders while
it is over the limit. Reason codes and the Denial / Breach records are in :mod:`greekfire.trading.denials`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

from greekfire.core.errors import ConfigError
from greekfire.core.metrics import counter, gauge
from greekfire.core.settings import RiskSettings
from greekfire.trading.denials import Breach, Denial, Reason, TradingState
from greekfire.trading.model import OrderType
from greekfire.trading.orders import Order
from greekfire.trading.portfolio import Portfolio
from greekfire.trading.var import VarModel

log = logging.getLogger(__name__)

DENIALS = counter("greekfire_trading_risk_denials", "orders denied by pre-trade risk", ["reason"])
BREACHES = counter("greekfire_trading_risk_breaches", "continuous-limit breaches", ["reason"])
STATE_GAUGE = gauge("greekfire_trading_state", "trading state: 0 active, 1 reducing, 2 halted")
KILL_SWITCH = gauge("greekfire_trading_kill_switch", "1 while the kill switch is set, 0 otherwise")
DRAWDOWN = gauge("greekfire_trading_drawdown", "equity below its peak, currency (the continuous checks' value)")
DRAWDOWN_LIMIT = gauge("greekfire_trading_drawdown_limit", "trading.risk.max_drawdown, currency (halts beyond it)")

VAR_EXACT_ZONE = 0.8  # recompute VaR exactly when the upper bound is above this share of the limit

# enum members used on the pre-trade hot path, bound once (an Enum class attribute lookup costs ~0.2 us)
_ACTIVE, _HALTED = TradingState.ACTIVE, TradingState.HALTED
_LIMIT, _MARKET = OrderType.LIMIT, OrderType.MARKET
_PRICED = frozenset((OrderType.LIMIT, OrderType.STOP_LIMIT))  # order types that carry a limit price
_STOPS = frozenset((OrderType.STOP, OrderType.STOP_LIMIT))  # order types that carry a stop price
_GREEK_LIMITS = (Reason.DELTA_LIMIT, Reason.GAMMA_LIMIT, Reason.VEGA_LIMIT, Reason.THETA_LIMIT)
_TOTAL_LIMITS = (Reason.TOTAL_DELTA_LIMIT, Reason.TOTAL_GAMMA_LIMIT, Reason.TOTAL_VEGA_LIMIT, Reason.TOTAL_THETA_LIMIT)


def _whole_ticks(price: object) -> bool:
    # a limit in ticks is an integer (numpy's too); a float, even 245.0, is refused: it was meant as currency
    return isinstance(price, Integral) and not isinstance(price, bool)


@dataclass
class _RateWindow:
    # token bucket per strategy: capacity = max per second, refilled continuously
    tokens: float
    last_ns: int


class RiskEngine:
    """Checks orders against :class:`~greekfire.core.settings.RiskSettings` and watches the book.

    VaR volatilities come from the portfolio's pricing inputs. Limits can be changed while running with
    :meth:`set_limits`.
    """

    def __init__(
        self,
        limits: RiskSettings,
        portfolio: Portfolio,
        *,
        on_kill: Callable[[str], None] | None = None,
    ) -> None:
        self.limits = limits.model_copy()
        self.portfolio = portfolio
        self.state = TradingState.ACTIVE
        self.killed = False
        self.kill_reason = ""
        self.on_kill = on_kill
        self.denials: dict[str, int] = {}
        self.breaches: list[Breach] = []
        self._rate: dict[str, _RateWindow] = {}
        self.var_model = VarModel(portfolio, self.limits)
        self._margin_used = 0.0
        self.set_state(TradingState.ACTIVE, "start")  # the state and kill-switch gauges start at 0

    # ---------------------------------------------------------------- limits and state
    def set_limits(self, **changes: Any) -> None:
        """Change limits at run time (validated: a bad value raises ConfigError naming the field)."""
        for k, v in changes.items():
            if k not in RiskSettings.model_fields:
                raise ConfigError(f"trading.risk.{k}", v, "not a risk limit")
            try:
                setattr(self.limits, k, v)
            except Exception as exc:
                raise ConfigError(f"trading.risk.{k}", v, str(exc)) from None
        log.info("risk limits changed", extra={"changes": changes})

    def set_state(self, state: TradingState | str, reason: str = "manual") -> None:
        """Move to ACTIVE, REDUCING or HALTED (ACTIVE is refused while the kill switch is set)."""
        state = TradingState(state)
        if self.killed and state != TradingState.HALTED:
            raise ConfigError("trading.state", state.value, "reset the kill switch first")
        if state != self.state:
            log.warning("trading state %s -> %s (%s)", self.state.value, state.value, reason)
        self.state = state
        STATE_GAUGE.set({TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}[state])
        KILL_SWITCH.set(int(self.killed))

    def kill(self, reason: str = "manual") -> None:
        """Trip the kill switch: HALTED, every open order is canceled (by ``on_kill``), new ones blocked."""
        first = not self.killed
        self.killed = True
        self.kill_reason = reason
        self.set_state(TradingState.HALTED, reason)
        if first:
            log.error("kill switch tripped: %s", reason, extra={"reason": reason})
        if self.on_kill is not None:
            self.on_kill(reason)

    def reset_kill(self) -> None:
        """Clear the kill switch and return to ACTIVE."""
        self.killed = False
        self.kill_reason = ""
        self.set_state(TradingState.ACTIVE, "kill switch reset")

    # ---------------------------------------------------------------- pre-trade
    def _deny(self, reason: Reason, message: str, **values: Any) -> Denial:
        self.denials[reason.value] = self.denials.get(reason.value, 0) + 1
        DENIALS.labels(reason.value).inc()
        return Denial(reason, values, message)

    def check(self, order: Order, ref_price: float | None, now_ns: int, *, amend_of: Order | None = None) -> Denial | None:
        """Pre-trade checks for a new order (or an amend: ``order`` holds the new terms, ``amend_of`` the live one).

        The order's limit is in integer ticks (an integer needs no tick test; anything else is BAD_TICK);
        ``ref_price`` is the instrument's reference (mid) price in currency, None when unknown. The band and
        notional checks convert the limit to currency once. Returns None to pass, or a :class:`Denial`.
        """
        return self._check(order, order.qty, order.price_ticks, ref_price, now_ns, amend_of)

    def check_amend(self, order: Order, qty: int, price_ticks: int, ref_price: float | None, now_ns: int) -> Denial | None:
        """Pre-trade checks for amending the live ``order`` to ``qty`` (new total, units) at ``price_ticks``
        (integer ticks); the same checks as :meth:`check` with ``amend_of=order``, without building a new order."""
        return self._check(order, qty, price_ticks, ref_price, now_ns, order)

    def check_amends(
        self, amends: Sequence[tuple[Order, int, int]], ref_prices: dict[int, float], now_ns: int,
    ) -> list[Denial | None]:
        """Pre-trade checks for several amends at once (a mass quote): ``(live order, new total qty, new
        limit in ticks)`` each, ``ref_prices`` by instrument id. The same checks and outcome, amend by amend, as
        :meth:`check_amend` (each takes one order-rate token, in order).

        An amend that adds no size to a limit order (a re-price: the common case for a quoting strategy) is
        proved to pass in one loop: lot, max quantity, tick, price band, notional and the rate token are all
        it can fail (the tick test is the limit being an int), since a size that does not grow adds no position, Greek, VaR or margin. Anything else,
        or one that would fail, goes through the full check, which gives the denial its reason and values."""
        out: list[Denial | None] = [None] * len(amends)
        lim = self.limits
        if self.killed or self.state == _HALTED:
            for k, (order, qty, price) in enumerate(amends):
                out[k] = self._check(order, qty, price, ref_prices.get(order.instrument_id), now_ns, order)
            return out
        instruments = self.portfolio.instruments
        max_qty, max_notional = lim.max_order_qty, lim.max_notional
        band_pct, band_ticks = lim.price_band_pct, lim.price_band_ticks
        cap = float(lim.max_orders_per_s)
        rates = self._rate
        key: str | None = None
        w: _RateWindow | None = None
        tokens = 0.0  # the bucket of ``key``, kept in a local and written back before anything else reads it
        last_iid: int | None = None  # a quote's two sides come in a row: look their instrument up once
        inst = None
        ref: float | None = None
        tick = mult = band = 0.0
        lot = 1
        for k, (order, qty, price) in enumerate(amends):
            if order.strategy_id != key:  # refill a strategy's token bucket once per run of its amends
                if w is not None:
                    w.tokens = tokens
                key = order.strategy_id
                w = rates.get(key)
                if w is not None:
                    tokens = w.tokens + (now_ns - w.last_ns) * 1e-9 * cap
                    if tokens > cap:
                        tokens = cap
                    w.last_ns = now_ns
            iid = order.instrument_id
            if iid != last_iid:
                last_iid = iid
                inst = instruments.get(iid)
                ref = ref_prices.get(iid)
                if inst is not None:
                    tick, lot, mult = inst.tick_size, inst.lot_size, inst.multiplier
                    if ref is not None and ref > 0:
                        band = band_pct * ref
                        if band_ticks * tick > band:
                            band = band_ticks * tick
                        band += 1e-12
                    else:
                        ref = None  # no usable reference: no band (as the full check)
            if (
                tokens >= 1.0 and w is not None and inst is not None and order.ord_type is _LIMIT
                and 0 < qty <= order.qty and qty <= max_qty and not qty % lot
                and type(price) is int and price > 0
            ):
                px = price * tick  # currency, computed as the full check computes it
                if qty * px * mult <= max_notional and (ref is None or -band <= px - ref <= band):
                    tokens -= 1.0
                    continue
            if w is not None:
                w.tokens = tokens
            out[k] = self._check(order, qty, price, ref_prices.get(iid), now_ns, order)
            key, w = None, None  # the full check may have made or used the bucket: read it again
        if w is not None:
            w.tokens = tokens
        return out

    def _check(
        self, order: Order, qty: int, price: int | None, ref_price: float | None, now_ns: int, amend_of: Order | None,
    ) -> Denial | None:
        # ``order`` gives instrument, side, type, strategy and reduce-only; ``qty`` and ``price`` the terms
        lim = self.limits
        pf = self.portfolio
        if self.killed:
            return self._deny(Reason.KILL_SWITCH, f"kill switch is set ({self.kill_reason})", kill_reason=self.kill_reason)
        inst = pf.instruments.get(order.instrument_id)
        if inst is None:
            return self._deny(Reason.UNKNOWN_INSTRUMENT, "instrument not registered", instrument_id=order.instrument_id)
        if qty <= 0:
            return self._deny(Reason.BAD_QTY, f"qty={qty} must be > 0", qty=qty)
        if qty % inst.lot_size:
            return self._deny(Reason.BAD_LOT, f"qty={qty} is not a multiple of lot {inst.lot_size}", qty=qty, lot=inst.lot_size)
        if qty > lim.max_order_qty:
            return self._deny(Reason.MAX_QTY, f"qty={qty} > max_order_qty={lim.max_order_qty}", qty=qty, limit=lim.max_order_qty)
        # an amend that only shrinks the working size never adds risk; rate and price checks still apply
        extra_qty = qty if amend_of is None else max(0, qty - amend_of.qty)
        pos = pf.positions.get(order.instrument_id)
        pos_qty = pos.qty if pos is not None else 0
        signed = order.side * extra_qty  # Side is an int enum: +1 buy, -1 sell
        reducing = pos_qty != 0 and (pos_qty > 0) != (signed > 0) and abs(signed) <= abs(pos_qty)

        # hot path: enum members are module constants (an Enum class attribute lookup costs ~0.2 us)
        state = self.state
        if state != _ACTIVE:
            if state == _HALTED:
                return self._deny(Reason.HALTED, "trading is HALTED", state=state.value)
            if not reducing and extra_qty:
                return self._deny(Reason.REDUCING_ONLY, "trading is REDUCING: only position-reducing orders", position=pos_qty, signed_qty=signed)
        if order.reduce_only and not reducing and extra_qty:
            return self._deny(Reason.REDUCE_ONLY, "reduce-only order would increase the position", position=pos_qty, signed_qty=signed)

        # order rate (token bucket per strategy)
        key = order.strategy_id
        w = self._rate.get(key)
        cap = float(lim.max_orders_per_s)
        if w is None:
            w = self._rate[key] = _RateWindow(cap, now_ns)
        else:
            tokens = w.tokens + (now_ns - w.last_ns) * 1e-9 * cap
            w.tokens = tokens if tokens < cap else cap
            w.last_ns = now_ns
        if w.tokens < 1.0:
            return self._deny(Reason.ORDER_RATE, f"more than {lim.max_orders_per_s} orders/s", limit=lim.max_orders_per_s, strategy=key)
        w.tokens -= 1.0

        # price: whole ticks (exact), then band and notional in currency (the limit converted once)
        ord_type = order.ord_type
        tick = inst.tick_size
        if ord_type in _PRICED and not (price is not None and (type(price) is int or _whole_ticks(price)) and price > 0):
            return self._deny(Reason.BAD_TICK, f"limit {price!r} must be a whole number of ticks > 0 (tick {tick})",
                              price_ticks=price, tick=tick)
        stop = order.stop_ticks
        if ord_type in _STOPS and not (stop is not None and (type(stop) is int or _whole_ticks(stop)) and stop > 0):
            return self._deny(Reason.BAD_TICK, f"stop {stop!r} must be a whole number of ticks > 0 (tick {tick})",
                              stop_ticks=stop, tick=tick)
        px = price * tick if price is not None and ord_type != _MARKET else None
        if ref_price is None or not ref_price > 0:
            if ord_type != _LIMIT:
                return self._deny(Reason.NO_REFERENCE_PRICE, "market/stop order without a reference price", price=px)
            ref = px
        else:
            ref = ref_price
            if px is not None:
                band = lim.price_band_pct * ref
                band_ticks = lim.price_band_ticks * tick
                if band_ticks > band:
                    band = band_ticks
                if abs(px - ref) > band + 1e-12:
                    return self._deny(
                        Reason.PRICE_BAND, f"price {round(px, 10)} outside {ref:.4f} +/- {band:.4f}",
                        price=round(px, 10), price_ticks=price, reference=ref, band=band,
                    )
        exec_px = float(px if px is not None else (ref or 0.0))
        notional = qty * exec_px * inst.multiplier
        if notional > lim.max_notional:
            return self._deny(Reason.MAX_NOTIONAL, f"notional {notional:.2f} > {lim.max_notional}", notional=notional, limit=lim.max_notional)
        if not extra_qty or reducing:
            return None

        # position limits (after the order)
        after = pos_qty + signed
        if abs(after) > lim.max_position and abs(after) > abs(pos_qty):
            return self._deny(Reason.POSITION_LIMIT, f"position after {after} beyond {lim.max_position}", position_after=after, limit=lim.max_position)
        und = inst.underlying
        und_gross = 0
        for iid, p in pf.positions.items():
            if p.qty and pf.instruments[iid].underlying == und:
                und_gross += abs(p.qty)
        und_after = und_gross - abs(pos_qty) + abs(after)
        if und_after > lim.max_underlying_position and und_after > und_gross:
            return self._deny(
                Reason.UNDERLYING_POSITION_LIMIT, f"{und} gross position after {und_after} beyond {lim.max_underlying_position}",
                underlying=und, gross_after=und_after, limit=lim.max_underlying_position,
            )

        # Greek limits per underlying, then totals (cash forms), on the book after the order
        before = pf.totals[und]
        _, g = pf.greeks_after(order.instrument_id, signed)
        for i, lim_v in enumerate((lim.max_delta, lim.max_gamma, lim.max_vega, lim.max_theta)):
            if abs(g[i]) > lim_v and abs(g[i]) > abs(before[i]):
                reason = _GREEK_LIMITS[i]
                return self._deny(
                    reason, f"{und} {reason.value[:-6].lower()} after {g[i]:.2f} beyond {lim_v}",
                    underlying=und, before=before[i], after=g[i], limit=lim_v,
                )
        spot = pf.spots.get(und, 0.0)
        d_dc = (g[0] - before[0]) * spot
        d_gc = (g[1] - before[1]) * spot * spot / 100.0
        tot_dc = tot_gc = tot_v = tot_t = 0.0
        for u2, t in pf.totals.items():
            s2 = pf.spots.get(u2, 0.0)
            tot_dc += t[0] * s2
            tot_gc += t[1] * s2 * s2 / 100.0
            tot_v += t[2]
            tot_t += t[3]
        checks = (
            (tot_dc, tot_dc + d_dc, lim.max_total_delta_cash), (tot_gc, tot_gc + d_gc, lim.max_total_gamma_cash),
            (tot_v, tot_v + g[2] - before[2], lim.max_total_vega), (tot_t, tot_t + g[3] - before[3], lim.max_total_theta),
        )
        for i, (b, a, lim_v) in enumerate(checks):
            if abs(a) > lim_v and abs(a) > abs(b):
                return self._deny(_TOTAL_LIMITS[i], f"total after {a:.2f} beyond {lim_v}", before=b, after=a, limit=lim_v)

        # VaR: first-order estimate, exact recompute near the limit
        vs = self.var_model
        d_gq = d_gc * 100.0  # the pricing core's gamma cash is gamma x spot^2 (no /100)
        unit = vs.unit.get(und)
        if unit is None and vs.available and spot:
            self.refresh(now_ns)  # an underlying first seen since the last refresh: price its unit VaRs once
            unit = vs.unit.get(und)
        if unit is None:
            bound = vs.var if not spot else math.inf
        else:  # VaR(book + order) <= VaR(book) + VaR(order delta) + VaR(order gamma)
            bound = vs.var + vs.increment(unit, d_dc, d_gq)
        if vs.available and bound > VAR_EXACT_ZONE * lim.var_limit:
            var_after = vs.exact_after(und, d_dc, d_gq)
            var_now = vs.exact_after(und, 0.0, 0.0) if var_after > lim.var_limit else 0.0
            if var_after > lim.var_limit and var_after > var_now:
                return self._deny(Reason.VAR_LIMIT, f"VaR after {var_after:.2f} > {lim.var_limit}", var_before=var_now, var_after=var_after, limit=lim.var_limit)
        if vs.mc_var > lim.var_limit:
            return self._deny(Reason.VAR_LIMIT, f"Monte Carlo VaR {vs.mc_var:.2f} > {lim.var_limit}", mc_var=vs.mc_var, limit=lim.var_limit)

        # cash or margin: buying pays the premium, selling short posts margin on the underlying notional
        if signed > 0:
            need = extra_qty * exec_px * inst.multiplier
        else:
            need = lim.margin_rate * extra_qty * (spot or exec_px) * inst.multiplier - extra_qty * exec_px * inst.multiplier
        avail = pf.cash - self._margin_used
        if need > 0 and need > avail:
            return self._deny(Reason.INSUFFICIENT_MARGIN, f"needs {need:.2f}, available {avail:.2f}", need=need, available=avail)
        return None

    # ---------------------------------------------------------------- VaR and margin
    @property
    def var_available(self) -> bool:
        """False when this build's pricing core has no VaR (then the VaR limit is not enforced)."""
        return self.var_model.available

    def refresh(self, now_ns: int | None = None) -> float:
        """Bring VaR and the margin in use up to date; returns the VaR (currency). The exact parametric VaR
        is recomputed when ``now_ns`` is None or at most every ``var_refresh_s`` (see :class:`VarModel`)."""
        var = self.var_model.refresh(now_ns)
        pf = self.portfolio
        margin = 0.0
        for iid, p in pf.positions.items():
            if p.qty < 0:
                inst = pf.instruments[iid]
                margin += self.limits.margin_rate * -p.qty * pf.spots.get(inst.underlying, p.avg_cost) * inst.multiplier
        self._margin_used = margin
        return var

    def compute_mc_var(self) -> float:
        """Monte Carlo 1-day VaR of the book by full revaluation (currency); recorded for the pre-trade and
        continuous checks. Off the hot path."""
        return self.var_model.compute_mc_var(seed=len(self.breaches))

    @property
    def var(self) -> float:
        """The last parametric VaR computed by :meth:`refresh` (currency)."""
        return self.var_model.var

    @property
    def mc_var_value(self) -> float:
        """The last Monte Carlo VaR (currency)."""
        return self.var_model.mc_var

    # ---------------------------------------------------------------- continuous checks
    def continuous(self) -> list[Breach]:
        """Stop loss per position, daily loss, drawdown, Monte Carlo VaR; may change state or kill.

        Returns the breaches found; a STOP_LOSS breach asks the engine to close that position.
        """
        lim = self.limits
        pf = self.portfolio
        out: list[Breach] = []
        for iid, p in pf.positions.items():
            if p.qty:
                pnl = pf.position_pnl(iid)
                if pnl < -lim.stop_loss:
                    out.append(Breach(Reason.STOP_LOSS, {"pnl": pnl, "limit": lim.stop_loss, "qty": p.qty}, "close_position", iid))
        equity = pf.equity()
        pf.peak_equity = max(pf.peak_equity, equity)
        day_loss = pf.day_start_equity - equity
        drawdown = pf.peak_equity - equity
        DRAWDOWN.set(drawdown)
        DRAWDOWN_LIMIT.set(lim.max_drawdown)
        if day_loss > lim.daily_loss_limit:
            out.append(Breach(Reason.DAILY_LOSS, {"loss": day_loss, "limit": lim.daily_loss_limit}, "halt"))
        elif day_loss > 0.8 * lim.daily_loss_limit and self.state == TradingState.ACTIVE:
            out.append(Breach(Reason.DAILY_LOSS, {"loss": day_loss, "limit": lim.daily_loss_limit}, "reduce"))
        if drawdown > lim.max_drawdown:
            out.append(Breach(Reason.DRAWDOWN, {"drawdown": drawdown, "limit": lim.max_drawdown}, "halt"))
        if self.var_model.mc_var > lim.var_limit:
            out.append(Breach(Reason.MC_VAR, {"mc_var": self.var_model.mc_var, "limit": lim.var_limit}, "reduce"))
        for b in out:
            BREACHES.labels(b.reason.value).inc()
            self.breaches.append(b)
            if b.action == "halt":
                if lim.kill_on_breach:
                    self.kill(f"{b.reason.value}: {b.values}")
                elif self.state != TradingState.HALTED:
                    self.set_state(TradingState.HALTED, b.reason.value)
            elif b.action == "reduce" and self.state == TradingState.ACTIVE:
                self.set_state(TradingState.REDUCING, b.reason.value)
        return out
