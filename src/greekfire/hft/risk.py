"""Pre-trade risk on the HFT fast path: vectorised checks over a batch of order records, and circuit breakers.

:class:`FastRisk` checks a batch of :data:`~greekfire.hft.orders.ORDER_DTYPE` rows in one numba kernel, in
batch order, and returns one reason code per row (0: pass). Codes are the pool's one-byte codes of the
trading core's :class:`~greekfire.trading.denials.Reason` (:func:`~greekfire.hft.orders.reason_of` names
them), and the checks follow the trading core's pre-trade risk (:class:`~greekfire.trading.risk.RiskEngine`)
and its limits (``trading.risk``: ``max_order_qty``, ``max_notional``, ``price_band_pct``,
``price_band_ticks``, ``max_position``, ``max_orders_per_s``), cheapest first, first failure wins:

===================== ==========================================================================================
KILL_SWITCH           the kill switch handed to FastRisk is tripped
HALTED                ``halt()`` was called, a breaker is tripped, or the instrument is halted / LULD-paused
UNKNOWN_INSTRUMENT    the instrument number is outside the arrays
BAD_QTY               quantity <= 0, or a side that is not +1 / -1
MAX_QTY               quantity above ``max_order_qty``
ORDER_RATE            more than ``max_orders_per_s`` (token bucket; every order that gets this far takes one)
BAD_TICK              a negative limit (0 is a market order, priced at the reference)
NO_REFERENCE_PRICE    a market order on an instrument without a reference price
PRICE_BAND            the limit is further from the reference than max(``price_band_pct`` x ref,
                      ``price_band_ticks``), or outside the instrument's LULD band
MAX_NOTIONAL          quantity x price x tick size x multiplier above ``max_notional`` (currency)
POSITION_LIMIT        position + pending orders on that side + this order beyond ``max_position``
===================== ==========================================================================================

An order that passes reserves its quantity as pending on its side; :meth:`FastRisk.on_fill` moves it into the
position, :meth:`FastRisk.release` gives it back (canceled, rejected, denied downstream).

Circuit breakers, each a state the kernel reads in O(1): :class:`LuldBands` (limit up / limit down bands
around the mean trade price of a rolling five-minute window, and a pause of ``pause_s`` seconds for an
instrument whose trade breaches them), :class:`ErrorRateBreaker` (venue rejects per second above a limit
halt trading for a cooldown) and :class:`LossBreaker` (realised + unrealised loss beyond a limit halts until
reset).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numba as nb
import numpy as np

from greekfire.core.errors import ConfigError
from greekfire.core.metrics import counter
from greekfire.core.settings import RiskSettings
from greekfire.hft.orders import OrderPool, reason_code, reason_of
from greekfire.trading.denials import Reason
from greekfire.trading.orders import OrderStatus

if TYPE_CHECKING:
    from greekfire.hft.ouch_gateway import OuchEvent

__all__ = ["ErrorRateBreaker", "FastLimits", "FastRisk", "LossBreaker", "LuldBands"]

DENIALS = counter("greekfire_hft_risk_denials", "orders denied by the HFT fast-path risk checks", ["reason"])
TRIPS = counter("greekfire_hft_breaker_trips", "circuit breaker trips", ["breaker"])

KILL_SWITCH = reason_code(Reason.KILL_SWITCH)
HALTED = reason_code(Reason.HALTED)
UNKNOWN_INSTRUMENT = reason_code(Reason.UNKNOWN_INSTRUMENT)
BAD_QTY = reason_code(Reason.BAD_QTY)
MAX_QTY = reason_code(Reason.MAX_QTY)
ORDER_RATE = reason_code(Reason.ORDER_RATE)
BAD_TICK = reason_code(Reason.BAD_TICK)
NO_REFERENCE_PRICE = reason_code(Reason.NO_REFERENCE_PRICE)
PRICE_BAND = reason_code(Reason.PRICE_BAND)
MAX_NOTIONAL = reason_code(Reason.MAX_NOTIONAL)
POSITION_LIMIT = reason_code(Reason.POSITION_LIMIT)

NEVER = np.iinfo(np.int64).max


@dataclass
class FastLimits:
    """The fast path's limits (the trading core's names and meanings). ``tick_size`` (currency per tick) and
    ``multiplier`` are the defaults of every instrument (:meth:`FastRisk.set_instrument` changes one)."""

    max_order_qty: int = 1000
    max_notional: float = 1_000_000.0
    price_band_pct: float = 0.10
    price_band_ticks: int = 20
    max_position: int = 500
    max_orders_per_s: int = 5000
    tick_size: float = 0.01
    multiplier: float = 1.0

    @classmethod
    def from_settings(cls, risk: RiskSettings, tick_size: float = 0.01, multiplier: float = 1.0) -> FastLimits:
        """The same limits as the trading core's ``trading.risk`` settings."""
        return cls(risk.max_order_qty, risk.max_notional, risk.price_band_pct, risk.price_band_ticks,
                   risk.max_position, risk.max_orders_per_s, tick_size, multiplier)


class _Tripped(Protocol):
    tripped: bool


# ------------------------------------------------------------------------------------------------ kernel
# columns of FastRisk's int64 state (one row per instrument) and float parameters
REF, POS, PBUY, PSELL, MAXPOS, HALT = range(6)
P_MAX_QTY, P_MAX_NOTIONAL, P_BAND_PCT, P_BAND_TICKS, P_CAP, P_TOKENS, P_LAST_NS = range(7)


@nb.njit(cache=True, nogil=True)
def _check(
    orders: np.ndarray, out: np.ndarray, global_code: int, now_ns: int, st: np.ndarray, fs: np.ndarray,
    luld: np.ndarray, par: np.ndarray,
) -> int:
    """Codes into ``out`` for the ORDER_DTYPE rows of ``orders``; returns how many were denied. ``st``:
    int64 (n, 6) state, ``fs``: float (n, 2) tick size and multiplier, ``luld``: int64 (n, 3) lower, upper,
    pause end; ``par``: the limits and the token bucket (tokens, last refill ns)."""
    n_inst = st.shape[0]
    max_qty, max_notional, band_pct, band_ticks, cap = par[0], par[1], par[2], par[3], par[4]
    tokens = par[P_TOKENS]
    if now_ns > par[P_LAST_NS]:  # a clock that went back (or another clock) refills nothing
        tokens += (now_ns - par[P_LAST_NS]) * 1e-9 * cap
        if tokens > cap:
            tokens = cap
        par[P_LAST_NS] = now_ns
    denied = 0
    for k in range(orders.shape[0]):
        if global_code != 0:
            out[k] = global_code
            denied += 1
            continue
        o = orders[k]
        i = o.instrument
        q = o.qty
        s = o.side
        code = 0
        if i < 0 or i >= n_inst:
            code = UNKNOWN_INSTRUMENT
        elif q <= 0 or (s != 1 and s != -1):
            code = BAD_QTY
        elif q > max_qty:
            code = MAX_QTY
        elif st[i, HALT] > now_ns or luld[i, 2] > now_ns:
            code = HALTED
        elif tokens < 1.0:
            code = ORDER_RATE
        else:
            tokens -= 1.0
            p = o.price_ticks
            r = st[i, REF]
            px = p
            if p < 0:
                code = BAD_TICK
            elif p == 0:
                if r <= 0:
                    code = NO_REFERENCE_PRICE
                px = r
            else:
                if r > 0:
                    band = band_pct * r
                    if band < band_ticks:
                        band = band_ticks
                    if abs(p - r) > band + 1e-9:
                        code = PRICE_BAND
                if (luld[i, 0] > 0 and p < luld[i, 0]) or (luld[i, 1] > 0 and p > luld[i, 1]):
                    code = PRICE_BAND
            if code == 0 and q * px * fs[i, 0] * fs[i, 1] > max_notional:
                code = MAX_NOTIONAL
            if code == 0:
                if s > 0:
                    if st[i, POS] + st[i, PBUY] + q > st[i, MAXPOS]:
                        code = POSITION_LIMIT
                    else:
                        st[i, PBUY] += q
                elif st[i, POS] - st[i, PSELL] - q < -st[i, MAXPOS]:
                    code = POSITION_LIMIT
                else:
                    st[i, PSELL] += q
        out[k] = code
        if code != 0:
            denied += 1
    par[P_TOKENS] = tokens
    return denied


class FastRisk:
    """Vectorised pre-trade checks for ``n_instruments`` instruments numbered 0..n-1 (see the module docstring).

    ``limits``: :class:`FastLimits` or the trading core's ``RiskSettings``. ``kill``: anything with a
    ``tripped`` attribute (a :class:`~greekfire.hft.killswitch.KillSwitch`). ``luld`` and ``breakers``: the
    circuit breakers read on every batch. Prices in ticks, quantities in units, times in ns
    (``time.monotonic_ns`` unless the caller passes its own clock consistently).
    """

    def __init__(
        self,
        limits: FastLimits | RiskSettings | None = None,
        n_instruments: int = 1024,
        *,
        kill: _Tripped | None = None,
        luld: LuldBands | None = None,
        breakers: tuple[ErrorRateBreaker | LossBreaker, ...] = (),
    ) -> None:
        lim = limits if isinstance(limits, FastLimits) else (
            FastLimits() if limits is None else FastLimits.from_settings(limits))
        if n_instruments <= 0:
            raise ConfigError("hft.instruments", n_instruments, "at least 1")
        if luld is not None and luld.n != n_instruments:
            raise ConfigError("luld", luld.n, f"{n_instruments} instruments, as the risk arrays")
        self.limits = lim
        self.n = n_instruments
        self.kill = kill
        self.luld = luld
        self.breakers = breakers
        self.halted = False
        self._st = np.zeros((n_instruments, 6), np.int64)
        self._st[:, MAXPOS] = lim.max_position
        self._fs = np.empty((n_instruments, 2), np.float64)
        self._fs[:, 0], self._fs[:, 1] = lim.tick_size, lim.multiplier
        # column views (writes go to the state the kernel reads)
        self.ref = self._st[:, REF]  # reference price, ticks (0: none)
        self.position = self._st[:, POS]
        self.pending_buy = self._st[:, PBUY]
        self.pending_sell = self._st[:, PSELL]
        self.max_position = self._st[:, MAXPOS]
        self.halted_until = self._st[:, HALT]  # per-instrument halt end, ns
        self.tick = self._fs[:, 0]
        self.mult = self._fs[:, 1]
        self._luld = luld.state if luld is not None else np.zeros((n_instruments, 3), np.int64)
        self._par = np.zeros(7, np.float64)
        self._par[P_TOKENS] = lim.max_orders_per_s  # a full bucket, refilled from the first check on
        self.set_limits()
        self.cash = np.zeros(n_instruments, np.float64)  # currency, from fills (for the loss breaker)
        self.denials = np.zeros(256, np.int64)  # count per reason code
        self.checked = 0

    def set_limits(self, **changes: Any) -> None:
        """Change limits (FastLimits field names) while running; ConfigError for an unknown name."""
        for k, v in changes.items():
            if not hasattr(self.limits, k):
                raise ConfigError(f"hft.risk.{k}", v, "not a fast-path limit")
            setattr(self.limits, k, v)
        lim = self.limits
        self._par[:P_TOKENS] = (lim.max_order_qty, lim.max_notional, lim.price_band_pct, lim.price_band_ticks,
                                lim.max_orders_per_s)
        if "max_position" in changes:
            self.max_position[:] = lim.max_position

    def set_instrument(self, i: int, *, ref_ticks: int | None = None, max_position: int | None = None,
                       tick_size: float | None = None, multiplier: float | None = None) -> None:
        """Per-instrument settings: reference price (ticks), position limit (units), tick size, multiplier."""
        if ref_ticks is not None:
            self.ref[i] = ref_ticks
        if max_position is not None:
            self.max_position[i] = max_position
        if tick_size is not None:
            self.tick[i] = tick_size
        if multiplier is not None:
            self.mult[i] = multiplier

    def halt(self) -> None:
        """Deny everything (HALTED) until :meth:`resume`."""
        self.halted = True

    def resume(self) -> None:
        """Lift :meth:`halt` (breakers and the kill switch still apply)."""
        self.halted = False

    def global_code(self, now_ns: int) -> int:
        """The code every order gets now regardless of its terms (0: none): KILL_SWITCH or HALTED. O(1)."""
        if self.kill is not None and self.kill.tripped:
            return KILL_SWITCH
        if self.halted:
            return HALTED
        for b in self.breakers:
            if b.until_ns > now_ns:
                return HALTED
        return 0

    def check(self, orders: np.ndarray, now_ns: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Reason codes (uint8, 0 = pass) for a batch of ORDER_DTYPE rows, in order; passing orders are
        reserved as pending. ``out``: a preallocated uint8 array to write into (no allocation then)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        n = len(orders)
        codes = np.empty(n, np.uint8) if out is None else out[:n]
        denied = _check(orders, codes, self.global_code(now), now, self._st, self._fs, self._luld, self._par)
        self.checked += n
        if denied:
            self._count(codes)
        return codes

    def screen(self, pool: OrderPool, slots: np.ndarray | list[int], now_ns: int | None = None) -> np.ndarray:
        """Check the pool's orders in ``slots`` (INITIALIZED): a denied one moves to DENIED with its code, a
        passing one gets its risk stamp (``time.perf_counter_ns``). Returns the codes. Gathers the rows into a
        copy: for the allocation-free path call :meth:`check` on rows the caller keeps."""
        idx = np.asarray(slots, dtype=np.int64)
        codes = self.check(pool.orders[idx], now_ns)
        t = time.perf_counter_ns()
        for s, c in zip(idx.tolist(), codes.tolist(), strict=True):
            if c:
                pool.deny(s, c, t)
            else:
                pool.stamp_risk(s, t)
        return codes

    def apply_events(self, events: Iterable[OuchEvent], pool: OrderPool, now_ns: int | None = None) -> None:
        """Keep positions and pending quantities in step with a gateway's events: an execution fills, a cancel
        gives back what it took off, a reject gives back the order's quantity and counts for every
        :class:`ErrorRateBreaker` (``now_ns`` default ``time.monotonic_ns()``). Replaces are not reserved
        again: check a replace that adds size as a new order."""
        o = pool.orders
        for ev in events:
            slot = ev.slot
            if slot < 0:
                continue
            inst, side = int(o["instrument"][slot]), int(o["side"][slot])
            if ev.kind == "executed":
                self.on_fill(inst, side, ev.qty, ev.price_ticks)
            elif ev.kind == "canceled":
                self.release(inst, side, ev.qty)
            elif ev.kind == "rejected" and pool.status(slot) is OrderStatus.REJECTED:
                self.release(inst, side, int(o["qty"][slot]) - int(o["filled"][slot]))
                now = time.monotonic_ns() if now_ns is None else now_ns
                for b in self.breakers:
                    if isinstance(b, ErrorRateBreaker):
                        b.record(now)

    def _count(self, codes: np.ndarray) -> None:
        for c, k in enumerate(np.bincount(codes, minlength=256).tolist()):
            if c and k:
                self.denials[c] += k
                r = reason_of(c)
                DENIALS.labels(r.value if r is not None else str(c)).inc(k)

    def on_fill(self, instrument: int, side: int, qty: int, price_ticks: int) -> None:
        """A fill of a reserved order: pending -> position, cash moves (currency)."""
        if side > 0:
            self.pending_buy[instrument] = max(0, self.pending_buy[instrument] - qty)
        else:
            self.pending_sell[instrument] = max(0, self.pending_sell[instrument] - qty)
        self.position[instrument] += side * qty
        self.cash[instrument] -= side * qty * price_ticks * self.tick[instrument] * self.mult[instrument]

    def release(self, instrument: int, side: int, qty: int) -> None:
        """Give back ``qty`` reserved by a passing order that will not fill (canceled, rejected, denied later)."""
        if side > 0:
            self.pending_buy[instrument] = max(0, self.pending_buy[instrument] - qty)
        else:
            self.pending_sell[instrument] = max(0, self.pending_sell[instrument] - qty)

    def pnl(self, marks_ticks: np.ndarray | None = None) -> float:
        """Realised + unrealised P&L in currency, positions marked at ``marks_ticks`` (default: the
        reference prices)."""
        marks = self.ref if marks_ticks is None else marks_ticks
        return float((self.cash + self.position * marks * self.tick * self.mult).sum())

    def stats(self) -> dict[str, Any]:
        """Orders checked and denials by reason name."""
        return {"checked": self.checked,
                "denials": {(reason_of(c) or Reason.HALTED).value: int(v) for c, v in enumerate(self.denials) if v}}


# ------------------------------------------------------------------------------------------------ LULD
@nb.njit(cache=True, nogil=True)
def _luld_update(
    inst: np.ndarray, price: np.ndarray, ts: np.ndarray, bsum: np.ndarray, bcnt: np.ndarray, bsec: np.ndarray,
    tot: np.ndarray, last_sec: np.ndarray, lower: np.ndarray, upper: np.ndarray, paused_until: np.ndarray,
    pct: float, pause_ns: int,
) -> int:
    w = bsum.shape[1]
    breaches = 0
    for k in range(inst.shape[0]):
        i = inst[k]
        if i < 0 or i >= bsum.shape[0]:
            continue
        sec = ts[k] // 1_000_000_000
        # expire the seconds that left the window since this instrument's last trade
        start = last_sec[i] + 1
        if sec - start >= w:
            start = sec - w + 1
        for s in range(start, sec + 1):
            b = s % w
            if bsec[i, b] != s:
                tot[i, 0] -= bsum[i, b]
                tot[i, 1] -= bcnt[i, b]
                bsum[i, b] = 0.0
                bcnt[i, b] = 0
                bsec[i, b] = s
        if sec > last_sec[i]:
            last_sec[i] = sec
        p = price[k]
        if tot[i, 1] > 0:
            refp = tot[i, 0] / tot[i, 1]
            if p < refp * (1.0 - pct) or p > refp * (1.0 + pct):
                paused_until[i] = ts[k] + pause_ns
                breaches += 1
                continue  # a trade through the band is not a reference price
        b = sec % w
        bsum[i, b] += p
        bcnt[i, b] += 1
        tot[i, 0] += p
        tot[i, 1] += 1
        refp = tot[i, 0] / tot[i, 1]
        lower[i] = int(np.ceil(refp * (1.0 - pct)))
        upper[i] = int(np.floor(refp * (1.0 + pct)))
    return breaches


class LuldBands:
    """Limit up / limit down bands per instrument: the reference is the mean trade price over the last
    ``window_s`` seconds (per-second buckets), the band ``band_pct`` either side; a trade outside the band
    pauses the instrument for ``pause_s`` seconds (its orders are HALTED; orders priced outside the band are
    PRICE_BAND). The pause ends by itself. Prices in ticks, times in ns."""

    def __init__(self, n_instruments: int, band_pct: float = 0.05, window_s: int = 300, pause_s: float = 15.0) -> None:
        if not 0 < band_pct < 1:
            raise ConfigError("luld.band_pct", band_pct, "a fraction between 0 and 1")
        self.n, self.band_pct, self.window_s = n_instruments, band_pct, int(window_s)
        self.pause_ns = int(pause_s * 1e9)
        self._bsum = np.zeros((n_instruments, self.window_s), np.float64)
        self._bcnt = np.zeros((n_instruments, self.window_s), np.int64)
        self._bsec = np.full((n_instruments, self.window_s), -1, np.int64)
        self._tot = np.zeros((n_instruments, 2), np.float64)
        self._last = np.full(n_instruments, np.iinfo(np.int64).min // 2, np.int64)
        self.state = np.zeros((n_instruments, 3), np.int64)  # lower, upper (ticks, 0: no band yet), pause end ns
        self.lower, self.upper, self.paused_until = self.state[:, 0], self.state[:, 1], self.state[:, 2]
        self.breaches = 0

    def update(self, instruments: np.ndarray, prices: np.ndarray, ts_ns: np.ndarray) -> int:
        """Feed trades (arrays of instrument, price ticks, time ns, in time order per instrument); returns how
        many breached a band (each pausing its instrument)."""
        n = _luld_update(np.asarray(instruments, np.int64), np.asarray(prices, np.float64),
                         np.asarray(ts_ns, np.int64), self._bsum, self._bcnt, self._bsec, self._tot, self._last,
                         self.lower, self.upper, self.paused_until, self.band_pct, self.pause_ns)
        if n:
            self.breaches += n
            TRIPS.labels("luld").inc(n)
        return int(n)

    def reference(self, i: int) -> float:
        """The band's reference price (ticks; 0 before any trade in the window)."""
        s, c = self._tot[i]
        return float(s / c) if c > 0 else 0.0

    def paused(self, i: int, now_ns: int) -> bool:
        """Whether instrument ``i`` is in a LULD pause at ``now_ns``. O(1)."""
        return bool(self.paused_until[i] > now_ns)


# ------------------------------------------------------------------------------------------------ breakers
class ErrorRateBreaker:
    """Trips when venue rejects (or any errors :meth:`record` is told of) exceed ``max_per_s`` in a sliding
    second; trading is HALTED for ``cooldown_s`` seconds, then resumes by itself. ``until_ns``: the end of the
    current trip (0: never tripped). Times in ns."""

    def __init__(self, max_per_s: float, cooldown_s: float = 5.0) -> None:
        if max_per_s <= 0:
            raise ConfigError("error_rate.max_per_s", max_per_s, "> 0")
        self.max_per_s, self.cooldown_ns = float(max_per_s), int(cooldown_s * 1e9)
        self.until_ns = 0
        self.trips = 0
        self._sec = 0
        self._cur = 0
        self._prev = 0

    def record(self, now_ns: int, n: int = 1) -> bool:
        """Count ``n`` errors at ``now_ns``; True when this trips the breaker."""
        sec = now_ns // 1_000_000_000
        if sec != self._sec:
            self._prev = self._cur if sec == self._sec + 1 else 0
            self._cur, self._sec = 0, sec
        self._cur += n
        frac = (now_ns % 1_000_000_000) / 1e9
        rate = self._prev * (1.0 - frac) + self._cur  # the sliding-window estimate
        if rate > self.max_per_s and self.until_ns <= now_ns:
            self.until_ns = now_ns + self.cooldown_ns
            self.trips += 1
            TRIPS.labels("error_rate").inc()
            return True
        return False

    def is_tripped(self, now_ns: int) -> bool:
        """O(1)."""
        return self.until_ns > now_ns


class LossBreaker:
    """Trips when realised + unrealised P&L falls below ``-max_loss`` (currency) and holds (HALTED) until
    :meth:`reset`."""

    def __init__(self, max_loss: float) -> None:
        if max_loss <= 0:
            raise ConfigError("loss.max_loss", max_loss, "> 0 (currency)")
        self.max_loss = float(max_loss)
        self.until_ns = 0
        self.trips = 0
        self.last_pnl = 0.0

    def update(self, realised: float, unrealised: float = 0.0) -> bool:
        """Check the P&L (currency); True when this trips the breaker."""
        self.last_pnl = realised + unrealised
        if self.last_pnl < -self.max_loss and self.until_ns != NEVER:
            self.until_ns = NEVER
            self.trips += 1
            TRIPS.labels("loss").inc()
            return True
        return False

    def update_from(self, risk: FastRisk, marks_ticks: np.ndarray | None = None) -> bool:
        """:meth:`update` with the P&L of ``risk``'s fills marked at ``marks_ticks`` (default: references)."""
        return self.update(risk.pnl(marks_ticks))

    @property
    def tripped(self) -> bool:
        return self.until_ns == NEVER

    def is_tripped(self, now_ns: int) -> bool:
        """O(1)."""
        return self.until_ns > now_ns

    def reset(self) -> None:
        """Let trading resume (after a person looked at the loss)."""
        self.until_ns = 0
