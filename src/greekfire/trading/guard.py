"""What the engine does on its own to stay inside its limits: the kill switch's cancels, continuous-limit
breaches (a STOP_LOSS closes its position), GTD expiry, and the end of the trading day.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from greekfire.trading.model import OrderType, Side, TimeInForce
from greekfire.trading.orders import OrderStatus

if TYPE_CHECKING:
    from greekfire.trading.engine import TradingEngine


def on_kill(eng: TradingEngine, reason: str) -> None:
    """The kill switch tripped: cancel every open order, audit and publish it."""
    n = eng.cancel_all()
    eng.audit.append(eng.clock_ns(), "risk", "kill_switch", {"reason": reason, "canceled": n})
    eng.bus.publish("risk", {"event": "kill_switch", "reason": reason, "canceled": n})


def expire_gtd(eng: TradingEngine, now_ns: int) -> None:
    """Cancel every GTD order whose ``expire_ns`` has come (venues keep them as GTC)."""
    for o in eng.oms.open_orders():
        if o.tif == TimeInForce.GTD and o.expire_ns and now_ns >= o.expire_ns and o.status != OrderStatus.PENDING_CANCEL:
            eng.cancel(o.client_id)


def watch(eng: TradingEngine, now_ns: int, *, monte_carlo: bool) -> None:
    """The timer's risk duties: hold the kill switch, refresh VaR (and the Monte Carlo VaR when asked),
    run the continuous checks, and act on their breaches."""
    if eng.risk.killed:  # the kill switch holds: whatever is still open (acked after the kill) is canceled
        eng.cancel_all()
    eng.risk.refresh(now_ns)
    if monte_carlo:
        eng.risk.compute_mc_var()
    for b in eng.risk.continuous():
        eng.audit.append(now_ns, "risk", b.reason.value, {"values": b.values, "action": b.action})
        eng.bus.publish("risk", {"event": "breach", "reason": b.reason.value, "values": b.values, "action": b.action})
        if b.action == "close_position" and b.instrument_id is not None:
            close_position(eng, b.instrument_id)


def close_position(eng: TradingEngine, instrument_id: int) -> None:
    """Cancel the instrument's orders and send a reduce-only market IOC for the whole position."""
    pos = eng.portfolio.positions.get(instrument_id)
    if not pos or not pos.qty:
        return
    eng.cancel_all(instrument_id=instrument_id)
    side = Side.SELL if pos.qty > 0 else Side.BUY
    eng.submit(eng.new_order(instrument_id, side, abs(pos.qty), None, OrderType.MARKET, TimeInForce.IOC,
                             strategy_id="risk", reduce_only=True))


def end_of_day(eng: TradingEngine) -> None:
    """Close the trading day: venues expire DAY orders, the daily-loss baseline restarts from equity."""
    now = eng.clock_ns()
    for v in eng.venues.values():
        eod = getattr(v, "end_of_day", None)
        if eod is not None:
            eod(now)
    eng.portfolio.day_start_equity = eng.portfolio.equity()
    eng.audit.append(now, "engine", "end_of_day", {"equity": eng.portfolio.day_start_equity})
