"""Batched FIX parsing: every frame of one buffer parsed and validated by a numba kernel, as arrays.

A feed that delivers many messages in one read does not need a Python object per field: :class:`BatchParser`
frames the buffer, checks BodyLength, CheckSum and the order 8, 9, 35 of each frame, splits the fields into
arrays of tags and value byte offsets, and validates each message against the data dictionary, all in one
compiled loop. The verdicts equal those of :func:`greekfire.fix.message.parse` followed by
:meth:`greekfire.fix.dictionary.DataDictionary.validate`, message for message (same SessionRejectReason and
RefTagID). The kernel decides the common case itself: known tags, header/body/trailer order, repeated tags,
tags defined for the MsgType, required fields, empty values, data formats and enumerated values. A message
it does not model (one carrying a repeating-group count tag, a tag or number Python's ``int`` would read
differently, an unusual BodyLength) is marked and handed to the Python path, for just that message.

Why one module of some 800 lines: the lookup tables built from the dictionary, the numba kernels that read
them and :class:`FixBatch` share one array layout (type classes, section codes, packed enum words); split up,
each half would have to restate it.

Example::

    parser = BatchParser(DataDictionary.load("FIX44.xml"))
    batch = parser.parse(buf)
    ok = batch.error == -1
    qty = batch.int_column(38)       # OrderQty of every message, -1 where absent
    del buf[:batch.consumed]          # a partial frame at the end stays for the next read
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba as nb
import numpy as np

from greekfire.fix import dictionary as _dd
from greekfire.fix.dictionary import DataDictionary, FieldProblem
from greekfire.fix.message import FixMessage, GarbledMessage, next_frame, parse

try:  # numba's private switch for kernels without its reference-counting runtime
    from numba.core.options import DefaultOptions

    _HAS_NRT_SWITCH = hasattr(DefaultOptions, "_nrt")
except ImportError:  # a numba that moved it: the plain kernels
    _HAS_NRT_SWITCH = False

# The kernels allocate nothing, so (as the order-book kernels) they run without numba's reference counting
_KERNEL: dict[str, Any] = (
    {"cache": True, "nogil": True, "_nrt": False} if _HAS_NRT_SWITCH else {"cache": True, "nogil": True}
)

#: ``FixBatch.error`` of a frame that is not a FIX message (BodyLength, CheckSum, first three fields)
GARBLED = 1000
VALID = -1
_NEED_PY = -2  # verdict left to the Python path; the fields are in the arrays
_NEED_PY_NOFIELDS = -3  # verdict and fields left to the Python path

# value format classes (the regular expressions of dictionary.py, one class each)
F_NONE, F_INT, F_DECIMAL, F_TIMESTAMP, F_TIME, F_DATE, F_MONTHYEAR, F_BOOLEAN, F_CHAR, F_PY = range(10)
_FORMAT_CLASS = {
    id(_dd._INT): F_INT,
    id(_dd._DECIMAL): F_DECIMAL,
    id(_dd._TIMESTAMP): F_TIMESTAMP,
    id(_dd._TIME): F_TIME,
    id(_dd._DATE): F_DATE,
    id(_dd._MONTHYEAR): F_MONTHYEAR,
}
# enumerated values: none, one value, space-separated values, left to Python
E_NONE, E_ONE, E_MULTI, E_PY = range(4)
_MAX_ENUM = 15  # bytes of an enum value packed into two words (the 16th byte holds the length)

# sections of a tag
S_BODY, S_HEADER, S_TRAILER = 0, 1, 2

# kernel stop reasons
_DONE, _FULL, _FRAMING = 0, 1, 2

SOH, EQ, DASH, DOT, COLON = 1, 61, 45, 46, 58


# ----------------------------------------------------------------------------------------------- tables
@dataclass(slots=True)
class _Tables:
    """The dictionary as numpy lookup tables for the kernel (tag-indexed arrays have ``n_tags`` rows)."""

    section: np.ndarray  # uint8[T]  S_BODY / S_HEADER / S_TRAILER
    known: np.ndarray  # uint8[T]  1 where the dictionary defines the tag
    fmt: np.ndarray  # uint8[T]  F_* format class
    enum_kind: np.ndarray  # uint8[T]  E_*
    group: np.ndarray  # uint8[T]  1 for a repeating-group count tag (of any message or the header)
    enum_lo: np.ndarray  # int32[T]  range of the tag's values in enum_w0/enum_w1
    enum_hi: np.ndarray  # int32[T]
    enum_w0: np.ndarray  # uint64[E] bytes 0-7 of a value
    enum_w1: np.ndarray  # uint64[E] bytes 8-14, length in the top byte
    mt_index: np.ndarray  # int32[256 + 65536]  MsgType bytes -> message index (-1 unknown)
    allowed: np.ndarray  # uint8[M, T]  tag defined for the message (header and trailer included)
    req_lo: np.ndarray  # int32[M]   range of the message's required tags in req_tags
    req_hi: np.ndarray  # int32[M]
    req_tags: np.ndarray  # int32[R]   header required, then the message's, in dictionary order


def _pack(value: bytes) -> tuple[int, int]:
    w = value.ljust(16, b"\x00")
    lo = int.from_bytes(w[:8], "little")
    hi = int.from_bytes(w[8:15], "little") | (len(value) << 56)
    return lo, hi


def _mt_key(mt: bytes) -> int:
    return mt[0] if len(mt) == 1 else 256 + mt[0] * 256 + mt[1]


def _build_tables(dd: DataDictionary) -> _Tables:
    all_tags = set(dd.fields) | dd.header.fields | dd.trailer.fields
    for m in dd.messages.values():
        all_tags |= m.fields
    n = max(all_tags, default=0) + 1
    section = np.zeros(n, np.uint8)
    known = np.zeros(n, np.uint8)
    fmt = np.zeros(n, np.uint8)
    enum_kind = np.zeros(n, np.uint8)
    group = np.zeros(n, np.uint8)
    enum_lo = np.zeros(n, np.int32)
    enum_hi = np.zeros(n, np.int32)
    for t in dd.header.fields:
        section[t] = S_HEADER
    for t in dd.trailer.fields:
        if t not in dd.header.fields:
            section[t] = S_TRAILER
    w0: list[int] = []
    w1: list[int] = []
    for t, fdef in dd.fields.items():
        known[t] = 1
        regex = _dd._FORMATS.get(fdef.type)
        if regex is None:
            fmt[t] = F_NONE
        elif fdef.type == "BOOLEAN":
            fmt[t] = F_BOOLEAN
        elif fdef.type == "CHAR":
            fmt[t] = F_CHAR
        else:
            fmt[t] = _FORMAT_CLASS.get(id(regex), F_PY)
        if fdef.enums is None:
            continue
        packed = []
        too_long = False
        for v in sorted(fdef.enums):
            try:
                b = v.encode("latin-1")
            except UnicodeEncodeError:  # a value no latin-1 text equals
                continue
            if len(b) > _MAX_ENUM:
                too_long = True
                break
            packed.append(_pack(b))
        if too_long:
            enum_kind[t] = E_PY
            continue
        enum_kind[t] = E_MULTI if fdef.type in ("MULTIPLEVALUESTRING", "MULTIPLECHARVALUE") else E_ONE
        enum_lo[t] = len(w0)
        for a, b2 in packed:
            w0.append(a)
            w1.append(b2)
        enum_hi[t] = len(w0)

    def mark_groups(groups: dict[int, Any]) -> None:
        for count, g in groups.items():
            if count < n:
                group[count] = 1
            mark_groups(g.groups)

    mark_groups(dd.header.groups)
    mark_groups(dd.trailer.groups)
    for m in dd.messages.values():
        mark_groups(m.groups)

    mts = list(dd.messages)
    mt_index = np.full(256 + 65536, -1, np.int32)
    allowed = np.zeros((max(len(mts), 1), n), np.uint8)
    req_lo = np.zeros(max(len(mts), 1), np.int32)
    req_hi = np.zeros(max(len(mts), 1), np.int32)
    req: list[int] = []
    base = sorted(dd.header.fields | dd.trailer.fields)
    for k, mt in enumerate(mts):
        try:
            key = mt.encode("latin-1")
        except UnicodeEncodeError:
            continue
        if len(key) not in (1, 2):
            raise ValueError(
                f"MsgType {mt!r} of the dictionary is not 1 or 2 bytes; the batch parser needs that"
            )
        mt_index[_mt_key(key)] = k
        mdef = dd.messages[mt]
        allowed[k, base] = 1
        allowed[k, sorted(mdef.fields)] = 1
        req_lo[k] = len(req)
        req.extend(dd.header.required)
        req.extend(mdef.required)
        req_hi[k] = len(req)
    return _Tables(
        section,
        known,
        fmt,
        enum_kind,
        group,
        enum_lo,
        enum_hi,
        np.array(w0, np.uint64),
        np.array(w1, np.uint64),
        mt_index,
        allowed,
        req_lo,
        req_hi,
        np.array(req, np.int32),
    )


def _empty_tables() -> _Tables:
    z8 = np.zeros(1, np.uint8)
    z32 = np.zeros(1, np.int32)
    return _Tables(
        z8,
        z8,
        z8,
        z8,
        z8,
        z32,
        z32,
        np.zeros(1, np.uint64),
        np.zeros(1, np.uint64),
        np.full(256 + 65536, -1, np.int32),
        np.zeros((1, 1), np.uint8),
        z32,
        z32,
        z32,
    )


# ----------------------------------------------------------------------------------------------- kernels
@nb.njit(cache=True, inline="always")
def _is_digit(c: int) -> bool:
    return 48 <= c <= 57


@nb.njit(cache=True, inline="always")
def _find(d: np.ndarray, n: int, p: int, c: int) -> int:
    while p < n:
        if d[p] == c:
            return p
        p += 1
    return -1


@nb.njit(cache=True, inline="always")
def _find_frame_start(d: np.ndarray, n: int, p: int) -> int:
    """Index of the next b"8=FIX" from ``p``, or -1."""
    while p + 5 <= n:
        if d[p] == 56 and d[p + 1] == EQ and d[p + 2] == 70 and d[p + 3] == 73 and d[p + 4] == 88:
            return p
        p += 1
    return -1


@nb.njit(cache=True, inline="always")
def _find_checksum(d: np.ndarray, n: int, p: int) -> int:
    """Index of the next b"\\x0110=" from ``p``, or -1."""
    while p + 4 <= n:
        if d[p] == SOH and d[p + 1] == 49 and d[p + 2] == 48 and d[p + 3] == EQ:
            return p
        p += 1
    return -1


@nb.njit(cache=True, inline="always")
def _digits(d: np.ndarray, s: int, e: int) -> int:
    """The value of d[s:e] when it is 1-18 ASCII digits, else -1."""
    if e <= s or e - s > 18:
        return -1
    v = 0
    for p in range(s, e):
        c = d[p]
        if not _is_digit(c):
            return -1
        v = v * 10 + (c - 48)
    return v


@nb.njit(cache=True, inline="always")
def _all_digits(d: np.ndarray, s: int, e: int) -> bool:
    for p in range(s, e):  # noqa: SIM110 (numba: a plain loop)
        if not _is_digit(d[p]):
            return False
    return True


@nb.njit(cache=True, inline="always")
def _fraction_ok(d: np.ndarray, s: int, e: int) -> bool:
    """d[s:e] is empty or '.' and 1-9 digits."""
    if s == e:
        return True
    return d[s] == DOT and 2 <= e - s <= 10 and _all_digits(d, s + 1, e)


@nb.njit(cache=True, inline="always")
def _clock_ok(d: np.ndarray, s: int) -> bool:
    """d[s:s+8] is HH:MM:SS (digits, not ranges, as the dictionary's pattern)."""
    return (
        _is_digit(d[s])
        and _is_digit(d[s + 1])
        and d[s + 2] == COLON
        and _is_digit(d[s + 3])
        and _is_digit(d[s + 4])
        and d[s + 5] == COLON
        and _is_digit(d[s + 6])
        and _is_digit(d[s + 7])
    )


@nb.njit(cache=True, inline="always")
def _format_ok(d: np.ndarray, s: int, e: int, f: int) -> bool:
    ln = e - s
    if f == F_INT:
        if ln > 0 and d[s] == DASH:
            s += 1
        return e > s and _all_digits(d, s, e)
    if f == F_DECIMAL:
        if ln > 0 and d[s] == DASH:
            s += 1
        dots = 0
        digits = 0
        for p in range(s, e):
            c = d[p]
            if _is_digit(c):
                digits += 1
            elif c == DOT:
                dots += 1
            else:
                return False
        return digits > 0 and dots <= 1
    if f == F_TIMESTAMP:
        return (
            ln >= 17
            and _all_digits(d, s, s + 8)
            and d[s + 8] == DASH
            and _clock_ok(d, s + 9)
            and _fraction_ok(d, s + 17, e)
        )
    if f == F_TIME:
        return ln >= 8 and _clock_ok(d, s) and _fraction_ok(d, s + 8, e)
    if f == F_DATE:
        return ln == 8 and _all_digits(d, s, e)
    if f == F_MONTHYEAR:
        if ln == 6:
            return _all_digits(d, s, e)
        if ln == 8 and _all_digits(d, s, s + 6):
            return _all_digits(d, s + 6, e) or (d[s + 6] == 119 and _is_digit(d[s + 7]))
        return False
    if f == F_BOOLEAN:
        return ln == 1 and (d[s] == 89 or d[s] == 78)
    if f == F_CHAR:
        return ln == 1
    return True


@nb.njit(cache=True, inline="always")
def _in_enum(d: np.ndarray, s: int, e: int, w0: np.ndarray, w1: np.ndarray, lo: int, hi: int) -> bool:
    ln = e - s
    if ln > 15:
        return False
    a = np.uint64(0)
    b = np.uint64(ln) << np.uint64(56)
    for k in range(ln):
        if k < 8:
            a |= np.uint64(d[s + k]) << np.uint64(8 * k)
        else:
            b |= np.uint64(d[s + k]) << np.uint64(8 * (k - 8))
    for j in range(lo, hi):  # noqa: SIM110 (numba: a plain loop)
        if w0[j] == a and w1[j] == b:
            return True
    return False


@nb.njit(**_KERNEL)
def _parse_kernel(
    d,
    n,
    pos,
    m,
    nf,
    validate,
    msg_start,
    msg_end,
    field_start,
    tags,
    vstart,
    vend,
    error,
    error_tag,
    stamp,
    section,
    known,
    fmt,
    enum_kind,
    group,
    enum_lo,
    enum_hi,
    enum_w0,
    enum_w1,
    mt_index,
    allowed,
    req_lo,
    req_hi,
    req_tags,
):  # pragma: no cover - compiled
    """Frame, parse and validate from byte ``pos`` with ``m`` messages and ``nf`` fields written.

    Returns (stop reason, pos, m, nf): _DONE at the end of the complete frames, _FULL when the output
    arrays may not hold the next frame, _FRAMING when the frame at ``pos`` needs next_frame in Python."""
    cap_m = msg_start.shape[0]
    cap_f = tags.shape[0]
    n_tab = section.shape[0]
    while True:
        # ---- framing (message.next_frame)
        i = _find_frame_start(d, n, pos)
        if i < 0:
            return _DONE, pos, m, nf
        j = _find(d, n, i, SOH)
        if j < 0:
            return _DONE, pos, m, nf
        search_from = j
        has_len = j + 2 < n and d[j + 1] == 57 and d[j + 2] == EQ
        k = -1
        length = 0
        if has_len:
            k = _find(d, n, j + 1, SOH)
            if k < 0:
                return _DONE, pos, m, nf
            if k > j + 3:
                length = _digits(d, j + 3, k)
                if length < 0:
                    return _FRAMING, i, m, nf
            search_from = k + length
        c = _find_checksum(d, n, search_from)
        if c < 0:
            return _DONE, pos, m, nf
        e = _find(d, n, c + 1, SOH)
        if e < 0:
            return _DONE, pos, m, nf
        if m >= cap_m or nf + (e - i) // 3 + 2 > cap_f:
            return _FULL, i, m, nf
        msg_start[m] = i
        msg_end[m] = e + 1
        field_start[m] = nf
        pos = e + 1
        err = VALID
        etag = -1
        # ---- the frame (message.parse): 9 second, BodyLength, CheckSum, 35 third
        if not has_len or k == j + 3 or c <= k or c - k != length or e - c - 1 != 6:
            err = GARBLED
        elif not _all_digits(d, c + 4, e):
            err = _NEED_PY_NOFIELDS
        else:
            total = 0
            for p in range(i, c + 1):
                total += d[p]
            declared = (d[c + 4] - 48) * 100 + (d[c + 5] - 48) * 10 + (d[c + 6] - 48)
            msg_type_third = d[k + 1] == 51 and d[k + 2] == 53 and d[k + 3] == EQ
            if (total & 0xFF) != declared or not msg_type_third:
                err = GARBLED
        # ---- fields
        first = nf
        if err == VALID:
            p = k + 1
            while p < c + 1:
                s = p
                tag = 0
                while _is_digit(d[p]) and p - s < 10:
                    tag = tag * 10 + (d[p] - 48)
                    p += 1
                if d[p] != EQ or p - s > 9:
                    err = _NEED_PY_NOFIELDS
                    break
                if p == s:
                    err = GARBLED
                    break
                q = _find(d, c + 1, p + 1, SOH)
                tags[nf] = tag
                vstart[nf] = p + 1
                vend[nf] = q
                nf += 1
                p = q + 1
            if err != VALID:
                nf = first
        # ---- the dictionary (DataDictionary.validate)
        if err == VALID and validate:
            # structure: header, body, trailer; repeated tags; a group count sends the message to Python
            sec = 0
            for f in range(first, nf):
                t = tags[f]
                if t < n_tab and group[t]:
                    err = _NEED_PY
                    break
            if err == VALID:
                for f in range(first, nf):
                    t = tags[f]
                    ts = section[t] if t < n_tab else S_BODY
                    if ts == S_HEADER:
                        if sec != 0:
                            err = 14
                            etag = t
                            break
                    elif ts == S_TRAILER:
                        sec = 2
                    elif sec == 2:
                        err = 14
                        etag = t
                        break
                    else:
                        sec = 1
                    if t < n_tab:
                        if stamp[t] == m:
                            err = 13
                            etag = t
                            break
                        stamp[t] = m
                    else:
                        for g in range(first, f):
                            if tags[g] == t:
                                err = 13
                                etag = t
                                break
                        if err != VALID:
                            break
            if err == VALID:
                # MsgType: the value of the first field (35)
                s0 = vstart[first]
                ln = vend[first] - s0
                mi = -1
                if ln == 1:
                    mi = mt_index[d[s0]]
                elif ln == 2:
                    mi = mt_index[256 + d[s0] * 256 + d[s0 + 1]]
                if mi < 0:
                    err = 11
                else:
                    for r in range(req_lo[mi], req_hi[mi]):
                        t = req_tags[r]
                        if stamp[t] != m:
                            err = 1
                            etag = t
                            break
                if err == VALID:
                    for f in range(first, nf):
                        t = tags[f]
                        s = vstart[f]
                        q = vend[f]
                        if q == s:
                            err = 4
                        elif t >= n_tab or not known[t]:
                            err = 0
                        elif not allowed[mi, t]:
                            err = 2
                        else:
                            ft = fmt[t]
                            if ft == F_PY:
                                err = _NEED_PY
                                break
                            if not _format_ok(d, s, q, ft):
                                err = 6
                            else:
                                ek = enum_kind[t]
                                if ek == E_ONE:
                                    if not _in_enum(d, s, q, enum_w0, enum_w1, enum_lo[t], enum_hi[t]):
                                        err = 5
                                elif ek == E_MULTI:
                                    a = s
                                    while True:
                                        b = _find(d, q, a, 32)
                                        end = q if b < 0 else b
                                        if not _in_enum(d, a, end, enum_w0, enum_w1, enum_lo[t], enum_hi[t]):
                                            err = 5
                                            break
                                        if b < 0:
                                            break
                                        a = b + 1
                                elif ek == E_PY:
                                    err = _NEED_PY
                                    break
                        if err != VALID:
                            etag = t
                            break
        error[m] = err
        error_tag[m] = etag
        m += 1
        field_start[m] = nf


@nb.njit(**_KERNEL)
def _first_field(field_start, tags, n_msgs, tag, out):  # pragma: no cover - compiled
    """out[i] = index of the first ``tag`` field of message i, or -1."""
    for i in range(n_msgs):
        out[i] = -1
        for f in range(field_start[i], field_start[i + 1]):
            if tags[f] == tag:
                out[i] = f
                break


@nb.njit(**_KERNEL)
def _int_values(d, vstart, vend, idx, out):  # pragma: no cover - compiled
    """out[i] = the integer at field idx[i] (-1 where idx[i] < 0); returns the first message whose value
    is not an integer, or -1."""
    for i in range(idx.shape[0]):
        f = idx[i]
        if f < 0:
            out[i] = -1
            continue
        s = vstart[f]
        e = vend[f]
        neg = s < e and d[s] == DASH
        if neg:
            s += 1
        if e <= s or e - s > 18:
            return i
        v = 0
        for p in range(s, e):
            c = d[p]
            if c < 48 or c > 57:
                return i
            v = v * 10 + (c - 48)
        out[i] = -v if neg else v
    return -1


# ----------------------------------------------------------------------------------------------- API
@dataclass(slots=True)
class FixBatch:
    """Messages parsed from one buffer, as arrays (structure of arrays).

    ``error[i]`` is -1 for a valid message, else the SessionRejectReason (373) that
    ``DataDictionary.validate`` gives, or :data:`GARBLED` for a frame ``parse`` rejects (BodyLength,
    CheckSum, first three fields); ``error_tag[i]`` the RefTagID (-1 when none). Byte offsets index ``buf``.
    """

    buf: bytes
    msg_start: np.ndarray  # int64[n] first byte of each frame
    msg_end: np.ndarray  # int64[n] one past the last byte
    field_start: np.ndarray  # int64[n + 1] first field of each message in the field arrays
    tags: np.ndarray  # int32[F] every field's tag, all messages in order
    value_start: np.ndarray  # int64[F]
    value_end: np.ndarray  # int64[F]
    error: np.ndarray  # int32[n]
    error_tag: np.ndarray  # int32[n]
    consumed: int  # bytes of buf used (a partial frame at the end is left for the next read)
    # messages whose fields Python parsed (not in the arrays), by index
    python_messages: dict[int, FixMessage] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.msg_start.shape[0])

    def frame(self, i: int) -> bytes:
        """The raw bytes of message ``i``."""
        return self.buf[int(self.msg_start[i]) : int(self.msg_end[i])]

    def message(self, i: int) -> FixMessage:
        """Message ``i`` as a :class:`FixMessage` (raises GarbledMessage for a garbled frame, as ``parse``)."""
        if not 0 <= i < len(self):
            raise IndexError(f"message index {i} is outside the batch of {len(self)}")
        py = self.python_messages.get(i)
        if py is not None:
            return py.copy()
        if self.error[i] == GARBLED:
            return parse(self.frame(i))  # raises GarbledMessage with the reason
        buf = self.buf
        start = int(self.msg_start[i])
        begin = buf[start + 2 : buf.index(b"\x01", start)].decode("latin-1")
        lo, hi = int(self.field_start[i]), int(self.field_start[i + 1])
        tags = self.tags[lo:hi].tolist()
        vs = self.value_start[lo:hi].tolist()
        ve = self.value_end[lo:hi].tolist()
        return FixMessage(
            [(t, buf[a:b].decode("latin-1")) for t, a, b in zip(tags, vs, ve, strict=True)], begin
        )

    def _first(self, tag: int) -> np.ndarray:
        out = np.empty(len(self), np.int64)
        _first_field(self.field_start, self.tags, len(self), int(tag), out)
        return out

    def column(self, tag: int) -> list[str | None]:
        """The first value of ``tag`` in every message (None where absent or the frame is garbled)."""
        idx = self._first(tag).tolist()
        vs, ve, buf = self.value_start, self.value_end, self.buf
        out: list[str | None] = [
            None if f < 0 else buf[int(vs[f]) : int(ve[f])].decode("latin-1") for f in idx
        ]
        for i, msg in self.python_messages.items():
            out[i] = msg.get(tag)
        return out

    def int_column(self, tag: int) -> np.ndarray:
        """The first value of ``tag`` in every message as int64, -1 where absent; ValueError naming the
        message and value where one is not an integer."""
        idx = self._first(tag)
        out = np.empty(len(self), np.int64)
        bad = _int_values(np.frombuffer(self.buf, np.uint8), self.value_start, self.value_end, idx, out)
        if bad >= 0:
            f = int(idx[bad])
            value = self.buf[int(self.value_start[f]) : int(self.value_end[f])]
            raise ValueError(f"tag {tag} of message {bad} is not an integer: {value!r}")
        for i, msg in self.python_messages.items():
            v = msg.get(tag)
            try:
                out[i] = -1 if v is None else int(v)
            except ValueError:
                raise ValueError(f"tag {tag} of message {i} is not an integer: {v!r}") from None
        return out


class BatchParser:
    """Parses and validates every frame of a buffer at once (see the module docstring).

    ``dictionary`` None parses only (BodyLength, CheckSum, first three fields): ``error`` is then -1 or
    GARBLED.
    """

    def __init__(self, dictionary: DataDictionary | None) -> None:
        self.dictionary = dictionary
        self._t = _build_tables(dictionary) if dictionary is not None else _empty_tables()

    def parse(self, buf: bytes | bytearray | memoryview) -> FixBatch:
        """Every complete frame of ``buf``; ``consumed`` says how many bytes they (and junk between them) take."""
        data = buf if isinstance(buf, bytes) else bytes(buf)
        d = np.frombuffer(data, np.uint8)
        n = len(data)
        cap_m = n // 128 + 16
        cap_f = n // 8 + 64
        msg_start = np.empty(cap_m, np.int64)
        msg_end = np.empty(cap_m, np.int64)
        field_start = np.zeros(cap_m + 1, np.int64)
        error = np.empty(cap_m, np.int32)
        error_tag = np.empty(cap_m, np.int32)
        tags = np.empty(cap_f, np.int32)
        vstart = np.empty(cap_f, np.int64)
        vend = np.empty(cap_f, np.int64)
        t = self._t
        stamp = np.full(t.section.shape[0], -1, np.int64)
        validate = self.dictionary is not None
        py_msgs: dict[int, FixMessage] = {}
        pos, m, nf = 0, 0, 0
        while True:
            stop, pos, m, nf = _parse_kernel(
                d,
                n,
                pos,
                m,
                nf,
                validate,
                msg_start,
                msg_end,
                field_start,
                tags,
                vstart,
                vend,
                error,
                error_tag,
                stamp,
                t.section,
                t.known,
                t.fmt,
                t.enum_kind,
                t.group,
                t.enum_lo,
                t.enum_hi,
                t.enum_w0,
                t.enum_w1,
                t.mt_index,
                t.allowed,
                t.req_lo,
                t.req_hi,
                t.req_tags,
            )
            if stop == _DONE:
                break
            if m + 1 >= cap_m:
                cap_m *= 2
                msg_start, msg_end, error, error_tag = (
                    _grow(a, cap_m) for a in (msg_start, msg_end, error, error_tag)
                )
                field_start = _grow(field_start, cap_m + 1)
            if stop == _FULL:
                need = nf + (n - pos) // 3 + 2
                if need > cap_f:
                    cap_f = max(cap_f * 2, need)
                    tags, vstart, vend = (_grow(a, cap_f) for a in (tags, vstart, vend))
                continue
            # _FRAMING: a BodyLength the kernel does not read; the frame is found and judged in Python
            span = next_frame(data, pos)
            if span is None:
                break
            start, end = span
            msg_start[m], msg_end[m] = start, end
            error[m], error_tag[m] = _NEED_PY_NOFIELDS, -1
            field_start[m + 1] = nf
            m += 1
            pos = end
        # verdicts the kernel left to Python
        for i in np.flatnonzero(error[:m] < VALID).tolist():
            frame = data[int(msg_start[i]) : int(msg_end[i])]
            no_fields = error[i] == _NEED_PY_NOFIELDS
            try:
                msg = parse(frame)
            except GarbledMessage:
                error[i], error_tag[i] = GARBLED, -1
                continue
            if no_fields:
                py_msgs[i] = msg
            error[i], error_tag[i] = self._verdict(msg)
        return FixBatch(
            buf=data,
            msg_start=msg_start[:m],
            msg_end=msg_end[:m],
            field_start=field_start[: m + 1],
            tags=tags[:nf],
            value_start=vstart[:nf],
            value_end=vend[:nf],
            error=error[:m],
            error_tag=error_tag[:m],
            consumed=int(msg_end[m - 1]) if m else 0,
            python_messages=py_msgs,
        )

    def _verdict(self, msg: FixMessage) -> tuple[int, int]:
        if self.dictionary is None:
            return VALID, -1
        try:
            self.dictionary.validate(msg)
        except FieldProblem as p:
            return p.reason, -1 if p.tag is None else p.tag
        return VALID, -1


def _grow(a: np.ndarray, size: int) -> np.ndarray:
    out = np.empty(size, a.dtype)
    out[: a.shape[0]] = a
    return out
