"""Microstructure features, pattern detectors and signals over many instruments at once, on tensors.

Shapes: a book snapshot is four tensors ``[..., L]`` (bid price, bid size, ask price, ask size; level 0 is
the best); a time series of snapshots puts time first, ``[T, B, L]`` (``B`` instruments). Prices are in
ticks (any float or int tensor; results are float64 unless said otherwise). Everything runs on the
tensors' device -- CUDA when present, CPU otherwise -- with the same code.

Formulas and references are in docs/market.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from greekfire.core.errors import DataError


def _f(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64) if not torch.is_floating_point(x) else x


@dataclass(frozen=True)
class Depth:
    """A book snapshot (or a time series of them) as tensors ``[..., L]``; empty levels have size 0."""

    bid_px: torch.Tensor
    bid_sz: torch.Tensor
    ask_px: torch.Tensor
    ask_sz: torch.Tensor

    @classmethod
    def from_array(cls, depth: np.ndarray, device: str | torch.device | None = None) -> Depth:
        """From :meth:`greekfire.market.book.OrderBooks.depth_array` (``[B, 2, L, 2]`` int64)."""
        t = torch.as_tensor(depth, device=device).to(torch.float64)
        return cls(t[:, 0, :, 0], t[:, 0, :, 1], t[:, 1, :, 0], t[:, 1, :, 1])

    def stack(self, other: Depth) -> Depth:
        """Two snapshots as a time series [2, ...] (self first)."""
        return Depth(*(torch.stack([a, b]) for a, b in zip(self.fields(), other.fields(), strict=True)))

    def fields(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.bid_px, self.bid_sz, self.ask_px, self.ask_sz


# ------------------------------------------------------------------------------------------- prices
def spread(d: Depth) -> torch.Tensor:
    """Best ask - best bid (ticks); NaN where a side is empty."""
    ok = (d.bid_sz[..., 0] > 0) & (d.ask_sz[..., 0] > 0)
    return torch.where(ok, _f(d.ask_px[..., 0] - d.bid_px[..., 0]), torch.nan)


def mid(d: Depth) -> torch.Tensor:
    """(best bid + best ask) / 2 (ticks); NaN where a side is empty."""
    ok = (d.bid_sz[..., 0] > 0) & (d.ask_sz[..., 0] > 0)
    return torch.where(ok, (_f(d.bid_px[..., 0]) + _f(d.ask_px[..., 0])) / 2, torch.nan)


def microprice(d: Depth) -> torch.Tensor:
    """Level-1 size-weighted price (bid * Qa + ask * Qb) / (Qb + Qa) (ticks); NaN where a side is empty."""
    qb, qa = _f(d.bid_sz[..., 0]), _f(d.ask_sz[..., 0])
    ok = (qb > 0) & (qa > 0)
    return torch.where(ok, (_f(d.bid_px[..., 0]) * qa + _f(d.ask_px[..., 0]) * qb) / (qb + qa).clamp_min(1e-300),
                       torch.nan)


def weighted_mid(d: Depth, levels: int | None = None) -> torch.Tensor:
    """Midpoint of the size-weighted average bid and ask prices over the top ``levels`` (ticks)."""
    sl = slice(0, levels)
    qb, qa = _f(d.bid_sz[..., sl]), _f(d.ask_sz[..., sl])
    sb, sa = qb.sum(-1), qa.sum(-1)
    vb = (_f(d.bid_px[..., sl]) * qb).sum(-1) / sb.clamp_min(1e-300)
    va = (_f(d.ask_px[..., sl]) * qa).sum(-1) / sa.clamp_min(1e-300)
    return torch.where((sb > 0) & (sa > 0), (vb + va) / 2, torch.nan)


# ------------------------------------------------------------------------------------------- imbalance
def imbalance(d: Depth, levels: int = 1, decay: float = 1.0) -> torch.Tensor:
    """Order-book imbalance in [-1, 1]: sum_i w_i (Qb_i - Qa_i) / sum_i w_i (Qb_i + Qa_i), w_i = decay**i
    over the top ``levels`` (level 1 with the defaults); 0 on an empty book."""
    if levels < 1 or not 0 < decay <= 1:
        raise DataError("levels/decay", (levels, decay), "levels >= 1 and 0 < decay <= 1")
    qb, qa = _f(d.bid_sz[..., :levels]), _f(d.ask_sz[..., :levels])
    w = decay ** torch.arange(qb.shape[-1], dtype=torch.float64, device=qb.device)
    num = ((qb - qa) * w).sum(-1)
    den = ((qb + qa) * w).sum(-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def order_flow_imbalance(d: Depth) -> torch.Tensor:
    """Cont, Kukanov & Stoikov (2014) order-flow imbalance per step of a time series ``[T, ...]``.

    e_t = 1{Pb_t >= Pb_t-1} Qb_t - 1{Pb_t <= Pb_t-1} Qb_t-1 - 1{Pa_t <= Pa_t-1} Qa_t + 1{Pa_t >= Pa_t-1} Qa_t-1
    on level 1; e_0 = 0. Units: shares (positive = buying pressure).
    """
    pb, qb, pa, qa = (_f(x[..., 0]) for x in d.fields())
    e = torch.zeros_like(pb)
    e[1:] = ((pb[1:] >= pb[:-1]) * qb[1:] - (pb[1:] <= pb[:-1]) * qb[:-1]
             - (pa[1:] <= pa[:-1]) * qa[1:] + (pa[1:] >= pa[:-1]) * qa[:-1])
    return e


# ------------------------------------------------------------------------------------------- trades
def trade_sign(trade_px: torch.Tensor, mid_px: torch.Tensor) -> torch.Tensor:
    """Lee-Ready: +1 (buyer-initiated) above the prevailing mid, -1 below; at the mid the tick rule (sign
    of the last non-zero trade price change). ``[T, ...]`` tensors; 0 where it cannot tell; NaN prices
    (no trade) give 0."""
    tp = _f(trade_px)
    s = torch.sign(tp - _f(mid_px))
    s = torch.nan_to_num(s, nan=0.0)
    tick = torch.zeros_like(tp)
    tick[1:] = torch.nan_to_num(torch.sign(tp[1:] - tp[:-1]), nan=0.0)
    # carry the last non-zero tick forward along time: index of the latest non-zero tick by a running max
    steps = torch.arange(tp.shape[0], device=tp.device).view(-1, *([1] * (tp.dim() - 1))).expand_as(tp)
    latest = torch.where(tick != 0, steps, torch.zeros_like(steps)).cummax(0).values
    last = tick.gather(0, latest)  # tick[0] is 0, so "no tick yet" reads 0
    return torch.where(s == 0, last * (~torch.isnan(tp)), s)


def signed_volume(sign: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """sign x size (shares); positive is buying."""
    return sign * _f(size)


def realized_vol(mid_px: torch.Tensor, window: int) -> torch.Tensor:
    """sqrt of the rolling sum over ``window`` steps of squared log mid returns; ``[T, ...]``, the first
    ``window`` rows use what is available. Per step of the series (scale by sqrt(steps per year) to
    annualise)."""
    lm = torch.log(_f(mid_px))
    r2 = torch.zeros_like(lm)
    r2[1:] = torch.nan_to_num((lm[1:] - lm[:-1]) ** 2, nan=0.0)
    c = torch.cumsum(r2, 0)
    out = c.clone()
    out[window:] = c[window:] - c[:-window]
    return torch.sqrt(out)


def queue_depletion_rate(d: Depth, dt_s: torch.Tensor | float, halflife: float = 10.0) -> dict[str, torch.Tensor]:
    """Shares per second leaving the best bid and ask queues while their price stays, EWMA over steps.

    ``[T, ...]`` series; ``halflife`` in steps. A price change resets nothing but contributes 0 (the queue
    was replaced, not depleted).
    """
    alpha = 1 - 0.5 ** (1 / halflife)
    out = {}
    for name, px, sz in (("bid", d.bid_px, d.bid_sz), ("ask", d.ask_px, d.ask_sz)):
        p, q = _f(px[..., 0]), _f(sz[..., 0])
        dq = torch.zeros_like(q)
        dq[1:] = torch.where(p[1:] == p[:-1], (q[:-1] - q[1:]).clamp_min(0), torch.zeros_like(q[1:]))
        rate = dq / (dt_s if isinstance(dt_s, float) else _f(dt_s))
        ew = torch.zeros_like(rate)
        acc = torch.zeros_like(rate[0])
        for t in range(rate.shape[0]):
            acc = alpha * rate[t] + (1 - alpha) * acc
            ew[t] = acc
        out[name] = ew
    return out


def features(d: Depth, levels: int = 5, decay: float = 0.5) -> dict[str, torch.Tensor]:
    """The snapshot features of every instrument at once (what the benchmark times)."""
    return {
        "spread": spread(d),
        "mid": mid(d),
        "microprice": microprice(d),
        "weighted_mid": weighted_mid(d, levels),
        "imbalance_l1": imbalance(d, 1),
        "imbalance_decayed": imbalance(d, levels, decay),
    }


# ------------------------------------------------------------------------------------------- patterns
def sweeps(d: Depth, min_levels: int = 2) -> dict[str, torch.Tensor]:
    """Levels taken out in one step of a ``[T, B, L]`` series: for buys, the number of previous ask levels
    priced below the new best ask (all of them gone); ``buy``/``sell`` are counts, ``*_sweep`` the flags
    where the count reaches ``min_levels``."""
    out = {}
    for name, px, sz, nb_px, nb_sz, sign in (("buy", d.ask_px, d.ask_sz, d.ask_px, d.ask_sz, 1),
                                             ("sell", d.bid_px, d.bid_sz, d.bid_px, d.bid_sz, -1)):
        prev_px, prev_sz = _f(px[:-1]), _f(sz[:-1])
        new_best = _f(nb_px[1:, ..., :1])
        new_has = nb_sz[1:, ..., :1] > 0
        gone = (prev_sz > 0) & torch.where(new_has, sign * (prev_px - new_best) < 0, torch.ones_like(new_has))
        cnt = torch.zeros(px.shape[:-1], dtype=torch.int64, device=px.device)
        cnt[1:] = gone.sum(-1)
        out[name] = cnt
        out[f"{name}_sweep"] = cnt >= min_levels
    return out


def iceberg_refills(d: Depth, traded_at_best: dict[str, torch.Tensor], min_refills: int = 2) -> dict[str, torch.Tensor]:
    """Refills at one price: a step where trades at the best price took at least the whole visible size
    and the level is still there at the same price with size again. ``traded_at_best`` holds per side
    (``bid``/``ask``) the traded shares at the previous best price in each step ``[T, B]``. Returns the
    running count of consecutive refills per side and a flag where it reaches ``min_refills``."""
    out = {}
    for name, px, sz in (("bid", d.bid_px, d.bid_sz), ("ask", d.ask_px, d.ask_sz)):
        p, q = _f(px[..., 0]), _f(sz[..., 0])
        tv = _f(traded_at_best[name])
        refill = torch.zeros_like(q, dtype=torch.bool)
        refill[1:] = (tv[1:] >= q[:-1]) & (q[:-1] > 0) & (p[1:] == p[:-1]) & (q[1:] > 0)
        run = torch.zeros_like(q, dtype=torch.int64)
        acc = torch.zeros_like(run[0])
        for t in range(q.shape[0]):
            same = p[t] == p[t - 1] if t else torch.ones_like(refill[0])
            acc = torch.where(refill[t], acc + 1, torch.where(same, acc, torch.zeros_like(acc)))
            run[t] = acc
        out[name] = run
        out[f"{name}_iceberg"] = run >= min_refills
    return out


def cancel_bursts(cancels: torch.Tensor, window: int, threshold: float) -> torch.Tensor:
    """Steps where the cancels of the last ``window`` steps (``[T, B]`` counts) reach ``threshold``."""
    c = torch.cumsum(_f(cancels), 0)
    w = c.clone()
    w[window:] = c[window:] - c[:-window]
    return w >= threshold


# ------------------------------------------------------------------------------------------- signals
SIGNAL_EVENT_DTYPE = np.dtype([("t", "i8"), ("instrument", "i8"), ("feature", "i4"), ("state", "i1"),
                               ("z", "f8")])


@dataclass
class Signals:
    """Signal states ``[T, B]`` per feature (+1 long, -1 short, 0 flat), z-scores, and the events (state
    changes) as a structured array (:data:`SIGNAL_EVENT_DTYPE`, feature = index into ``names``)."""

    names: list[str]
    state: dict[str, torch.Tensor]
    z: dict[str, torch.Tensor]
    events: np.ndarray


def zscore_ewm(x: torch.Tensor, halflife: float, warmup: int = 10) -> torch.Tensor:
    """EWMA z-score along time (axis 0) using only the past: (x_t - m_t-1) / s_t-1; 0 during ``warmup``
    steps and where the variance is 0; NaN inputs give 0 and do not move the averages."""
    alpha = 1 - 0.5 ** (1 / halflife)
    x = _f(x)
    z = torch.zeros_like(x)
    m = torch.zeros_like(x[0])
    v = torch.zeros_like(x[0])
    seen = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        xt = x[t]
        ok = ~torch.isnan(xt)
        sd = torch.sqrt(v)
        zt = torch.where(ok & (seen >= warmup) & (sd > 0), (xt - m) / sd.clamp_min(1e-300), torch.zeros_like(xt))
        z[t] = zt
        xv = torch.where(ok, xt, m)
        seen = seen + ok
        # weight 1/n until 1/n drops below alpha: exact running mean and variance at the start, so the
        # first z-scores are not inflated by a variance that starts at zero
        a = torch.where(ok, torch.maximum(torch.full_like(seen, alpha), 1 / seen.clamp_min(1)), torch.zeros_like(seen))
        d = xv - m
        m = m + a * d
        v = (1 - a) * (v + a * d * d)
    return z


def signals(feats: dict[str, torch.Tensor], enter: float = 2.0, exit: float = 0.5, halflife: float = 50.0,
            warmup: int = 20) -> Signals:
    """Z-scored features with thresholds and hysteresis.

    Per feature and instrument: flat -> +1 when z > ``enter``, -> -1 when z < -``enter``; a position is
    left (-> 0) only when z falls back inside +-``exit`` (``exit`` < ``enter`` keeps it from flickering),
    and flips directly when z crosses the opposite ``enter``. Every state change is an event.
    """
    if not 0 <= exit < enter:
        raise DataError("exit", exit, f"must satisfy 0 <= exit < enter ({enter})")
    names = list(feats)
    states, zs, evs = {}, {}, []
    for fi, name in enumerate(names):
        z = zscore_ewm(feats[name], halflife, warmup)
        st = torch.zeros_like(z, dtype=torch.int8)
        cur = torch.zeros_like(z[0], dtype=torch.int8)
        for t in range(z.shape[0]):
            zt = z[t]
            nxt = cur.clone()
            nxt = torch.where((cur == 1) & (zt < exit), torch.zeros_like(nxt), nxt)
            nxt = torch.where((cur == -1) & (zt > -exit), torch.zeros_like(nxt), nxt)
            nxt = torch.where(zt > enter, torch.ones_like(nxt), nxt)
            nxt = torch.where(zt < -enter, -torch.ones_like(nxt), nxt)
            st[t] = nxt
            cur = nxt
        prev = torch.zeros_like(st)
        prev[1:] = st[:-1]
        changed = (st != prev).nonzero()
        if changed.numel():
            t_idx, b_idx = changed[:, 0], changed[:, 1] if changed.shape[1] > 1 else torch.zeros_like(changed[:, 0])
            e = np.zeros(changed.shape[0], SIGNAL_EVENT_DTYPE)
            e["t"] = t_idx.cpu().numpy()
            e["instrument"] = b_idx.cpu().numpy()
            e["feature"] = fi
            e["state"] = st[tuple(changed.T)].cpu().numpy()
            e["z"] = z[tuple(changed.T)].cpu().numpy()
            evs.append(e)
        states[name], zs[name] = st, z
    events = np.concatenate(evs) if evs else np.zeros(0, SIGNAL_EVENT_DTYPE)
    events = np.sort(events, order=["t", "instrument", "feature"])
    return Signals(names, states, zs, events)
