"""The built-in exchange simulator over real FIX 4.4 (``greekfire fix exchange``).

:class:`FixExchange` is a FIX acceptor (one session per client CompID, ``fix.clients``) in front of a
:class:`~greekfire.trading.simvenue.SimulatedVenue` (no latency, the paper fees and background flow), whose
synthetic participants quote around a :class:`~greekfire.trading.synthetic.SyntheticMarket` stepped every
millisecond. NewOrderSingle (D), OrderCancelReplaceRequest (G) and OrderCancelRequest (F) go to the books;
what happens to a client's orders comes back as ExecutionReports (8) and OrderCancelRejects (9). Every
``fix.quote_interval_ms`` each logged-on session gets a MarketDataSnapshotFullRefresh (W) per instrument whose
top of book changed (no subscription needed; a MarketDataRequest (V) is answered with snapshots).

Prices are decimals on the wire and integer ticks on the books (converted here with the instrument's
``tick_size``, exactly). Sequence numbers and sent messages live in the session stores (``fix.store_url``), so
after a crash the exchange finds the orders that were open from its own sent ExecutionReports and, once the
client logs on again, reports each Canceled ("exchange restarted"): its books start empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from greekfire.core.settings import Settings
from greekfire.fix.message import FixMessage, GarbledMessage, parse
from greekfire.fix.session import Application, Session, UnsupportedMessageType, utc_timestamp
from greekfire.fix.setup import exchange_configs, load_dictionary, server_ssl, session_store
from greekfire.fix.transport import FixAcceptor
from greekfire.trading.model import Instrument, OrderType, Side, TimeInForce, VenueEvent, VenueEventKind
from greekfire.trading.orders import Order
from greekfire.trading.simvenue import SimulatedVenue
from greekfire.trading.synthetic import SyntheticMarket

log = logging.getLogger("greekfire.fix.exchange")

K = VenueEventKind
FIX_SIDE = {Side.BUY: "1", Side.SELL: "2"}
SIDE_OF = {"1": Side.BUY, "2": Side.SELL}
FIX_TIF = {TimeInForce.DAY: "0", TimeInForce.GTC: "1", TimeInForce.IOC: "3", TimeInForce.FOK: "4",
           TimeInForce.GTD: "6"}
TIF_OF = {v: k for k, v in FIX_TIF.items()}
ORD_REJ = {"unknown_instrument": "1", "duplicate_order_id": "6", "fractional_qty": "13", "bad_qty": "13"}
OPEN_STATUS = frozenset("016AE")  # OrdStatus of a working order
STEP_S = 0.001


def price_text(ticks: int, tick_size: float) -> str:
    """Integer ticks -> the decimal price text of FIX (exact: no binary float in between)."""
    d = Decimal(ticks) * Decimal(str(tick_size))
    return format(d.normalize(), "f")


def ticks_of(text: str, tick_size: float) -> int | None:
    """FIX decimal price text -> integer ticks; None when it is not a whole number of ticks."""
    q = Decimal(text) / Decimal(str(tick_size))
    return int(q) if q == q.to_integral_value() else None


@dataclass(slots=True)
class _Ord:
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


@dataclass(slots=True)
class _Client:
    """One client session's state."""

    comp_id: str
    session: Session
    orders: dict[str, _Ord] = field(default_factory=dict)        # sim id -> order
    by_clordid: dict[str, str] = field(default_factory=dict)     # any ClOrdID of the chain -> sim id
    pending: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # sim id -> (kind, new, orig)
    recovered: list[FixMessage] = field(default_factory=list)    # Canceled reports owed after a restart
    tops: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)


class _App(Application):
    def __init__(self, ex: FixExchange) -> None:
        self.ex = ex

    def on_logon(self, session: Session) -> None:
        self.ex._on_logon(session)

    def on_message(self, session: Session, msg: FixMessage) -> None:
        self.ex._on_message(session, msg)


class FixExchange:
    """The exchange simulator over FIX 4.4 (see the module docstring).

    ``host``/``port`` default to ``fix.host``/``fix.port`` (port 0: any free port, :meth:`start` returns it).
    ``counters``: orders, fills, rejects, cancels, replaces, snapshots (W sent), restart_cancels.
    """

    def __init__(self, settings: Settings, instruments: list[Instrument] | None = None, *,
                 host: str | None = None, port: int | None = None) -> None:
        from greekfire.trading.build import default_instruments  # build imports the engine: keep it lazy

        fs, ts = settings.fix, settings.trading
        self.settings = settings
        self.host = host or fs.host
        self.port = fs.port if port is None else port
        self.instruments = instruments or default_instruments()
        self.by_id = {i.instrument_id: i for i in self.instruments}
        self.by_symbol = {i.symbol: i for i in self.instruments}
        self.market = SyntheticMarket(self.instruments, seed=ts.seed)
        self.venue = SimulatedVenue("FIXEX", self.instruments, self.market.fair_value, latency_us=0.0,
                                    jitter_us=0.0, maker_fee=ts.maker_fee, taker_fee=ts.taker_fee,
                                    flow_rate_hz=ts.background_rate_hz, seed=ts.seed)
        self.venue.seed_books(now_ns=time.time_ns())
        self.run_id = _base36(time.time_ns() // 1_000_000)
        self._exec_seq = 0
        dd = load_dictionary(settings)
        app = _App(self)
        self.clients: dict[str, _Client] = {}
        for cfg in exchange_configs(fs):
            s = Session(cfg, app, session_store(settings, cfg), dd)
            c = _Client(cfg.target_comp_id, s)
            c.recovered = self._open_at_crash(s)
            self.clients[c.comp_id] = c
        self._by_session = {id(c.session): c for c in self.clients.values()}
        self.quote_interval_ns = int(fs.quote_interval_ms * 1e6)
        self.acceptor: FixAcceptor | None = None
        self._task: asyncio.Task[None] | None = None
        self.counters = {"orders": 0, "fills": 0, "rejects": 0, "cancels": 0, "replaces": 0, "snapshots": 0,
                         "restart_cancels": 0}

    # ---------------------------------------------------------------- lifecycle
    @property
    def sessions_logged_on(self) -> int:
        """How many client sessions are logged on now."""
        return sum(c.session.is_logged_on for c in self.clients.values())

    async def start(self) -> int:
        """Listen and start the books; returns the bound port."""
        self.acceptor = FixAcceptor([c.session for c in self.clients.values()], self.host, self.port,
                                    ssl=server_ssl(self.settings.fix))
        self.port = await self.acceptor.start()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self.port

    async def stop(self, logout: bool = True, timeout_s: float = 2.0) -> None:
        """Stop: log every session out (``logout``; False drops the connections as a crash would), stop
        listening, close the stores."""
        if logout:
            for c in self.clients.values():
                if c.session.is_logged_on:
                    c.session.logout("exchange stopping")
            for _ in range(int(timeout_s / 0.02)):
                if not any(c.session.is_connected for c in self.clients.values()):
                    break
                await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for c in self.clients.values():
            # drop the connection through the session first: FixAcceptor.stop() marks a connection closed
            # before it closes it, and so leaves the socket open (the client would not notice the stop)
            if c.session.is_connected:
                c.session.disconnect("exchange stopping")
        if self.acceptor is not None:
            await self.acceptor.stop()
        for c in self.clients.values():
            c.session.store.close()

    def serve(self, stop: threading.Event | float | None = None) -> dict[str, int]:
        """Run until ``stop`` (an Event that gets set, or a duration in seconds; None: until interrupted);
        returns the counters."""

        async def main() -> None:
            port = await self.start()
            log.info("FIX exchange %s listening on %s:%d", self.settings.fix.exchange_comp_id, self.host, port)
            t_end = time.monotonic() + stop if isinstance(stop, int | float) else None
            try:
                while not (isinstance(stop, threading.Event) and stop.is_set()):
                    if t_end is not None and time.monotonic() >= t_end:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await self.stop()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())
        return self.stats()

    def stats(self) -> dict[str, int]:
        """The counters and the number of sessions logged on."""
        return {**self.counters, "sessions_logged_on": self.sessions_logged_on}

    async def _run(self) -> None:
        next_md = 0
        while True:
            now = time.time_ns()
            try:
                self.market.step(now)
                self._pump(now)
                if now >= next_md:
                    self._publish_md()
                    next_md = now + self.quote_interval_ns
            except Exception:  # the books must keep running
                log.exception("FIX exchange step failed")
            await asyncio.sleep(STEP_S)

    # ---------------------------------------------------------------- sessions
    def _on_logon(self, session: Session) -> None:
        c = self._by_session[id(session)]
        c.tops.clear()  # a full picture for the new connection
        for msg in c.recovered:
            self._exec_seq += 1
            msg.set(17, f"{self.run_id}-{self._exec_seq}").set(60, utc_timestamp())
            session.send(msg)
            self.counters["restart_cancels"] += 1
        c.recovered = []

    def _on_message(self, session: Session, msg: FixMessage) -> None:
        c = self._by_session[id(session)]
        mt = msg.msg_type
        if mt == "D":
            self._new_order(c, msg)
        elif mt in ("F", "G"):
            self._cancel_replace(c, msg, mt == "G")
        elif mt == "V":
            self._md_request(c, msg)
        else:
            raise UnsupportedMessageType(mt)
        self._pump(time.time_ns())

    def _instrument(self, msg: FixMessage) -> Instrument | None:
        sid = msg.get(48)
        if sid is not None:
            try:
                return self.by_id.get(int(sid))
            except ValueError:
                return None
        return self.by_symbol.get(msg.get(55) or "")

    def _new_order(self, c: _Client, msg: FixMessage) -> None:
        self.counters["orders"] += 1
        clordid = msg.get(11) or ""
        inst = self._instrument(msg)
        side = SIDE_OF.get(msg.get(54) or "", Side.BUY)
        ord_type = OrderType.MARKET if msg.get(40) == "1" else OrderType.LIMIT
        o = _Ord(f"{c.comp_id}|{clordid}", clordid, inst or self.instruments[0], side, ord_type, 0,
                 msg.get(44) if ord_type == OrderType.LIMIT else None, chain=[clordid])
        reason, qty, ticks = "", 0, None
        try:
            dq = Decimal(msg.get(38) or "0")
            if dq != dq.to_integral_value():
                reason = "fractional_qty"
            qty = int(dq)
            if inst is None:
                reason = "unknown_instrument"
            elif not reason and qty <= 0:
                reason = "bad_qty"
            elif ord_type == OrderType.LIMIT:
                if o.price is None:
                    reason = "missing_price"
                elif Decimal(o.price) <= 0:
                    reason = "bad_price"
                else:
                    ticks = ticks_of(o.price, inst.tick_size)
                    reason = reason or ("off_tick" if ticks is None else "")
        except InvalidOperation:
            reason = reason or "bad_number"
        if not reason and clordid in c.by_clordid:
            reason = "duplicate_order_id"
        o.qty = qty
        if reason:
            self.counters["rejects"] += 1
            self._report(c, o, "8", "8", text=reason, extra=[(103, ORD_REJ.get(reason, "99"))])
            return
        assert inst is not None
        c.orders[o.sim_id] = o
        c.by_clordid[clordid] = o.sim_id
        tif = TIF_OF.get(msg.get(59) or "1", TimeInForce.GTC)
        post_only = "6" in (msg.get(18) or "").split()
        self.venue.submit(Order(o.sim_id, inst.instrument_id, side, qty, ticks, ord_type, tif,
                                post_only=post_only), time.time_ns())

    def _cancel_replace(self, c: _Client, msg: FixMessage, replace: bool) -> None:
        clordid, orig = msg.get(11) or "", msg.get(41) or ""
        sim_id = c.by_clordid.get(orig)
        o = c.orders.get(sim_id or "")
        if o is None:
            self._cancel_reject(c, None, clordid, orig, replace, "unknown_order", "1")
            return
        if clordid in c.by_clordid:
            self._cancel_reject(c, o, clordid, orig, replace, "duplicate_order_id", "6")
            return
        order = Order(o.sim_id, o.inst.instrument_id, o.side, o.qty, None)
        c.pending[o.sim_id] = ("G" if replace else "F", clordid, orig)
        c.by_clordid[clordid] = o.sim_id
        if not replace:
            self.venue.cancel(order, time.time_ns())
            return
        reason, qty, ticks = "", o.qty, None
        try:
            dq = Decimal(msg.get(38) or str(o.qty))
            qty = int(dq)
            px = msg.get(44) or o.price
            if dq != dq.to_integral_value():
                reason = "fractional_qty"
            elif qty <= 0:
                reason = "bad_qty"
            elif o.ord_type != OrderType.LIMIT or px is None:
                reason = "not_a_limit_order"
            else:
                ticks = ticks_of(px, o.inst.tick_size)
                reason = "off_tick" if ticks is None else ""
        except InvalidOperation:
            reason = "bad_number"
        if reason or ticks is None:
            del c.pending[o.sim_id]
            self._cancel_reject(c, o, clordid, orig, True, reason, "99")
            return
        self.venue.amend(order, qty, ticks, time.time_ns())

    # ---------------------------------------------------------------- venue events -> FIX
    def _pump(self, now_ns: int) -> None:
        for ev in self.venue.poll(now_ns):
            if type(ev) is VenueEvent:
                comp = ev.client_id.split("|", 1)[0]
                c = self.clients.get(comp)
                o = c.orders.get(ev.client_id) if c is not None else None
                if c is not None and o is not None:
                    self._on_event(c, o, ev)

    def _on_event(self, c: _Client, o: _Ord, ev: VenueEvent) -> None:
        if ev.venue_order_id:
            o.order_id = f"{self.run_id}-{ev.venue_order_id.rsplit('-', 1)[-1]}"
        kind = ev.kind
        if kind == K.ACCEPTED:
            self._report(c, o, "0", "0", leaves=ev.leaves_qty)
        elif kind == K.REJECTED:
            self.counters["rejects"] += 1
            self._forget(c, o)
            self._report(c, o, "8", "8", text=ev.reason, extra=[(103, ORD_REJ.get(ev.reason, "99"))])
        elif kind == K.FILL:
            self.counters["fills"] += 1
            px = price_text(ev.price_ticks, o.inst.tick_size)
            o.cum = ev.cum_qty
            o.notional += Decimal(px) * ev.qty
            extra = [(31, px), (32, ev.qty), (851, "1" if ev.liquidity == "M" else "2"),
                     (12, format(Decimal(str(round(ev.fee, 10))).normalize(), "f")), (13, "3")]
            self._report(c, o, "F", "2" if ev.leaves_qty == 0 else "1", leaves=ev.leaves_qty, extra=extra)
            if ev.leaves_qty == 0:
                self._forget(c, o)
        elif kind in (K.CANCELED, K.EXPIRED):
            pend = c.pending.pop(o.sim_id, None)
            clordid, orig = (pend[1], pend[2]) if pend else (o.clordid, None)
            self.counters["cancels"] += 1
            code = "4" if kind == K.CANCELED else "C"
            self._report(c, o, code, code, text=ev.reason, clordid=clordid, orig=orig)
            self._forget(c, o)
        elif kind == K.REPLACED:
            pend = c.pending.pop(o.sim_id, None)
            self.counters["replaces"] += 1
            orig = o.clordid
            if pend:
                o.clordid = pend[1]
                o.chain.append(pend[1])
            o.qty, o.price = ev.qty, price_text(ev.price_ticks, o.inst.tick_size)
            self._report(c, o, "5", "1" if o.cum else "0", leaves=ev.leaves_qty, orig=orig)
        elif kind in (K.CANCEL_REJECT, K.REPLACE_REJECT):
            pend = c.pending.pop(o.sim_id, None)
            new, orig = (pend[1], pend[2]) if pend else (o.clordid, o.clordid)
            c.by_clordid.pop(new, None)
            code = "1" if ev.reason == "unknown_order" else "99"
            self._cancel_reject(c, o, new, orig, kind == K.REPLACE_REJECT, ev.reason, code)

    def _forget(self, c: _Client, o: _Ord) -> None:
        c.orders.pop(o.sim_id, None)
        c.pending.pop(o.sim_id, None)

    def _report(self, c: _Client, o: _Ord, exec_type: str, status: str, *, leaves: int = 0, text: str = "",
                clordid: str | None = None, orig: str | None = None,
                extra: Sequence[tuple[int, Any]] = ()) -> None:
        """Send one ExecutionReport for ``o``."""
        self._exec_seq += 1
        m = FixMessage([(35, "8"), (37, o.order_id), (11, clordid or o.clordid)])
        if orig:
            m.append(41, orig)
        m.append(17, f"{self.run_id}-{self._exec_seq}").append(150, exec_type).append(39, status)
        _instrument_fields(m, o.inst)
        m.append(54, FIX_SIDE[o.side]).append(38, o.qty).append(40, "1" if o.ord_type == OrderType.MARKET else "2")
        if o.price is not None:
            m.append(44, o.price)
        for t, v in extra:
            m.append(t, v)
        avg = o.notional / o.cum if o.cum else Decimal(0)
        m.append(151, leaves).append(14, o.cum).append(6, format(avg.normalize(), "f"))
        m.append(60, utc_timestamp())
        if text:
            m.append(58, text)
        c.session.send(m)

    def _cancel_reject(self, c: _Client, o: _Ord | None, clordid: str, orig: str, replace: bool, reason: str,
                       code: str) -> None:
        self.counters["rejects"] += 1
        status = ("1" if o.cum else "0") if o is not None else "8"
        m = FixMessage([(35, "9"), (37, o.order_id if o is not None else "NONE"), (11, clordid), (41, orig),
                        (39, status), (434, "2" if replace else "1"), (102, code), (58, reason or "rejected")])
        c.session.send(m)

    # ---------------------------------------------------------------- market data
    def _tops(self) -> dict[int, tuple[int, int, int, int]]:
        out = {}
        for iid, book in self.venue.books.items():
            bb, ba = book.best_bid(), book.best_ask()
            out[iid] = (bb[0], bb[1], 0, 0) if bb else (0, 0, 0, 0)
            if ba:
                out[iid] = out[iid][:2] + (ba[0], ba[1])
        return out

    def _publish_md(self) -> None:
        live = [c for c in self.clients.values() if c.session.is_logged_on]
        if not live:
            return
        tops = self._tops()
        for c in live:
            for iid, top in tops.items():
                if c.tops.get(iid) != top:
                    c.tops[iid] = top
                    self._snapshot(c, self.by_id[iid], top, "auto")

    def _snapshot(self, c: _Client, inst: Instrument, top: tuple[int, int, int, int], req_id: str) -> None:
        m = FixMessage([(35, "W"), (262, req_id)])
        _instrument_fields(m, inst)
        entries = [(k, p, q) for k, p, q in (("0", top[0], top[1]), ("1", top[2], top[3])) if q > 0]
        m.append(268, len(entries))
        for k, p, q in entries:
            m.append(269, k).append(270, price_text(p, inst.tick_size)).append(271, q)
        c.session.send(m)
        self.counters["snapshots"] += 1

    def _md_request(self, c: _Client, msg: FixMessage) -> None:
        req_id = msg.get(262) or "auto"
        wanted: list[Instrument] = []
        for t, v in msg.fields:
            if t == 48 and v.isdigit() and int(v) in self.by_id:
                wanted.append(self.by_id[int(v)])
            elif t == 55 and v in self.by_symbol and (48 not in msg):
                wanted.append(self.by_symbol[v])
        tops = self._tops()
        for inst in wanted or self.instruments:
            c.tops[inst.instrument_id] = tops[inst.instrument_id]
            self._snapshot(c, inst, tops[inst.instrument_id], req_id)

    # ---------------------------------------------------------------- restart
    def _open_at_crash(self, session: Session) -> list[FixMessage]:
        """Canceled reports for the orders this session's sent ExecutionReports leave open (the books of a
        restarted exchange are empty)."""
        last: dict[str, FixMessage] = {}
        end = session.store.next_sender_seq() - 1
        for begin in range(1, end + 1, 5000):
            for _, raw in session.store.sent(begin, min(end, begin + 4999)):
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
            log.info("FIX %s: %d orders open at the last stop will be reported canceled", session.config.session_id,
                     len(out))
        return out


def _instrument_fields(m: FixMessage, inst: Instrument) -> None:
    m.append(55, inst.symbol).append(48, inst.instrument_id).append(22, "8")


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"
