"""FIX messages on the wire: framing a byte stream, parsing a frame into fields, building a frame.

A :class:`FixMessage` is the ordered list of ``(tag, value)`` fields between BodyLength (9) and CheckSum
(10): MsgType (35) first, then the rest in the order they were read or set. BeginString (8), BodyLength
and CheckSum are wire details: :meth:`FixMessage.encode` writes them, :func:`parse` checks them.

Framing follows the classic FIX engines: a frame starts at ``8=`` (at the start of the stream or after a
SOH), its body is BodyLength bytes long, and it ends at the first ``<SOH>10=nnn<SOH>`` found from the end
of that body on. A frame whose BodyLength or CheckSum is wrong is *garbled*: :func:`parse` raises
:class:`GarbledMessage` and the session ignores it (no Reject, no sequence number consumed).

Example::

    >>> m = FixMessage([(35, "0"), (34, "2"), (49, "A"), (56, "B"), (52, "20261206-12:00:00.000")])
    >>> raw = m.encode()
    >>> parse(raw).get(34)
    '2'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from greekfire.core.errors import GreekfireError

SOH = b"\x01"
BEGIN_STRING = "FIX.4.4"
_START = b"8="
_FRAME_START = b"8=FIX"
_CHECKSUM_MARK = b"\x0110="


class GarbledMessage(GreekfireError):
    """A frame that is not a FIX message (bad BodyLength, CheckSum, or first three fields): ignored."""

    def __init__(self, reason: str, raw: bytes = b"") -> None:
        self.reason = reason
        self.raw = raw
        super().__init__(f"garbled FIX message ({reason}): {raw[:80]!r}")


class FixMessage:
    """The fields of one FIX message in order, as ``(tag, value)`` with values as text.

    ``begin_string`` is the BeginString it was read with (or is written with).
    Repeating groups are kept flat, in wire order: NoXXX count field, then each entry's fields.
    """

    __slots__ = ("fields", "begin_string")

    def __init__(self, fields: Iterable[tuple[int, str]] = (), begin_string: str = BEGIN_STRING) -> None:
        self.fields: list[tuple[int, str]] = list(fields)
        self.begin_string = begin_string

    # -- reading ------------------------------------------------------------------------------------------
    @property
    def msg_type(self) -> str:
        """MsgType (35), '' when absent."""
        return self.get(35, "") or ""

    def get(self, tag: int, default: str | None = None) -> str | None:
        """The value of the first ``tag`` field, or ``default``."""
        for t, v in self.fields:
            if t == tag:
                return v
        return default

    def get_int(self, tag: int, default: int | None = None) -> int | None:
        """The value of ``tag`` as an integer (None/``default`` when absent); ValueError when not a number."""
        v = self.get(tag)
        return default if v is None else int(v)

    def __contains__(self, tag: object) -> bool:
        return any(t == tag for t, _ in self.fields)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FixMessage) and self.fields == other.fields

    def __repr__(self) -> str:
        return "FixMessage(" + "|".join(f"{t}={v}" for t, v in self.fields) + ")"

    # -- writing ------------------------------------------------------------------------------------------
    def set(self, tag: int, value: object) -> FixMessage:
        """Replace the first ``tag`` field's value, or append the field. Returns self."""
        text = _text(value)
        for i, (t, _) in enumerate(self.fields):
            if t == tag:
                self.fields[i] = (tag, text)
                return self
        self.fields.append((tag, text))
        return self

    def append(self, tag: int, value: object) -> FixMessage:
        """Append a field (repeating-group entries are appended in order). Returns self."""
        self.fields.append((tag, _text(value)))
        return self

    def remove(self, tag: int) -> None:
        """Drop every ``tag`` field."""
        self.fields = [(t, v) for t, v in self.fields if t != tag]

    def copy(self) -> FixMessage:
        return FixMessage(self.fields, self.begin_string)

    def encode(self) -> bytes:
        """The wire bytes: ``8=…|9=…|`` + the fields + ``10=…|``, MsgType first."""
        fields = self.fields
        if not fields or fields[0][0] != 35:
            fields = [f for f in fields if f[0] == 35] + [f for f in fields if f[0] != 35]
        body = "".join(f"{t}={v}\x01" for t, v in fields).encode("latin-1")
        head = f"8={self.begin_string}\x019={len(body)}\x01".encode("latin-1")
        frame = head + body
        return frame + b"10=%03d\x01" % (sum(frame) & 0xFF)

    def text(self) -> str:
        """The message as ``tag=value|…`` for logs (SOH shown as ``|``)."""
        return "|".join(f"{t}={v}" for t, v in self.fields)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "Y" if value else "N"
    return str(value)


def checksum(data: bytes) -> int:
    """FIX CheckSum: the byte sum modulo 256."""
    return sum(data) & 0xFF


def next_frame(buf: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """The ``(begin, end)`` byte span of the next complete frame in ``buf`` from ``start``, or None.

    Bytes before a frame's ``8=FIX`` are junk (the caller drops them). A frame whose BodyLength is not a number
    still ends at the next ``<SOH>10=…<SOH>``, so the stream resynchronises on the following message.
    """
    n = len(buf)
    i = buf.find(_FRAME_START, start)
    if i < 0:
        return None
    j = buf.find(SOH, i)
    if j < 0:
        return None
    # BodyLength, when it is the second field, says where to start looking for the checksum
    search_from = j
    if buf.startswith(b"9=", j + 1):
        k = buf.find(SOH, j + 1)
        if k < 0:
            return None
        try:
            length = int(buf[j + 3:k])
        except ValueError:
            length = 0
        search_from = max(k, k + length)
    c = buf.find(_CHECKSUM_MARK, search_from)
    if c < 0:
        return None
    e = buf.find(SOH, c + 1)
    if e < 0 or e >= n:
        return None
    return i, e + 1


def parse(raw: bytes | bytearray | memoryview) -> FixMessage:
    """Parse one frame: checks BeginString, BodyLength and CheckSum and the order 8, 9, 35.

    Raises :class:`GarbledMessage` when the frame is not a FIX message. Field-level problems (unknown tag,
    bad value, a tag without a value) are not checked here: the data dictionary does that, so the session
    can answer them with a Reject.
    """
    data = bytes(raw)
    if not data.startswith(_START):
        raise GarbledMessage("does not start with BeginString (8)", data)
    if not data.endswith(SOH):
        raise GarbledMessage("does not end with SOH", data)
    parts = data[:-1].split(SOH)
    if len(parts) < 4:
        raise GarbledMessage("too few fields", data)
    b = parts[0][2:].decode("latin-1")
    if not parts[1].startswith(b"9="):
        raise GarbledMessage("BodyLength (9) is not the second field", data)
    if not parts[-1].startswith(b"10="):
        raise GarbledMessage("CheckSum (10) is not the last field", data)
    try:
        length = int(parts[1][2:])
    except ValueError:
        raise GarbledMessage("BodyLength (9) is not a number", data) from None
    body_start = len(parts[0]) + len(parts[1]) + 2
    body_end = len(data) - len(parts[-1]) - 1
    if body_end - body_start != length:
        raise GarbledMessage(f"BodyLength {length} but the body is {body_end - body_start} bytes", data)
    try:
        declared = int(parts[-1][3:])
    except ValueError:
        raise GarbledMessage("CheckSum (10) is not a number", data) from None
    if len(parts[-1]) != 6 or declared != (sum(data[:body_end]) & 0xFF):
        raise GarbledMessage(f"CheckSum {parts[-1][3:]!r} is wrong", data)
    if not parts[2].startswith(b"35="):
        raise GarbledMessage("MsgType (35) is not the third field", data)
    fields: list[tuple[int, str]] = []
    for p in parts[2:-1]:
        tag, sep, value = p.partition(b"=")
        try:
            t = int(tag)
        except ValueError:
            raise GarbledMessage(f"field {p[:20]!r} has no tag number", data) from None
        fields.append((t, value.decode("latin-1") if sep else "\x00"))
    return FixMessage(fields, b)


def frames(buf: bytearray) -> Iterator[bytes]:
    """Take every complete frame off the front of ``buf`` (junk before a frame is dropped)."""
    while True:
        span = next_frame(buf)
        if span is None:
            return
        i, e = span
        frame = bytes(buf[i:e])
        del buf[:e]
        yield frame
