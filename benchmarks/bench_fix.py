"""FIX 4.4 benchmarks: parsing and encoding a NewOrderSingle, and the order round trip over loopback.

Parse and encode: greekfire.fix.message against simplefix (pure Python), QuickFIX's C++ engine through the
``quickfix`` module of the quickfix-tls wheel, and a naive ``bytes.split`` + CheckSum parse (the floor a
Python parser can reach). All single-threaded, in this process, on the same message; best of a few rounds,
each round timing a batch of messages.

Round trip: NewOrderSingle -> ExecutionReport (New) against a QuickFIX acceptor (the small exchange of
tests/fixpeer) over loopback, one order in flight at a time, p50/p99/p99.9. The QuickFIX client is
measured here; greekfire's session registers its client in ROUNDTRIP_CLIENTS (see below).

The peers are dev extras (``pip install -e '.[dev]'``); a missing one makes its rows say why instead.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, report  # noqa: E402

from greekfire.fix.message import FixMessage, parse  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the QuickFIX exchange and client of the tests (tests/fixpeer)
DICTIONARY = ROOT.parent / "shared" / "data" / "fix44" / "FIX44.xml"
N_MESSAGES = 20_000  # per timed batch
REPEAT = 5
N_ROUND_TRIPS = 3_000
WARMUP_ROUND_TRIPS = 300

# a realistic client order: header (34, 49, 52, 56), account, ClOrdID, handling, size, limit, side,
# symbol, time in force, transact time
NOS_FIELDS: list[tuple[int, str]] = [
    (35, "D"),
    (34, "18342"),
    (49, "GREEKFIRE"),
    (52, "20261206-14:30:01.123"),
    (56, "QFX"),
    (1, "ACC-042"),
    (11, "GF-20261206-18342"),
    (21, "1"),
    (38, "200"),
    (40, "2"),
    (44, "101.25"),
    (54, "1"),
    (55, "AAPL"),
    (59, "0"),
    (60, "20261206-14:30:01.122"),
]
NOS = FixMessage(NOS_FIELDS).encode()


def row(
    name: str, ours: float | None, peer: str, peer_value: float | None, unit: str, **extra: object
) -> dict[str, Any]:
    ratio = ours / peer_value if ours is not None and peer_value else None
    return {
        "benchmark": name,
        "ours": ours,
        "peer": peer,
        "peer_value": peer_value,
        "unit": unit,
        "ratio": ratio,
        **extra,
    }


def rate(fn: Callable[[], object]) -> float:
    """Messages per second of ``fn`` (which handles N_MESSAGES messages), best of REPEAT."""
    fn()  # warm up
    return N_MESSAGES / best_of(fn, repeat=REPEAT)


# ------------------------------------------------------------------------------------------- parsers
def ours_parse() -> None:
    raw = NOS
    for _ in range(N_MESSAGES):
        parse(raw)


def naive_parse() -> None:
    """Reference: split on SOH, check the CheckSum, a dict of tag -> value (no BodyLength, no order checks)."""
    raw = NOS
    for _ in range(N_MESSAGES):
        end = raw.rindex(b"\x0110=") + 1
        if sum(raw[:end]) & 0xFF != int(raw[end + 3 : -1]):
            raise ValueError("bad checksum")
        {int(t): v for t, _, v in (p.partition(b"=") for p in raw[:-1].split(b"\x01"))}


def simplefix_parse(simplefix: Any) -> Callable[[], None]:
    def run() -> None:
        parser = simplefix.FixParser()
        raw = NOS
        for _ in range(N_MESSAGES):
            parser.append_buffer(raw)
            if parser.get_message() is None:
                raise ValueError("simplefix found no message")

    return run


def quickfix_parse(fix: Any, dictionary: Any, validate_fields: bool = False) -> Callable[[], None]:
    text = NOS.decode("latin-1")  # the wheel's Message takes str

    def run() -> None:
        for _ in range(N_MESSAGES):
            m = fix.Message(text, dictionary, True)  # True: BodyLength and CheckSum checked
            if validate_fields:
                dictionary.validate(m)

    return run


# ------------------------------------------------------------------------------------------- encoders
def ours_encode() -> None:
    m = FixMessage(NOS_FIELDS)
    for _ in range(N_MESSAGES):
        m.encode()


def simplefix_encode(simplefix: Any) -> Callable[[], None]:
    m = simplefix.FixMessage()
    m.append_pair(8, "FIX.4.4", header=True)
    for tag, value in NOS_FIELDS:
        m.append_pair(tag, value, header=tag in (35, 34, 49, 52, 56))
    if m.encode() != NOS:
        raise AssertionError(f"simplefix encodes another message: {m.encode()!r}")

    def run() -> None:
        for _ in range(N_MESSAGES):
            m.encode()

    return run


def quickfix_encode(fix: Any, dictionary: Any) -> Callable[[], None]:
    m = fix.Message(NOS.decode("latin-1"), dictionary, True)

    def run() -> None:
        for _ in range(N_MESSAGES):
            m.toString()

    return run


def ours_validated() -> Callable[[], None]:
    """Per message: parse + DataDictionary.validate (what a session does with each message it reads)."""
    from greekfire.fix.dictionary import DataDictionary

    dd = DataDictionary.load(DICTIONARY)

    def run() -> None:
        for _ in range(N_MESSAGES):
            dd.validate(parse(NOS))

    return run


def ours_batched() -> Callable[[], None]:
    """A feed's buffer of N_MESSAGES orders, framed, checksummed and validated in one BatchParser call."""
    from greekfire.fix.batch import BatchParser
    from greekfire.fix.dictionary import DataDictionary

    parser = BatchParser(DataDictionary.load(DICTIONARY))
    buf = b"".join(
        FixMessage([(t, str(18_000 + k) if t == 34 else v) for t, v in NOS_FIELDS]).encode()
        for k in range(N_MESSAGES)
    )

    def run() -> None:
        batch = parser.parse(buf)
        if len(batch) != N_MESSAGES or int((batch.error >= 0).sum()):
            raise AssertionError("the batch parser rejected a valid order")

    run()  # compiles (or loads the cached kernel) before the clock starts
    return run


def codec_rows(notes: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    ours_p = rate(ours_parse)
    ours_e = rate(ours_encode)
    ours_v = rate(ours_validated()) if DICTIONARY.is_file() else None
    ours_b = rate(ours_batched()) if DICTIONARY.is_file() else None
    rows.append(
        row(
            "parse NewOrderSingle vs naive split+checksum (reference)",
            ours_p,
            "bytes.split + sum",
            rate(naive_parse),
            "msgs/s",
        )
    )
    try:
        import simplefix
    except ImportError as exc:
        notes.append(f"simplefix rows not run: {exc} (a dev extra)")
    else:
        ver = getattr(simplefix, "__version__", "")
        rows.append(
            row(
                "parse NewOrderSingle",
                ours_p,
                f"simplefix {ver} FixParser".replace("  ", " "),
                rate(simplefix_parse(simplefix)),
                "msgs/s",
            )
        )
        rows.append(
            row(
                "encode NewOrderSingle",
                ours_e,
                f"simplefix {ver} encode()".replace("  ", " "),
                rate(simplefix_encode(simplefix)),
                "msgs/s",
            )
        )
    fix, dictionary, why = quickfix_and_dictionary()
    if fix is None:
        notes.append(f"QuickFIX rows not run: {why}")
    else:
        rows.append(
            row(
                "parse NewOrderSingle",
                ours_p,
                "QuickFIX C++ Message(raw, dd, validate)",
                rate(quickfix_parse(fix, dictionary)),
                "msgs/s",
            )
        )
        qf_validated = rate(quickfix_parse(fix, dictionary, True))
        rows.append(
            row(
                "parse NewOrderSingle (peer also DataDictionary.validate)",
                ours_p,
                "QuickFIX C++ + dd.validate",
                qf_validated,
                "msgs/s",
            )
        )
        qf_parse = next(r["peer_value"] for r in rows if r["peer"] == "QuickFIX C++ Message(raw, dd, validate)")
        rows.append(row("parse + dictionary validation, per message", ours_v, "QuickFIX C++ + dd.validate",
                        qf_validated, "msgs/s"))
        rows.append(row("parse + dictionary validation, batched (20,000 per buffer)", ours_b,
                        "QuickFIX C++ Message(raw, dd, validate)", qf_parse, "msgs/s"))
        rows.append(row("parse + dictionary validation, batched (20,000 per buffer)", ours_b,
                        "QuickFIX C++ + dd.validate", qf_validated, "msgs/s"))
        rows.append(
            row(
                "encode NewOrderSingle",
                ours_e,
                "QuickFIX C++ toString()",
                rate(quickfix_encode(fix, dictionary)),
                "msgs/s",
            )
        )
    return rows


def quickfix_and_dictionary() -> tuple[Any, Any, str]:
    """(the quickfix module, the FIX 4.4 DataDictionary, '') or (None, None, why not)."""
    try:
        import quickfix as fix
    except ImportError as exc:
        return None, None, f"{exc} (quickfix-tls is a dev extra)"
    if not DICTIONARY.is_file():
        return None, None, f"the FIX 4.4 dictionary {DICTIONARY.name} is not in ../shared/data/fix44"
    return fix, fix.DataDictionary(str(DICTIONARY)), ""


# ----------------------------------------------------------------------- round-trip latency (extension point)
# A round-trip client gets the exchange's port (a QuickfixAcceptor with SenderCompID QFX, TargetCompID GF,
# already listening) and the FIX 4.4 dictionary; it logs on as GF, sends ``n`` NewOrderSingles (limit buy
# below 100.00, so each one rests and is answered by one ExecutionReport New) one at a time, and returns each
# order's round trip in nanoseconds: from just before the send call to the moment the client's own code has
# the ExecutionReport. The QuickFIX client is registered below; greekfire's FIX session adds its client as
# ROUNDTRIP_CLIENTS["greekfire"], and its percentiles become the "ours" column of the latency rows.
RoundTripClient = Callable[[int, Path, int], list[int]]


def quickfix_round_trips(port: int, dictionary: Path, n: int) -> list[int]:
    """Round trips (ns) of ``n`` orders sent by a QuickFIX initiator (C++ engine, Python application)."""
    from fixpeer import BUY, QuickfixInitiator, fields

    got = threading.Event()
    stamp = [0]
    expect = [""]

    def on_message(raw: str) -> None:
        if f"\x0111={expect[0]}\x01" in raw:
            stamp[0] = time.perf_counter_ns()
            got.set()

    client = QuickfixInitiator(
        port, "GF", "QFX", data_dictionary=dictionary, log=False, on_app_message=on_message
    )
    out: list[int] = []
    with client:
        client.wait_logged_on(15)
        for k in range(n):
            expect[0] = f"RT{k}"
            got.clear()
            t0 = time.perf_counter_ns()
            client.send_new_order(expect[0], "AAPL", BUY, 100, 99.0)
            if not got.wait(5):
                raise TimeoutError(f"no ExecutionReport for order {expect[0]} in 5 s")
            out.append(stamp[0] - t0)
        last = fields(client.received()[-1])
        if (last[150], last[11]) != ("0", f"RT{n - 1}"):
            raise AssertionError(f"unexpected last report {last}")
    return out


def greekfire_round_trips(port: int, dictionary: Path, n: int, sender: str = "GF", target: str = "QFX") -> list[int]:
    """Round trips (ns) of ``n`` orders sent by greekfire's FIX initiator (SQLite session store, as in
    production), timed inside its asyncio loop: the send call to the ExecutionReport handed to the app."""
    import asyncio
    import tempfile

    from greekfire.fix.dictionary import DataDictionary
    from greekfire.fix.session import Application, Session, SessionConfig
    from greekfire.fix.store import SqlStore
    from greekfire.fix.transport import FixInitiator, FixThread

    class Client(Application):
        def __init__(self) -> None:
            self.waiting = ""
            self.got: asyncio.Event | None = None
            self.stamp = 0

        def on_message(self, session: Session, msg: FixMessage) -> None:
            if msg.msg_type == "8" and msg.get(11) == self.waiting and self.got is not None:
                self.stamp = time.perf_counter_ns()
                self.got.set()

    app = Client()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{tmp}/client.db", "client")
        session = Session(SessionConfig(sender, target, initiator=True, heartbeat_s=30), app, store,
                          DataDictionary.load(dictionary))
        thread = FixThread()
        initiator = FixInitiator(session, "127.0.0.1", port)

        async def orders() -> list[int]:
            task = asyncio.get_running_loop().create_task(initiator.run())
            for _ in range(1500):
                if session.is_logged_on:
                    break
                await asyncio.sleep(0.01)
            out = []
            for k in range(n):
                app.waiting, app.got = f"RT{k}", asyncio.Event()
                t0 = time.perf_counter_ns()
                session.send(FixMessage([(35, "D"), (11, app.waiting), (21, "1"), (38, "100"), (40, "2"),
                                         (44, "99"), (54, "1"), (55, "AAPL"), (59, "0"),
                                         (60, "20261206-14:30:01.122")]))
                await asyncio.wait_for(app.got.wait(), 5)
                out.append(app.stamp - t0)
            await initiator.stop()
            task.cancel()
            return out

        try:
            return thread.run(orders(), timeout_s=600)
        finally:
            thread.stop()
            store.close()


ROUNDTRIP_CLIENTS: dict[str, RoundTripClient] = {"quickfix": quickfix_round_trips, "greekfire": greekfire_round_trips}


class _OurExchange:
    """greekfire's acceptor (SQLite store) answering each NewOrderSingle with an ExecutionReport New, as the
    QuickFIX exchange of tests/fixpeer does for an order that rests: the same work on the other side."""

    def __init__(self, dictionary: Path, tmp: Path) -> None:
        from greekfire.fix.dictionary import DataDictionary
        from greekfire.fix.session import Application, Session, SessionConfig
        from greekfire.fix.store import SqlStore
        from greekfire.fix.transport import FixAcceptor, FixThread

        class Exchange(Application):
            n = 0

            def on_message(self, session: Session, msg: FixMessage) -> None:
                Exchange.n += 1
                session.send(FixMessage([
                    (35, "8"), (6, "0"), (11, msg.get(11)), (14, "0"), (17, f"E{Exchange.n}"),
                    (37, f"O{Exchange.n}"), (38, msg.get(38)), (39, "0"), (40, msg.get(40)), (44, msg.get(44)),
                    (54, msg.get(54)), (55, msg.get(55)), (150, "0"), (151, msg.get(38)),
                ]))

        self.store = SqlStore(f"sqlite:///{tmp}/exchange.db", "exchange")
        self.session = Session(SessionConfig("QFX", "GF"), Exchange(), self.store, DataDictionary.load(dictionary))
        self.thread = FixThread()
        self.acceptor = FixAcceptor([self.session])
        self.port = self.thread.run(self.acceptor.start())

    def close(self) -> None:
        self.thread.run(self.acceptor.stop())
        self.thread.stop()
        self.store.close()


def percentiles_us(samples_ns: list[int]) -> dict[str, float]:
    """p50/p99/p99.9 of nanosecond samples, in microseconds (HdrHistogram, 3 significant digits)."""
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        import numpy as np

        a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
        return {q: float(np.percentile(a, p)) for q, p in (("p50", 50), ("p99", 99), ("p99.9", 99.9))}
    h = HdrHistogram(1_000, 10_000_000_000, 3)
    for x in samples_ns:
        h.record_value(max(1_000, x))
    return {q: h.get_value_at_percentile(p) / 1000.0 for q, p in (("p50", 50), ("p99", 99), ("p99.9", 99.9))}


def roundtrip_rows(notes: list[str]) -> list[dict[str, Any]]:
    fix, _, why = quickfix_and_dictionary()
    if fix is None:
        notes.append(f"round-trip rows not run: {why}")
        return []
    import tempfile

    from fixpeer import QuickfixAcceptor

    result: dict[str, dict[str, float]] = {}
    for name, client in ROUNDTRIP_CLIENTS.items():
        # a fresh exchange per client: the same empty book and sequence numbers for each
        exchange = QuickfixAcceptor(data_dictionary=DICTIONARY, log=False)
        with exchange:
            gc.collect()
            samples = client(exchange.port, DICTIONARY, WARMUP_ROUND_TRIPS + N_ROUND_TRIPS)[
                WARMUP_ROUND_TRIPS:
            ]
            if exchange.errors:
                raise RuntimeError(f"the QuickFIX exchange failed during {name}'s run: {exchange.errors}")
        result[name] = percentiles_us(samples)
    # the same two clients against greekfire's acceptor
    for name, client in ROUNDTRIP_CLIENTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            ours_ex = _OurExchange(DICTIONARY, Path(tmp))
            try:
                gc.collect()
                samples = client(ours_ex.port, DICTIONARY, WARMUP_ROUND_TRIPS + N_ROUND_TRIPS)[WARMUP_ROUND_TRIPS:]
            finally:
                ours_ex.close()
        result[f"{name}@greekfire"] = percentiles_us(samples)
    against_ours = [
        row(f"round trip NOS -> ER {q}, greekfire acceptor", result["greekfire@greekfire"][q],
            "QuickFIX initiator -> greekfire acceptor", result["quickfix@greekfire"][q], "us")
        for q in ("p50", "p99", "p99.9")
    ]
    ours = result.get("greekfire")
    peer = result["quickfix"]
    notes.append(
        f"round trip: {N_ROUND_TRIPS:,} NewOrderSingle -> ExecutionReport New over loopback after "
        f"{WARMUP_ROUND_TRIPS} warm-up, one in flight; the exchange is QuickFIX (C++ session, Python matching) "
        "with a FileStore, no message log; greekfire's client and acceptor keep SQLite session stores; "
        "client and exchange share this process and its GIL; the rows 'greekfire acceptor' run both clients "
        "against greekfire's acceptor instead"
        + (
            ""
            if ours
            else "; greekfire's client is not registered yet (ROUNDTRIP_CLIENTS), the ours column is empty"
        )
    )
    return [
        row(
            f"round trip NOS -> ER {q}, QuickFIX acceptor",
            ours[q] if ours else None,
            "QuickFIX initiator (C++ via wheel)",
            peer[q],
            "us",
        )
        for q in ("p50", "p99", "p99.9")
    ] + against_ours


def main() -> int:
    notes = [
        f"NewOrderSingle of {len(NOS)} bytes: {NOS.decode('latin-1').replace(chr(1), '|')}",
        "single-threaded: each row runs in this one Python thread (the QuickFIX rows call its C++ code through "
        "SWIG, one message per call); no torch, default glibc allocator; best of "
        f"{REPEAT} batches of {N_MESSAGES:,} messages, wall clock on a shared machine",
        "ratio = ours / peer (above 1: ours handles more messages per second; latency rows: below 1 is faster)",
        "simplefix's parser does not check BodyLength or CheckSum; QuickFIX's Message(raw, dd, True) checks "
        "both and splits header/body/trailer with the dictionary; ours checks BodyLength, CheckSum and the "
        "order of 8, 9, 35; the naive reference checks only the CheckSum",
    ]
    print(f"NewOrderSingle: {len(NOS)} bytes")
    t0 = time.perf_counter()
    rows = codec_rows(notes)
    rows += roundtrip_rows(notes)
    notes.append(f"whole run {time.perf_counter() - t0:.1f} s")
    report("fix", rows, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
