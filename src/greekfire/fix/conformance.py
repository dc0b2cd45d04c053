"""Runs QuickFIX's acceptance scripts (``*.def``) against our FIX acceptor.

A script is a conversation with the acceptor under test: ``iCONNECT`` opens a connection (``i2,CONNECT``
a second one), ``I<msg>`` is sent, ``E<msg>`` must be the next message received, ``eDISCONNECT`` expects
the acceptor to close the connection. ``<TIME>``, ``<TIME+n>`` and ``<TIME-n>`` are now (UTC, seconds, +/- n
seconds); BodyLength and CheckSum are filled in where a line leaves them out. Received messages are
compared field by field, in order; SendingTime, OrigSendingTime, TransactTime, CheckSum, BodyLength and a few
id fields are matched by pattern, as QuickFIX's own runner does.

The acceptor under test answers application messages as QuickFIX's test application does: it echoes
NewOrderSingle (D) and SecurityDefinition (d), ignores a PossResend (97=Y) order whose ClOrdID it has seen,
and rejects every other application message as unsupported.

Example::

    results = run_scripts(Path("fix44/definitions_server_fix44"), Path("fix44/FIX44.xml"))
    print(sum(r.passed for r in results), "of", len(results))
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from greekfire.fix.dictionary import DataDictionary
from greekfire.fix.message import FixMessage, frames
from greekfire.fix.session import Application, Session, SessionConfig, UnsupportedMessageType
from greekfire.fix.store import MemoryStore
from greekfire.fix.transport import FixAcceptor, FixThread

# fields compared by pattern (the rest must match exactly), as in QuickFIX's test runner
_PATTERNS = {
    10: re.compile(r"\d{3}"), 42: re.compile(r"\d{8}-\d{2}:\d{2}:\d{2}"),
    52: re.compile(r"\d{8}-\d{2}:\d{2}:\d{2}"), 60: re.compile(r"\d{8}-\d{2}:\d{2}:\d{2}"),
    122: re.compile(r"\d{8}-\d{2}:\d{2}:\d{2}"), 75: re.compile(r"\d{8}"), 17: re.compile("."),
    37: re.compile("."), 198: re.compile("."), 9: re.compile("."),
}
_TIME = re.compile(r"<TIME([+-]\d+)?>")
RECEIVE_TIMEOUT_S = 15.0
DISCONNECT_TIMEOUT_S = 10.0


@dataclass(slots=True)
class ScriptResult:
    """One script: ``passed``, the failing ``line`` and ``reason`` when not, and its run time (s)."""

    name: str
    passed: bool
    reason: str = ""
    line: int = 0
    seconds: float = 0.0


class EchoApplication(Application):
    """QuickFIX's acceptance-test application: echo orders and security definitions back."""

    ECHOED = frozenset({"D", "d"})

    def __init__(self, dictionary: DataDictionary) -> None:
        self.dd = dictionary
        self.orders: set[str] = set()

    def on_logon(self, session: Session) -> None:
        self.orders.clear()

    def on_message(self, session: Session, msg: FixMessage) -> None:
        mt = msg.msg_type
        if mt not in self.ECHOED:
            raise UnsupportedMessageType(mt)
        if mt == "D":
            clordid = msg.get(11) or ""
            if msg.get(97) == "Y" and clordid in self.orders:
                return
            self.orders.add(clordid)
        header = [(t, v) for t, v in msg.fields if t in self.dd.header.fields and t not in (8, 9, 35)]
        session.send(FixMessage([(35, mt), *header, *self.dd.ordered_body(msg)]))


def _fixify(text: str, now: datetime) -> bytes:
    """A script line's message as bytes: times filled in, BodyLength and CheckSum added where missing."""

    def when(m: re.Match[str]) -> str:
        return (now + timedelta(seconds=int(m.group(1) or 0))).strftime("%Y%m%d-%H:%M:%S")

    msg = _TIME.sub(when, text).encode("latin-1")
    head_end = msg.find(b"\x01")
    if not msg.startswith(b"8=") or head_end < 0:
        return msg
    head, rest = msg[:head_end + 1], msg[head_end + 1:]
    m = re.search(rb"\x0110=[^\x01]*\x01$", rest)
    checksum = m.group(0)[1:] if m else None
    if m:
        rest = rest[:m.start() + 1]
    if re.search(rb"(^|\x01)9=", msg) is None:
        head += b"9=%d\x01" % len(rest)
    if checksum is None:
        checksum = b"10=%03d\x01" % (sum(head + rest) % 256)
    return head + rest + checksum


def compare(expected: bytes, actual: bytes) -> str | None:
    """None when ``actual`` matches ``expected`` (see the module docstring), else the reason."""
    e = expected.rstrip(b"\x01").split(b"\x01")
    a = actual.rstrip(b"\x01").split(b"\x01")
    if len(e) != len(a):
        return f"{len(a)} fields, expected {len(e)}"
    for ef, af in zip(e, a, strict=True):
        et, _, ev = ef.decode("latin-1").partition("=")
        at, _, av = af.decode("latin-1").partition("=")
        if et != at:
            return f"expected field {et} but found field {at}"
        pattern = _PATTERNS.get(int(et)) if et.lstrip("-").isdigit() else None
        if pattern is None:
            if ev != av:
                return f"field {et} should be {ev!r} but was {av!r}"
        elif not pattern.search(av):
            return f"field {et} value {av!r} does not match its pattern"
    return None


class _Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_message(self, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        while True:
            for frame in frames(self.buf):
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Failure(f"no message within {timeout_s:.0f} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise _Failure(f"connection error: {e}") from None
            if not data:
                raise _Failure("the acceptor closed the connection")
            self.buf += data

    def wait_disconnect(self, timeout_s: float) -> None:
        if self.buf.strip(b"\x00"):
            raise _Failure(f"expected a disconnect, got data {bytes(self.buf[:60])!r}")
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise _Failure(f"the connection was still open after {timeout_s:.0f} s") from None
        except OSError:
            return
        if data:
            raise _Failure(f"expected a disconnect, got data {data[:60]!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Failure(Exception):
    pass


def run_script(path: Path, port: int) -> ScriptResult:
    """Play one ``.def`` script against the acceptor on ``port``."""
    clients: dict[int, _Client] = {}
    t0 = time.perf_counter()
    lineno = 0
    try:
        for number, raw_line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
            lineno = number
            line = raw_line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            kind = line[0]
            m = re.match(r"^[IEie](\d),", line)
            cid, body = (int(m.group(1)), line[3:]) if m else (1, line[1:])
            now = datetime.now(UTC)
            if kind == "i" and body == "CONNECT":
                clients[cid] = _Client(port)
            elif kind == "i" and body == "DISCONNECT":
                clients.pop(cid).close()
            elif kind == "e" and body == "DISCONNECT":
                _client(clients, cid).wait_disconnect(DISCONNECT_TIMEOUT_S)
            elif kind == "e" and body == "CONNECT":
                raise _Failure("scripts that expect the acceptor to connect out are for initiators")
            elif kind == "I":
                _client(clients, cid).send(_fixify(body, now))
            elif kind == "E":
                got = _client(clients, cid).read_message(RECEIVE_TIMEOUT_S)
                reason = compare(_fixify(body, now), got)
                if reason:
                    shown = got.replace(b"\x01", b"|").decode("latin-1")
                    raise _Failure(f"{reason}; received {shown}")
            else:
                raise _Failure(f"cannot read script line {line[:40]!r}")
    except _Failure as e:
        return ScriptResult(path.stem, False, str(e), lineno, time.perf_counter() - t0)
    finally:
        for c in clients.values():
            c.close()
    return ScriptResult(path.stem, True, "", 0, time.perf_counter() - t0)


def _client(clients: dict[int, _Client], cid: int) -> _Client:
    if cid not in clients:
        raise _Failure(f"connection {cid} is not open")
    return clients[cid]


@dataclass
class ConformanceAcceptor:
    """Our acceptor as the scripts expect it: session ISLD <- TW44, FIX.4.4, reset on disconnect."""

    dictionary: DataDictionary
    thread: FixThread = field(default_factory=FixThread)
    port: int = 0

    def __post_init__(self) -> None:
        config = SessionConfig("ISLD", "TW44", reset_on_disconnect=True)
        self.app = EchoApplication(self.dictionary)
        self.session = Session(config, self.app, MemoryStore(), self.dictionary)
        self.acceptor = FixAcceptor([self.session])
        self.port = self.thread.run(self.acceptor.start())

    def reset(self) -> None:
        def _reset() -> None:
            if self.session.is_connected:
                self.session.disconnect("next script")
            self.session.store.reset()
        self.thread.call_wait(_reset)

    def close(self) -> None:
        self.thread.run(self.acceptor.stop())
        self.thread.stop()


def run_scripts(
    folder: Path, dictionary_path: Path, on_result: Callable[[ScriptResult], None] | None = None,
    only: str | None = None, jobs: int = 3, quiet: bool = True,
) -> list[ScriptResult]:
    """Run every ``*.def`` in ``folder`` (or those whose name contains ``only``), each against a freshly
    reset acceptor; ``jobs`` acceptors run scripts side by side (the heartbeat scripts wait for real
    heartbeat intervals). Results come back sorted by script name."""
    scripts = sorted(folder.glob("*.def"))
    if only:
        scripts = [s for s in scripts if only in s.name]
    if not scripts:
        return []
    dictionary = DataDictionary.load(dictionary_path)
    # the scripts that wait for heartbeats first, so they overlap with the rest
    todo = sorted(scripts, key=lambda p: (not _waits_for_heartbeats(p), p.name))
    lock = threading.Lock()
    out: list[ScriptResult] = []

    def worker() -> None:
        acceptor = ConformanceAcceptor(dictionary)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    script = todo.pop(0)
                acceptor.reset()
                r = run_script(script, acceptor.port)
                with lock:
                    out.append(r)
                    if on_result is not None:
                        on_result(r)
        finally:
            acceptor.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(jobs, len(scripts))))]
    # the scripts provoke rejects and disconnects on purpose: the results say what happened, not the log
    fix_log = logging.getLogger("greekfire.fix")
    level = fix_log.level
    if quiet:
        fix_log.setLevel(logging.ERROR)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        fix_log.setLevel(level)
    return sorted(out, key=lambda r: r.name)


def _waits_for_heartbeats(path: Path) -> bool:
    """A script whose logon asks for a short HeartBtInt and then expects our heartbeats."""
    text = path.read_text(encoding="latin-1")
    return "108=6\x01" in text and "E8=FIX.4.4\x019=51\x0135=0" in text
