"""Recovery: the engine's state to the database and back, and reconciliation with the venues.

:func:`snapshot` writes, in one transaction, the orders changed and the fills applied since the last one,
the portfolio, the risk state and limits, and the new audit entries (order prices in ticks). :func:`restore`
resumes from the last snapshot (a snapshot of the older format, order prices in currency, is converted to
ticks on load) under a new incarnation (so new client ids never collide with those of orders a crashed engine
sent after its last snapshot). :func:`reconcile` then compares every venue's view with ours: fills we have
not seen are applied once, orders the venue has that we lost are adopted (and, being nobody's, canceled),
and orders the venue no longer has are closed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from greekfire.trading.model import Side, VenueEvent
from greekfire.trading.orders import Order, OrderStatus

if TYPE_CHECKING:
    from greekfire.trading.engine import TradingEngine

log = logging.getLogger(__name__)


def snapshot(eng: TradingEngine, now_ns: int | None = None) -> None:
    """Write the engine's state to its store in one transaction (nothing without a store)."""
    if eng.store is None:
        return
    now = now_ns or eng.clock_ns()
    ex, risk = eng.executions, eng.risk
    changed = [eng.oms.orders[c].to_dict() for c in ex.dirty_orders if c in eng.oms.orders]
    state = {
        "portfolio": eng.portfolio.snapshot(),
        "engine": {"incarnation": eng.entry.incarnation, "seq": eng.entry.seq, "audit_seq": eng.audit.seq},
        "risk": {"state": risk.state.value, "killed": risk.killed, "kill_reason": risk.kill_reason,
                 "limits": risk.limits.model_dump()},
    }
    eng.store.save(now, state, changed, ex.new_fills, eng.audit.flush())
    ex.new_fills = []
    ex.dirty_orders.clear()
    eng.last_snapshot_ns = now


def restore(eng: TradingEngine) -> bool:
    """Resume from the store's last snapshot; True when there was one. Call before :func:`reconcile`."""
    if eng.store is None:
        return False
    snap = eng.store.load()
    if snap is None:
        snapshot(eng)  # record incarnation 1 at once so a crash before the first timer is safe
        return False
    st = snap["state"]
    eng.portfolio.restore(st["portfolio"])
    eng.oms.restore(snap["orders"], {i: inst.tick_size for i, inst in eng.instruments.items()})
    # rows of the older format (prices in currency) are written again, in ticks, by the snapshot below
    eng.executions.dirty_orders.update(d["client_id"] for d in snap["orders"] if "price_ticks" not in d)
    saved = st.get("engine", {})
    eng.entry.incarnation = int(saved.get("incarnation", 0)) + 1  # ids never collide with a lost session's
    eng.entry.seq = 0
    eng.audit.flush()
    eng.audit.resume(int(saved.get("audit_seq", 0)))
    risk = st.get("risk", {})
    if risk.get("limits"):
        eng.risk.set_limits(**{k: v for k, v in risk["limits"].items() if getattr(eng.risk.limits, k) != v})
    if risk.get("killed"):
        eng.risk.kill(risk.get("kill_reason") or "restored")
    eng.portfolio.revalue(eng.clock_ns(), force=True)
    eng.risk.refresh()
    eng.audit.append(eng.clock_ns(), "engine", "restore", {"orders": len(snap["orders"]), "fills": len(snap["fills"])})
    snapshot(eng)
    log.info("engine restored: %d orders, %d fills, incarnation %d", len(snap["orders"]), len(snap["fills"]),
             eng.entry.incarnation)
    return True


def reconcile(eng: TradingEngine) -> dict[str, Any]:
    """After a (re)connect: apply every venue fill we have not seen (once), adopt orders the venue has that we
    lost, and close orders the venue no longer has. Returns counts per venue."""
    now = eng.clock_ns()
    out: dict[str, Any] = {}
    oms = eng.oms
    for name, venue in eng.venues.items():
        states, fills = venue.report()
        prefix = f"{eng.engine_id}."
        # orders we lost (sent after the last snapshot): adopt them from the venue's view
        recovered: list[str] = []
        known = oms.orders
        by_cid: dict[str, list[VenueEvent]] = {}
        for f in fills:
            by_cid.setdefault(f.client_id, []).append(f)
        open_states = {s.client_id: s for s in states}
        for cid in set(by_cid) | set(open_states):
            if cid in known or not cid.startswith(prefix):
                continue
            s = open_states.get(cid)
            fl = by_cid.get(cid, [])
            if s is not None:
                lost = Order(cid, s.instrument_id, Side(s.side), s.qty, s.price_ticks, strategy_id="", ts_ns=now)
            else:
                lost = Order(cid, fl[0].instrument_id, Side(fl[0].side), sum(f.qty for f in fl), fl[0].price_ticks,
                             ts_ns=now)
            lost.venue = name
            oms.add(lost)
            oms.transition(lost, OrderStatus.SUBMITTED, now, "recovered")
            oms.transition(lost, OrderStatus.ACCEPTED, now, "recovered")
            recovered.append(cid)
        # the venue's terms win: an amend acknowledged there after our last snapshot changed qty/price
        for cid, st in open_states.items():
            o = known.get(cid)
            if o is None:
                continue
            if o.qty != st.qty or (o.price_ticks is not None and o.price_ticks != st.price_ticks):
                eng.audit.append(now, "reconcile", cid, {"qty": [o.qty, st.qty], "price_ticks": [o.price_ticks, st.price_ticks]})
                o.qty, o.price_ticks = st.qty, st.price_ticks
            if o.status in (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE):
                oms.transition(o, o.resting_status(), now, "reconcile_live_at_venue")
        for cid, fl in by_cid.items():
            o = known.get(cid)
            total = sum(f.qty for f in fl)
            if o is not None and total > o.qty:  # closed at the venue after an upsize we did not save
                eng.audit.append(now, "reconcile", cid, {"qty": [o.qty, total]})
                o.qty = total
        res = oms.reconcile(name, states, fills, now)
        for f in res["missing_fills"]:
            order = oms.get(f.client_id)
            if order is not None:
                eng.executions.apply_fill(order, f)
        for cid in res["closed"]:
            o = oms.get(cid)
            if o is not None and o.is_open:
                oms.transition(o, OrderStatus.CANCELED, now, "reconcile_not_at_venue")
        # a recovered order that is still working belongs to no strategy we know: take it off the book
        for cid in recovered:
            o = oms.get(cid)
            if o is not None and o.is_open and o.can(OrderStatus.PENDING_CANCEL):
                eng.cancel(cid)
        out[name] = {"missing_fills": len(res["missing_fills"]), "closed": len(res["closed"]),
                     "adopted": len(recovered), "qty_mismatch": len(res["qty_mismatch"])}
    eng.end_batch()
    snapshot(eng, now)
    return out
