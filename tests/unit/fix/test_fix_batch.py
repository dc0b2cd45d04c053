"""The batch parser against the per-message path: for every frame of a buffer, BatchParser gives the verdict
(SessionRejectReason, RefTagID) that message.parse + DataDictionary.validate give, and the same fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greekfire.fix.batch import GARBLED, BatchParser, FixBatch
from greekfire.fix.dictionary import DataDictionary, FieldProblem
from greekfire.fix.message import FixMessage, GarbledMessage, next_frame, parse

SOH = "\x01"
TS = "20261206-13:05:01.123"


@pytest.fixture(scope="module")
def dd(shared_data: Path) -> DataDictionary:
    return DataDictionary.load(shared_data / "fix44" / "FIX44.xml")


@pytest.fixture(scope="module")
def parser(dd: DataDictionary) -> BatchParser:
    return BatchParser(dd)


def frame(body: str, *, length_delta: int = 0, checksum: str | None = None, begin: str = "FIX.4.4") -> bytes:
    """A frame around ``body`` ('|' for SOH, fields after BodyLength), with an optional wrong length/checksum."""
    b = body.replace("|", SOH).encode("latin-1")
    if not b.endswith(b"\x01"):
        b += b"\x01"
    head = f"8={begin}{SOH}9={len(b) + length_delta}{SOH}".encode("latin-1")
    cs = checksum if checksum is not None else f"{sum(head + b) & 0xFF:03d}"
    return head + b + f"10={cs}{SOH}".encode("latin-1")


def nos_body(seq: int = 1, **replace: str | None) -> str:
    fields = [
        ("35", "D"),
        ("34", str(seq)),
        ("49", "GREEKFIRE"),
        ("52", TS),
        ("56", "GFEXCH"),
        ("11", f"ORD-{seq:09d}"),
        ("21", "1"),
        ("38", "100"),
        ("40", "2"),
        ("44", "101.25"),
        ("48", "7"),
        ("22", "8"),
        ("54", "1"),
        ("55", "GFX 20270105 C100"),
        ("59", "0"),
        ("60", TS),
    ]
    out = []
    for t, v in fields:
        if t in replace:
            new = replace[t]
            if new is None:
                continue
            v = new
        out.append(f"{t}={v}")
    return "|".join(out)


def nos(seq: int = 1, **replace: str | None) -> bytes:
    return frame(nos_body(seq, **replace))


def exec_report(seq: int) -> bytes:
    return frame(
        f"35=8|34={seq}|49=GFEXCH|52={TS}|56=GREEKFIRE|37=X{seq}|11=ORD-{seq}|17=E{seq}|150=F|39=2|"
        f"55=GFX|54=1|38=100|32=100|31=101.25|151=0|14=100|6=101.25|60={TS}"
    )


def heartbeat(seq: int) -> bytes:
    return frame(f"35=0|34={seq}|49=GFEXCH|52={TS}|56=GREEKFIRE")


def reference(
    dd: DataDictionary | None, buf: bytes
) -> tuple[list[tuple[int, int, int, int, FixMessage | None]], int]:
    """(start, end, error, error tag, message) of every frame by the per-message path, and bytes consumed."""
    out: list[tuple[int, int, int, int, FixMessage | None]] = []
    pos = 0
    while (span := next_frame(buf, pos)) is not None:
        i, e = span
        pos = e
        try:
            m = parse(buf[i:e])
        except GarbledMessage:
            out.append((i, e, GARBLED, -1, None))
            continue
        err, tag = -1, -1
        if dd is not None:
            try:
                dd.validate(m)
            except FieldProblem as p:
                err, tag = p.reason, -1 if p.tag is None else p.tag
        out.append((i, e, err, tag, m))
    return out, (out[-1][1] if out else 0)


def check_same(dd: DataDictionary | None, parser: BatchParser, buf: bytes) -> FixBatch:
    batch = parser.parse(buf)
    ref, consumed = reference(dd, buf)
    assert len(batch) == len(ref)
    assert batch.consumed == consumed
    for k, (i, e, err, tag, m) in enumerate(ref):
        assert (int(batch.msg_start[k]), int(batch.msg_end[k])) == (i, e)
        assert (int(batch.error[k]), int(batch.error_tag[k])) == (err, tag), (k, buf[i:e])
        if m is None:
            with pytest.raises(GarbledMessage):
                batch.message(k)
        else:
            got = batch.message(k)
            assert got == m and got.begin_string == m.begin_string
    return batch


def test_valid_messages_parse_and_materialise(dd: DataDictionary, parser: BatchParser) -> None:
    frames = [nos(1), exec_report(2), heartbeat(3), nos(4)]
    batch = check_same(dd, parser, b"".join(frames))
    assert batch.error.tolist() == [-1, -1, -1, -1]
    assert batch.message(1).get(150) == "F"
    assert batch.tags[batch.field_start[0]] == 35
    assert batch.column(35) == ["D", "8", "0", "D"]
    assert batch.column(11) == ["ORD-000000001", "ORD-2", None, "ORD-000000004"]
    assert batch.int_column(34).tolist() == [1, 2, 3, 4]
    assert batch.int_column(38).tolist() == [100, 100, -1, 100]
    with pytest.raises(ValueError, match="tag 55 of message 0"):
        batch.int_column(55)
    buf = b"".join(frames)
    for same in (parser.parse(bytearray(buf)), parser.parse(memoryview(buf))):
        assert same.buf == buf and same.error.tolist() == batch.error.tolist()
        assert same.tags.tolist() == batch.tags.tolist()
    with pytest.raises(IndexError, match="outside the batch of 4"):
        batch.message(4)


def unknown_tag(dd: DataDictionary) -> int:
    return next(t for t in range(100, max(dd.fields)) if t not in dd.fields)


@pytest.fixture(scope="module")
def invalid_cases(dd: DataDictionary) -> dict[str, tuple[bytes, int, int]]:
    """name -> (frame, expected SessionRejectReason or GARBLED, RefTagID)."""
    good = nos(7)
    bad_cs = good[:-4] + (b"%03d" % ((int(good[-4:-1]) + 1) % 256)) + b"\x01"
    body = nos_body(8)
    swapped = "34=8|35=D|" + body.replace("35=D|34=8|", "")
    unknown = unknown_tag(dd)
    header_late = nos_body(9, **{"49": None}) + "|49=GREEKFIRE"
    group_ok = nos_body(10) + "|386=2|336=A|336=B"
    return {
        "bad checksum": (bad_cs, GARBLED, -1),
        "checksum not three digits": (frame(nos_body(1), checksum="1"), GARBLED, -1),
        "checksum not a number": (frame(nos_body(1), checksum="1x2"), GARBLED, -1),
        "bad body length": (frame(nos_body(2), length_delta=-2), GARBLED, -1),
        "body length one short": (frame(nos_body(2), length_delta=-1), GARBLED, -1),
        "35 not third": (frame(swapped), GARBLED, -1),
        "empty tag": (frame(nos_body(3) + "|=x"), GARBLED, -1),
        "unknown tag in table range": (frame(nos_body(3) + f"|{unknown}=x"), 0, unknown),
        "unknown big tag": (frame(nos_body(3) + "|99999=x"), 0, 99999),
        "empty value": (frame(nos_body(4) + "|58="), 4, 58),
        "not defined for the type": (frame(nos_body(5) + "|37=ORDER"), 2, 37),
        "bad format": (nos(6, **{"38": "+200.00"}), 6, 38),
        "bad timestamp": (nos(6, **{"60": "20261206-13:05"}), 6, 60),
        "bad enum": (nos(6, **{"21": "4"}), 5, 21),
        "bad multi enum": (frame(nos_body(6) + "|18=1 QQ"), 5, 18),
        "good multi enum": (frame(nos_body(6) + "|18=1 2"), -1, -1),
        "repeated tag": (frame(nos_body(11) + "|38=5"), 13, 38),
        "repeated big tag": (frame(nos_body(11) + "|99999=1|99999=2"), 13, 99999),
        "header tag after body": (frame(header_late), 14, 49),
        "body tag after trailer": (frame(nos_body(12) + "|93=4|58=x"), 14, 58),
        "missing required 11": (nos(12, **{"11": None}), 1, 11),
        "missing header 52": (nos(12, **{"52": None}), 1, 52),
        "unknown msgtype": (frame(nos_body(13, **{"35": "ZZ"})), 11, -1),
        "three-byte msgtype": (frame(nos_body(13, **{"35": "AAA"})), 11, -1),
        "group count mismatch": (frame(nos_body(14) + "|386=3|336=A|336=B"), 16, 386),
        "group count right": (frame(group_ok), -1, -1),
        "zero-count group": (
            frame(f"35=d|34=15|49=GFEXCH|52={TS}|56=GREEKFIRE|320=R1|322=S1|323=1|55=GFX|454=0"),
            -2,
            -2,
        ),
        "tag with a space": (frame(nos_body(16) + "| 58=x"), -2, -2),
        "field without =": (frame(nos_body(16) + "|58"), -2, -2),
        "begin string other": (frame(nos_body(17), begin="FIXT.1.1"), -1, -1),
    }


def test_every_invalid_kind_matches_the_per_message_path(
    dd: DataDictionary, parser: BatchParser, invalid_cases: dict[str, tuple[bytes, int, int]]
) -> None:
    for name, (raw, err, tag) in invalid_cases.items():
        ref, _ = reference(dd, raw)
        assert len(ref) == 1, name
        if err != -2:  # -2: the case's verdict is whatever the per-message path says (checked below)
            assert ref[0][2:4] == (err, tag), name
        batch = check_same(dd, parser, raw)
        assert len(batch) == 1, name
    # all of them in one buffer, between valid messages, with junk and a partial frame at the end
    parts = []
    for k, (raw, _, _) in enumerate(invalid_cases.values()):
        parts += [nos(100 + k), raw, b"junk" if k % 3 == 0 else b"", heartbeat(200 + k)]
    buf = b"".join(parts) + nos(999)[:50]
    batch = check_same(dd, parser, buf)
    assert batch.consumed == len(buf) - 50
    assert len(batch) == 3 * len(invalid_cases)
    errors = set(batch.error.tolist())
    assert {GARBLED, -1, 0, 1, 2, 4, 5, 6, 11, 13, 14, 16} <= errors


def test_long_body_length_waits_then_swallows_the_next_frame(dd: DataDictionary, parser: BatchParser) -> None:
    long = frame(nos_body(2), length_delta=3)
    assert len(parser.parse(long)) == 0 and parser.parse(long).consumed == 0
    batch = check_same(dd, parser, long + heartbeat(3) + nos(4))
    assert batch.error.tolist() == [GARBLED, -1]


def test_group_verdicts_come_from_the_python_path(dd: DataDictionary, parser: BatchParser) -> None:
    raw = frame(nos_body(14) + "|386=3|336=A|336=B")
    batch = parser.parse(raw)
    assert (int(batch.error[0]), int(batch.error_tag[0])) == (16, 386)
    assert batch.message(0).get(386) == "3"
    # a NumInGroup 454=0 in a SecurityDefinitionRequest
    raw = frame(f"35=c|34=15|49=GFEXCH|52={TS}|56=GREEKFIRE|320=R1|321=0|55=GFX|454=0")
    ref, _ = reference(dd, raw)
    batch = check_same(dd, parser, raw)
    assert (int(batch.error[0]), int(batch.error_tag[0])) == ref[0][2:4]


def test_odd_framing_goes_through_next_frame(dd: DataDictionary, parser: BatchParser) -> None:
    body = nos_body(20).replace("|", SOH).encode() + b"\x01"
    odd = b"8=FIX.4.4\x019= %d\x01" % len(body) + body
    odd += b"10=%03d\x01" % (sum(odd) & 0xFF)
    empty_len = b"8=FIX.4.4\x019=\x01" + body
    empty_len += b"10=%03d\x01" % (sum(empty_len) & 0xFF)
    buf = nos(1) + odd + nos(2) + empty_len + heartbeat(3)
    batch = check_same(dd, parser, buf)
    assert len(batch) == 5 and batch.error[1] == -1 and batch.error[3] == GARBLED
    assert batch.column(34) == ["1", "20", "2", None, "3"]
    assert batch.int_column(34).tolist() == [1, 20, 2, -1, 3]


def test_many_small_messages_grow_the_arrays(dd: DataDictionary, parser: BatchParser) -> None:
    buf = b"".join(heartbeat(i) for i in range(3000))
    batch = check_same(dd, parser, buf)
    assert len(batch) == 3000 and (batch.error == -1).all()
    assert np.array_equal(batch.int_column(34), np.arange(3000))


def test_without_a_dictionary_only_frames_are_checked(
    invalid_cases: dict[str, tuple[bytes, int, int]],
) -> None:
    plain = BatchParser(None)
    buf = b"".join(raw for raw, _, _ in invalid_cases.values())
    batch = check_same(None, plain, buf)
    assert set(batch.error.tolist()) == {-1, GARBLED}
    assert len(plain.parse(b"")) == 0 and plain.parse(b"8=FIX.4.4\x019=5").consumed == 0


# ---------------------------------------------------------------------------------------------- hypothesis
# the NewOrderSingle's tags, some other body, header and trailer tags, group tags, unknown ones
_TAGS = [*range(5), 8, 9, 10, 11, 18, 21, 22, 34, 35, 37, 38, 40, 44, 48, 49, 52, 54, 55, 56, 58, 59, 60, 93]
_TAGS += [336, 386, 5001, 99999]
_VALUE = st.one_of(
    st.text(alphabet="0123456789.-:+ YNwDA=", max_size=22),
    st.sampled_from(["", "1", "2", "D", "8", "0", "Y", TS, "20261206", "13:05:01", "1 2", "-5", ".5", "5."]),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    fields = [tuple(f.split("=", 1)) for f in nos_body(draw(st.integers(1, 10**6))).split("|")]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "drop", "dup", "swap", "add"]))
        k = draw(st.integers(0, len(fields) - 1))
        if op == "set":
            fields[k] = (fields[k][0], draw(_VALUE))
        elif op == "drop" and len(fields) > 1:
            del fields[k]
        elif op == "dup":
            fields.insert(draw(st.integers(0, len(fields))), fields[k])
        elif op == "swap":
            j = draw(st.integers(0, len(fields) - 1))
            fields[k], fields[j] = fields[j], fields[k]
        else:
            fields.insert(
                draw(st.integers(0, len(fields))), (str(draw(st.sampled_from(_TAGS))), draw(_VALUE))
            )
    raw = frame("|".join(f"{t}={v}" for t, v in fields))
    if draw(st.booleans()):  # damage a byte (framing, length or checksum) now and then
        k = draw(st.integers(0, len(raw) - 1))
        raw = raw[:k] + bytes([draw(st.sampled_from(b"0159=\x01xD"))]) + raw[k + 1 :]
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutated(), min_size=1, max_size=4))
def test_mutations_give_the_same_verdict_both_ways(
    dd: DataDictionary, parser: BatchParser, raws: list[bytes]
) -> None:
    check_same(dd, parser, b"".join(raws))
