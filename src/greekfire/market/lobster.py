"""LOBSTER files: reader, book events, the row-by-row book check and a plain replay.

A LOBSTER sample is a message file (time in seconds after midnight, type, order id, size, price in
1e-4 dollars, direction +1 buy / -1 sell) and an order-book file whose row k is the book (N levels: ask
price, ask size, bid price, bid size, ...) after message k. Message types: 1 new limit order, 2 partial
cancel, 3 delete, 4 execution of a visible order, 5 execution of a hidden order, 6 cross trade, 7 halt.

LOBSTER only reports events inside its N levels, so a level entering the window from below brings orders
never seen: no replay from messages alone can rebuild the book. :func:`check` therefore sets our book to
row k-1 (as anonymous level quantities), applies message k with our book and compares with row k; levels
1..N-1 must always agree (level N may be refilled from outside the window).
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from greekfire.core.errors import DataError, InputFileError
from greekfire.core.progress import CountingReader, ProgressHook
from greekfire.market.book import (
    ADD,
    DELETE,
    EVENT_DTYPE,
    EXECUTE,
    FLAG_PRICE_FALLBACK,
    REDUCE,
    OrderBooks,
    _check_kernel,
    _clear_book,
    _set_from_row,
    summarize_status,
)

MESSAGE_DTYPE = np.dtype([("time", "f8"), ("type", "i1"), ("order_id", "i8"), ("size", "i8"), ("price", "i8"),
                          ("direction", "i1")])
DUMMY_ASK, DUMMY_BID = 9_999_999_999, -9_999_999_999
MESSAGE_TYPES = {1: "submit", 2: "cancel", 3: "delete", 4: "execute_visible", 5: "execute_hidden", 6: "cross",
                 7: "halt"}
CHUNK_MESSAGES = 1 << 16  # messages per kernel call in a check with a progress hook (one bar step)


@dataclass
class LobsterData:
    """One LOBSTER sample: messages (:data:`MESSAGE_DTYPE`) and the book rows int64 [n, 4 * levels]."""

    messages: np.ndarray
    book: np.ndarray
    levels: int
    name: str = ""


def _read_csv(src: Any, ncols: int | None, what: str, name: str) -> np.ndarray:
    """Parse one LOBSTER CSV from a path or a binary stream (closed afterwards)."""
    try:
        df = pd.read_csv(src, header=None, dtype=np.float64 if what == "message" else np.int64)
    except pd.errors.EmptyDataError as exc:
        raise InputFileError(f"{what}_file", name, f"the file is empty; expected a LOBSTER {what} CSV") from exc
    except (ValueError, OverflowError, pd.errors.ParserError) as exc:
        raise InputFileError(f"{what}_file", name, f"not a LOBSTER {what} CSV: {' '.join(str(exc).split())}") from exc
    finally:
        if hasattr(src, "close"):
            src.close()
    if ncols is not None and df.shape[1] != ncols:
        raise DataError(f"{what}_file", name, f"has {df.shape[1]} columns, expected {ncols}")
    return df.to_numpy()


def _levels_from_name(name: str) -> int | None:
    m = re.search(r"_(?:orderbook|message)_(\d+)\.csv$", name)
    return int(m.group(1)) if m else None


class _ReadProgress:
    """Byte progress over the two CSVs of a sample (stage ``read``): one running count across both."""

    def __init__(self, progress: ProgressHook | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def source(self, src: Path | bytes, size: int) -> Any:
        """What ``pd.read_csv`` reads: the path or a buffer, counted when there is a hook. Only an
        uncompressed CSV is streamed through the counter (pandas infers compression from a path's name)."""
        start, self.done = self.done, self.done + size
        if isinstance(src, bytes):
            buf: Any = io.BytesIO(src)
        elif self.progress is not None and src.suffix.lower() == ".csv":
            buf = open(src, "rb")  # noqa: SIM115 -- _read_csv closes it
        else:
            return src
        if self.progress is None:
            return buf
        return io.BufferedReader(CountingReader(buf, self.total, self.progress, "read", start=start))

    def finished(self) -> None:
        if self.progress is not None:
            self.progress("read", self.total, self.total, "bytes")


def read(messages: str | Path, book: str | Path | None = None, levels: int | None = None,
         progress: ProgressHook | None = None) -> LobsterData:
    """Read a LOBSTER message CSV and its order-book CSV, or one sample zip holding both.

    ``levels`` defaults to what the file name says (``..._orderbook_5.csv``) or the book's column count.
    ``progress`` hears the bytes of CSV parsed so far (stage ``read``, uncompressed bytes).
    """
    messages = Path(messages)
    if messages.suffix == ".zip":
        try:
            with zipfile.ZipFile(messages) as zf:
                names = zf.namelist()
                msg_name = next((n for n in names if re.search(r"_message_\d+\.csv$", n)), None)
                book_name = next((n for n in names if re.search(r"_orderbook_\d+\.csv$", n)), None)
                if msg_name is None or book_name is None:
                    raise DataError("zip", str(messages), "holds no *_message_N.csv and *_orderbook_N.csv pair")
                msg_bytes, book_bytes = zf.read(msg_name), zf.read(book_name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, ValueError) as exc:
            # a truncated download fails here: BadZipFile, or a member whose data ends early
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise InputFileError("zip", str(messages), f"not a readable zip (truncated or corrupt?): {reason}") from exc
        counted = _ReadProgress(progress, len(msg_bytes) + len(book_bytes))
        msg_raw = _read_csv(counted.source(msg_bytes, len(msg_bytes)), 6, "message", f"{messages.name}:{msg_name}")
        book_raw = _read_csv(counted.source(book_bytes, len(book_bytes)), None, "orderbook",
                             f"{messages.name}:{book_name}")
        counted.finished()
        levels = levels or _levels_from_name(book_name)
        name, book_file = Path(msg_name).name, Path(book_name).name
    else:
        if book is None:
            raise DataError("book", None, "the order-book CSV is needed beside the message CSV")
        sizes = (messages.stat().st_size, Path(book).stat().st_size)
        counted = _ReadProgress(progress, sum(sizes))
        msg_raw = _read_csv(counted.source(messages, sizes[0]), 6, "message", str(messages))
        book_raw = _read_csv(counted.source(Path(book), sizes[1]), None, "orderbook", str(book))
        counted.finished()
        levels = levels or _levels_from_name(Path(book).name)
        name, book_file = messages.name, Path(book).name
    if book_raw.shape[1] % 4:
        raise DataError("orderbook_file", book_file, f"{book_raw.shape[1]} columns is not a multiple of 4")
    levels = levels or book_raw.shape[1] // 4
    if book_raw.shape[1] != 4 * levels:
        raise DataError("levels", levels, f"the order-book file has {book_raw.shape[1] // 4} levels")
    if book_raw.shape[0] != msg_raw.shape[0]:
        raise InputFileError("message_file", name, f"{msg_raw.shape[0]} messages but the order-book file "
                             f"{book_file} has {book_raw.shape[0]} rows: one of the two is short or they do not pair")
    msgs = np.empty(msg_raw.shape[0], MESSAGE_DTYPE)
    msgs["time"] = msg_raw[:, 0]
    for col, i in (("type", 1), ("order_id", 2), ("size", 3), ("price", 4), ("direction", 5)):
        msgs[col] = np.rint(msg_raw[:, i]).astype(np.int64)
    return LobsterData(msgs, np.ascontiguousarray(book_raw, dtype=np.int64), int(levels), name)


def to_events(msgs: np.ndarray, book: int = 0) -> np.ndarray:
    """Book events for LOBSTER messages, one per message (types 5-7 become kind 0: no book change).

    Cancels, deletes and executions carry :data:`~greekfire.market.book.FLAG_PRICE_FALLBACK`: an order
    submitted before the window (unknown id) reduces the level at its price instead.
    """
    ev = np.zeros(msgs.shape[0], EVENT_DTYPE)
    kind = np.zeros(msgs.shape[0], np.uint8)
    t = msgs["type"]
    kind[t == 1] = ADD
    kind[t == 2] = REDUCE
    kind[t == 3] = DELETE
    kind[t == 4] = EXECUTE
    ev["kind"] = kind
    ev["side"] = msgs["direction"]
    ev["flags"] = FLAG_PRICE_FALLBACK
    ev["book"] = book
    ev["ts"] = np.rint(msgs["time"] * 1e9).astype(np.int64)
    ev["order_id"] = msgs["order_id"]
    ev["price"] = msgs["price"]
    ev["qty"] = msgs["size"]
    return ev


@dataclass
class LobsterCheck:
    """Agreement of our book with LOBSTER's order-book file, per level (1 = best)."""

    name: str
    mode: str
    messages: int
    levels: int
    match_rate: list[float]  # both sides, price and size, per level
    bid_rate: list[float]
    ask_rate: list[float]
    checked_levels: int  # levels that must match: 1..N-1 (level 1 only for level-1 files: reported only)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    bad_events: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Levels 1..N-1 agree on every row. False when there is no such level (a level-1 file): a check
        that checked nothing does not pass."""
        return self.checked_levels > 0 and all(r == 1.0 for r in self.match_rate[: self.checked_levels])

    @property
    def note(self) -> str:
        """Why the check did not pass when no level was checked (empty otherwise)."""
        if self.checked_levels > 0:
            return ""
        return (f"nothing checked: a {self.levels}-level book file has no level that must match (levels 1..N-1; "
                "level N is refilled from outside the file); give a file with at least 2 levels")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "messages": self.messages, "levels": self.levels,
                "checked_levels": self.checked_levels, "ok": self.ok, "note": self.note,
                "match_rate_pct": [round(100 * r, 4) for r in self.match_rate],
                "bid_rate_pct": [round(100 * r, 4) for r in self.bid_rate],
                "ask_rate_pct": [round(100 * r, 4) for r in self.ask_rate],
                "first_mismatches": self.mismatches, "bad_events": self.bad_events, "seconds": round(self.seconds, 3)}


def _compare(data: LobsterData, snap: np.ndarray, mode: str, status: np.ndarray, seconds: float,
             keep: int) -> LobsterCheck:
    rows, n = data.book, data.levels
    ask_px, ask_sz = rows[:, 0::4], rows[:, 1::4]
    bid_px, bid_sz = rows[:, 2::4], rows[:, 3::4]
    ask_px = np.where(ask_sz > 0, ask_px, 0)
    bid_px = np.where(bid_sz > 0, bid_px, 0)
    ours_bid_px, ours_bid_sz = snap[:, 0, :, 0], snap[:, 0, :, 1]
    ours_ask_px, ours_ask_sz = snap[:, 1, :, 0], snap[:, 1, :, 1]
    bid_ok = (ours_bid_px == bid_px) & (ours_bid_sz == bid_sz)
    ask_ok = (ours_ask_px == ask_px) & (ours_ask_sz == ask_sz)
    both = (bid_ok & ask_ok)[1:]
    rows_checked = max(both.shape[0], 1)
    checked = n - 1
    mism: list[dict[str, Any]] = []
    bad_rows = np.flatnonzero(~np.all(both[:, : max(checked, 1)], axis=1)) + 1
    for k in bad_rows[:keep]:
        lv = int(np.flatnonzero(~(bid_ok[k] & ask_ok[k]))[0])
        m = data.messages[k]
        mism.append({
            "row": int(k), "level": lv + 1,
            "message": {"time": float(m["time"]), "type": int(m["type"]), "order_id": int(m["order_id"]),
                        "size": int(m["size"]), "price": int(m["price"]), "direction": int(m["direction"])},
            "ours": {"bid": [int(ours_bid_px[k, lv]), int(ours_bid_sz[k, lv])],
                     "ask": [int(ours_ask_px[k, lv]), int(ours_ask_sz[k, lv])]},
            "file": {"bid": [int(bid_px[k, lv]), int(bid_sz[k, lv])], "ask": [int(ask_px[k, lv]), int(ask_sz[k, lv])]},
        })
    res = summarize_status(status)
    return LobsterCheck(
        name=data.name, mode=mode, messages=int(rows.shape[0]), levels=n,
        match_rate=[float(x) for x in both.sum(axis=0) / rows_checked],
        bid_rate=[float(x) for x in bid_ok[1:].sum(axis=0) / rows_checked],
        ask_rate=[float(x) for x in ask_ok[1:].sum(axis=0) / rows_checked],
        checked_levels=checked, mismatches=mism, bad_events=res.as_dict(), seconds=seconds,
    )


def _run(data: LobsterData, reset: bool, keep: int, progress: ProgressHook | None = None) -> LobsterCheck:
    import time

    ev = to_events(data.messages)
    books = OrderBooks(1, max_orders=max(1024, int(np.count_nonzero(ev["kind"] == ADD)) + 16),
                       max_levels=max(64, 4 * data.levels))
    status = np.zeros(ev.shape[0], np.int8)
    snap = np.zeros((ev.shape[0], 2, data.levels, 2), np.int64)
    n, stage = int(ev.shape[0]), "check" if reset else "replay"
    t0 = time.perf_counter()
    out = np.zeros((1, 2, data.levels, 2), np.int64)
    if progress is None or not reset or n <= CHUNK_MESSAGES:
        # a plain replay carries its book from message to message, so it runs as one kernel call
        _check_kernel(ev, data.book, data.levels, reset, status, snap, out, *books._state())
        if progress is not None:
            progress(stage, n, n, "messages")
    else:
        # each row is checked from row k-1 alone, so the rows split into pieces that give the same result:
        # a piece [a-1, b) sets the book from row a-1 and checks rows a..b-1
        for a in range(1, n, CHUNK_MESSAGES):
            b = min(a + CHUNK_MESSAGES, n)
            _clear_book(*books._state()[:9], 0)
            _check_kernel(ev[a - 1 : b], data.book[a - 1 : b], data.levels, reset, status[a - 1 : b],
                          snap[a - 1 : b], out, *books._state())
            progress(stage, b, n, "messages")
    seconds = time.perf_counter() - t0
    return _compare(data, snap, stage, status, seconds, keep)


def check(data: LobsterData, keep: int = 10, progress: ProgressHook | None = None) -> LobsterCheck:
    """For every message k: book := row k-1, apply message k with our book, compare with row k.
    ``progress`` hears the messages checked so far (stage ``check``)."""
    return _run(data, True, keep, progress)


def replay(data: LobsterData, keep: int = 10, progress: ProgressHook | None = None) -> LobsterCheck:
    """Plain replay: book := row 0, then apply every message; compared with every row (it drifts where
    levels enter the window from below, which is why :func:`check` exists). ``progress`` hears stage
    ``replay`` when it is done (the replay is one kernel call)."""
    return _run(data, False, keep, progress)


def replay_throughput(data: LobsterData, repeat: int = 3, cpu_time: bool = False,
                      progress: ProgressHook | None = None) -> dict[str, float]:
    """Messages/s of a plain batch replay (no snapshots) on one core; best of ``repeat`` (wall clock, or
    this process's CPU time with ``cpu_time`` -- steadier on a shared machine). ``progress`` hears the
    runs done (stage ``throughput``)."""
    import time

    clock = time.process_time if cpu_time else time.perf_counter

    ev = to_events(data.messages)
    ev = ev[ev["kind"] != 0]
    best = float("inf")
    for i in range(repeat):
        if progress is not None:
            progress("throughput", i, repeat, "runs")
        books = OrderBooks(1, max_orders=max(1024, ev.shape[0]), max_levels=1024)
        _set_from_row(data.book[0], data.levels, books.lvls, books.keys, books.lids, books.nlev, books.l_free,
                      books.meta)
        status = np.zeros(ev.shape[0], np.int8)
        t0 = clock()
        books.apply_fast(ev, status)
        best = min(best, clock() - t0)
    if progress is not None:
        progress("throughput", repeat, repeat, "runs")
    return {"messages": float(ev.shape[0]), "seconds": best, "messages_per_s": ev.shape[0] / best}


def check_files(messages: str | Path, book: str | Path | None = None, levels: int | None = None,
                keep: int = 10, progress: ProgressHook | None = None) -> dict[str, Any]:
    """``greekfire market lobster-check``: read the files (or a sample zip), run :func:`check`, return a
    mapping (match rates in percent per level, the first mismatches with their messages, ``ok``,
    ``seconds`` of the check). ``progress`` hears stages ``read`` (bytes) and ``check`` (messages)."""
    return check(read(messages, book, levels, progress), keep, progress).as_dict()


def replay_files(messages: str | Path, book: str | Path | None = None, levels: int | None = None,
                 keep: int = 5, progress: ProgressHook | None = None) -> dict[str, Any]:
    """``greekfire market lobster-replay``: plain replay from the first row; throughput (messages/s on
    one core, no snapshots) and the agreement with every row (expected to drift below level 1).
    ``progress`` hears stages ``read`` (bytes), ``replay`` (messages) and ``throughput`` (runs)."""
    data = read(messages, book, levels, progress)
    out = replay(data, keep, progress).as_dict()
    out["throughput"] = replay_throughput(data, progress=progress)
    return out
