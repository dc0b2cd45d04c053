"""The FIX session layer: logon and logout, heartbeats and test requests, sequence numbers, gap detection
and recovery, session-level rejects. One :class:`Session` per counterparty, initiator or acceptor.

The session does no I/O of its own (the transport in :mod:`greekfire.fix.transport` feeds it): call
:meth:`Session.connected` when a connection opens, :meth:`Session.receive` with each frame read,
:meth:`Session.tick` every ~100 ms, and it writes through the ``write`` callback and closes the connection
through the ``close`` callback it was bound with. Its rules are those of the classic FIX engines (QuickFIX's
acceptance suite is the yardstick: ``greekfire fix conformance``):

- a message whose MsgSeqNum is too high is queued and a ResendRequest is sent once for the gap; queued
  messages are processed in order when the gap is filled;
- too low without PossDupFlag is fatal (Logout with the reason, then disconnect); with PossDupFlag it is
  ignored (after checking OrigSendingTime);
- a ResendRequest is answered from the store: application messages again with PossDupFlag=Y and
  OrigSendingTime, admin messages as SequenceReset-GapFill;
- a message that breaks the data dictionary gets a Reject (35=3) with SessionRejectReason (373) and
  RefTagID (371), counts as received, and the session goes on.

Times are UTC; SendingTime has milliseconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

from greekfire.core.metrics import counter, gauge
from greekfire.fix import dictionary as dd_
from greekfire.fix.dictionary import DataDictionary, FieldProblem
from greekfire.fix.message import BEGIN_STRING, FixMessage, GarbledMessage, parse
from greekfire.fix.store import SessionStore

log = logging.getLogger("greekfire.fix")

LOGGED_ON = gauge("greekfire_fix_session_logged_on", "1 while the FIX session is logged on, 0 otherwise", ["session"])

ADMIN_TYPES = frozenset("012345A")
_ALWAYS_SENT = frozenset("A524")  # sent even before the logon completes
_FILLED_HERE = frozenset({8, 9, 10, 34, 43, 49, 52, 56, 122})  # header and trailer fields the session writes
_ROUTES = ((115, 128), (116, 129), (144, 145), (128, 115), (129, 116), (145, 144))


class UnsupportedMessageType(Exception):  # noqa: N818 - the FIX name
    """Raised by an application for a message type it does not handle: answered with a
    BusinessMessageReject (35=j, BusinessRejectReason 3)."""


class Application:
    """What a session calls back. Override what you need; all are no-ops by default."""

    def on_logon(self, session: Session) -> None:
        """The session is logged on."""

    def on_logout(self, session: Session) -> None:
        """The session logged out or lost its connection."""

    def on_message(self, session: Session, msg: FixMessage) -> None:
        """An application message, in sequence order, exactly once (duplicates resent with PossDupFlag
        are dropped by the session). Raise :class:`UnsupportedMessageType` or
        :class:`~greekfire.fix.dictionary.FieldProblem` to reject it."""

    def on_admin(self, session: Session, msg: FixMessage) -> None:
        """An admin message (after the session handled it)."""


@dataclass(slots=True)
class SessionConfig:
    """One FIX session. ``heartbeat_s`` is what an initiator asks for (an acceptor takes the initiator's).

    ``max_latency_s``: how far SendingTime may be from our clock. ``start``/``end``: the daily session window
    in UTC (None: always on); sequence numbers reset when a new window opens.
    """

    sender_comp_id: str
    target_comp_id: str
    begin_string: str = BEGIN_STRING
    initiator: bool = False
    heartbeat_s: int = 30
    reset_on_logon: bool = False
    reset_on_logout: bool = False
    reset_on_disconnect: bool = False
    send_reset_on_logon: bool = False
    max_latency_s: float = 120.0
    check_latency: bool = True
    validate: bool = True
    logon_timeout_s: float = 10.0
    logout_timeout_s: float = 2.0
    start: dtime | None = None
    end: dtime | None = None

    @property
    def session_id(self) -> str:
        return f"{self.begin_string}:{self.sender_comp_id}->{self.target_comp_id}"


def utc_timestamp(ts: float | None = None, millis: bool = True) -> str:
    """A FIX UTCTimestamp (``YYYYMMDD-HH:MM:SS.sss``) of ``ts`` seconds since the epoch (default now)."""
    t = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    s = t.strftime("%Y%m%d-%H:%M:%S")
    return f"{s}.{t.microsecond // 1000:03d}" if millis else s


def parse_timestamp(value: str) -> float:
    """Seconds since the epoch of a FIX UTCTimestamp (``YYYYMMDD-HH:MM:SS[.fff...]``); ValueError when it is
    not one. (Read by hand: ``strptime`` cost a sixth of a message's handling.)"""
    if len(value) < 17 or value[8] != "-" or value[11] != ":" or value[14] != ":":
        raise ValueError(f"not a UTCTimestamp: {value!r}")
    frac = 0.0
    if len(value) > 17:
        if value[17] != "." or not value[18:].isdigit():
            raise ValueError(f"not a UTCTimestamp: {value!r}")
        frac = int(value[18:]) / 10 ** (len(value) - 18)
    if not (value[:8].isdigit() and value[9:11].isdigit() and value[12:14].isdigit() and value[15:17].isdigit()):
        raise ValueError(f"not a UTCTimestamp: {value!r}")
    t = datetime(int(value[:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]), int(value[12:14]),
                 int(value[15:17]), tzinfo=UTC)  # ValueError for a month 13, a hour 25 ...
    return t.timestamp() + frac


EVENTS = counter("greekfire_fix_session_events", "FIX session events by session: messages sent, received, "
                 "rejected, garbled, resent, and sequence gaps (ResendRequests sent)", ["session", "event"])
LOGONS = counter("greekfire_fix_logons", "FIX logons completed, by session", ["session"])


class Session:
    """One FIX session's state machine (see the module docstring)."""

    def __init__(
        self, config: SessionConfig, app: Application, store: SessionStore,
        dictionary: DataDictionary | None = None, clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.app = app
        self.store = store
        self.dd = dictionary
        self.clock = clock
        self.heartbeat_s = config.heartbeat_s if config.initiator else 0
        self._write: Callable[[bytes], None] | None = None
        self._close: Callable[[], None] | None = None
        self.counters = {"received": 0, "sent": 0, "rejected": 0, "garbled": 0, "resent": 0, "gaps": 0}
        sid = config.session_id
        self._events = {name: EVENTS.labels(sid, name) for name in self.counters}  # every series from the start
        LOGONS.labels(sid)
        self._clear_state()  # and greekfire_fix_session_logged_on at 0

    def _count(self, event: str) -> None:
        """Count one session event in :attr:`counters` and in Prometheus (``greekfire_fix_session_events``)."""
        self.counters[event] += 1
        self._events[event].inc()

    # -- connection ---------------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._write is not None

    @property
    def is_logged_on(self) -> bool:
        return self.received_logon and self.sent_logon

    def connected(self, write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        """Bind a new connection; an initiator sends its Logon now."""
        self._write, self._close = write, close
        self._clear_state()
        self.last_received = self.last_sent = self.clock()
        self._check_schedule()
        if self.config.initiator:
            self._send_logon()

    def disconnect(self, reason: str = "") -> None:
        """Close the connection (the session and its sequence numbers stay)."""
        if reason:
            log.info("FIX %s: disconnecting: %s", self.config.session_id, reason)
        close, self._write, self._close = self._close, None, None
        was_on = self.received_logon or self.sent_logon
        self._clear_state()
        if close is not None:
            close()
            if self.config.reset_on_disconnect:
                self.store.reset()
        if was_on:
            self.app.on_logout(self)

    def _clear_state(self) -> None:
        self.received_logon = self.sent_logon = self.sent_logout = False
        self.sent_reset = self.received_reset = False
        self.test_requests = 0
        self.resend_range: tuple[int, int] | None = None
        self.queue: dict[int, FixMessage] = {}
        self.logon_sent_at = self.logout_sent_at = 0.0
        LOGGED_ON.labels(self.config.session_id).set(0)

    # -- sending ------------------------------------------------------------------------------------------
    @property
    def next_sender_seq(self) -> int:
        return self.store.next_sender_seq()

    @property
    def next_target_seq(self) -> int:
        return self.store.next_target_seq()

    def send(self, msg: FixMessage, resend: bool = True) -> int:
        """Send an application message (header filled in here); returns its MsgSeqNum. Stored for resend
        even when not logged on (it then goes out on the counterparty's ResendRequest). ``resend=False``
        (market data, whose old values nobody wants again) keeps only its sequence number: a ResendRequest
        covering it gets a SequenceReset-GapFill instead."""
        msg.fields = [f for f in msg.fields if f[0] not in _FILLED_HERE]
        return self._send_raw(msg, resend=resend)

    def _send_raw(self, msg: FixMessage, seq: int | None = None, resend: bool = True) -> int:
        now = self.clock()
        number = self.store.next_sender_seq() if seq is None else seq
        mt = msg.msg_type
        header = {t: v for t, v in msg.fields if t in _HEADER_TAGS}
        header.update({34: str(number), 49: self.config.sender_comp_id, 56: self.config.target_comp_id,
                       52: utc_timestamp(now)})
        body = [f for f in msg.fields if f[0] not in _HEADER_TAGS and f[0] != 35]
        out = FixMessage([(35, mt), *sorted(header.items())] + body, self.config.begin_string)
        raw = out.encode()
        if seq is None:
            self.store.save_sent(number, raw if resend else b"")
        if self._write is not None and (mt in _ALWAYS_SENT or self.is_logged_on):
            self.last_sent = now
            self._count("sent")
            self._write(raw)
        return number

    def _send_logon(self, reply_to: FixMessage | None = None) -> None:
        logon = FixMessage([(35, "A"), (98, "0"), (108, str(self.heartbeat_s))])
        reset = self.received_reset or (
            reply_to is None and self.config.send_reset_on_logon
            and self.next_sender_seq == 1 and self.next_target_seq == 1
        )
        if reset:
            logon.append(141, "Y")
            if not self.received_reset:
                self.store.reset()
            self.sent_reset = True
        self.logon_sent_at = self.clock()
        self.sent_logon = True  # before writing: the reply may be handled before the write returns
        self._send_raw(logon)

    def logout(self, text: str = "") -> None:
        """Start a logout (the counterparty answers; we disconnect on its reply or after the timeout)."""
        msg = FixMessage([(35, "5")])
        if text:
            msg.append(58, text)
        self.sent_logout = True  # before writing: the reply may be handled before the write returns
        self.logout_sent_at = self.clock()
        self._send_raw(msg)

    def _reject(self, msg: FixMessage, reason: int, tag: int | None = None) -> None:
        """A session-level Reject (35=3) of ``msg``."""
        seq = msg.get(34)
        mt = msg.msg_type
        out = FixMessage([(35, "3")])
        for src, dst in _ROUTES:
            v = msg.get(src)
            if v:
                out.append(dst, v)
        if seq:
            out.append(45, seq)
        text = dd_.REJECT_TEXT.get(reason, "")
        if text:
            out.append(58, text)
        if tag is not None:
            out.append(371, tag)
        if mt:
            out.append(372, mt)
        out.append(373, reason)
        if mt not in ("A", "4") and seq and seq.isdigit() and int(seq) == self.next_target_seq:
            self.store.set_next_target_seq(self.next_target_seq + 1)
        self._count("rejected")
        log.warning("FIX %s: rejected message %s (%s): %s%s", self.config.session_id, seq, mt, text,
                    f" tag {tag}" if tag is not None else "")
        if not self.received_logon:
            self.disconnect("a reject before logon")
            return
        self._send_raw(out)

    def _business_reject(self, msg: FixMessage, reason: int, text: str) -> None:
        out = FixMessage([(35, "j"), (45, msg.get(34, "") or ""), (58, text), (372, msg.msg_type), (380, str(reason))])
        self.store.set_next_target_seq(self.next_target_seq + 1)
        self._count("rejected")
        self._send_raw(out)

    # -- receiving ----------------------------------------------------------------------------------------
    def receive(self, frame: bytes) -> None:
        """Handle one frame read from the connection."""
        try:
            msg = parse(frame)
        except GarbledMessage as e:
            self._count("garbled")
            log.warning("FIX %s: ignored %s", self.config.session_id, e)
            if not self.received_logon:
                self.disconnect("garbled message before logon")
            return
        self._count("received")
        self._next(msg)

    def _next(self, msg: FixMessage, queued: bool = False) -> None:
        mt = msg.msg_type
        try:
            if msg.begin_string != self.config.begin_string:
                if mt == "5":
                    self._on_logout(msg)
                else:
                    self.logout("Incorrect BeginString")
                    self.store.set_next_target_seq(self.next_target_seq + 1)
                return
            if self.config.validate and self.dd is not None:
                self.dd.validate(msg)
            handler = _HANDLERS.get(mt)
            if handler is not None:
                handler(self, msg)
            elif self._verify(msg, True, True):
                self.store.set_next_target_seq(self.next_target_seq + 1)
        except FieldProblem as p:
            self._reject(msg, p.reason, p.tag)
            if mt == "A" and not self.received_logon:
                self.disconnect("logon rejected")
        except _Disconnect as d:
            self.disconnect(str(d))
            return
        if not queued:
            self._next_queued()
        if self.is_logged_on:
            self.tick()

    def _verify(self, msg: FixMessage, check_high: bool, check_low: bool) -> bool:
        mt = msg.msg_type
        if not self._valid_logon_state(mt):
            raise _Disconnect(f"{mt!r} is not valid in this logon state")
        if self.config.check_latency and not self._good_time(msg.get(52)):
            self._reject(msg, dd_.SENDING_TIME_ACCURACY)
            if self.received_logon:
                self.logout()
            return False
        if msg.get(49) != self.config.target_comp_id or msg.get(56) != self.config.sender_comp_id:
            self._reject(msg, dd_.COMPID_PROBLEM)
            self.logout()
            return False
        self.last_received = self.clock()
        self.test_requests = 0
        seq = int(msg.get(34) or 0)
        expected = self.next_target_seq
        if check_high and seq > expected:
            self._target_too_high(msg, seq)
            return False
        if check_low and seq < expected:
            self._target_too_low(msg, seq)
            return False
        if (check_high or check_low) and self.resend_range and seq >= self.resend_range[1]:
            self.resend_range = None
        if mt in ADMIN_TYPES:
            self.app.on_admin(self, msg)
        else:
            try:
                self.app.on_message(self, msg)
            except UnsupportedMessageType:
                self._business_reject(msg, 3, "Unsupported Message Type")
                return False
        return True

    def _valid_logon_state(self, mt: str) -> bool:
        if mt == "A" and (self.sent_reset or self.received_reset):
            return True
        if (mt == "A" and not self.received_logon) or (mt != "A" and self.received_logon):
            return True
        if mt == "5" and self.sent_logon:
            return True
        if mt != "5" and self.sent_logout:
            return True
        return mt == "4"

    def _good_time(self, sending_time: str | None) -> bool:
        try:
            t = parse_timestamp(sending_time or "")
        except ValueError:
            return False
        return abs(self.clock() - t) <= self.config.max_latency_s

    def _target_too_high(self, msg: FixMessage, seq: int) -> None:
        self.queue[seq] = msg
        self._count("gaps")
        if self.resend_range is not None and seq >= self.resend_range[0]:
            return
        begin = self.next_target_seq
        self._send_raw(FixMessage([(35, "2"), (7, str(begin)), (16, "0")]))
        self.resend_range = (begin, seq - 1)
        log.info("FIX %s: gap: expected %d, got %d; asked for a resend", self.config.session_id, begin, seq)

    def _target_too_low(self, msg: FixMessage, seq: int) -> None:
        if msg.get(43) != "Y":
            text = f"MsgSeqNum too low, expecting {self.next_target_seq} but received {seq}"
            self.logout(text)
            raise _Disconnect(text)
        if msg.msg_type != "4":
            orig = msg.get(122)
            if orig is None:
                self._reject(msg, dd_.REQUIRED_TAG_MISSING, 122)
                return
            try:
                late = parse_timestamp(orig) > parse_timestamp(msg.get(52) or "")
            except ValueError:
                late = True
            if late:
                self._reject(msg, dd_.SENDING_TIME_ACCURACY)
                self.logout()

    def _next_queued(self) -> None:
        while True:
            msg = self.queue.pop(self.next_target_seq, None)
            if msg is None:
                return
            if msg.msg_type in ("A", "2"):
                self.store.set_next_target_seq(self.next_target_seq + 1)
            else:
                self._next(msg, queued=True)

    # -- per message type ---------------------------------------------------------------------------------
    def _on_logon(self, msg: FixMessage) -> None:
        self.received_reset = msg.get(141) == "Y"
        if self.received_reset:
            if not self.sent_reset:
                self.store.reset()
        elif not self.config.initiator and not self.received_logon and self.config.reset_on_logon:
            self.store.reset()
        if self.config.initiator and not self.sent_logon and not self.received_reset:
            raise _Disconnect("logon response before our logon")
        if not self._verify(msg, False, True):
            return
        self.received_logon = True
        if not self.config.initiator or (self.sent_reset and not self.received_reset):
            try:
                self.heartbeat_s = int(msg.get(108) or 0)
            except ValueError:
                self.heartbeat_s = 0
            self._send_logon(reply_to=msg)
        self.sent_reset = self.received_reset = False
        seq = int(msg.get(34) or 0)
        if seq > self.next_target_seq:
            self._target_too_high(msg, seq)
        else:
            self.store.set_next_target_seq(self.next_target_seq + 1)
            self._next_queued()
        if self.is_logged_on:
            log.info("FIX %s: logged on", self.config.session_id)
            LOGONS.labels(self.config.session_id).inc()
            LOGGED_ON.labels(self.config.session_id).set(1.0)
            self.app.on_logon(self)

    def _on_heartbeat(self, msg: FixMessage) -> None:
        if self._verify(msg, True, True):
            self.store.set_next_target_seq(self.next_target_seq + 1)

    def _on_test_request(self, msg: FixMessage) -> None:
        if not self._verify(msg, True, True):
            return
        hb = FixMessage([(35, "0")])
        if 112 in msg:
            hb.append(112, msg.get(112))
        self._send_raw(hb)
        self.store.set_next_target_seq(self.next_target_seq + 1)

    def _on_logout(self, msg: FixMessage) -> None:
        if not self._verify(msg, False, False):
            return
        if not self.sent_logout:
            self.logout()
        self.store.set_next_target_seq(self.next_target_seq + 1)
        if self.config.reset_on_logout:
            self.store.reset()
        raise _Disconnect("logged out")

    def _on_reject(self, msg: FixMessage) -> None:
        if self._verify(msg, True, True):
            log.warning("FIX %s: our message %s was rejected: %s", self.config.session_id, msg.get(45),
                        msg.get(58))
            self.store.set_next_target_seq(self.next_target_seq + 1)

    def _on_sequence_reset(self, msg: FixMessage) -> None:
        gap_fill = msg.get(123) == "Y"
        if not self._verify(msg, gap_fill, gap_fill):
            return
        new = int(msg.get(36) or 0)
        if new > self.next_target_seq:
            self.store.set_next_target_seq(new)
        elif new < self.next_target_seq:
            self._reject(msg, dd_.VALUE_INCORRECT)

    def _on_resend_request(self, msg: FixMessage) -> None:
        if not self._verify(msg, False, False):
            return
        begin, end = int(msg.get(7) or 0), int(msg.get(16) or 0)
        last = self.next_sender_seq - 1
        if end == 0 or end > last:
            end = last
        self._resend(begin, end)
        seq = int(msg.get(34) or 0)
        if seq == self.next_target_seq:
            self.store.set_next_target_seq(seq + 1)

    def _resend(self, begin: int, end: int) -> None:
        gap_from = 0
        current = begin
        last_seq = begin - 1
        for seq, raw in self.store.sent(begin, end):
            if seq != current and not gap_from:
                gap_from = current
            last_seq = seq
            old = parse(raw) if raw else None  # empty: sent with resend=False
            if old is None or old.msg_type in ADMIN_TYPES:
                if not gap_from:
                    gap_from = seq
            else:
                if gap_from:
                    self._gap_fill(gap_from, seq)
                    gap_from = 0
                old.set(43, "Y")
                old.set(122, old.get(52) or "")
                self._count("resent")
                self._send_raw(old, seq=seq)
            current = seq + 1
        if gap_from:
            self._gap_fill(gap_from, last_seq + 1)
        if end > last_seq:
            self._gap_fill(begin if last_seq < begin else last_seq + 1, min(end + 1, self.next_sender_seq))

    def _gap_fill(self, begin: int, new_seq: int) -> None:
        self._send_raw(FixMessage([(35, "4"), (43, "Y"), (122, utc_timestamp(self.clock())), (36, str(new_seq)),
                                   (123, "Y")]), seq=begin)

    # -- timers -------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Heartbeats, test requests and time-outs; call it about every 100 ms."""
        if self._write is None:
            return
        now = self.clock()
        if not self.received_logon:
            if self.sent_logon and now - self.logon_sent_at >= self.config.logon_timeout_s:
                self.disconnect("timed out waiting for the logon")
            return
        hb = self.heartbeat_s
        if self.sent_logout and now - self.logout_sent_at >= self.config.logout_timeout_s:
            self.disconnect("timed out waiting for the logout reply")
            return
        if hb <= 0:
            return
        since_sent, since_received = now - self.last_sent, now - self.last_received
        if since_sent < hb and since_received < hb:
            return
        if since_received >= 2.4 * hb:
            self.disconnect("timed out waiting for a heartbeat")
        elif since_received >= 1.2 * (self.test_requests + 1) * hb:
            self._send_raw(FixMessage([(35, "1"), (112, "TEST")]))
            self.test_requests += 1
        elif since_sent >= hb and not self.test_requests:
            self._send_raw(FixMessage([(35, "0")]))

    def _check_schedule(self) -> None:
        """Reset the sequence numbers when the store was created before the current session window."""
        c = self.config
        if c.start is None or c.end is None:
            return
        now = datetime.fromtimestamp(self.clock(), UTC)
        opened = now.replace(hour=c.start.hour, minute=c.start.minute, second=c.start.second, microsecond=0)
        if opened > now:
            opened -= timedelta(days=1)
        if self.store.creation_time < opened:
            self.store.reset()

    def in_window(self) -> bool:
        """Whether now is inside the session's daily window (always, without one)."""
        c = self.config
        if c.start is None or c.end is None:
            return True
        now = datetime.fromtimestamp(self.clock(), UTC).time()
        if c.start <= c.end:
            return c.start <= now <= c.end
        return now >= c.start or now <= c.end


class _Disconnect(Exception):  # noqa: N818 - internal control flow
    pass


_HEADER_TAGS = frozenset({34, 43, 49, 50, 52, 56, 57, 97, 115, 116, 122, 128, 129, 142, 143, 144, 145, 369})
_HANDLERS: dict[str, Callable[[Session, FixMessage], None]] = {
    "A": Session._on_logon, "0": Session._on_heartbeat, "1": Session._on_test_request,
    "2": Session._on_resend_request, "3": Session._on_reject, "4": Session._on_sequence_reset,
    "5": Session._on_logout,
}
