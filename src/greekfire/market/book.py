"""Order books: market-by-order (L3) with the by-price view (L2) derived from it, many books at once.

Everything lives in preallocated numpy arrays and is changed by numba kernels, one fixed 64-byte record
per event (:data:`EVENT_DTYPE`). Prices are integer ticks, quantities integers.

Layout (all books share the pools, so one underlying with thousands of option series is one object):

* order pool ``ords[O, 8]`` (one 64-byte row per order): id, price, qty, book, side, level, prev, next;
* level pool ``lvls[L, 5]``: total qty, order count, queue head, queue tail, price;
* per book and side a sorted array of level keys (``price * sign``, best LAST so that the busy top of the
  book is touched by the cheapest shifts) and the level ids beside them;
* an open-addressing hash (linear probing, backward-shift delete) from order id to pool row.

Order ids are unique across all books of one :class:`OrderBooks` (as ITCH order reference numbers are).
A bad event (unknown order id, size <= 0, duplicate id, reduce beyond the order) is counted with its
position in the batch and the batch goes on; see :class:`ApplyResult`.

Why one module of some 800 lines: the numba kernels and :class:`OrderBooks` share one record layout, the
event record (:data:`EVENT_DTYPE`), the pool columns (``O_*``, ``L_*``, ``S_*``, ``M_*``), the sorted level
keys and the order-id hash. The kernels write those arrays and the class allocates, grows, snapshots and
reads the same ones, so a change to the layout is one change in one place; split apart, both halves would
have to change together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba as nb
import numpy as np

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter

try:  # numba's private switch for kernels without its reference-counting runtime (see _kernel_options)
    from numba.core.options import DefaultOptions

    _HAS_NRT_SWITCH = hasattr(DefaultOptions, "_nrt")
except ImportError:  # a numba that moved it: the plain kernels
    _HAS_NRT_SWITCH = False

# ----------------------------------------------------------------------------------------------- events
EVENT_DTYPE = np.dtype(
    [
        ("kind", "u1"),
        ("side", "i1"),  # +1 bid / buy, -1 ask / sell
        ("flags", "u2"),
        ("book", "u4"),
        ("ts", "i8"),  # nanoseconds
        ("order_id", "i8"),
        ("price", "i8"),  # ticks
        ("qty", "i8"),
        ("new_order_id", "i8"),
        ("new_price", "i8"),
        ("new_qty", "i8"),
    ]
)
assert EVENT_DTYPE.itemsize == 64

ADD, REDUCE, DELETE, EXECUTE, REPLACE, LEVEL, CLEAR = 1, 2, 3, 4, 5, 6, 7
EVENT_KINDS = {"add": ADD, "reduce": REDUCE, "delete": DELETE, "execute": EXECUTE, "replace": REPLACE,
               "level": LEVEL, "clear": CLEAR}
#: flag: when the order id is unknown, apply REDUCE/DELETE/EXECUTE to the level at (side, price) instead
#: (feeds that only report orders inside a window of levels, such as LOBSTER)
FLAG_PRICE_FALLBACK = 1

OK, UNKNOWN_ORDER, BAD_QTY, DUPLICATE_ID, OVER_REDUCE, BAD_BOOK, FULL, UNKNOWN_KIND, BAD_SIDE = range(9)
STATUS_NAMES = {
    OK: "ok",
    UNKNOWN_ORDER: "unknown_order_id",
    BAD_QTY: "bad_size",
    DUPLICATE_ID: "duplicate_order_id",
    OVER_REDUCE: "reduce_beyond_order",
    BAD_BOOK: "bad_book",
    FULL: "capacity_full",
    UNKNOWN_KIND: "unknown_event_kind",
    BAD_SIDE: "bad_side",
}

# columns of the pools
O_ID, O_PX, O_QTY, O_BOOK, O_SIDE, O_LV, O_PREV, O_NEXT = range(8)
L_QTY, L_CNT, L_HEAD, L_TAIL, L_PX = range(5)
S_MSGS, S_EXEC_QTY, S_EXEC_N, S_TS = range(4)
M_OFREE, M_LFREE, M_SHIFT, M_ORDERS = range(4)  # M_SHIFT: log2 of the hash table size
EMPTY = -1


def make_events(n: int) -> np.ndarray:
    """A zeroed event array of ``n`` records (:data:`EVENT_DTYPE`)."""
    return np.zeros(n, dtype=EVENT_DTYPE)


# ----------------------------------------------------------------------------------------------- kernels
# Options of the batch kernels. They allocate nothing, so they run without numba's reference-counting
# runtime: with it, every helper inlined into the event loop takes and drops a reference to each array it
# is handed (an atomic add each), which cost about 60% of the time of a LOBSTER replay (perf: the
# NRT_incref/NRT_decref stubs). Without it the same loop is 2.5-3x faster. A kernel that allocates
# does not compile with these options (numba refuses), so a mistake shows at once.


def _kernel_options() -> dict[str, Any]:
    """``cache`` and, where this numba still has the private ``_nrt`` switch, ``_nrt=False``; a numba
    without it gets the plain (slower, equally correct) kernels rather than an import error."""
    return {"cache": True, "_nrt": False} if _HAS_NRT_SWITCH else {"cache": True}


_KERNEL: dict[str, Any] = _kernel_options()


@nb.njit(cache=True, inline="always")
def _home(key, bits):
    # Feeds number orders sequentially, and recent orders are the busy ones: keeping consecutive ids in
    # consecutive slots (high bits folded in) keeps the hot part of the table in cache, which a
    # scattering hash would not.
    return (key ^ (key >> bits) ^ (key >> (2 * bits))) & ((np.int64(1) << bits) - 1)


@nb.njit(cache=True, inline="always")
def _h_find(htab, shift, key):
    mask = htab.shape[0] - 1
    i = _home(key, shift)
    while True:
        k = htab[i, 0]
        if k == key:
            return i
        if k == EMPTY:
            return -1
        i = (i + 1) & mask


@nb.njit(cache=True, inline="always")
def _h_insert(htab, shift, key, val):
    mask = htab.shape[0] - 1
    i = _home(key, shift)
    while True:
        k = htab[i, 0]
        if k == EMPTY:
            htab[i, 0] = key
            htab[i, 1] = val
            return True
        if k == key:
            return False
        i = (i + 1) & mask


@nb.njit(cache=True, inline="always")
def _h_delete_at(htab, shift, i):
    # backward-shift deletion keeps probe chains short without tombstones
    mask = htab.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        k = htab[j, 0]
        if k == EMPTY:
            break
        home = _home(k, shift)
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            htab[i, 0] = htab[j, 0]
            htab[i, 1] = htab[j, 1]
            i = j
    htab[i, 0] = EMPTY


@nb.njit(cache=True, inline="always")
def _side_index(side):
    return 0 if side > 0 else 1


@nb.njit(cache=True, inline="always")
def _find_level(keys, lids, nlev, b, s, key):
    """Position of ``key`` in the side array, or -(insert position) - 1."""
    n = nlev[b, s]
    i = n - 1
    stop = n - 8  # most updates land within a few levels of the best: scan those, bisect the rest
    while i >= 0 and i >= stop:
        k = keys[b, s, i]
        if k == key:
            return i
        if k < key:
            return -(i + 1) - 1
        i -= 1
    lo, hi = 0, i + 1  # keys[lo:hi] ascending, all of keys[hi:] > key
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[b, s, mid] < key:
            lo = mid + 1
        else:
            hi = mid
    if lo <= i and keys[b, s, lo] == key:
        return lo
    return -lo - 1


@nb.njit(cache=True, inline="always")
def _get_or_make_level(lvls, keys, lids, nlev, l_free, meta, b, s, px, sign):
    key = px * sign
    pos = _find_level(keys, lids, nlev, b, s, key)
    if pos >= 0:
        return lids[b, s, pos]
    return _insert_level(lvls, keys, lids, nlev, l_free, meta, b, s, px, key, -pos - 1)


@nb.njit(cache=True, inline="always")
def _insert_level(lvls, keys, lids, nlev, l_free, meta, b, s, px, key, ins):
    n = nlev[b, s]
    if n >= keys.shape[2] or meta[M_LFREE] == 0:
        return -1
    meta[M_LFREE] -= 1
    lid = l_free[meta[M_LFREE]]
    j = n
    while j > ins:
        keys[b, s, j] = keys[b, s, j - 1]
        lids[b, s, j] = lids[b, s, j - 1]
        j -= 1
    keys[b, s, ins] = key
    lids[b, s, ins] = lid
    nlev[b, s] = n + 1
    lvls[lid, L_QTY] = 0
    lvls[lid, L_CNT] = 0
    lvls[lid, L_HEAD] = EMPTY
    lvls[lid, L_TAIL] = EMPTY
    lvls[lid, L_PX] = px
    return lid


@nb.njit(cache=True, inline="always")
def _drop_level_if_empty(lvls, keys, lids, nlev, l_free, meta, b, s, lid, sign):
    if lvls[lid, L_CNT] > 0 or lvls[lid, L_QTY] > 0:
        return
    pos = _find_level(keys, lids, nlev, b, s, lvls[lid, L_PX] * sign)
    if pos < 0:
        return
    _remove_level_at(keys, lids, nlev, l_free, meta, b, s, lid, pos)


@nb.njit(cache=True, inline="always")
def _remove_level_at(keys, lids, nlev, l_free, meta, b, s, lid, pos):
    n = nlev[b, s]
    for j in range(pos, n - 1):
        keys[b, s, j] = keys[b, s, j + 1]
        lids[b, s, j] = lids[b, s, j + 1]
    nlev[b, s] = n - 1
    l_free[meta[M_LFREE]] = lid
    meta[M_LFREE] += 1


@nb.njit(cache=True, inline="always")
def _add(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, b, side, oid, px, qty):
    if qty <= 0:
        return BAD_QTY
    if side != 1 and side != -1:
        return BAD_SIDE
    if oid < 0:
        return UNKNOWN_ORDER
    if meta[M_OFREE] == 0:
        return FULL
    if _h_find(htab, meta[M_SHIFT], oid) >= 0:
        return DUPLICATE_ID
    s = _side_index(side)
    lid = _get_or_make_level(lvls, keys, lids, nlev, l_free, meta, b, s, px, side)
    if lid < 0:
        return FULL
    meta[M_OFREE] -= 1
    slot = o_free[meta[M_OFREE]]
    _h_insert(htab, meta[M_SHIFT], oid, slot)
    ords[slot, O_ID] = oid
    ords[slot, O_PX] = px
    ords[slot, O_QTY] = qty
    ords[slot, O_BOOK] = b
    ords[slot, O_SIDE] = side
    ords[slot, O_LV] = lid
    tail = lvls[lid, L_TAIL]
    ords[slot, O_PREV] = tail
    ords[slot, O_NEXT] = EMPTY
    if tail == EMPTY:
        lvls[lid, L_HEAD] = slot
    else:
        ords[tail, O_NEXT] = slot
    lvls[lid, L_TAIL] = slot
    lvls[lid, L_QTY] += qty
    lvls[lid, L_CNT] += 1
    meta[M_ORDERS] += 1
    return OK


@nb.njit(cache=True, inline="always")
def _unlink(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, slot, hpos):
    lid = ords[slot, O_LV]
    prev = ords[slot, O_PREV]
    nxt = ords[slot, O_NEXT]
    if prev == EMPTY:
        lvls[lid, L_HEAD] = nxt
    else:
        ords[prev, O_NEXT] = nxt
    if nxt == EMPTY:
        lvls[lid, L_TAIL] = prev
    else:
        ords[nxt, O_PREV] = prev
    lvls[lid, L_QTY] -= ords[slot, O_QTY]
    lvls[lid, L_CNT] -= 1
    _h_delete_at(htab, meta[M_SHIFT], hpos)
    o_free[meta[M_OFREE]] = slot
    meta[M_OFREE] += 1
    meta[M_ORDERS] -= 1
    side = ords[slot, O_SIDE]
    _drop_level_if_empty(lvls, keys, lids, nlev, l_free, meta, ords[slot, O_BOOK], _side_index(side), lid, side)


@nb.njit(cache=True, inline="always")
def _reduce(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, oid, qty, delete_all):
    """Remove ``qty`` from an order (all of it when ``delete_all``); deletes it at zero."""
    hpos = _h_find(htab, meta[M_SHIFT], oid)
    if hpos < 0:
        return UNKNOWN_ORDER, -1
    slot = htab[hpos, 1]
    have = ords[slot, O_QTY]
    status = OK
    if delete_all:
        qty = have
    elif qty <= 0:
        return BAD_QTY, slot
    elif qty > have:
        status = OVER_REDUCE
        qty = have
    if qty >= have:
        _unlink(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, slot, hpos)
    else:
        ords[slot, O_QTY] = have - qty
        lvls[ords[slot, O_LV], L_QTY] -= qty
    return status, slot


@nb.njit(cache=True, inline="always")
def _level_delta(lvls, keys, lids, nlev, l_free, meta, b, side, px, delta):
    """Add ``delta`` (may be negative) to the anonymous quantity of a price level."""
    if side != 1 and side != -1:
        return BAD_SIDE
    s = _side_index(side)
    pos = _find_level(keys, lids, nlev, b, s, px * side)
    if pos < 0:
        if delta <= 0:
            return UNKNOWN_ORDER
        lid = _get_or_make_level(lvls, keys, lids, nlev, l_free, meta, b, s, px, side)
        if lid < 0:
            return FULL
    else:
        lid = lids[b, s, pos]
    status = OK
    q = lvls[lid, L_QTY] + delta
    if q < 0:
        q = 0
        status = OVER_REDUCE
    lvls[lid, L_QTY] = q
    _drop_level_if_empty(lvls, keys, lids, nlev, l_free, meta, b, s, lid, side)
    return status


@nb.njit(cache=True, inline="always")
def _set_level(lvls, keys, lids, nlev, l_free, meta, b, side, px, qty):
    """L2 update in one search: set the total at a price, 0 removes the level (if no orders rest there)."""
    s = _side_index(side)
    key = px * side
    pos = _find_level(keys, lids, nlev, b, s, key)
    if pos >= 0:
        lid = lids[b, s, pos]
        lvls[lid, L_QTY] = qty
        if qty == 0 and lvls[lid, L_CNT] == 0:
            _remove_level_at(keys, lids, nlev, l_free, meta, b, s, lid, pos)
        return OK
    if qty == 0:
        return OK
    lid = _insert_level(lvls, keys, lids, nlev, l_free, meta, b, s, px, key, -pos - 1)
    if lid < 0:
        return FULL
    lvls[lid, L_QTY] = qty
    return OK


@nb.njit(**_KERNEL)
def _clear_book(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, b):
    for s in range(2):
        for i in range(nlev[b, s]):
            lid = lids[b, s, i]
            slot = lvls[lid, L_HEAD]
            while slot != EMPTY:
                nxt = ords[slot, O_NEXT]
                hpos = _h_find(htab, meta[M_SHIFT], ords[slot, O_ID])
                if hpos >= 0:
                    _h_delete_at(htab, meta[M_SHIFT], hpos)
                o_free[meta[M_OFREE]] = slot
                meta[M_OFREE] += 1
                meta[M_ORDERS] -= 1
                slot = nxt
            l_free[meta[M_LFREE]] = lid
            meta[M_LFREE] += 1
        nlev[b, s] = 0


@nb.njit(**_KERNEL)
def apply_events(ev, status, ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, bstats):
    """Apply an event array in order; ``status[i]`` gets the outcome code of event i. Returns #bad."""
    nbooks = nlev.shape[0]
    bad = 0
    for i in range(ev.shape[0]):
        e = ev[i]
        kind = e.kind
        b = np.int64(e.book)
        st = OK
        if kind == ADD:
            if b >= nbooks:
                st = BAD_BOOK
            else:
                st = _add(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, b, np.int64(e.side),
                          e.order_id, e.price, e.qty)
        elif kind == REDUCE or kind == DELETE or kind == EXECUTE:  # noqa: SIM109 (numba: plain compares)
            if kind != DELETE and e.qty <= 0:
                st = BAD_QTY
            else:
                st, slot = _reduce(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, e.order_id, e.qty,
                                   kind == DELETE)
                if st == UNKNOWN_ORDER and (e.flags & FLAG_PRICE_FALLBACK) and b < nbooks and e.qty > 0:
                    st = _level_delta(lvls, keys, lids, nlev, l_free, meta, b, np.int64(e.side), e.price, -e.qty)
                    slot = -1
                if kind == EXECUTE and (st == OK or st == OVER_REDUCE):  # noqa: SIM109
                    bb = ords[slot, O_BOOK] if slot >= 0 else b
                    if bb < nbooks:
                        bstats[bb, S_EXEC_QTY] += e.qty
                        bstats[bb, S_EXEC_N] += 1
        elif kind == REPLACE:
            hpos = _h_find(htab, meta[M_SHIFT], e.order_id)
            if hpos < 0:
                st = UNKNOWN_ORDER
            elif e.new_qty <= 0:
                st = BAD_QTY
            else:
                slot = htab[hpos, 1]
                if (e.new_order_id == e.order_id and e.new_price == ords[slot, O_PX]
                        and e.new_qty <= ords[slot, O_QTY]):
                    # same id, same price, not larger: keeps its place in the queue
                    lvls[ords[slot, O_LV], L_QTY] -= ords[slot, O_QTY] - e.new_qty
                    ords[slot, O_QTY] = e.new_qty
                else:
                    ob = ords[slot, O_BOOK]
                    oside = ords[slot, O_SIDE]
                    _unlink(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, slot, hpos)
                    st = _add(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, ob, oside, e.new_order_id,
                              e.new_price, e.new_qty)
        elif kind == LEVEL:
            if b >= nbooks:
                st = BAD_BOOK
            elif e.qty < 0:
                st = BAD_QTY
            elif e.side != 1 and e.side != -1:
                st = BAD_SIDE
            else:
                st = _set_level(lvls, keys, lids, nlev, l_free, meta, b, np.int64(e.side), e.price, e.qty)
        elif kind == CLEAR:
            if b >= nbooks:
                st = BAD_BOOK
            else:
                _clear_book(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, b)
        else:
            st = UNKNOWN_KIND
        if b < nbooks:
            bstats[b, S_MSGS] += 1
            bstats[b, S_TS] = e.ts
        status[i] = st
        if st != OK:
            bad += 1
    return bad


@nb.njit(**_KERNEL)
def _depth_all(lvls, keys, lids, nlev, n, out):
    """out[b, s, i, 0/1] = price/qty of level i (best first) of side s (0 bid, 1 ask); empty: qty 0."""
    for b in range(nlev.shape[0]):
        for s in range(2):
            sign = 1 if s == 0 else -1
            m = nlev[b, s]
            for i in range(n):
                if i < m:
                    lid = lids[b, s, m - 1 - i]
                    out[b, s, i, 0] = keys[b, s, m - 1 - i] * sign
                    out[b, s, i, 1] = lvls[lid, L_QTY]
                else:
                    out[b, s, i, 0] = 0
                    out[b, s, i, 1] = 0


# L2 snapshot rows in LOBSTER's layout (per level: ask price, ask size, bid price, bid size). They live
# here, not in lobster.py, because numba's on-disk cache of a kernel does not notice changes to helpers
# compiled into it from another module.
@nb.njit(**_KERNEL)
def _set_from_row(row, n_levels, lvls, keys, lids, nlev, l_free, meta):
    for i in range(n_levels):
        asz = row[4 * i + 1]
        bsz = row[4 * i + 3]
        if asz > 0:
            _level_delta(lvls, keys, lids, nlev, l_free, meta, 0, -1, row[4 * i], asz)
        if bsz > 0:
            _level_delta(lvls, keys, lids, nlev, l_free, meta, 0, 1, row[4 * i + 2], bsz)


@nb.njit(**_KERNEL)
def _check_kernel(ev, rows, n_levels, reset, status, snap, out, ords, lvls, keys, lids, nlev, htab, o_free, l_free,
                  meta, bstats):
    """For k >= 1: (if reset) book := row k-1; apply message k; snap[k] = our top levels (``out``: scratch
    int64 [1, 2, n_levels, 2])."""
    _set_from_row(rows[0], n_levels, lvls, keys, lids, nlev, l_free, meta)
    for k in range(1, ev.shape[0]):
        if reset:
            _clear_book(ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta, 0)
            _set_from_row(rows[k - 1], n_levels, lvls, keys, lids, nlev, l_free, meta)
        if ev[k].kind != 0:
            apply_events(ev[k : k + 1], status[k : k + 1], ords, lvls, keys, lids, nlev, htab, o_free, l_free, meta,
                         bstats)
        _depth_all(lvls, keys, lids, nlev, n_levels, out)
        for s in range(2):
            for i in range(n_levels):
                snap[k, s, i, 0] = out[0, s, i, 0]
                snap[k, s, i, 1] = out[0, s, i, 1]


# ----------------------------------------------------------------------------------------------- Python API
@dataclass
class ApplyResult:
    """Outcome of a batch: events applied, bad events per reason and the first bad positions."""

    applied: int
    bad: int
    by_reason: dict[str, int] = field(default_factory=dict)
    first_bad: list[tuple[int, str]] = field(default_factory=list)  # (index in the batch, reason)

    def as_dict(self) -> dict[str, object]:
        return {"applied": self.applied, "bad": self.bad, "by_reason": self.by_reason, "first_bad": self.first_bad}


def summarize_status(status: np.ndarray, offset: int = 0, keep: int = 10) -> ApplyResult:
    """Turn a per-event status array into an :class:`ApplyResult` (positions shifted by ``offset``)."""
    bad_idx = np.flatnonzero(status)
    counts = np.bincount(status, minlength=len(STATUS_NAMES)) if status.size else np.zeros(1, np.int64)
    by_reason = {STATUS_NAMES[int(k)]: int(c) for k, c in enumerate(counts) if k != OK and c}
    first = [(int(i) + offset, STATUS_NAMES[int(status[i])]) for i in bad_idx[:keep]]
    return ApplyResult(int(status.size), int(bad_idx.size), by_reason, first)


def _count_events(res: ApplyResult) -> None:
    """Book events applied and refused, on the process metrics registry."""
    counter("greekfire_market_book_events", "book events applied (bad ones included)").inc(res.applied)
    if res.bad:
        bad = counter("greekfire_market_bad_book_events", "book events refused, by reason", ["reason"])
        for reason, n in res.by_reason.items():
            bad.labels(reason).inc(n)


class OrderBooks:
    """``n_books`` L3 books sharing preallocated pools.

    ``max_orders``: live orders across all books; ``max_levels``: price levels per book side (per book);
    the shared level pool holds ``min(n_books * 2 * max_levels, max_orders + n_books * 64 + 1024)`` levels
    unless ``level_pool`` says otherwise (pass it for L2-only books with a small ``max_orders``). Prices in ticks, quantities in
    units, sides +1 (bid) / -1 (ask).

    Example::

        books = OrderBooks(n_books=2, max_orders=1_000)
        books.add(0, +1, order_id=1, price=10_000, qty=100)
        books.best_bid(0)  # (10000, 100)
    """

    def __init__(self, n_books: int = 1, max_orders: int = 1 << 20, max_levels: int = 512,
                 level_pool: int | None = None) -> None:
        for name, v in (("n_books", n_books), ("max_orders", max_orders), ("max_levels", max_levels)):
            if int(v) <= 0:
                raise DataError(name, v, "must be > 0")
        self.n_books = int(n_books)
        self.max_orders = int(max_orders)
        self.max_levels = int(max_levels)
        n_lv = int(level_pool or min(self.n_books * 2 * self.max_levels, self.max_orders + self.n_books * 64 + 1024))
        self.ords = np.zeros((self.max_orders, 8), np.int64)
        self.lvls = np.zeros((n_lv, 5), np.int64)
        self.keys = np.zeros((self.n_books, 2, self.max_levels), np.int64)
        self.lids = np.zeros((self.n_books, 2, self.max_levels), np.int64)
        self.nlev = np.zeros((self.n_books, 2), np.int64)
        hsize = 1
        while hsize < 2 * self.max_orders:
            hsize <<= 1
        hsize = max(hsize, 4)
        self.htab = np.full((hsize, 2), EMPTY, np.int64)
        self.o_free = np.arange(self.max_orders, dtype=np.int64)[::-1].copy()
        self.l_free = np.arange(n_lv, dtype=np.int64)[::-1].copy()
        self.meta = np.zeros(4, np.int64)
        self.meta[M_OFREE] = self.max_orders
        self.meta[M_LFREE] = n_lv
        self.meta[M_SHIFT] = hsize.bit_length() - 1  # log2 of the table size
        self.bstats = np.zeros((self.n_books, 4), np.int64)
        for arr in (self.ords, self.lvls):
            arr.fill(0)  # touch the pool pages now, not in the middle of the first batch
        #: external id of each book (e.g. the ITCH stock locate), set by whoever numbers the books
        self.locates = np.arange(self.n_books, dtype=np.int64)
        self._one = make_events(1)
        self._one_status = np.zeros(1, np.int8)

    # ------------------------------------------------------------------ updates
    def _state(self) -> tuple[np.ndarray, ...]:
        return (self.ords, self.lvls, self.keys, self.lids, self.nlev, self.htab, self.o_free, self.l_free,
                self.meta, self.bstats)

    def apply(self, events: np.ndarray, status: np.ndarray | None = None) -> ApplyResult:
        """Apply an event array (:data:`EVENT_DTYPE`) in order; bad events are counted, never raised."""
        if events.dtype != EVENT_DTYPE:
            raise DataError("events.dtype", str(events.dtype), "must be greekfire.market.book.EVENT_DTYPE")
        if status is None:
            status = np.zeros(events.shape[0], np.int8)
        apply_events(events, status, *self._state())
        res = summarize_status(status)
        _count_events(res)
        return res

    def apply_fast(self, events: np.ndarray, status: np.ndarray) -> int:
        """Apply without summarising (hot path); returns the number of bad events."""
        return int(apply_events(events, status, *self._state()))

    def _single(self, kind: int, book: int, side: int, order_id: int, price: int, qty: int,
                new_order_id: int = 0, new_price: int = 0, new_qty: int = 0, flags: int = 0) -> str:
        e = self._one[0]
        e["kind"], e["book"], e["side"], e["order_id"], e["price"], e["qty"] = kind, book, side, order_id, price, qty
        e["new_order_id"], e["new_price"], e["new_qty"], e["flags"] = new_order_id, new_price, new_qty, flags
        apply_events(self._one, self._one_status, *self._state())
        return STATUS_NAMES[int(self._one_status[0])]

    def add(self, book: int, side: int, order_id: int, price: int, qty: int) -> str:
        """Add a resting order (price ticks, qty units); returns "ok" or the reason it was refused."""
        return self._single(ADD, book, side, order_id, price, qty)

    def reduce(self, order_id: int, qty: int) -> str:
        """Partial cancel: remove ``qty`` units (the order is deleted at zero)."""
        return self._single(REDUCE, 0, 0, order_id, 0, qty)

    def delete(self, order_id: int) -> str:
        """Delete an order."""
        return self._single(DELETE, 0, 0, order_id, 0, 0)

    def execute(self, order_id: int, qty: int) -> str:
        """The order traded ``qty`` units (counted in the book's traded volume)."""
        return self._single(EXECUTE, 0, 0, order_id, 0, qty)

    def replace(self, order_id: int, new_order_id: int, new_price: int, new_qty: int) -> str:
        """Replace an order (loses priority unless the id and price stay and the size does not grow)."""
        return self._single(REPLACE, 0, 0, order_id, 0, 0, new_order_id, new_price, new_qty)

    def set_level(self, book: int, side: int, price: int, qty: int) -> str:
        """L2 update: set the total quantity at a price (0 removes the level)."""
        return self._single(LEVEL, book, side, 0, price, qty)

    def clear(self, book: int) -> None:
        """Remove every order and level of one book."""
        self._single(CLEAR, book, 0, 0, 0, 0)

    # ------------------------------------------------------------------ queries
    def _check_book(self, book: int) -> None:
        if not 0 <= book < self.n_books:
            raise DataError("book", book, f"must be in 0..{self.n_books - 1}")

    def _best(self, book: int, s: int) -> tuple[int, int] | None:
        self._check_book(book)
        n = int(self.nlev[book, s])
        if n == 0:
            return None
        sign = 1 if s == 0 else -1
        return int(self.keys[book, s, n - 1] * sign), int(self.lvls[self.lids[book, s, n - 1], L_QTY])

    def best_bid(self, book: int = 0) -> tuple[int, int] | None:
        """(price ticks, total qty) of the best bid, or None."""
        return self._best(book, 0)

    def best_ask(self, book: int = 0) -> tuple[int, int] | None:
        """(price ticks, total qty) of the best ask, or None."""
        return self._best(book, 1)

    def depth(self, book: int = 0, levels: int = 10) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top ``levels`` per side, best first: (bids, asks) of (price ticks, qty)."""
        self._check_book(book)
        out = []
        for s, sign in ((0, 1), (1, -1)):
            n = int(self.nlev[book, s])
            side = []
            for i in range(n - 1, max(n - 1 - levels, -1), -1):
                side.append((int(self.keys[book, s, i] * sign), int(self.lvls[self.lids[book, s, i], L_QTY])))
            out.append(side)
        return out[0], out[1]

    def depth_array(self, levels: int) -> np.ndarray:
        """All books at once: int64 array [n_books, 2 (bid, ask), levels, 2 (price, qty)]; empty qty 0."""
        out = np.zeros((self.n_books, 2, levels, 2), np.int64)
        _depth_all(self.lvls, self.keys, self.lids, self.nlev, levels, out)
        return out

    def vwap_to_fill(self, book: int, side: int, qty: int) -> tuple[float, int]:
        """Average price (ticks, float) a market order of ``qty`` on ``side`` (+1 buy) would pay, and the
        quantity the book can fill (< qty when the book is too thin)."""
        self._check_book(book)
        if qty <= 0:
            raise DataError("qty", qty, "must be > 0")
        s = 1 if side > 0 else 0  # a buy takes asks
        sign = 1 if s == 0 else -1
        n = int(self.nlev[book, s])
        got, cost = 0, 0
        for i in range(n - 1, -1, -1):
            px = int(self.keys[book, s, i] * sign)
            take = min(qty - got, int(self.lvls[self.lids[book, s, i], L_QTY]))
            got += take
            cost += take * px
            if got >= qty:
                break
        return (cost / got if got else float("nan")), got

    def _slot(self, order_id: int) -> int:
        pos = int(_h_find(self.htab, self.meta[M_SHIFT], order_id))
        return -1 if pos < 0 else int(self.htab[pos, 1])

    def order(self, order_id: int) -> dict[str, int] | None:
        """A live order as a mapping (book, side, price, qty), or None."""
        slot = self._slot(order_id)
        if slot < 0:
            return None
        r = self.ords[slot]
        return {"order_id": int(r[O_ID]), "book": int(r[O_BOOK]), "side": int(r[O_SIDE]), "price": int(r[O_PX]),
                "qty": int(r[O_QTY])}

    def queue_position(self, order_id: int) -> tuple[int, int] | None:
        """(orders ahead, quantity ahead) of a live order at its price level, or None if unknown."""
        slot = self._slot(order_id)
        if slot < 0:
            return None
        lid = self.ords[slot, O_LV]
        cur, n, q = int(self.lvls[lid, L_HEAD]), 0, 0
        while cur != slot and cur != EMPTY:
            n += 1
            q += int(self.ords[cur, O_QTY])
            cur = int(self.ords[cur, O_NEXT])
        return n, q

    def level_orders(self, book: int, side: int, price: int) -> list[tuple[int, int]]:
        """The queue at one price, front first: (order id, qty)."""
        self._check_book(book)
        s = 0 if side > 0 else 1
        pos = int(_find_level(self.keys, self.lids, self.nlev, book, s, price * (1 if s == 0 else -1)))
        if pos < 0:
            return []
        cur = int(self.lvls[self.lids[book, s, pos], L_HEAD])
        out = []
        while cur != EMPTY:
            out.append((int(self.ords[cur, O_ID]), int(self.ords[cur, O_QTY])))
            cur = int(self.ords[cur, O_NEXT])
        return out

    def book_of(self, locate: int) -> int:
        """Book index of an external id (see :attr:`locates`); DataError if no book has it."""
        hit = np.flatnonzero(self.locates == locate)
        if hit.size == 0:
            raise DataError("locate", locate, "no book has this id")
        return int(hit[0])

    @property
    def n_orders(self) -> int:
        """Live orders across all books."""
        return int(self.meta[M_ORDERS])

    def stats(self, book: int = 0) -> dict[str, int]:
        """Messages applied, traded quantity and trade count, last timestamp (ns) of one book."""
        self._check_book(book)
        r = self.bstats[book]
        return {"messages": int(r[S_MSGS]), "traded_qty": int(r[S_EXEC_QTY]), "trades": int(r[S_EXEC_N]),
                "last_ts": int(r[S_TS])}

    def check(self, book: int = 0, l2_only: bool = False) -> list[str]:
        """Invariants of one book; returns the problems found (empty when sound).

        Levels sorted strictly, best bid < best ask is NOT required (a feed book may lock or cross),
        quantities > 0, and every level's total equals the sum of its orders (L2 = sum of L3) -- unless
        ``l2_only`` (a book fed by LEVEL events holds quantities without orders).
        """
        problems = []
        for s, sign in ((0, 1), (1, -1)):
            n = int(self.nlev[book, s])
            ks = self.keys[book, s, :n]
            if n > 1 and not np.all(np.diff(ks) > 0):
                problems.append(f"side {s}: level keys not strictly sorted")
            for i in range(n):
                lid = int(self.lids[book, s, i])
                px = int(ks[i] * sign)
                total = int(self.lvls[lid, L_QTY])
                orders = self.level_orders(book, sign, px)
                if total <= 0:
                    problems.append(f"side {s} price {px}: level quantity {total} <= 0")
                if any(q <= 0 for _, q in orders):
                    problems.append(f"side {s} price {px}: an order has quantity <= 0")
                if not l2_only and sum(q for _, q in orders) != total:
                    problems.append(f"side {s} price {px}: L2 {total} != sum of L3 {sum(q for _, q in orders)}")
                if len(orders) != int(self.lvls[lid, L_CNT]):
                    problems.append(f"side {s} price {px}: order count mismatch")
        return problems


class OrderBook(OrderBooks):
    """One L3 book (book index 0 of :class:`OrderBooks`)."""

    def __init__(self, max_orders: int = 1 << 20, max_levels: int = 4096) -> None:
        super().__init__(1, max_orders, max_levels)
