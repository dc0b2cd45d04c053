"""Tick features for thousands of instruments at once: spread, mid, microprice, depth imbalance, order-flow
imbalance, volatility, a level-depletion pattern and a trading signal.

The input is a list of book snapshots in time order, each the top ``L`` levels of one instrument's book (the
layout of :meth:`greekfire.market.book.OrderBooks.depth_array`: ``[K, 2 (bid, ask), L, 2 (price ticks, qty)]``)
and the instrument of each row. Order-flow imbalance, volatility and the pattern compare a snapshot with the
previous snapshot *of the same instrument*, so a :class:`FeatureEngine` keeps that state per instrument.

Two back ends compute the same numbers:

* ``torch``: the batch on tensors on the device :func:`greekfire.gpu.device.choose_device` gives (a GPU when
  present, CPU tensors otherwise); rows of one instrument that repeat within a batch are taken in rounds
  (the k-th snapshot of every instrument in round k), each round one set of vector operations;
* ``numba``: a compiled loop over the rows (the per-instrument loop, and the fastest for the few rows a
  low-latency tick brings).

Columns of the result (:data:`FEATURES`), per row:

* ``spread``: best ask - best bid (ticks), NaN when a side is empty; ``mid`` (ticks), NaN likewise;
* ``microprice``: (bid x Qa + ask x Qb) / (Qb + Qa) (ticks), NaN when a side is empty;
* ``imbalance``: sum_i w_i (Qb_i - Qa_i) / sum_i w_i (Qb_i + Qa_i), w_i = decay**i over ``levels`` levels, in
  [-1, 1], 0 on an empty book;
* ``ofi``: Cont-Kukanov-Stoikov order-flow imbalance at level 1 since the instrument's previous snapshot
  (shares; 0 on its first);
* ``volatility``: sqrt of the EWMA (``vol_halflife`` snapshots) of squared log-mid changes between the
  instrument's snapshots (per snapshot, not annualised); 0 until two mids are seen;
* ``pattern``: +1 when the previous best ask level is gone (the new best ask is higher or the side is empty:
  the offer was lifted or pulled), -1 when the previous best bid is gone, 0 otherwise (or both);
* ``signal``: +1 when imbalance >= ``enter`` or (pattern = +1 and imbalance > 0), -1 mirrored, 0 otherwise;
  never while the spread is wider than ``max_spread`` ticks or a side is empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np

from greekfire.core.errors import DataError

FEATURES = ("spread", "mid", "microprice", "imbalance", "ofi", "volatility", "pattern", "signal")
F_SPREAD, F_MID, F_MICRO, F_IMB, F_OFI, F_VOL, F_PATTERN, F_SIGNAL = range(8)
# per-instrument state: previous best bid px, qty, best ask px, qty, previous log mid (NaN: none), EWMA variance,
# snapshots seen
S_BP, S_BQ, S_AP, S_AQ, S_LMID, S_VAR, S_SEEN = range(7)
BACKENDS = ("numba", "torch")


@dataclass(frozen=True)
class FeatureParams:
    """Parameters of the features and the signal (see the module docstring)."""

    levels: int = 5  # depth levels in the imbalance
    decay: float = 0.5  # weight of level i: decay**i
    vol_halflife: float = 50.0  # snapshots
    enter: float = 0.6  # |imbalance| that gives a signal
    max_spread: float = 500.0  # ticks (1e-4 dollars): no signal on a wider spread

    def check(self) -> None:
        """DataError naming the first bad parameter."""
        if self.levels < 1:
            raise DataError("levels", self.levels, "an integer >= 1")
        if not 0 < self.decay <= 1:
            raise DataError("decay", self.decay, "0 < decay <= 1")
        if not self.vol_halflife > 0:
            raise DataError("vol_halflife", self.vol_halflife, "> 0 snapshots")
        if not 0 < self.enter <= 1:
            raise DataError("enter", self.enter, "0 < enter <= 1 (an imbalance)")
        if not self.max_spread > 0:
            raise DataError("max_spread", self.max_spread, "> 0 ticks")

    @property
    def alpha(self) -> float:
        """EWMA weight of the newest squared return."""
        return 1.0 - 0.5 ** (1.0 / self.vol_halflife)


def new_state(n_instruments: int) -> np.ndarray:
    """The per-instrument state of a fresh engine: float64 ``[n_instruments, 7]``."""
    st = np.zeros((n_instruments, 7), np.float64)
    st[:, S_LMID] = np.nan
    return st


# ------------------------------------------------------------------------------------------- numba loop
@nb.njit(cache=True)
def _rows(instr, depth, levels, decay, alpha, enter, max_spread, state, out):
    nan = np.nan
    for k in range(instr.shape[0]):
        b = instr[k]
        bp, bq = float(depth[k, 0, 0, 0]), float(depth[k, 0, 0, 1])
        ap, aq = float(depth[k, 1, 0, 0]), float(depth[k, 1, 0, 1])
        both = bq > 0 and aq > 0
        spread = ap - bp if both else nan
        mid = (bp + ap) / 2 if both else nan
        micro = (bp * aq + ap * bq) / (bq + aq) if both else nan
        num = 0.0
        den = 0.0
        w = 1.0
        for i in range(min(levels, depth.shape[2])):
            qb = float(depth[k, 0, i, 1])
            qa = float(depth[k, 1, i, 1])
            num += w * (qb - qa)
            den += w * (qb + qa)
            w *= decay
        imb = num / den if den > 0 else 0.0
        seen = state[b, S_SEEN] > 0
        pbp, pbq, pap, paq = state[b, S_BP], state[b, S_BQ], state[b, S_AP], state[b, S_AQ]
        ofi = 0.0
        pattern = 0.0
        if seen:
            ofi = ((bp >= pbp) * bq - (bp <= pbp) * pbq - (ap <= pap) * aq + (ap >= pap) * paq)
            ask_gone = paq > 0 and (aq <= 0 or ap > pap)
            bid_gone = pbq > 0 and (bq <= 0 or bp < pbp)
            if ask_gone and not bid_gone:
                pattern = 1.0
            elif bid_gone and not ask_gone:
                pattern = -1.0
        var = state[b, S_VAR]
        if both:
            lm = math.log(mid)
            if not math.isnan(state[b, S_LMID]):
                r = lm - state[b, S_LMID]
                var = (1.0 - alpha) * var + alpha * r * r
            state[b, S_LMID] = lm
        sig = 0.0
        if both and spread <= max_spread:
            if imb >= enter or (pattern > 0 and imb > 0):
                sig = 1.0
            elif imb <= -enter or (pattern < 0 and imb < 0):
                sig = -1.0
        state[b, S_BP], state[b, S_BQ], state[b, S_AP], state[b, S_AQ] = bp, bq, ap, aq
        state[b, S_VAR] = var
        state[b, S_SEEN] += 1
        out[k, F_SPREAD] = spread
        out[k, F_MID] = mid
        out[k, F_MICRO] = micro
        out[k, F_IMB] = imb
        out[k, F_OFI] = ofi
        out[k, F_VOL] = math.sqrt(var)
        out[k, F_PATTERN] = pattern
        out[k, F_SIGNAL] = sig


# ------------------------------------------------------------------------------------------- torch batch
def occurrence_rank(instr: np.ndarray) -> np.ndarray:
    """For each row, how many earlier rows have the same instrument (0 for the first)."""
    n = instr.shape[0]
    order = np.argsort(instr, kind="stable")
    s = instr[order]
    start = np.r_[True, s[1:] != s[:-1]] if n else np.zeros(0, bool)
    idx = np.arange(n)
    first = np.maximum.accumulate(np.where(start, idx, 0)) if n else idx
    rank = np.empty(n, np.int64)
    rank[order] = idx - first
    return rank


def _torch_rows(instr: np.ndarray, depth: Any, p: FeatureParams, state: Any, device: Any) -> Any:
    """``depth``: a numpy array (CPU: the tensor shares its memory) or a tensor already on ``device``."""
    import torch

    f64 = torch.float64
    d = depth if isinstance(depth, torch.Tensor) else torch.as_tensor(depth)
    d = d.to(device=device, dtype=f64)
    k = d.shape[0]
    out = torch.empty((k, len(FEATURES)), dtype=f64, device=device)
    bp, bq, ap, aq = d[:, 0, 0, 0], d[:, 0, 0, 1], d[:, 1, 0, 0], d[:, 1, 0, 1]
    both = (bq > 0) & (aq > 0)
    nan = torch.tensor(float("nan"), dtype=f64, device=device)
    spread = torch.where(both, ap - bp, nan)
    mid = torch.where(both, (bp + ap) / 2, nan)
    micro = torch.where(both, (bp * aq + ap * bq) / (bq + aq).clamp_min(1e-300), nan)
    lv = min(p.levels, d.shape[2])
    w = p.decay ** torch.arange(lv, dtype=f64, device=device)
    qb, qa = d[:, 0, :lv, 1], d[:, 1, :lv, 1]
    num, den = ((qb - qa) * w).sum(-1), ((qb + qa) * w).sum(-1)
    imb = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
    out[:, F_SPREAD], out[:, F_MID], out[:, F_MICRO], out[:, F_IMB] = spread, mid, micro, imb
    rank = occurrence_rank(instr)
    inst_t = torch.as_tensor(instr, device=device)
    lm_all = torch.log(mid)
    for r in range(int(rank.max()) + 1 if k else 0):
        rows = torch.as_tensor(np.flatnonzero(rank == r), device=device)
        b = inst_t[rows]
        s = state[b]
        seen = s[:, S_SEEN] > 0
        rbp, rbq, rap, raq = bp[rows], bq[rows], ap[rows], aq[rows]
        pbp, pbq, pap, paq = s[:, S_BP], s[:, S_BQ], s[:, S_AP], s[:, S_AQ]
        ofi = ((rbp >= pbp) * rbq - (rbp <= pbp) * pbq - (rap <= pap) * raq + (rap >= pap) * paq)
        ofi = torch.where(seen, ofi, torch.zeros_like(ofi))
        ask_gone = (paq > 0) & ((raq <= 0) | (rap > pap))
        bid_gone = (pbq > 0) & ((rbq <= 0) | (rbp < pbp))
        pattern = (ask_gone & ~bid_gone).to(f64) - (bid_gone & ~ask_gone).to(f64)
        pattern = torch.where(seen, pattern, torch.zeros_like(pattern))
        rb = both[rows]
        lm = lm_all[rows]
        has_prev = rb & ~torch.isnan(s[:, S_LMID])
        ret = torch.where(has_prev, lm - s[:, S_LMID], torch.zeros_like(lm))
        var = torch.where(has_prev, (1.0 - p.alpha) * s[:, S_VAR] + p.alpha * ret * ret, s[:, S_VAR])
        new = s.clone()
        new[:, S_BP], new[:, S_BQ], new[:, S_AP], new[:, S_AQ] = rbp, rbq, rap, raq
        new[:, S_LMID] = torch.where(rb, lm, s[:, S_LMID])
        new[:, S_VAR] = var
        new[:, S_SEEN] = s[:, S_SEEN] + 1
        state[b] = new
        out[rows, F_OFI] = ofi
        out[rows, F_VOL] = torch.sqrt(var)
        out[rows, F_PATTERN] = pattern
    ri = out[:, F_IMB]
    pat = out[:, F_PATTERN]
    ok = both & (spread <= p.max_spread)
    up = ok & ((ri >= p.enter) | ((pat > 0) & (ri > 0)))
    down = ok & ~up & ((ri <= -p.enter) | ((pat < 0) & (ri < 0)))
    out[:, F_SIGNAL] = up.to(f64) - down.to(f64)
    return out


# ------------------------------------------------------------------------------------------- the engine
class FeatureEngine:
    """Features of book snapshots for ``n_instruments`` instruments, keeping per-instrument state.

    ``backend``: ``numba`` (a compiled loop on the CPU) or ``torch`` (batches on ``device``: ``auto`` takes a
    GPU when :func:`~greekfire.gpu.device.choose_device` gives one). Both give the same numbers.

    Example::

        eng = FeatureEngine(n_instruments=8192)
        depth = books.depth_array(5)                       # [B, 2, 5, 2] int64 from OrderBooks
        out = eng.update(np.arange(books.n_books), depth)  # float64 [B, len(FEATURES)]
    """

    def __init__(self, n_instruments: int, params: FeatureParams | None = None, *, backend: str = "numba",
                 device: str = "auto") -> None:
        if n_instruments < 1:
            raise DataError("n_instruments", n_instruments, "an integer >= 1")
        if backend not in BACKENDS:
            raise DataError("backend", backend, f"one of {', '.join(BACKENDS)}")
        self.params = params or FeatureParams()
        self.params.check()
        self.n_instruments = int(n_instruments)
        self.backend = backend
        self.device: Any = None
        self._state_np = new_state(self.n_instruments)
        self._state_t: Any = None
        self._stager: Any = None
        self._stager_n = self._stager_row = 0
        if backend == "torch":
            import torch

            from greekfire.gpu.device import choose_device

            self.device = choose_device(device)
            self._state_t = torch.as_tensor(self._state_np, device=self.device).clone()

    @property
    def state(self) -> np.ndarray:
        """A copy of the per-instrument state (float64 ``[n_instruments, 7]``)."""
        if self._state_t is not None:
            return self._state_t.detach().cpu().numpy().copy()
        return self._state_np.copy()

    def load_state(self, state: np.ndarray, instruments: np.ndarray | None = None) -> None:
        """Set the state of ``instruments`` (all when None) from rows of ``state`` (as :attr:`state` gives)."""
        idx = slice(None) if instruments is None else np.asarray(instruments, np.int64)
        if self._state_t is not None:
            import torch

            self._state_t[idx] = torch.as_tensor(np.asarray(state)[idx], device=self.device)
        else:
            self._state_np[idx] = np.asarray(state)[idx]

    def reset(self, instruments: np.ndarray) -> None:
        """Forget the state of ``instruments`` (their next snapshot is a first one)."""
        fresh = new_state(self.n_instruments)
        self.load_state(fresh, np.asarray(instruments, np.int64))

    def update(self, instruments: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Features of ``depth`` (int ``[K, 2, L, 2]``, rows in time order) for ``instruments`` (int ``[K]``):
        float64 ``[K, len(FEATURES)]`` (numpy), the state moved past every row."""
        instr = np.ascontiguousarray(instruments, np.int64)
        if depth.ndim != 4 or depth.shape[1] != 2 or depth.shape[3] != 2 or depth.shape[0] != instr.shape[0]:
            raise DataError("depth.shape", tuple(depth.shape), f"[{instr.shape[0]}, 2, L, 2] (one row per instrument)")
        if instr.size and (instr.min() < 0 or instr.max() >= self.n_instruments):
            raise DataError("instruments", int(instr.max()), f"in 0..{self.n_instruments - 1}")
        p = self.params
        if self.backend == "numba":
            out = np.empty((instr.shape[0], len(FEATURES)), np.float64)
            _rows(instr, np.ascontiguousarray(depth, np.int64), p.levels, p.decay, p.alpha, p.enter, p.max_spread,
                  self._state_np, out)
            return out
        return _torch_rows(instr, self._to_device(depth), p, self._state_t, self.device).cpu().numpy()

    def _to_device(self, depth: np.ndarray) -> Any:
        """The snapshots on this engine's device: on a GPU one copy into a reused pinned buffer and one
        non-blocking transfer (greekfire.hft.ring.DeviceStager); on the CPU the array itself."""
        if self.device is None or self.device.type != "cuda":
            return depth
        import torch

        from greekfire.hft.ring import DeviceStager

        k = depth.shape[0]
        row = int(np.prod(depth.shape[1:])) * 8
        if self._stager is None or self._stager_row != row or self._stager_n < k:
            self._stager_n, self._stager_row = max(k, 4096), row
            self._stager = DeviceStager(np.dtype(f"V{row}"), self._stager_n, self.device)
        raw = np.ascontiguousarray(depth, np.int64).reshape(k, -1).view(np.dtype(f"V{row}")).reshape(k)
        return self._stager.stage(raw).view(torch.int64).reshape(depth.shape)

    def snapshot(self, depth_all: np.ndarray) -> dict[str, Any]:
        """Stateless level features of every instrument at once (``depth_all``: ``[B, 2, L, 2]``, from
        ``OrderBooks.depth_array``) as tensors on this engine's device (CPU for the numba back end):
        spread, mid, microprice, imbalance (the market core's formulas in greekfire.market.micro)."""
        from greekfire.market import micro

        d = micro.Depth.from_array(depth_all, device=self.device)
        return {"spread": micro.spread(d), "mid": micro.mid(d), "microprice": micro.microprice(d),
                "imbalance": micro.imbalance(d, self.params.levels, self.params.decay)}


def features_loop(instruments: np.ndarray, depth: np.ndarray, params: FeatureParams | None = None,
                  n_instruments: int | None = None) -> np.ndarray:
    """The reference: one snapshot at a time through a fresh numba engine (what a batch must equal)."""
    n = int(n_instruments or (int(np.max(instruments)) + 1 if len(instruments) else 1))
    eng = FeatureEngine(n, params, backend="numba")
    return np.concatenate([eng.update(instruments[i : i + 1], depth[i : i + 1]) for i in range(len(instruments))]) \
        if len(instruments) else np.zeros((0, len(FEATURES)))
