"""A trading-core venue over a FIX 4.4 initiator session (a ``greekfire fix exchange``, or any FIX 4.4
counterparty that speaks the same order and market-data messages).

:class:`FixVenue` sends NewOrderSingle (D), OrderCancelReplaceRequest (G) and OrderCancelRequest (F) and turns
ExecutionReports (8), OrderCancelRejects (9), BusinessMessageRejects (j) and session Rejects (3) into
:class:`~greekfire.trading.model.VenueEvent` and MarketDataSnapshotFullRefresh (W) into
:class:`~greekfire.trading.model.Quote`. The session runs on its own :class:`~greekfire.fix.transport.FixThread`
(it is not thread-safe: it is only touched in that loop); what arrives waits in a thread-safe queue that
:meth:`FixVenue.poll` drains. Prices are integer ticks on the engine side and exact decimals on the wire.

Every order keeps its engine ``client_id``; an amend or a cancel goes out under a new ClOrdID with
OrigClOrdID (41) the current one, and the reports come back under the ``client_id`` the engine knows. Fills are
deduplicated by ExecID (17), so an ExecutionReport resent with PossDupFlag never fills twice.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from greekfire.core.errors import UnavailableError
from greekfire.core.settings import Settings
from greekfire.fix.message import FixMessage
from greekfire.fix.session import Application, Session, utc_timestamp
from greekfire.fix.setup import client_ssl, initiator_config, load_dictionary, session_store
from greekfire.fix.transport import FixInitiator, FixThread
from greekfire.trading.fixwire import (
    FIX_SIDE,
    FIX_TIF,
    OPEN_STATUS,
    instrument_fields,
    nearest_ticks,
    ticks_text,
)
from greekfire.trading.model import (
    Instrument,
    OrderType,
    Quote,
    TimeInForce,
    VenueEvent,
    VenueEventKind,
    VenueOrderState,
)
from greekfire.trading.orders import Order
from greekfire.trading.venues import Venue

log = logging.getLogger("greekfire.fix.venue")

K = VenueEventKind
# GTD goes out as GTC: the engine cancels it at its expiry itself
_TIF = {**FIX_TIF, TimeInForce.GTD: FIX_TIF[TimeInForce.GTC]}
_EXEC = {"0": K.ACCEPTED, "8": K.REJECTED, "F": K.FILL, "4": K.CANCELED, "5": K.REPLACED, "C": K.EXPIRED}


class _App(Application):
    def __init__(self, venue: FixVenue) -> None:
        self.venue = venue

    def on_logon(self, session: Session) -> None:
        self.venue._logged_on.set()
        self.venue.logons += 1

    def on_logout(self, session: Session) -> None:
        self.venue._logged_on.clear()

    def on_message(self, session: Session, msg: FixMessage) -> None:
        self.venue._on_message(msg)

    def on_admin(self, session: Session, msg: FixMessage) -> None:
        if msg.msg_type == "3":
            self.venue._on_message(msg)


class FixVenue(Venue):
    """A :class:`~greekfire.trading.venues.Venue` over one FIX initiator session (see the module docstring).

    ``host``/``port`` default to ``fix.host``/``fix.port``. Fees follow the simulated venues' convention
    (``trading.maker_fee``/``trading.taker_fee`` per contract) where a report carries no Commission (12).
    """

    def __init__(
        self,
        settings: Settings,
        instruments: list[Instrument],
        *,
        name: str = "FIX",
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        fs = settings.fix
        self.name = name
        self.settings = settings
        self.host = host or fs.host
        self.port = fs.port if port is None else port
        self.instruments = {i.instrument_id: i for i in instruments}
        self.maker_fee, self.taker_fee = settings.trading.maker_fee, settings.trading.taker_fee
        self.config = initiator_config(fs)
        self.session = Session(
            self.config, _App(self), session_store(settings, self.config), load_dictionary(settings)
        )
        self.initiator = FixInitiator(
            self.session,
            self.host,
            self.port,
            ssl=client_ssl(fs),
            reconnect_s=fs.reconnect_s,
            max_reconnect_s=fs.max_reconnect_s,
        )
        self.thread: FixThread | None = None
        self._logged_on = threading.Event()
        self.logons = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._boot = format(
            time.time_ns() // 1_000_000 % 16**8, "x"
        )  # amend/cancel ClOrdIDs: <client id>~<boot>.<n>
        self._n = 0
        self._cid_of: dict[str, str] = {}  # any ClOrdID we sent -> engine client id
        self._current: dict[str, str] = {}  # engine client id -> ClOrdID the exchange knows it by
        self._orders: dict[str, VenueOrderState] = {}  # engine client id -> last known state
        self._by_seq: dict[int, tuple[str, str]] = {}  # our MsgSeqNum -> (client id, MsgType)
        self._fills: list[VenueEvent] = []
        self._exec_ids: set[str] = set()
        self.duplicates = 0
        self._status_req = ""
        self._status_done = threading.Event()

    # ---------------------------------------------------------------- lifecycle
    def start(self, timeout_s: float = 10.0) -> None:
        """Connect and wait up to ``timeout_s`` seconds for the logon; UnavailableError naming host:port
        when the exchange does not answer (the initiator is stopped then)."""
        if self.thread is None:
            self.thread = FixThread(f"greekfire-fix-{self.name}")
            self.thread.spawn(self.initiator.run())
        if not self._logged_on.wait(timeout_s):
            self.stop(logout=False)
            raise UnavailableError(
                f"FIX exchange {self.host}:{self.port}",
                f"no logon within {timeout_s:g} s as {self.config.sender_comp_id} -> {self.config.target_comp_id}"
                " (is `greekfire fix exchange` running there?)",
            )
        self.request_status()

    def request_status(self, timeout_s: float = 3.0) -> bool:
        """Ask the exchange for every open order of ours (OrderMassStatusRequest, AF) and wait up to
        ``timeout_s`` seconds for the answers, which :meth:`report` then holds: after a restart of this
        process the engine's reconcile sees the orders still working there. False when no answer came."""
        self._status_done.clear()
        self._status_req = f"status-{self._boot}.{time.monotonic_ns()}"
        req = FixMessage([(35, "AF"), (584, self._status_req), (585, "7")])  # 7: all orders
        if self.thread is not None:
            self.thread.call(self.session.send, req)
        return self._status_done.wait(timeout_s)

    @property
    def logged_on(self) -> bool:
        """Whether the session is logged on now."""
        return self._logged_on.is_set()

    def wait_logon(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the session to be logged on."""
        return self._logged_on.wait(timeout_s)

    def stop(self, logout: bool = True) -> None:
        """Log out (``logout``), stop reconnecting, end the thread and close the store."""
        if self.thread is not None:
            try:
                self.thread.run(self.initiator.stop(logout=logout), timeout_s=10.0)
            finally:
                self.thread.stop()
                self.thread = None
        self.session.store.close()

    def counters(self) -> dict[str, int]:
        """The session's counters (sent, received, resent, gaps, rejected, garbled), logons, duplicates."""
        return {**self.session.counters, "logons": self.logons, "duplicate_reports": self.duplicates}

    # ---------------------------------------------------------------- requests (engine thread)
    def fees(self) -> tuple[float, float]:
        return self.maker_fee, self.taker_fee

    def tick_size(self, instrument_id: int) -> float:
        return self.instruments[instrument_id].tick_size

    def _clordid(self, client_id: str) -> str:
        with self._lock:
            self._n += 1
            return f"{client_id}~{self._boot}.{self._n}"

    def _send(self, client_id: str, msg: FixMessage, trace_id: str | None = None) -> None:
        if self.thread is None:
            raise UnavailableError(f"FIX exchange {self.host}:{self.port}", "the venue is not started")
        self.thread.call(self._send_now, client_id, msg, trace_id)

    def _send_now(self, client_id: str, msg: FixMessage, trace_id: str | None = None) -> None:  # FIX thread
        seq = self.session.send(msg)
        with self._lock:
            self._by_seq[seq] = (client_id, msg.msg_type)
        if trace_id is not None:  # the request's id travels with the call: this thread has its own context
            log.info("FIX %s: sent %s (35=%s, 34=%d)", self.name, client_id, msg.msg_type, seq,
                     extra={"trace_id": trace_id, "venue": self.name, "client_id": client_id})

    def submit(self, order: Order, now_ns: int) -> None:
        inst = self.instruments[order.instrument_id]
        cid = order.client_id
        m = FixMessage([(35, "D"), (11, cid)])
        instrument_fields(m, inst)
        m.append(54, FIX_SIDE[order.side])
        m.append(60, utc_timestamp()).append(38, order.qty)
        if order.ord_type == OrderType.MARKET:
            m.append(40, "1")
        else:
            m.append(40, "2").append(44, ticks_text(order.price_ticks or 0, inst.tick_size))
        m.append(59, _TIF.get(order.tif, "1"))
        if order.post_only:
            m.append(18, "6")
        with self._lock:
            self._cid_of[cid] = cid
            self._current[cid] = cid
            self._orders[cid] = VenueOrderState(
                cid, "", inst.instrument_id, int(order.side), order.qty, order.price_ticks or 0, 0, True
            )
        self._send(cid, m, order.trace_id)

    def _change(self, order: Order, msg_type: str) -> FixMessage:
        inst = self.instruments[order.instrument_id]
        cid = order.client_id
        new = self._clordid(cid)
        with self._lock:
            orig = self._current.get(cid, cid)
            self._cid_of[new] = cid
        m = FixMessage([(35, msg_type), (11, new), (41, orig)])
        instrument_fields(m, inst)
        m.append(54, FIX_SIDE[order.side])
        m.append(60, utc_timestamp())
        return m

    def amend(self, order: Order, new_qty: int, new_price_ticks: int, now_ns: int) -> None:
        m = self._change(order, "G")
        inst = self.instruments[order.instrument_id]
        m.append(38, new_qty).append(40, "2").append(44, ticks_text(new_price_ticks, inst.tick_size))
        m.append(59, _TIF.get(order.tif, "1"))
        self._send(order.client_id, m)

    def amend_many(self, amends: Sequence[tuple[Order, int, int]], now_ns: int) -> None:
        """One OrderCancelReplaceRequest per amend, in order (the session keeps them in sequence)."""
        for order, qty, price in amends:
            self.amend(order, qty, price, now_ns)

    def cancel(self, order: Order, now_ns: int) -> None:
        m = self._change(order, "F")
        m.append(38, order.qty)
        self._send(order.client_id, m)

    # ---------------------------------------------------------------- reports (FIX thread)
    def _on_message(self, msg: FixMessage) -> None:
        mt = msg.msg_type
        ev: VenueEvent | Quote | None
        try:
            if mt == "8":
                ev = self._exec_report(msg)
            elif mt == "9":
                ev = self._cancel_reject(msg)
            elif mt in ("j", "3"):
                ev = self._msg_reject(msg)
            elif mt == "W":
                ev = self._quote(msg)
            else:
                ev = None
        except (ValueError, KeyError, InvalidOperation) as e:
            log.warning("FIX %s: cannot read %s: %s (%s)", self.name, mt, e, msg.text())
            return
        if ev is not None:
            self._queue.put(ev)

    def _exec_report(self, msg: FixMessage) -> VenueEvent | None:
        if msg.get(150) == "I":
            self._status_report(msg)
            return None
        kind = _EXEC.get(msg.get(150) or "")
        if kind is None:
            return None
        clordid = msg.get(11) or ""
        with self._lock:
            cid = self._cid_of.get(clordid) or self._cid_of.get(msg.get(41) or "") or clordid.split("~", 1)[0]
        iid = int(msg.get(48) or -1)
        inst = self.instruments.get(iid)
        tick = inst.tick_size if inst is not None else 0.01
        exec_id = msg.get(17) or ""
        side = 1 if msg.get(54) == "1" else -1
        qty = int(Decimal(msg.get(38) or "0"))
        px = msg.get(44)
        limit = nearest_ticks(px, tick) if px else 0
        leaves, cum = int(Decimal(msg.get(151) or "0")), int(Decimal(msg.get(14) or "0"))
        oid = msg.get(37) or ""
        now = time.time_ns()
        with self._lock:
            if kind == K.FILL:
                if exec_id in self._exec_ids:
                    self.duplicates += 1
                    return None
                self._exec_ids.add(exec_id)
            if kind == K.REPLACED:
                self._current[cid] = clordid
            open_ = kind in (K.ACCEPTED, K.REPLACED) or (kind == K.FILL and leaves > 0)
            self._orders[cid] = VenueOrderState(cid, oid, iid, side, qty, limit, cum, open_)
        if kind == K.FILL:
            last_qty = int(Decimal(msg.get(32) or "0"))
            liq = "M" if msg.get(851) == "1" else "T"
            fee_text = msg.get(12)
            fee = (
                float(fee_text) if fee_text else (self.maker_fee if liq == "M" else self.taker_fee) * last_qty
            )
            ev = VenueEvent(
                K.FILL,
                self.name,
                cid,
                oid,
                last_qty,
                nearest_ticks(msg.get(31) or "0", tick),
                leaves,
                cum,
                exec_id,
                fee,
                liq,
                "",
                now,
                iid,
                side,
            )
            with self._lock:
                self._fills.append(ev)
            return ev
        reason = msg.get(58) or (f"OrdRejReason {msg.get(103)}" if kind == K.REJECTED else "")
        return VenueEvent(
            kind, self.name, cid, oid, qty, limit, leaves, cum, "", 0.0, "", reason, now, iid, side
        )

    def _cancel_reject(self, msg: FixMessage) -> VenueEvent:
        with self._lock:
            cid = (
                self._cid_of.get(msg.get(11) or "")
                or self._cid_of.get(msg.get(41) or "")
                or (msg.get(41) or "").split("~", 1)[0]
            )
        kind = K.REPLACE_REJECT if msg.get(434) == "2" else K.CANCEL_REJECT
        reason = msg.get(58) or f"CxlRejReason {msg.get(102)}"
        return VenueEvent(kind, self.name, cid, msg.get(37) or "", reason=reason, ts_ns=time.time_ns())

    def _status_report(self, msg: FixMessage) -> None:
        """An Order Status report (150=I) answering our OrderMassStatusRequest: the exchange's view of one of
        our open orders, for :meth:`report` (and so for the engine's reconcile after we restarted)."""
        clordid = msg.get(11) or ""
        cid = clordid.split("~", 1)[0]
        iid = int(msg.get(48) or -1)
        inst = self.instruments.get(iid)
        px = msg.get(44)
        limit = nearest_ticks(px, inst.tick_size if inst is not None else 0.01) if px else 0
        with self._lock:
            self._cid_of.setdefault(clordid, cid)
            self._current.setdefault(cid, clordid)
            self._orders[cid] = VenueOrderState(
                cid, msg.get(37) or "", iid, 1 if msg.get(54) == "1" else -1, int(Decimal(msg.get(38) or "0")),
                limit, int(Decimal(msg.get(14) or "0")), (msg.get(39) or "") in OPEN_STATUS,
            )
        if msg.get(584) == self._status_req and msg.get(912) == "Y":
            self._status_done.set()

    def _msg_reject(self, msg: FixMessage) -> VenueEvent | None:
        if msg.msg_type == "j" and msg.get(372) == "AF" and msg.get(379) == self._status_req:
            self._status_done.set()  # no open orders
            return None
        with self._lock:
            ref = self._by_seq.get(int(msg.get(45) or 0))
        if ref is None:
            return None
        cid, mt = ref
        kind = {"D": K.REJECTED, "G": K.REPLACE_REJECT, "F": K.CANCEL_REJECT}.get(mt)
        if kind is None:
            return None
        if kind == K.REJECTED:
            with self._lock:
                st = self._orders.get(cid)
                if st is not None:
                    self._orders[cid] = VenueOrderState(
                        st.client_id,
                        st.venue_order_id,
                        st.instrument_id,
                        st.side,
                        st.qty,
                        st.price_ticks,
                        st.cum_qty,
                        False,
                    )
        reason = msg.get(58) or ("business_reject" if msg.msg_type == "j" else "session_reject")
        return VenueEvent(kind, self.name, cid, reason=reason, ts_ns=time.time_ns())

    def _quote(self, msg: FixMessage) -> Quote | None:
        iid = int(msg.get(48) or -1)
        if iid not in self.instruments or msg.get(43) == "Y":  # a resent snapshot is stale: drop it
            return None
        bid = ask = math.nan
        bid_size = ask_size = 0
        entry: str | None = None
        for t, v in msg.fields:
            if t == 269:
                entry = v
            elif t == 270 and entry in ("0", "1"):
                if entry == "0":
                    bid = float(v)
                else:
                    ask = float(v)
            elif t == 271 and entry in ("0", "1"):
                if entry == "0":
                    bid_size = int(Decimal(v))
                else:
                    ask_size = int(Decimal(v))
        return Quote(iid, bid, ask, bid_size, ask_size, time.time_ns(), self.name)

    # ---------------------------------------------------------------- engine side
    def poll(self, now_ns: int) -> list[Any]:
        out: list[Any] = []
        q = self._queue
        while True:
            try:
                out.append(q.get_nowait())
            except queue.Empty:
                return out

    def report(self) -> tuple[list[VenueOrderState], list[VenueEvent]]:
        with self._lock:
            return [s for s in self._orders.values() if s.open], list(self._fills)


def fix_venues(settings: Settings, instruments: list[Instrument]) -> list[Venue]:
    """The trader's FIX venue (one, named "FIX") at ``fix.host:fix.port``, connected and logged on
    (UnavailableError when the exchange does not answer)."""
    v = FixVenue(settings, instruments)
    v.start(timeout_s=max(5.0, 2 * settings.fix.reconnect_s))
    return [v]
