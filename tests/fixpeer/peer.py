"""QuickFIX peers (acceptor = a small exchange, initiator = a client) running in this process.

Each peer writes its QuickFIX settings file, its FileStore (sequence numbers and sent messages, so a
restart on the same ``store_dir`` carries on the sequence) and, when ``log`` is on, its FileLog under
``store_dir``. QuickFIX calls the application back on its own C++ threads; everything a peer records is
behind one condition variable, read through the accessors, and :meth:`QuickfixPeer.wait_for` wakes on
every message.

The engines are QuickFIX's threaded ones (a thread per connection): the single-threaded SocketAcceptor of
this wheel now and then crashes in ``stop()`` (SocketServer::close walks its socket set while the event
loop thread still changes it).
"""

from __future__ import annotations

import itertools
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

SOH = "\x01"
BUY = "1"
SELL = "2"
# the exchange's one price: a buy limit at or above it, or a sell limit at or below it, fills there at once
FILL_PRICE = 100.0

Field = tuple[int, Any]


def free_port() -> int:
    """A TCP port free on this machine now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fields(raw: str | bytes) -> dict[int, str]:
    """The fields of a raw FIX message as ``{tag: value}`` (the first of a repeated tag wins)."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    out: dict[int, str] = {}
    for part in text.rstrip(SOH).split(SOH):
        tag, _, value = part.partition("=")
        out.setdefault(int(tag), value)
    return out


def _num(value: float) -> str:
    """A price or quantity as FIX text without float noise (100.0 -> '100', 101.25 -> '101.25')."""
    text = f"{value:.8f}".rstrip("0").rstrip(".")
    return text or "0"


class QuickfixPeer:
    """What both peers share: settings, the engine's lifetime, and the thread-safe record of messages.

    ``port``: the acceptor's TCP port (0 picks a free one for an acceptor). ``data_dictionary``: the FIX 4.4
    XML QuickFIX validates with. ``store_dir``: folder for settings, store and log (a temporary folder,
    removed on :meth:`stop`, when None). ``heartbeat_s``: HeartBtInt an initiator asks for (seconds).
    ``log``: keep QuickFIX's FileLog (messages and events) under ``store_dir/log``; off, nothing is logged.
    ``reset_on_logon``: start each logon at sequence number 1 instead of where the store left off.
    ``extra_settings``: more QuickFIX settings (name -> value) for the [DEFAULT] section.
    ``on_app_message``: called with each application message received (raw), on QuickFIX's thread, right
    after it is recorded (a benchmark stamps its arrival there).
    """

    connection_type = ""

    def __init__(
        self,
        port: int,
        sender_comp_id: str,
        target_comp_id: str,
        data_dictionary: Path,
        store_dir: Path | None = None,
        *,
        heartbeat_s: int = 5,
        log: bool = True,
        reset_on_logon: bool = False,
        extra_settings: dict[str, str] | None = None,
        on_app_message: Callable[[str], None] | None = None,
    ) -> None:
        if not Path(data_dictionary).is_file():
            raise FileNotFoundError(f"data_dictionary {str(data_dictionary)!r} is not a file")
        if heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be positive, got {heartbeat_s!r}")
        self.port = port
        self.sender_comp_id = sender_comp_id
        self.target_comp_id = target_comp_id
        self.data_dictionary = Path(data_dictionary).resolve()
        self._own_dir = store_dir is None
        self.store_dir = Path(tempfile.mkdtemp(prefix="qfx-")) if store_dir is None else Path(store_dir)
        self.heartbeat_s = heartbeat_s
        self.log = log
        self.reset_on_logon = reset_on_logon
        self.extra_settings = dict(extra_settings or {})
        self._cond = threading.Condition()
        self._app_in: list[str] = []
        self._admin_in: list[str] = []
        self._app_out: list[str] = []
        self._errors: list[str] = []
        self._logged_on = False
        self._logons = 0
        self._session_id: Any = None
        self._engine: Any = None
        self._on_app_message = on_app_message

    # -- settings and lifetime -----------------------------------------------------------------------------
    def settings_text(self) -> str:
        """The QuickFIX settings file this peer runs with."""
        lines = [
            "[DEFAULT]",
            f"ConnectionType={self.connection_type}",
            "BeginString=FIX.4.4",
            f"SenderCompID={self.sender_comp_id}",
            f"TargetCompID={self.target_comp_id}",
            "StartTime=00:00:00",
            "EndTime=00:00:00",
            f"HeartBtInt={self.heartbeat_s}",
            f"FileStorePath={self.store_dir / 'store'}",
            f"FileLogPath={self.store_dir / 'log'}",
            "UseDataDictionary=Y",
            f"DataDictionary={self.data_dictionary}",
            f"ResetOnLogon={'Y' if self.reset_on_logon else 'N'}",
            "SocketReuseAddress=Y",
            "SocketNodelay=Y",
            "ScreenLogShowIncoming=N",
            "ScreenLogShowOutgoing=N",
            "ScreenLogShowEvents=N",
            *self._role_settings(),
            *(f"{k}={v}" for k, v in self.extra_settings.items()),
            "",
            "[SESSION]",
            "",
        ]
        return "\n".join(lines)

    def _role_settings(self) -> list[str]:
        return []

    def start(self) -> Self:
        """Write the settings and start the QuickFIX engine (its threads). Returns self."""
        import quickfix as fix

        if self._engine is not None:
            raise RuntimeError(f"{type(self).__name__} on port {self.port} is already started")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.store_dir / "quickfix.cfg"
        cfg.write_text(self.settings_text())
        settings = fix.SessionSettings(str(cfg))
        store = fix.FileStoreFactory(settings)
        # the screen log with every kind of output switched off is QuickFIX's quiet log
        logs = fix.FileLogFactory(settings) if self.log else fix.ScreenLogFactory(settings)
        app = _application(fix, self)
        engine = self._make_engine(fix, app, store, settings, logs)
        # the factories and settings must outlive the engine's use of them
        self._keep = (settings, store, logs, app)
        engine.start()
        self._engine = engine
        return self

    def _make_engine(self, fix: Any, app: Any, store: Any, settings: Any, logs: Any) -> Any:
        raise NotImplementedError

    def stop(self, force: bool = False) -> None:
        """Log out (unless ``force``), stop the engine and its threads; a temporary ``store_dir`` is removed."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop(force)
        with self._cond:
            self._logged_on = False
            self._cond.notify_all()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what was received ---------------------------------------------------------------------------------
    @property
    def logged_on(self) -> bool:
        """Whether the session is logged on now."""
        with self._cond:
            return self._logged_on

    @property
    def logons(self) -> int:
        """How many times the session has logged on since this peer was built."""
        with self._cond:
            return self._logons

    def received(self, msg_type: str | None = None) -> list[str]:
        """Application messages received (raw, SOH-separated), oldest first; only ``msg_type`` (35) if given."""
        with self._cond:
            msgs = list(self._app_in)
        return msgs if msg_type is None else [m for m in msgs if fields(m).get(35) == msg_type]

    def received_admin(self, msg_type: str | None = None) -> list[str]:
        """Session-level messages received (Logon, Heartbeat, Reject, ...), raw; only ``msg_type`` if given."""
        with self._cond:
            msgs = list(self._admin_in)
        return msgs if msg_type is None else [m for m in msgs if fields(m).get(35) == msg_type]

    def sent(self) -> list[str]:
        """Application messages this peer sent (raw, as QuickFIX wrote them), oldest first."""
        with self._cond:
            return list(self._app_out)

    @property
    def errors(self) -> list[str]:
        """Exceptions raised in this peer's callbacks (each as text); a test asserts this is empty."""
        with self._cond:
            return list(self._errors)

    def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0) -> bool:
        """Wait until ``predicate()`` is true (re-checked on every message and every 50 ms) or ``timeout``
        seconds pass; returns whether it became true."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return bool(predicate())
            with self._cond:
                self._cond.wait(min(left, 0.05))

    def wait_logged_on(self, timeout: float = 10.0) -> None:
        """Wait for the logon; TimeoutError naming the comp IDs and port when it does not come."""
        if not self.wait_for(lambda: self.logged_on, timeout):
            raise TimeoutError(
                f"{type(self).__name__} {self.sender_comp_id}->{self.target_comp_id} on port {self.port} not "
                f"logged on after {timeout} s (log: {self.store_dir / 'log'})"
            )

    # -- sending -------------------------------------------------------------------------------------------
    def send(self, msg_type: str, body: Iterable[Field]) -> None:
        """Send an application message of ``msg_type`` (35) with ``body`` fields ``(tag, value)`` (header and
        trailer are QuickFIX's). RuntimeError when not logged on."""
        import quickfix as fix

        msg = fix.Message()
        msg.getHeader().setField(35, msg_type)
        for tag, value in body:
            msg.setField(int(tag), value if isinstance(value, str) else _num(value))
        self._send(fix, msg)

    def send_raw(self, raw: str) -> None:
        """Send a message given as text, fields separated by SOH or ``|`` (8, 9, 10 and the comp IDs, sequence
        number and sending time are rewritten by QuickFIX). Not validated before sending."""
        import quickfix as fix

        text = raw.replace("|", SOH)
        body = [(int(t), v) for t, _, v in (p.partition("=") for p in text.rstrip(SOH).split(SOH))]
        msg = fix.Message()
        header = {8, 9, 34, 35, 49, 52, 56, 10}
        for tag, value in body:
            if tag == 35:
                msg.getHeader().setField(35, value)
            elif tag not in header:
                msg.setField(tag, value)
        self._send(fix, msg)

    def _send(self, fix: Any, msg: Any) -> None:
        with self._cond:
            sid = self._session_id
            on = self._logged_on
        if sid is None or not on:
            raise RuntimeError(
                f"{type(self).__name__} {self.sender_comp_id}->{self.target_comp_id} is not logged on: cannot send"
            )
        if not fix.Session.sendToTarget(msg, sid):
            raise RuntimeError(f"QuickFIX refused to send {msg.toString().replace(SOH, '|')!r}")

    # -- callbacks (QuickFIX threads) ----------------------------------------------------------------------
    def _on_create(self, sid: Any) -> None:
        with self._cond:
            self._session_id = sid

    def _on_logon(self, sid: Any) -> None:
        with self._cond:
            self._session_id = sid
            self._logged_on = True
            self._logons += 1
            self._cond.notify_all()

    def _on_logout(self, sid: Any) -> None:
        with self._cond:
            self._logged_on = False
            self._cond.notify_all()

    def _from_admin(self, raw: str) -> None:
        with self._cond:
            self._admin_in.append(raw)
            self._cond.notify_all()

    def _to_app(self, raw: str) -> None:
        with self._cond:
            self._app_out.append(raw)

    def _from_app(self, raw: str, sid: Any) -> None:
        with self._cond:
            self._app_in.append(raw)
            self._cond.notify_all()
        hook = self._on_app_message
        if hook is not None:
            hook(raw)
        self.on_message(raw, sid)

    def on_message(self, raw: str, sid: Any) -> None:
        """What the peer does with an application message (after recording it); nothing by default."""

    def _error(self, where: str, exc: BaseException) -> None:
        with self._cond:
            self._errors.append(f"{where}: {type(exc).__name__}: {exc}")
            self._cond.notify_all()


def _application(fix: Any, peer: QuickfixPeer) -> Any:
    """A quickfix.Application forwarding QuickFIX's callbacks to ``peer`` (exceptions are recorded, never
    raised into the C++ engine)."""

    class _App(fix.Application):  # type: ignore[misc, name-defined]
        def onCreate(self, sid: Any) -> None:  # noqa: N802 (QuickFIX's names)
            peer._on_create(sid)

        def onLogon(self, sid: Any) -> None:  # noqa: N802
            peer._on_logon(sid)

        def onLogout(self, sid: Any) -> None:  # noqa: N802
            peer._on_logout(sid)

        def toAdmin(self, message: Any, sid: Any) -> None:  # noqa: N802
            pass

        def fromAdmin(self, message: Any, sid: Any) -> None:  # noqa: N802
            try:
                peer._from_admin(message.toString())
            except Exception as exc:  # noqa: BLE001 - recorded for the test, never thrown into C++
                peer._error("fromAdmin", exc)

        def toApp(self, message: Any, sid: Any) -> None:  # noqa: N802
            try:
                peer._to_app(message.toString())
            except Exception as exc:  # noqa: BLE001
                peer._error("toApp", exc)

        def fromApp(self, message: Any, sid: Any) -> None:  # noqa: N802
            try:
                peer._from_app(message.toString(), sid)
            except Exception as exc:  # noqa: BLE001
                peer._error("fromApp", exc)

    return _App()


# ------------------------------------------------------------------------------------------- the exchange
@dataclass
class _Order:
    order_id: str
    cl_ord_id: str
    symbol: str
    side: str
    qty: float
    price: float
    ord_type: str
    cum_qty: float = 0.0
    avg_px: float = 0.0
    status: str = "0"  # OrdStatus (39)

    @property
    def leaves(self) -> float:
        return 0.0 if self.status in ("2", "4", "8") else self.qty - self.cum_qty

    @property
    def open(self) -> bool:
        return self.status in ("0", "1")


class QuickfixAcceptor(QuickfixPeer):
    """A small exchange on QuickFIX: limit (and market) NewOrderSingle, OrderCancelReplaceRequest and
    OrderCancelRequest, one instrument price :data:`FILL_PRICE` (100.00).

    A NewOrderSingle (D) is acknowledged with an ExecutionReport New (150=0, 39=0); a market order, a buy
    limit at or above 100.00 or a sell limit at or below it then fills in full at 100.00 (150=F, 39=2); other
    limits rest. A replace (G) of a resting order answers Replaced (150=5, 39=0) and fills when the new price
    is marketable; a cancel (F) answers Canceled (150=4, 39=4). A replace or cancel of an unknown or finished
    order answers OrderCancelReject (9) with CxlRejReason 1 (unknown order); a duplicate ClOrdID answers an
    ExecutionReport Rejected (150=8, 39=8, OrdRejReason 6).

    ``port`` 0 picks a free port (read it back from ``.port``). The acceptor listens on every interface
    (QuickFIX has no setting for the listening address).
    """

    connection_type = "acceptor"

    def __init__(
        self,
        port: int = 0,
        sender_comp_id: str = "QFX",
        target_comp_id: str = "GF",
        data_dictionary: Path | None = None,
        store_dir: Path | None = None,
        **kwargs: Any,
    ) -> None:
        if data_dictionary is None:
            raise ValueError("data_dictionary (the FIX 4.4 XML) is required, got None")
        super().__init__(
            port or free_port(), sender_comp_id, target_comp_id, data_dictionary, store_dir, **kwargs
        )
        self._orders: dict[str, _Order] = {}  # open and finished orders by their latest ClOrdID
        self._order_ids = itertools.count(1)
        self._exec_ids = itertools.count(1)

    def _role_settings(self) -> list[str]:
        return [f"SocketAcceptPort={self.port}"]

    def _make_engine(self, fix: Any, app: Any, store: Any, settings: Any, logs: Any) -> Any:
        return fix.ThreadedSocketAcceptor(app, store, settings, logs)

    def orders(self) -> dict[str, dict[str, Any]]:
        """The exchange's orders by latest ClOrdID: order_id, symbol, side, qty, price, cum_qty, status."""
        with self._cond:
            return {k: dict(vars(o)) for k, o in self._orders.items()}

    # -- the matching, on QuickFIX's thread ----------------------------------------------------------------
    def on_message(self, raw: str, sid: Any) -> None:
        f = fields(raw)
        kind = f.get(35)
        if kind == "D":
            self._new_order(f)
        elif kind == "G":
            self._replace(f)
        elif kind == "F":
            self._cancel(f)

    def _new_order(self, f: dict[int, str]) -> None:
        cl = f.get(11, "")
        with self._cond:
            dup = cl in self._orders
            o = _Order(
                order_id="NONE" if dup else f"QX{next(self._order_ids)}",
                cl_ord_id=cl,
                symbol=f.get(55, ""),
                side=f.get(54, ""),
                qty=float(f.get(38, "0") or 0),
                price=float(f.get(44, "0") or 0),
                ord_type=f.get(40, "2"),
            )
            if not dup:
                self._orders[cl] = o
        if dup:
            o.status = "8"
            self._report(o, exec_type="8", extra=[(103, "6"), (58, f"duplicate ClOrdID {cl!r}")])
            return
        self._report(o, exec_type="0")
        self._maybe_fill(o)

    def _marketable(self, o: _Order) -> bool:
        if o.ord_type == "1":  # market
            return True
        return o.price >= FILL_PRICE if o.side == BUY else o.price <= FILL_PRICE

    def _maybe_fill(self, o: _Order) -> None:
        if not o.open or not self._marketable(o):
            return
        with self._cond:
            qty = o.leaves
            o.avg_px = (o.avg_px * o.cum_qty + FILL_PRICE * qty) / (o.cum_qty + qty)
            o.cum_qty += qty
            o.status = "2"
        self._report(o, exec_type="F", extra=[(31, _num(FILL_PRICE)), (32, _num(qty))])

    def _replace(self, f: dict[int, str]) -> None:
        orig, cl = f.get(41, ""), f.get(11, "")
        with self._cond:
            o = self._orders.get(orig)
            ok = o is not None and o.open and cl not in self._orders
            if o is not None and ok:
                del self._orders[orig]
                o.cl_ord_id = cl
                o.qty = float(f.get(38, o.qty) or o.qty)
                o.price = float(f.get(44, o.price) or o.price)
                self._orders[cl] = o
        if o is None or not ok:
            self._cancel_reject(f, o, response_to="2")
            return
        self._report(o, exec_type="5", extra=[(41, orig)])
        self._maybe_fill(o)

    def _cancel(self, f: dict[int, str]) -> None:
        orig, cl = f.get(41, ""), f.get(11, "")
        with self._cond:
            o = self._orders.get(orig)
            ok = o is not None and o.open
            if o is not None and ok:
                del self._orders[orig]
                o.cl_ord_id = cl
                o.status = "4"
                self._orders[cl] = o
        if o is None or not ok:
            self._cancel_reject(f, o, response_to="1")
            return
        self._report(o, exec_type="4", extra=[(41, orig)])

    def _report(self, o: _Order, exec_type: str, extra: Iterable[Field] = ()) -> None:
        body: list[Field] = [
            (37, o.order_id),
            (11, o.cl_ord_id),
            (17, f"QE{next(self._exec_ids)}"),
            (150, exec_type),
            (39, o.status),
            (55, o.symbol),
            (54, o.side),
            (38, _num(o.qty)),
            (40, o.ord_type),
            (151, _num(o.leaves)),
            (14, _num(o.cum_qty)),
            (6, _num(o.avg_px)),
            (60, _utc_now()),
            *extra,
        ]
        if o.ord_type != "1":
            body.append((44, _num(o.price)))
        self.send("8", body)

    def _cancel_reject(self, f: dict[int, str], o: _Order | None, response_to: str) -> None:
        self.send(
            "9",
            [
                (37, o.order_id if o is not None else "NONE"),
                (11, f.get(11, "")),
                (41, f.get(41, "")),
                (39, o.status if o is not None else "8"),
                (434, response_to),
                (102, "1" if o is None else "0"),
                (
                    58,
                    "unknown order"
                    if o is None
                    else f"order {o.cl_ord_id!r} is not open (OrdStatus {o.status})",
                ),
            ],
        )


# ------------------------------------------------------------------------------------------- the client
class QuickfixInitiator(QuickfixPeer):
    """A QuickFIX client that logs on to ``127.0.0.1:port`` (retrying every ``reconnect_s`` seconds) and sends
    orders; what it receives is in :meth:`received`."""

    connection_type = "initiator"

    def __init__(
        self,
        port: int,
        sender_comp_id: str = "QFX",
        target_comp_id: str = "GF",
        data_dictionary: Path | None = None,
        store_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        reconnect_s: int = 1,
        **kwargs: Any,
    ) -> None:
        if data_dictionary is None:
            raise ValueError("data_dictionary (the FIX 4.4 XML) is required, got None")
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port!r}")
        self.host = host
        self.reconnect_s = reconnect_s
        super().__init__(port, sender_comp_id, target_comp_id, data_dictionary, store_dir, **kwargs)

    def _role_settings(self) -> list[str]:
        return [
            f"SocketConnectHost={self.host}",
            f"SocketConnectPort={self.port}",
            f"ReconnectInterval={self.reconnect_s}",
        ]

    def _make_engine(self, fix: Any, app: Any, store: Any, settings: Any, logs: Any) -> Any:
        return fix.ThreadedSocketInitiator(app, store, settings, logs)

    def send_new_order(
        self,
        cl_ord_id: str,
        symbol: str,
        side: str,
        qty: float,
        price: float | None,
        *,
        tif: str = "0",
        account: str | None = None,
    ) -> None:
        """Send a NewOrderSingle (D): limit at ``price``, or market when ``price`` is None; ``side`` '1' buy,
        '2' sell; ``qty`` in shares; ``tif`` TimeInForce (59, '0' day)."""
        body: list[Field] = [
            (11, cl_ord_id),
            (55, symbol),
            (54, side),
            (60, _utc_now()),
            (38, _num(qty)),
            (40, "1" if price is None else "2"),
            (59, tif),
        ]
        if price is not None:
            body.append((44, _num(price)))
        if account is not None:
            body.append((1, account))
        self.send("D", body)

    def send_replace(
        self, cl_ord_id: str, orig_cl_ord_id: str, symbol: str, side: str, qty: float, price: float
    ) -> None:
        """Send an OrderCancelReplaceRequest (G) of limit order ``orig_cl_ord_id`` to ``qty`` at ``price``."""
        self.send(
            "G",
            [
                (11, cl_ord_id),
                (41, orig_cl_ord_id),
                (55, symbol),
                (54, side),
                (60, _utc_now()),
                (38, _num(qty)),
                (40, "2"),
                (44, _num(price)),
            ],
        )

    def send_cancel(self, cl_ord_id: str, orig_cl_ord_id: str, symbol: str, side: str, qty: float) -> None:
        """Send an OrderCancelRequest (F) for ``orig_cl_ord_id``."""
        self.send(
            "F",
            [
                (11, cl_ord_id),
                (41, orig_cl_ord_id),
                (55, symbol),
                (54, side),
                (60, _utc_now()),
                (38, _num(qty)),
            ],
        )


def _utc_now() -> str:
    """UTCTimestamp with milliseconds, as FIX 4.4 writes it (YYYYMMDD-HH:MM:SS.sss)."""
    t = time.time()
    return time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"
