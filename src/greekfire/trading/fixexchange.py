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
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from greekfire.core.clock import stop_when
from greekfire.core.settings import Settings
from greekfire.fix.message import FixMessage
from greekfire.fix.session import Application, Session, UnsupportedMessageType, utc_timestamp
from greekfire.fix.setup import exchange_configs, load_dictionary, server_ssl, session_store
from greekfire.fix.transport import FixAcceptor
from greekfire.trading.fixwire import (
    ORD_REJ,
    SIDE_OF,
    TIF_OF,
    ExchangeOrder,
    base36,
    check_order,
    exec_report,
    md_snapshot,
    open_at_crash,
    price_text,
)
from greekfire.trading.model import Instrument, OrderType, Side, TimeInForce, VenueEvent, VenueEventKind
from greekfire.trading.orders import Order
from greekfire.trading.simvenue import CLIENT_OWNERS, SimulatedVenue
from greekfire.trading.synthetic import SyntheticMarket

log = logging.getLogger("greekfire.fix.exchange")

K = VenueEventKind
IDLE_STEP_S = 0.05
STEP_S = 0.001


@dataclass(slots=True)
class _Client:
    """One client session's state."""

    comp_id: str
    session: Session
    orders: dict[str, ExchangeOrder] = field(default_factory=dict)  # sim id -> order
    by_clordid: dict[str, str] = field(default_factory=dict)  # any ClOrdID of the chain -> sim id
    pending: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # sim id -> (kind, new, orig)
    recovered: list[FixMessage] = field(default_factory=list)  # Canceled reports owed after a restart
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

    def __init__(
        self,
        settings: Settings,
        instruments: list[Instrument] | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        from greekfire.trading.build import default_instruments  # build imports the engine: keep it lazy

        fs, ts = settings.fix, settings.trading
        self.settings = settings
        self.host = host or fs.host
        self.port = fs.port if port is None else port
        self.instruments = instruments or default_instruments()
        self.by_id = {i.instrument_id: i for i in self.instruments}
        self.by_symbol = {i.symbol: i for i in self.instruments}
        self.market = SyntheticMarket(self.instruments, seed=ts.seed)
        self.venue = SimulatedVenue(
            "FIXEX",
            self.instruments,
            self.market.fair_value,
            latency_us=0.0,
            jitter_us=0.0,
            maker_fee=ts.maker_fee,
            taker_fee=ts.taker_fee,
            flow_rate_hz=ts.background_rate_hz,
            seed=ts.seed,
        )
        self.venue.seed_books(now_ns=time.time_ns())
        self.run_id = base36(time.time_ns() // 1_000_000)
        self._exec_seq = 0
        dd = load_dictionary(settings)
        app = _App(self)
        self.clients: dict[str, _Client] = {}
        for cfg in exchange_configs(fs):
            s = Session(cfg, app, session_store(settings, cfg), dd)
            c = _Client(cfg.target_comp_id, s)
            c.recovered = open_at_crash(s.store, cfg.session_id)
            self.clients[c.comp_id] = c
        self._by_session = {id(c.session): c for c in self.clients.values()}
        # each client its own owner on the books: two clients' orders trade with each other (up to 99 clients)
        owners = {comp: CLIENT_OWNERS[i % len(CLIENT_OWNERS)] for i, comp in enumerate(self.clients)}
        self.venue.owner_of = lambda sim_id: owners[sim_id.split("|", 1)[0]]
        self.quote_interval_ns = int(fs.quote_interval_ms * 1e6)
        self.acceptor: FixAcceptor | None = None
        self._task: asyncio.Task[None] | None = None
        self.counters = {
            "orders": 0,
            "fills": 0,
            "rejects": 0,
            "cancels": 0,
            "replaces": 0,
            "snapshots": 0,
            "restart_cancels": 0,
        }

    # ---------------------------------------------------------------- lifecycle
    @property
    def sessions_logged_on(self) -> int:
        """How many client sessions are logged on now."""
        return sum(c.session.is_logged_on for c in self.clients.values())

    async def start(self) -> int:
        """Listen and start the books; returns the bound port."""
        self.acceptor = FixAcceptor(
            [c.session for c in self.clients.values()],
            self.host,
            self.port,
            ssl=server_ssl(self.settings.fix),
        )
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
            # drop each connection through its session (logout or not, the client sees the socket close)
            if c.session.is_connected:
                c.session.disconnect("exchange stopping")
        if self.acceptor is not None:
            await self.acceptor.stop()
        for c in self.clients.values():
            c.session.store.close()

    def serve(
        self, stop: threading.Event | float | None = None, on_listening: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        """Run until ``stop`` (an Event that gets set, or a duration in seconds; None: until interrupted);
        returns the counters. ``on_listening(port)`` is called once the socket listens."""

        async def main() -> None:
            port = await self.start()
            log.info(
                "FIX exchange %s listening on %s:%d", self.settings.fix.exchange_comp_id, self.host, port
            )
            if on_listening is not None:
                on_listening(port)
            done = stop_when(stop)
            try:
                while not done():
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
            # with nobody logged on the books still move, at a slower beat (an idle exchange stays cheap)
            await asyncio.sleep(STEP_S if self.sessions_logged_on else IDLE_STEP_S)

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
        elif mt == "AF":
            self._mass_status(c, msg.get(584) or "")
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
        px = msg.get(44) if ord_type == OrderType.LIMIT else None
        reason, qty, ticks = check_order(msg.get(38), px, ord_type == OrderType.LIMIT, inst)
        if not reason and clordid in c.by_clordid:
            reason = "duplicate_order_id"
        if inst is None:  # the reject echoes what the client sent
            sid = msg.get(48) or "-1"
            inst = Instrument(int(sid) if sid.lstrip("-").isdigit() else -1, msg.get(55) or "UNKNOWN")
        o = ExchangeOrder(f"{c.comp_id}|{clordid}", clordid, inst, side, ord_type, qty, px, chain=[clordid])
        if reason:
            self.counters["rejects"] += 1
            self._report(c, o, "8", "8", text=reason, extra=[(103, ORD_REJ.get(reason, "99"))])
            return
        c.orders[o.sim_id] = o
        c.by_clordid[clordid] = o.sim_id
        tif = TIF_OF.get(msg.get(59) or "1", TimeInForce.GTC)
        post_only = "6" in (msg.get(18) or "").split()
        self.venue.submit(
            Order(o.sim_id, inst.instrument_id, side, qty, ticks, ord_type, tif, post_only=post_only),
            time.time_ns(),
        )

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
        limit = o.ord_type == OrderType.LIMIT
        reason, qty, ticks = check_order(msg.get(38) or str(o.qty), msg.get(44) or o.price, limit, o.inst)
        reason = reason or ("" if limit else "not_a_limit_order")
        if reason or ticks is None:
            del c.pending[o.sim_id]
            c.by_clordid.pop(clordid, None)
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

    def _on_event(self, c: _Client, o: ExchangeOrder, ev: VenueEvent) -> None:
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
            extra = [
                (31, px),
                (32, ev.qty),
                (851, "1" if ev.liquidity == "M" else "2"),
                (12, format(Decimal(str(round(ev.fee, 10))).normalize(), "f")),
                (13, "3"),
            ]
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

    def _forget(self, c: _Client, o: ExchangeOrder) -> None:
        c.orders.pop(o.sim_id, None)
        c.pending.pop(o.sim_id, None)

    def _report(self, c: _Client, o: ExchangeOrder, exec_type: str, status: str, **kw: Any) -> None:
        """Send one ExecutionReport for ``o`` (``kw``: see :func:`~greekfire.trading.fixwire.exec_report`)."""
        self._exec_seq += 1
        c.session.send(exec_report(o, f"{self.run_id}-{self._exec_seq}", exec_type, status, **kw))

    def _mass_status(self, c: _Client, req_id: str) -> None:
        """OrderMassStatusRequest (AF): an ExecutionReport Order Status (150=I) per open order of the client,
        the last with LastRptRequested (912=Y); none open: a BusinessMessageReject naming the request."""
        open_orders = list(c.orders.values())
        if not open_orders:
            c.session.send(FixMessage([(35, "j"), (58, "no open orders"), (372, "AF"), (379, req_id), (380, "0")]))
        for k, o in enumerate(open_orders, 1):
            tail = [(584, req_id), (911, len(open_orders)), (912, "Y" if k == len(open_orders) else "N")]
            self._report(c, o, "I", "1" if o.cum else "0", leaves=o.qty - o.cum, extra=tail)

    def _cancel_reject(
        self,
        c: _Client,
        o: ExchangeOrder | None,
        clordid: str,
        orig: str,
        replace: bool,
        reason: str,
        code: str,
    ) -> None:
        self.counters["rejects"] += 1
        status = ("1" if o.cum else "0") if o is not None else "8"
        order_id = o.order_id if o is not None else "NONE"
        m = FixMessage([(35, "9"), (37, order_id), (11, clordid), (41, orig), (39, status)])
        m.append(434, "2" if replace else "1").append(102, code).append(58, reason or "rejected")
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
        c.session.send(md_snapshot(inst, top, req_id), resend=False)
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
