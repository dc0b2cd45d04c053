"""Any bytes given to the LOBSTER reader and the ITCH decoder give results or greekfire's own error, never
another exception: the inputs are damaged real-shaped files (cut short, bytes overwritten) and plain noise."""

from __future__ import annotations

import contextlib
import gzip
import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greekfire.core.errors import GreekfireError
from greekfire.market import itch, lobster, synth

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ITCH_STREAM = synth.synthetic_stream(300, n_stocks=2, seed=3)
# five LOBSTER events on one level: submit, submit, partial cancel, delete, execute (time,type,id,size,price,dir)
MESSAGES = b"34200.1,1,1,100,1000000,1\n34200.2,1,2,50,1010000,-1\n34200.3,2,1,40,1000000,1\n" \
           b"34200.4,3,2,50,1010000,-1\n34200.5,4,1,60,1000000,1\n"
BOOK = b"9999999999,0,1000000,100\n1010000,50,1000000,100\n1010000,50,1000000,60\n" \
       b"9999999999,0,1000000,60\n9999999999,0,-9999999999,0\n"


@st.composite
def damaged(draw: st.DrawFn, good: bytes) -> bytes:
    """``good`` cut short and with a few bytes overwritten."""
    raw = bytearray(good[: draw(st.integers(0, len(good)))])
    for _ in range(draw(st.integers(0, 6))):
        if raw:
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


def _zip(messages: bytes, book: bytes) -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("X_2012-06-21_0_1_message_1.csv", messages)
        zf.writestr("X_2012-06-21_0_1_orderbook_1.csv", book)
    return sink.getvalue()


ZIP = _zip(MESSAGES, BOOK)
ANY_BYTES = st.binary(max_size=300)


def test_the_undamaged_inputs_decode() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "s.zip").write_bytes(ZIP)
        res = lobster.check(lobster.read(Path(tmp) / "s.zip"))
    # every event applies and the book agrees with the file; a 1-level file has no level that must match,
    # so the check says it checked nothing instead of passing
    assert res.messages == 5 and res.match_rate == [1.0] and res.bad_events["bad"] == 0
    assert not res.ok and "nothing checked" in res.note
    clean = itch.decode(ITCH_STREAM)
    assert clean.n_errors == 0 and len(clean) >= 300


@FUZZ
@given(st.one_of(ANY_BYTES, damaged(MESSAGES)), st.one_of(ANY_BYTES, damaged(BOOK)))
def test_lobster_csv_pair_gives_a_check_or_our_error(messages: bytes, book: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        m, b = Path(tmp) / "X_message_1.csv", Path(tmp) / "X_orderbook_1.csv"
        m.write_bytes(messages)
        b.write_bytes(book)
        try:
            data = lobster.read(m, b)
            lobster.check(data)
            lobster.replay(data)
        except GreekfireError:
            pass


@FUZZ
@given(st.one_of(ANY_BYTES, damaged(ZIP)))
def test_lobster_zip_gives_a_check_or_our_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        z = Path(tmp) / "sample.zip"
        z.write_bytes(raw)
        with contextlib.suppress(GreekfireError):
            lobster.check(lobster.read(z))


@FUZZ
@given(st.one_of(ANY_BYTES, damaged(ITCH_STREAM), damaged(gzip.compress(ITCH_STREAM)),
                 ANY_BYTES.map(lambda b: b"\x1f\x8b" + b)),
       st.sampled_from(["length", "zero_prefix"]))
def test_itch_decoder_gives_messages_or_our_error(raw: bytes, framing: str) -> None:
    try:
        msgs = itch.decode(raw, framing)
        assert msgs.n_errors >= 0 and len(msgs) >= 0
        books, _, res = itch.build_books(np.frombuffer(raw, np.uint8), framing)
        assert res.applied >= 0
    except GreekfireError:
        pass
