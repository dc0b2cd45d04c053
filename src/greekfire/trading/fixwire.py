"""FIX 4.4 order and market-data conventions shared by :mod:`greekfire.trading.fixexchange` and
:mod:`greekfire.trading.fixvenue`: side and time-in-force codes, exact price conversion between integer ticks
and FIX decimals, the instrument fields (55 Symbol, 48 SecurityID = instrument id, 22 SecurityIDSource 8), the
market-data snapshot (W), and the orders a session store's sent ExecutionReports leave open.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from greekfire.fix.message import FixMessage, GarbledMessage, parse
from greekfire.fix.session import utc_timestamp
from greekfire.fix.store import SessionStore
from greekfire.trading.model import Instrument, OrderType, Side, TimeInForce

log = logging.getLogger("greekfire.fix.exchange")

FIX_SIDE = {Side.BUY: "1", Side.SELL: "2"}
SIDE_OF = {"1": Side.BUY, "2": Side.SELL}
FIX_TIF = {
    TimeInForce.DAY: "0",
    TimeInForce.GTC: "1",
    TimeInForce.IOC: "3",
    TimeInForce.FOK: "4",
    TimeInForce.GTD: "6",
}
TIF_OF = {v: k for k, v in FIX_TIF.items()}
ORD_REJ = {"unknown_instrument": "1", "duplicate_order_id": "6", "fractional_qty": "13", "bad_qty": "13"}
OPEN_STATUS = frozenset("016AE")  # OrdStatus of a working order


@dataclass(slots=True)
class ExchangeOrder:
    """A client order on the exchange (``sim_id`` is its id on the simulated venue)."""

    sim_id: str
    clordid: str
    inst: Instrument
    side: Side
    ord_type: OrderType
    qty: int
    price: str | None  # decimal text, None for market orders
    order_id: str = "NONE"
    cum: int = 0
    notional: Decimal = Decimal(0)
    chain: list[str] = field(default_factory=list)


def price_text(ticks: int, tick_size: float) -> str:
    """Integer ticks -> the decimal price text of FIX (exact: no binary float in between)."""
    d = Decimal(ticks) * Decimal(str(tick_size))
    return format(d.normalize(), "f")


def ticks_of(text: str, tick_size: float) -> int | None:
    """FIX decimal price text -> integer ticks; None when it is not a whole number of ticks."""
    q = Decimal(text) / Decimal(str(tick_size))
    return int(q) if q == q.to_integral_value() else None


def ticks_text(ticks: float, tick_size: float) -> str:
    """Ticks (an int; a non-whole float goes out as it is, for the exchange to refuse) -> decimal price text."""
    d = Decimal(repr(ticks) if isinstance(ticks, float) else ticks) * Decimal(str(tick_size))
    return format(d.normalize(), "f")


def nearest_ticks(text: str, tick_size: float) -> int:
    """Decimal price text -> integer ticks, rounded to the nearest tick (an exchange prices on its grid)."""
    return int((Decimal(text) / Decimal(str(tick_size))).to_integral_value())


def check_order(
    qty_text: str | None, px: str | None, limit: bool, inst: Instrument | None
) -> tuple[str, int, int | None]:
    """Check an order's OrderQty (38) and, for a limit order, Price (44) on ``inst`` (None: unknown).
    Returns (reason, whole quantity, limit in ticks); reason '' when good, else one of unknown_instrument,
    fractional_qty, bad_qty, missing_price, bad_price, off_tick, bad_number (the matching engine's codes)."""
    try:
        dq = Decimal(qty_text or "0")
        qty = int(dq) if dq.is_finite() else 0
        if inst is None:
            return "unknown_instrument", qty, None
        if dq != dq.to_integral_value():
            return "fractional_qty", qty, None
        if qty <= 0:
            return "bad_qty", qty, None
        if not limit:
            return "", qty, None
        if px is None:
            return "missing_price", qty, None
        if not Decimal(px) > 0:
            return "bad_price", qty, None
        ticks = ticks_of(px, inst.tick_size)
        return ("off_tick" if ticks is None else ""), qty, ticks
    except (InvalidOperation, ValueError, OverflowError):
        return "bad_number", 0, None


def instrument_fields(m: FixMessage, inst: Instrument) -> None:
    """Append 55 Symbol, 48 SecurityID (the instrument id) and 22 SecurityIDSource 8 (exchange symbol)."""
    m.append(55, inst.symbol).append(48, inst.instrument_id).append(22, "8")


def md_snapshot(inst: Instrument, top: tuple[int, int, int, int], req_id: str) -> FixMessage:
    """A MarketDataSnapshotFullRefresh (W) of ``top`` = (bid ticks, bid size, ask ticks, ask size); an
    empty side (size 0) has no entry."""
    m = FixMessage([(35, "W"), (262, req_id)])
    instrument_fields(m, inst)
    entries = [(k, p, q) for k, p, q in (("0", top[0], top[1]), ("1", top[2], top[3])) if q > 0]
    m.append(268, len(entries))
    for k, p, q in entries:
        m.append(269, k).append(270, price_text(p, inst.tick_size)).append(271, q)
    return m


def open_at_crash(store: SessionStore, session_id: str) -> list[FixMessage]:
    """Canceled ExecutionReports (58 "exchange restarted"; ExecID and TransactTime are set when sending) for
    the orders that the ExecutionReports sent from ``store`` leave open: a restarted exchange's books are empty."""
    last: dict[str, FixMessage] = {}
    end = store.next_sender_seq() - 1
    for begin in range(1, end + 1, 5000):
        for _, raw in store.sent(begin, min(end, begin + 4999)):
            try:
                m = parse(raw)
            except GarbledMessage:
                continue
            if m.msg_type == "8" and m.get(37, "NONE") != "NONE":
                last[m.get(37) or ""] = m
    out = []
    for m in last.values():
        if (m.get(39) or "") not in OPEN_STATUS:
            continue
        keep = {37, 11, 55, 48, 22, 54, 38, 40, 44, 14, 6}
        r = FixMessage([(35, "8")] + [(t, v) for t, v in m.fields if t in keep and t != 17])
        r.set(150, "4").set(39, "4").set(151, 0).set(58, "exchange restarted")
        out.append(r)
    if out:
        log.info(
            "FIX %s: %d orders open at the last stop will be reported canceled",
            session_id,
            len(out),
        )
    return out


def exec_report(
    o: ExchangeOrder,
    exec_id: str,
    exec_type: str,
    status: str,
    *,
    leaves: int = 0,
    text: str = "",
    clordid: str | None = None,
    orig: str | None = None,
    extra: Sequence[tuple[int, Any]] = (),
) -> FixMessage:
    """An ExecutionReport (8) of ``o``: ExecType (150) ``exec_type``, OrdStatus (39) ``status``, LeavesQty
    ``leaves``; ClOrdID ``clordid`` (default the order's), OrigClOrdID ``orig``, Text ``text`` and ``extra``
    fields (LastPx, LastQty, ...). Price (44) only for a limit order."""
    m = FixMessage([(35, "8"), (37, o.order_id), (11, clordid or o.clordid)])
    if orig:
        m.append(41, orig)
    m.append(17, exec_id).append(150, exec_type).append(39, status)
    instrument_fields(m, o.inst)
    m.append(54, FIX_SIDE[o.side]).append(38, o.qty).append(
        40, "1" if o.ord_type == OrderType.MARKET else "2"
    )
    if o.price is not None:
        m.append(44, o.price)
    for t, v in extra:
        m.append(t, v)
    avg = o.notional / o.cum if o.cum else Decimal(0)
    m.append(151, leaves).append(14, o.cum).append(6, format(avg.normalize(), "f")).append(
        60, utc_timestamp()
    )
    if text:
        m.append(58, text)
    return m


def base36(n: int) -> str:
    """``n`` >= 0 in base 36 (short, sortable ids)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"
