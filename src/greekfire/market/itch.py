"""Nasdaq TotalView-ITCH 5.0: decoder and encoder for every message type, file framing, book events.

Messages decode into numpy structured arrays, one per message type (``seq`` is the message's index in
the stream, so the original order can always be restored). Integer fields are big-endian on the wire and
native in the arrays; alpha fields are raw space-padded bytes; prices stay integers (Price(4): 1e-4
dollars, which is the book's tick; Price(8) in the ``V`` message: 1e-8 dollars); timestamps are
nanoseconds since midnight.

Framings:

* ``"length"`` (default): Nasdaq's binary files, a 2-byte big-endian length before each message;
* ``"zero_prefix"``: two zero bytes before each message and the size taken from the message type (what
  some third-party writers produce). A length-framed read of such a file fails at once with a clear
  :class:`~greekfire.core.errors.DataError` instead of mis-parsing it.

gzip is detected from the magic bytes. Bad input (truncated message, unknown type, wrong length for its
type) is counted and reported with its byte position; decoding never raises on it.
"""

from __future__ import annotations

import gzip
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np

from greekfire.core.errors import DataError, InputFileError
from greekfire.core.metrics import counter
from greekfire.core.progress import ProgressHook, read_file_bytes
from greekfire.market.book import (
    ADD,
    DELETE,
    EVENT_DTYPE,
    EXECUTE,
    REDUCE,
    REPLACE,
    OrderBooks,
    _count_events,
    summarize_status,
)

# ------------------------------------------------------------------------------------------- the spec
_HEADER = [("stock_locate", 2, "u"), ("tracking_number", 2, "u"), ("timestamp", 6, "u")]
_ADD = [("order_ref", 8, "u"), ("side", 1, "s"), ("shares", 4, "u"), ("stock", 8, "s"), ("price", 4, "u")]
#: field layout after the 11-byte header (type, locate, tracking, timestamp): (name, bytes, u=int s=alpha)
SPEC: dict[str, list[tuple[str, int, str]]] = {
    "S": [("event_code", 1, "s")],
    "R": [("stock", 8, "s"), ("market_category", 1, "s"), ("financial_status", 1, "s"), ("round_lot_size", 4, "u"),
          ("round_lots_only", 1, "s"), ("issue_classification", 1, "s"), ("issue_subtype", 2, "s"),
          ("authenticity", 1, "s"), ("short_sale_threshold", 1, "s"), ("ipo_flag", 1, "s"), ("luld_tier", 1, "s"),
          ("etp_flag", 1, "s"), ("etp_leverage_factor", 4, "u"), ("inverse_indicator", 1, "s")],
    "H": [("stock", 8, "s"), ("trading_state", 1, "s"), ("reserved", 1, "s"), ("reason", 4, "s")],
    "Y": [("stock", 8, "s"), ("reg_sho_action", 1, "s")],
    "L": [("mpid", 4, "s"), ("stock", 8, "s"), ("primary_market_maker", 1, "s"), ("market_maker_mode", 1, "s"),
          ("participant_state", 1, "s")],
    "V": [("level1", 8, "u"), ("level2", 8, "u"), ("level3", 8, "u")],
    "W": [("breached_level", 1, "s")],
    "K": [("stock", 8, "s"), ("release_time", 4, "u"), ("release_qualifier", 1, "s"), ("ipo_price", 4, "u")],
    "J": [("stock", 8, "s"), ("reference_price", 4, "u"), ("upper_price", 4, "u"), ("lower_price", 4, "u"),
          ("extension", 4, "u")],
    "h": [("stock", 8, "s"), ("market_code", 1, "s"), ("halt_action", 1, "s")],
    "A": _ADD,
    "F": [*_ADD, ("attribution", 4, "s")],
    "E": [("order_ref", 8, "u"), ("executed_shares", 4, "u"), ("match_number", 8, "u")],
    "C": [("order_ref", 8, "u"), ("executed_shares", 4, "u"), ("match_number", 8, "u"), ("printable", 1, "s"),
          ("execution_price", 4, "u")],
    "X": [("order_ref", 8, "u"), ("canceled_shares", 4, "u")],
    "D": [("order_ref", 8, "u")],
    "U": [("order_ref", 8, "u"), ("new_order_ref", 8, "u"), ("shares", 4, "u"), ("price", 4, "u")],
    "P": [("order_ref", 8, "u"), ("side", 1, "s"), ("shares", 4, "u"), ("stock", 8, "s"), ("price", 4, "u"),
          ("match_number", 8, "u")],
    "Q": [("shares", 8, "u"), ("stock", 8, "s"), ("cross_price", 4, "u"), ("match_number", 8, "u"),
          ("cross_type", 1, "s")],
    "B": [("match_number", 8, "u")],
    "I": [("paired_shares", 8, "u"), ("imbalance_shares", 8, "u"), ("imbalance_direction", 1, "s"), ("stock", 8, "s"),
          ("far_price", 4, "u"), ("near_price", 4, "u"), ("current_reference_price", 4, "u"), ("cross_type", 1, "s"),
          ("price_variation_indicator", 1, "s")],
    "N": [("stock", 8, "s"), ("interest_flag", 1, "s")],
    "O": [("stock", 8, "s"), ("open_eligibility_status", 1, "s"), ("min_allowable_price", 4, "u"),
          ("max_allowable_price", 4, "u"), ("near_execution_price", 4, "u"), ("near_execution_time", 8, "u"),
          ("lower_price_range_collar", 4, "u"), ("upper_price_range_collar", 4, "u")],
}
#: message length in bytes (type byte included) per type, as in the 5.0 specification
SIZES: dict[str, int] = {t: 11 + sum(n for _, n, _ in f) for t, f in SPEC.items()}
MESSAGE_TYPES = tuple(SPEC)

_SIZE_BY_BYTE = np.zeros(256, np.int64)
for _t, _n in SIZES.items():
    _SIZE_BY_BYTE[ord(_t)] = _n

_UINT = {1: "u1", 2: "u2", 4: "u4", 6: "u8", 8: "u8"}


def _layout(msg_type: str) -> list[tuple[str, int, int, str]]:
    """(name, offset in the message, bytes, kind) for every field after the type byte."""
    out, off = [], 1
    for name, n, kind in _HEADER + SPEC[msg_type]:
        out.append((name, off, n, kind))
        off += n
    return out


LAYOUTS = {t: _layout(t) for t in SPEC}
DTYPES: dict[str, np.dtype] = {
    t: np.dtype([("seq", "i8")] + [(name, _UINT[n] if kind == "u" else f"S{n}") for name, _, n, kind in lay])
    for t, lay in LAYOUTS.items()
}

FRAMING_LENGTH, FRAMING_ZERO_PREFIX = 0, 1
FRAMINGS = {"length": FRAMING_LENGTH, "zero_prefix": FRAMING_ZERO_PREFIX}
BOOK_CHUNK = 1 << 20  # book events per apply call (one step of a progress bar)
E_TRUNCATED, E_UNKNOWN_TYPE, E_LENGTH_MISMATCH, E_ZERO_LENGTH, E_BAD_PREFIX = 1, 2, 3, 4, 5
ERROR_NAMES = {E_TRUNCATED: "truncated_message", E_UNKNOWN_TYPE: "unknown_message_type",
               E_LENGTH_MISMATCH: "length_mismatch", E_ZERO_LENGTH: "zero_length", E_BAD_PREFIX: "bad_prefix"}


# ------------------------------------------------------------------------------------------- framing scan
@nb.njit(cache=True)
def _scan(buf, mode, sizes, offs, types, err_pos, err_code):
    """Find message starts; returns (messages, errors). Errors past the array size are only counted."""
    n = buf.shape[0]
    pos = 0
    k = 0
    ne = 0
    cap_e = err_pos.shape[0]
    while pos < n:
        code = 0
        if mode == FRAMING_LENGTH:
            if pos + 2 > n:
                code = E_TRUNCATED
            else:
                ln = (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])
                if ln == 0:
                    code = E_ZERO_LENGTH
                elif pos + 2 + ln > n:
                    code = E_TRUNCATED
                else:
                    t = buf[pos + 2]
                    exp = sizes[t]
                    if exp == 0:
                        code = E_UNKNOWN_TYPE
                    elif exp != ln:
                        code = E_LENGTH_MISMATCH
                    else:
                        offs[k] = pos + 2
                        types[k] = t
                        k += 1
                    if code != 0:
                        # the length still tells where the next message starts: note it and go on
                        if ne < cap_e:
                            err_pos[ne] = pos
                            err_code[ne] = code
                        ne += 1
                    pos += 2 + ln
                    continue
        else:
            if pos + 3 > n:
                code = E_TRUNCATED
            elif buf[pos] != 0 or buf[pos + 1] != 0:
                code = E_BAD_PREFIX
            else:
                t = buf[pos + 2]
                exp = sizes[t]
                if exp == 0:
                    code = E_UNKNOWN_TYPE
                elif pos + 2 + exp > n:
                    code = E_TRUNCATED
                else:
                    offs[k] = pos + 2
                    types[k] = t
                    k += 1
                    pos += 2 + exp
                    continue
        # an error without a way to find the next message: record it and stop
        if ne < cap_e:
            err_pos[ne] = pos
            err_code[ne] = code
        ne += 1
        break
    return k, ne


@dataclass
class ItchMessages:
    """A decoded ITCH stream.

    ``offsets``/``types``: start (byte offset of the type byte) and type byte of every message in stream
    order; ``by_type``: a structured array per message type present (:data:`DTYPES`); ``errors``: (byte
    position, reason) of bad input, the first ``max_errors``; ``n_errors`` counts all of them.
    """

    buffer: np.ndarray
    offsets: np.ndarray
    types: np.ndarray
    by_type: dict[str, np.ndarray] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)
    n_errors: int = 0

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def counts(self) -> dict[str, int]:
        """Messages per type, in spec order."""
        c = np.bincount(self.types, minlength=256)
        return {t: int(c[ord(t)]) for t in MESSAGE_TYPES if c[ord(t)]}

    def stock_directory(self) -> dict[int, str]:
        """Stock locate code -> symbol, from the ``R`` messages."""
        r = self.by_type.get("R")
        if r is None:
            return {}
        return {int(loc): s.decode("ascii", "replace").strip() for loc, s in zip(r["stock_locate"], r["stock"],
                                                                                  strict=True)}


def to_bytes(data: bytes | bytearray | memoryview | np.ndarray | str | Path,
             progress: ProgressHook | None = None) -> np.ndarray:
    """Raw bytes of a buffer or a file (gunzipped when it starts with the gzip magic) as uint8.
    ``progress`` hears the bytes of a file read so far (stage ``read``, bytes on disk)."""
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data[:2].tobytes() != b"\x1f\x8b":
        return data
    try:
        if isinstance(data, str | Path):
            raw = read_file_bytes(Path(data), progress)  # gunzipped as it is read
        else:
            raw = data.astype(np.uint8, copy=False).tobytes() if isinstance(data, np.ndarray) else bytes(data)
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:  # a truncated download ends the stream early
        name = Path(data).name if isinstance(data, str | Path) else "buffer"
        raise InputFileError("gzip", name, f"not a readable gzip stream (truncated or corrupt?): "
                             f"{type(exc).__name__}: {exc}") from exc
    return np.frombuffer(raw, np.uint8)


def scan(data: Any, framing: str = "length", max_errors: int = 1000, sniff: bool = True) -> ItchMessages:
    """Frame a buffer into messages without decoding the fields (fast path). ``sniff=False`` skips the
    check for zero-prefixed framing at offset 0 (for pieces of a live stream)."""
    if framing not in FRAMINGS:
        raise DataError("framing", framing, f"one of {', '.join(FRAMINGS)}")
    buf = to_bytes(data)
    mode = FRAMINGS[framing]
    if sniff and mode == FRAMING_LENGTH and buf.shape[0] >= 3 and buf[0] == 0 and buf[1] == 0 and _SIZE_BY_BYTE[buf[2]]:
        raise DataError(
            "framing", "length",
            f"the stream starts with two zero bytes and then the message type {chr(buf[2])!r}: this is the "
            "zero-prefixed framing of some ITCH writers, not Nasdaq's 2-byte length; read it with "
            "framing='zero_prefix' (CLI: --framing zero_prefix)",
            position=0,
        )
    # only well-formed messages are stored and each takes >= 14 bytes (2 framing + the 12-byte minimum)
    cap = buf.shape[0] // 14 + 1
    offs = np.empty(cap, np.int64)
    types = np.empty(cap, np.uint8)
    err_pos = np.empty(max_errors, np.int64)
    err_code = np.empty(max_errors, np.int64)
    k, ne = _scan(buf, mode, _SIZE_BY_BYTE, offs, types, err_pos, err_code)
    errors = [(int(err_pos[i]), ERROR_NAMES[int(err_code[i])]) for i in range(min(ne, max_errors))]
    if ne:
        counter("greekfire_market_itch_input_errors", "bad ITCH input (truncated, unknown type, ...)").inc(ne)
    return ItchMessages(buf, offs[:k].copy(), types[:k].copy(), {}, errors, int(ne))


def _gather(buf: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    return buf[starts[:, None] + np.arange(size)]


def _rows_to_array(msg_type: str, rows: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """[n, size] uint8 message rows -> the type's structured array."""
    n = rows.shape[0]
    out = np.empty(n, DTYPES[msg_type])
    out["seq"] = seq
    for name, off, ln, kind in LAYOUTS[msg_type]:
        cols = rows[:, off : off + ln]
        if kind == "s":
            out[name] = np.ascontiguousarray(cols).view(f"S{ln}").ravel()
        elif ln == 1:
            out[name] = cols[:, 0]
        elif ln == 6:
            padded = np.zeros((n, 8), np.uint8)
            padded[:, 2:] = cols
            out[name] = padded.view(">u8").ravel()
        else:
            out[name] = np.ascontiguousarray(cols).view(f">u{ln}").ravel()
    return out


def decode(data: Any, framing: str = "length", types: str | None = None, max_errors: int = 1000) -> ItchMessages:
    """Decode a buffer or file: every message type (or only those in ``types``, e.g. ``"AFEXDU"``)."""
    msgs = scan(data, framing, max_errors)
    present = np.flatnonzero(np.bincount(msgs.types, minlength=256))
    for tb in present:
        t = chr(tb)
        if types is not None and t not in types:
            continue
        seq = np.flatnonzero(msgs.types == tb)
        rows = _gather(msgs.buffer, msgs.offsets[seq], SIZES[t])
        msgs.by_type[t] = _rows_to_array(t, rows, seq)
    return msgs


def read_file(path: str | Path, framing: str = "length", types: str | None = None) -> ItchMessages:
    """Decode an ITCH file (plain or gzipped)."""
    return decode(Path(path), framing, types)


# ------------------------------------------------------------------------------------------- encoder
def encode_rows(msg_type: str, arr: np.ndarray) -> np.ndarray:
    """A structured array of one type (:data:`DTYPES` fields; ``seq`` ignored) -> [n, size] uint8 rows.

    Alpha fields shorter than their width are padded with spaces, as the spec requires.
    """
    if msg_type not in SPEC:
        raise DataError("msg_type", msg_type, f"one of {''.join(MESSAGE_TYPES)}")
    n = arr.shape[0]
    rows = np.zeros((n, SIZES[msg_type]), np.uint8)
    rows[:, 0] = ord(msg_type)
    for name, off, ln, kind in LAYOUTS[msg_type]:
        if kind == "s":
            col = np.ascontiguousarray(np.asarray(arr[name]).astype(f"S{ln}")).view(np.uint8).reshape(n, ln)
            rows[:, off : off + ln] = np.where(col == 0, 0x20, col)
        else:
            be = np.asarray(arr[name]).astype(">u8").view(np.uint8).reshape(n, 8)
            rows[:, off : off + ln] = be[:, 8 - ln :]
    return rows


def space_pad(msg_type: str, arr: np.ndarray) -> np.ndarray:
    """A copy with every alpha field padded with spaces to its width (what the wire carries)."""
    out = arr.copy()
    for name, _, ln, kind in LAYOUTS[msg_type]:
        if kind == "s":
            out[name] = np.char.ljust(out[name], ln)
    return out


def encode_message(msg_type: str, **fields: Any) -> bytes:
    """One message as bytes (no framing). Missing fields are 0 / spaces.

    Example: ``encode_message("A", stock_locate=1, timestamp=34_200_000_000_000, order_ref=7, side=b"B",
    shares=100, stock=b"AAPL", price=1_234_500)``.
    """
    if msg_type not in SPEC:
        raise DataError("msg_type", msg_type, f"one of {''.join(MESSAGE_TYPES)}")
    arr = np.zeros(1, DTYPES[msg_type])
    for k, v in fields.items():
        if k not in arr.dtype.names:
            raise DataError("field", k, f"not a field of ITCH message {msg_type!r}: {arr.dtype.names[1:]}")
        arr[k] = v.encode() if isinstance(v, str) else v
    return encode_rows(msg_type, arr)[0].tobytes()


def encode_stream(by_type: dict[str, np.ndarray], framing: str = "length") -> bytes:
    """Messages of several types, merged in ``seq`` order, framed into one buffer."""
    if framing not in FRAMINGS:
        raise DataError("framing", framing, f"one of {', '.join(FRAMINGS)}")
    parts = [(t, a) for t, a in by_type.items() if a.shape[0]]
    if not parts:
        return b""
    seq = np.concatenate([a["seq"] for _, a in parts])
    size = np.concatenate([np.full(a.shape[0], SIZES[t] + 2, np.int64) for t, a in parts])
    order = np.argsort(seq, kind="stable")
    start = np.empty_like(size)
    start[order] = np.concatenate([[0], np.cumsum(size[order])[:-1]])
    out = np.zeros(int(size.sum()), np.uint8)
    base = 0
    for t, a in parts:
        n = a.shape[0]
        rows = encode_rows(t, a)
        framed = np.zeros((n, SIZES[t] + 2), np.uint8)
        if framing == "length":
            framed[:, 0] = SIZES[t] >> 8
            framed[:, 1] = SIZES[t] & 0xFF
        framed[:, 2:] = rows
        pos = start[base : base + n]
        out[pos[:, None] + np.arange(SIZES[t] + 2)] = framed
        base += n
    return out.tobytes()


def frame(messages: list[bytes]) -> bytes:
    """Length-prefix raw messages (Nasdaq binary-file framing)."""
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages)


def text(value: bytes) -> str:
    """An alpha field as a stripped string."""
    return value.decode("ascii", "replace").strip()


# ------------------------------------------------------------------------------------------- book events
@nb.njit(cache=True, inline="always")
def _be(buf, pos, ln):
    v = np.int64(0)
    for i in range(ln):
        v = (v << 8) | np.int64(buf[pos + i])
    return v


@nb.njit(cache=True)
def _to_events(buf, offs, types, ev):
    k = 0
    for i in range(offs.shape[0]):
        p = offs[i]
        t = types[i]
        if t == 65 or t == 70:  # A, F
            ev[k].kind = ADD
            ev[k].side = 1 if buf[p + 19] == 66 else -1
            ev[k].order_id = _be(buf, p + 11, 8)
            ev[k].qty = _be(buf, p + 20, 4)
            ev[k].price = _be(buf, p + 32, 4)
        elif t == 69 or t == 67:  # E, C
            ev[k].kind = EXECUTE
            ev[k].order_id = _be(buf, p + 11, 8)
            ev[k].qty = _be(buf, p + 19, 4)
        elif t == 88:  # X
            ev[k].kind = REDUCE
            ev[k].order_id = _be(buf, p + 11, 8)
            ev[k].qty = _be(buf, p + 19, 4)
        elif t == 68:  # D
            ev[k].kind = DELETE
            ev[k].order_id = _be(buf, p + 11, 8)
        elif t == 85:  # U
            ev[k].kind = REPLACE
            ev[k].order_id = _be(buf, p + 11, 8)
            ev[k].new_order_id = _be(buf, p + 19, 8)
            ev[k].new_qty = _be(buf, p + 27, 4)
            ev[k].new_price = _be(buf, p + 31, 4)
        else:
            continue
        ev[k].book = _be(buf, p + 1, 2)
        ev[k].ts = _be(buf, p + 5, 6)
        k += 1
    return k


def book_events(msgs: ItchMessages) -> tuple[np.ndarray, np.ndarray]:
    """Book events (:data:`~greekfire.market.book.EVENT_DTYPE`, book = stock locate) of the order messages
    A F E C X D U, in stream order, and the stream index of each event."""
    ev = np.zeros(len(msgs), EVENT_DTYPE)
    k = _to_events(msgs.buffer, msgs.offsets, msgs.types, ev)
    is_book = np.isin(msgs.types, np.frombuffer(b"AFECXDU", np.uint8))
    return ev[:k], np.flatnonzero(is_book)


def build_books(data: Any, framing: str = "length", max_orders: int | None = None, max_levels: int = 1024,
                progress: ProgressHook | None = None):
    """Per-stock L3 books from an ITCH buffer or file: one book per stock locate that has order messages.

    Returns (books, decoded messages, apply result). ``books.locates[i]`` is the stock locate of book
    ``i`` (``books.book_of(locate)`` the reverse). Bad book events (unknown order reference...) are
    counted in the result with their message index in the stream. ``progress`` hears stages ``read``
    (bytes of a file) and ``books`` (book events applied).
    """
    if progress is not None:
        data = to_bytes(data, progress)
    msgs = decode(data, framing, types="SR")  # the order messages go straight to events; keep the directory
    ev, idx = book_events(msgs)
    # books are numbered densely: a corrupted locate must not allocate 65,536 books
    locates, ev["book"] = np.unique(ev["book"], return_inverse=True)
    adds = int(np.count_nonzero((ev["kind"] == ADD) | (ev["kind"] == REPLACE)))
    books = OrderBooks(max(len(locates), 1), max_orders or max(adds, 16), max_levels)
    books.locates = locates.astype(np.int64)
    status = np.zeros(ev.shape[0], np.int8)
    n = int(ev.shape[0])
    for a in range(0, n, BOOK_CHUNK):  # the books carry their state from piece to piece: one call's result
        books.apply_fast(ev[a : a + BOOK_CHUNK], status[a : a + BOOK_CHUNK])
        if progress is not None:
            progress("books", min(a + BOOK_CHUNK, n), n, "events")
    res = summarize_status(status)
    _count_events(res)
    res.first_bad = [(int(idx[i]), why) for i, why in res.first_bad]  # positions as message indexes
    return books, msgs, res


def file_report(path: str | Path, framing: str = "length", levels: int = 3,
                progress: ProgressHook | None = None) -> dict[str, Any]:
    """``greekfire market itch``: decode a file, build the per-stock books, return a mapping with message
    counts, bad input (with byte positions), bad book events (with message indexes), the top of book
    of each stock (prices in dollars, sizes in shares) and ``seconds``. ``progress`` hears stages ``read``
    (file bytes) and ``books`` (book events)."""
    t0 = time.perf_counter()
    if Path(path).stat().st_size == 0:
        raise InputFileError("file", str(path), "the file is empty (0 bytes); expected ITCH 5.0 messages")
    books, msgs, res = build_books(path, framing, progress=progress)
    seconds = time.perf_counter() - t0
    names = msgs.stock_directory()
    tops = {}
    for b in range(books.n_books):
        st = books.stats(b)
        if st["messages"] == 0:
            continue
        bids, asks = books.depth(b, levels)
        loc = int(books.locates[b])
        tops[names.get(loc, f"locate {loc}")] = {
            "messages": st["messages"], "traded_shares": st["traded_qty"],
            "bids": [(px / 1e4, q) for px, q in bids], "asks": [(px / 1e4, q) for px, q in asks],
        }
    return {"file": Path(path).name, "framing": framing, "messages": len(msgs), "counts": msgs.counts(),
            "input_errors": msgs.n_errors, "first_input_errors": msgs.errors[:10],
            "book_events": res.applied, "bad_book_events": res.bad, "bad_by_reason": res.by_reason,
            "first_bad_book_events": res.first_bad, "live_orders": books.n_orders, "stocks": tops,
            "seconds": round(seconds, 3)}


class StreamBooks:
    """Books kept current from a live, length-framed ITCH byte stream fed in arbitrary pieces (packet
    payloads, socket reads): complete messages are applied at once, a partial one waits for the rest.

    ``books`` has one book per stock locate below ``n_locates`` (book index = locate). Counters:
    ``messages``, ``bad_events`` (by reason in ``bad_by_reason``), ``input_errors`` (bad framing,
    unknown types, with the stream byte offsets in ``first_input_errors``).

    Example::

        sb = StreamBooks(n_locates=16)
        rx = MoldReceiver()
        for pkt in packets:
            rx.feed(pkt)
            sb.feed(rx.drain())
        sb.books.best_bid(1)
    """

    def __init__(self, n_locates: int = 8192, max_orders: int = 1 << 20, max_levels: int = 256) -> None:
        self.books = OrderBooks(n_locates, max_orders, max_levels)
        self._carry = b""
        self._offset = 0  # stream offset of the first byte of _carry
        self.messages = 0
        self.bad_events = 0
        self.bad_by_reason: dict[str, int] = {}
        self.input_errors = 0
        self.first_input_errors: list[tuple[int, str]] = []

    def feed(self, data: bytes) -> int:
        """Apply every complete message in ``data`` (plus what was left over); returns messages applied."""
        buf = self._carry + bytes(data)
        arr = np.frombuffer(buf, np.uint8)
        pos, applied = 0, 0
        self._carry = b""
        while pos < len(buf):
            msgs = scan(arr[pos:], sniff=False)
            applied += self._apply(msgs)
            stop = None
            for p, why in msgs.errors:
                if why in ("truncated_message", "zero_length"):
                    stop = (p, why)  # the scan ends there
                else:
                    self._note_error(self._offset + pos + p, why)
            self.input_errors += max(0, msgs.n_errors - len(msgs.errors))
            if stop is None:
                pos = len(buf)
            elif stop[1] == "truncated_message":  # the rest of it comes with the next piece
                self._carry = buf[pos + stop[0] :]
                pos = len(buf)
            else:  # a zero length can never complete: report it and resynchronise past its two bytes
                self._note_error(self._offset + pos + stop[0], "zero_length")
                pos += stop[0] + 2
        self._offset += len(buf) - len(self._carry)
        return applied

    def _apply(self, msgs: ItchMessages) -> int:
        if not len(msgs):
            return 0
        ev, _ = book_events(msgs)
        ok = ev["book"] < self.books.n_books
        if not ok.all():
            self.bad_by_reason["locate_out_of_range"] = self.bad_by_reason.get("locate_out_of_range", 0) + int((~ok).sum())
            self.bad_events += int((~ok).sum())
            ev = ev[ok]
        status = np.zeros(ev.shape[0], np.int8)
        self.books.apply_fast(ev, status)
        res = summarize_status(status)
        self.bad_events += res.bad
        for k, v in res.by_reason.items():
            self.bad_by_reason[k] = self.bad_by_reason.get(k, 0) + v
        self.messages += len(msgs)
        return len(msgs)

    def _note_error(self, pos: int, why: str) -> None:
        self.input_errors += 1
        if len(self.first_input_errors) < 100:
            self.first_input_errors.append((pos, why))

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message waiting for the next piece."""
        return len(self._carry)
