"""Options quote book on tensors: top-of-book quotes of many series from many venues (the OPRA world).

State is one int64 tensor ``quotes[series, venue, field]`` with fields (bid price ticks, bid size, ask
price ticks, ask size, time ns), updated by batched scatter from arrays of quote updates. NBBO, spread and
size-weighted mid come from reductions over the venue axis; per-series statistics (update counts, quote
rates, staleness) are kept beside it. The same code runs on the GPU when the tensors live there.

An empty side is size 0 (its price is then ignored). Within one batch the last update of a
(series, venue) pair wins, as it would if the updates were applied one by one.
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
import torch

from greekfire.core.errors import DataError
from greekfire.gpu.device import choose_device

BID_PX, BID_SZ, ASK_PX, ASK_SZ, TS = range(5)
FIELDS = ("bid_px", "bid_sz", "ask_px", "ask_sz", "ts")
FIELDS_IN = ("series", "venue", *FIELDS)
_NO_BID = torch.iinfo(torch.int64).min
_NO_ASK = torch.iinfo(torch.int64).max


@nb.njit(cache=True, nogil=True)
def _update_cpu(q, updates, first_ts, last_ts, s, v, bpx, bsz, apx, asz, ts):
    """Sequential updates in batch order (so the last one of a pair wins without de-duplication)."""
    n_series, n_venues = q.shape[0], q.shape[1]
    rejected = 0
    for i in range(s.shape[0]):
        si, vi = s[i], v[i]
        if si < 0 or si >= n_series or vi < 0 or vi >= n_venues or bsz[i] < 0 or asz[i] < 0:
            rejected += 1
            continue
        q[si, vi, 0] = bpx[i]
        q[si, vi, 1] = bsz[i]
        q[si, vi, 2] = apx[i]
        q[si, vi, 3] = asz[i]
        q[si, vi, 4] = ts[i]
        updates[si] += 1
        if ts[i] > last_ts[si]:
            last_ts[si] = ts[i]
        if ts[i] < first_ts[si]:
            first_ts[si] = ts[i]
    return rejected


def default_device() -> torch.device:
    """CUDA when torch sees a GPU (the one with the most free memory), else CPU; the GPU manager decides."""
    return choose_device("auto")


class QuoteBook:
    """Quotes of ``n_series`` x ``n_venues`` on one device.

    Example::

        qb = QuoteBook(n_series=1000, n_venues=16)
        qb.update(series=torch.tensor([3]), venue=torch.tensor([0]), bid_px=torch.tensor([150]),
                  bid_sz=torch.tensor([10]), ask_px=torch.tensor([155]), ask_sz=torch.tensor([5]),
                  ts=torch.tensor([1_000]))
        qb.nbbo()["bid_px"][3]  # tensor(150)
    """

    def __init__(self, n_series: int, n_venues: int, device: str | torch.device | None = None,
                 backend: str = "auto") -> None:
        if n_series <= 0 or n_venues <= 0:
            raise DataError("n_series/n_venues", (n_series, n_venues), "must both be > 0")
        if backend not in ("auto", "torch", "numba"):
            raise DataError("backend", backend, "one of auto, torch, numba")
        self.n_series, self.n_venues = int(n_series), int(n_venues)
        self.device = torch.device(device) if device is not None else default_device()
        if backend == "numba" and self.device.type != "cpu":
            raise DataError("backend", backend, "numba updates need the tensors on the CPU")
        self.backend = backend if backend != "auto" else ("numba" if self.device.type == "cpu" else "torch")
        self.quotes = torch.zeros((self.n_series, self.n_venues, 5), dtype=torch.int64, device=self.device)
        self.updates = torch.zeros(self.n_series, dtype=torch.int64, device=self.device)
        self.first_ts = torch.full((self.n_series,), _NO_ASK, dtype=torch.int64, device=self.device)
        self.last_ts = torch.zeros(self.n_series, dtype=torch.int64, device=self.device)
        self.rejected = 0

    def update(self, series: torch.Tensor, venue: torch.Tensor, bid_px: torch.Tensor, bid_sz: torch.Tensor,
               ask_px: torch.Tensor, ask_sz: torch.Tensor, ts: torch.Tensor, *, unique: bool = False) -> int:
        """Apply a batch of quote updates (prices ticks, sizes units, ts ns); returns updates applied.

        Rows with an out-of-range series or venue, or a negative size, are dropped and counted in
        :attr:`rejected`. On CUDA (or with ``backend="torch"``) the batch is one scatter; ``unique=True``
        there promises no (series, venue) pair repeats and skips the last-wins de-duplication. On CPU a
        numba loop applies the rows in order, which is faster than sorting to de-duplicate.
        """
        dev = self.device
        cols = [torch.as_tensor(t).to(dev, torch.int64).reshape(-1)
                for t in (series, venue, bid_px, bid_sz, ask_px, ask_sz, ts)]
        lengths = [int(c.shape[0]) for c in cols]
        if len(set(lengths)) != 1:
            raise DataError("quote batch lengths", dict(zip(FIELDS_IN, lengths, strict=True)),
                            "every column of a batch needs the same length")
        if self.backend == "numba":
            arrs = [np.ascontiguousarray(c.numpy()) for c in cols]
            bad = int(_update_cpu(self.quotes.numpy(), self.updates.numpy(), self.first_ts.numpy(),
                                  self.last_ts.numpy(), *arrs))
            self.rejected += bad
            return int(cols[0].shape[0]) - bad
        s, v = cols[0], cols[1]
        ok = (s >= 0) & (s < self.n_series) & (v >= 0) & (v < self.n_venues) & (cols[3] >= 0) & (cols[5] >= 0)
        if not bool(ok.all()):
            self.rejected += int((~ok).sum())
            cols = [c[ok] for c in cols]
            s, v = cols[0], cols[1]
        if s.numel() == 0:
            return 0
        values = torch.stack(cols[2:], dim=1)  # [n, 5]
        flat = s * self.n_venues + v
        ones = torch.ones_like(s)
        self.updates.index_add_(0, s, ones)
        self.last_ts.scatter_reduce_(0, s, values[:, TS], reduce="amax")
        self.first_ts.scatter_reduce_(0, s, values[:, TS], reduce="amin")
        if not unique:
            # last write wins: keep the final occurrence of every (series, venue) in the batch
            order = torch.argsort(flat, stable=True)
            fs = flat[order]
            last = torch.ones_like(fs, dtype=torch.bool)
            last[:-1] = fs[1:] != fs[:-1]
            keep = order[last]
            flat, values = flat[keep], values[keep]
        self.quotes.view(-1, 5).index_copy_(0, flat, values)
        return int(s.numel())

    def nbbo(self) -> dict[str, torch.Tensor]:
        """National best bid and offer per series: prices (ticks), sizes at the best price summed over venues,
        venues at the best, and flags ``has_bid``/``has_ask``. Missing sides have size 0."""
        q = self.quotes
        has_b = q[..., BID_SZ] > 0
        has_a = q[..., ASK_SZ] > 0
        bpx = torch.where(has_b, q[..., BID_PX], torch.full_like(q[..., BID_PX], _NO_BID))
        apx = torch.where(has_a, q[..., ASK_PX], torch.full_like(q[..., ASK_PX], _NO_ASK))
        best_b = bpx.max(dim=1).values
        best_a = apx.min(dim=1).values
        at_b = has_b & (bpx == best_b[:, None])
        at_a = has_a & (apx == best_a[:, None])
        bid_sz = (q[..., BID_SZ] * at_b).sum(dim=1)
        ask_sz = (q[..., ASK_SZ] * at_a).sum(dim=1)
        any_b, any_a = has_b.any(dim=1), has_a.any(dim=1)
        return {
            "bid_px": torch.where(any_b, best_b, torch.zeros_like(best_b)),
            "bid_sz": bid_sz,
            "ask_px": torch.where(any_a, best_a, torch.zeros_like(best_a)),
            "ask_sz": ask_sz,
            "bid_venues": at_b.sum(dim=1),
            "ask_venues": at_a.sum(dim=1),
            "has_bid": any_b,
            "has_ask": any_a,
        }

    def summary(self, nbbo: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Spread (ticks), mid and size-weighted mid (ticks, float64; NaN without both sides), and
        locked / crossed flags per series.

        size-weighted mid = (bid * ask_size + ask * bid_size) / (bid_size + ask_size): it leans toward the
        side with less size, the side more likely to be taken out next.
        """
        n = nbbo or self.nbbo()
        both = n["has_bid"] & n["has_ask"]
        b = n["bid_px"].to(torch.float64)
        a = n["ask_px"].to(torch.float64)
        qb = n["bid_sz"].to(torch.float64)
        qa = n["ask_sz"].to(torch.float64)
        nan = torch.full_like(b, float("nan"))
        return {
            "spread": torch.where(both, a - b, nan),
            "mid": torch.where(both, (a + b) / 2, nan),
            "weighted_mid": torch.where(both, (b * qa + a * qb) / (qa + qb).clamp_min(1e-300), nan),
            "locked": both & (n["ask_px"] == n["bid_px"]),
            "crossed": both & (n["ask_px"] < n["bid_px"]),
        }

    def stats(self, now_ns: int, stale_after_ns: int = 1_000_000_000) -> dict[str, torch.Tensor]:
        """Per series: update count, quote rate (updates per second over the series' active span),
        staleness (seconds since its last update; inf if never) and venues whose quote is older than
        ``stale_after_ns`` (among venues that ever quoted)."""
        seen = self.updates > 0
        span = (self.last_ts - self.first_ts).clamp_min(1).to(torch.float64) / 1e9
        rate = torch.where(self.updates > 1, (self.updates - 1).to(torch.float64) / span,
                           torch.zeros_like(span))
        staleness = torch.where(seen, (now_ns - self.last_ts).to(torch.float64) / 1e9,
                                torch.full_like(span, float("inf")))
        vts = self.quotes[..., TS]
        quoted = (self.quotes[..., BID_SZ] > 0) | (self.quotes[..., ASK_SZ] > 0)
        stale_venues = (quoted & (now_ns - vts > stale_after_ns)).sum(dim=1)
        return {"updates": self.updates.clone(), "quote_rate": rate, "staleness_s": staleness,
                "stale_venues": stale_venues}

    def snapshot(self, series: int) -> dict[str, Any]:
        """One series' venue quotes as plain lists (for people and tests)."""
        q = self.quotes[series].cpu()
        return {f: q[:, i].tolist() for i, f in enumerate(FIELDS)}


def random_updates(n: int, n_series: int, n_venues: int, seed: int = 0, device: str | torch.device = "cpu",
                   t0_ns: int = 0) -> dict[str, torch.Tensor]:
    """A batch of plausible quote updates (for benchmarks and demos): spreads of 1-5 ticks around a
    per-series price, sizes 0-50 (0: the venue left that side)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    series = torch.randint(0, n_series, (n,), generator=g)
    venue = torch.randint(0, n_venues, (n,), generator=g)
    base = 100 + (series * 7919) % 5000
    bid = base - torch.randint(0, 3, (n,), generator=g)
    ask = bid + 1 + torch.randint(0, 4, (n,), generator=g)
    out = {
        "series": series, "venue": venue, "bid_px": bid, "bid_sz": torch.randint(0, 51, (n,), generator=g),
        "ask_px": ask, "ask_sz": torch.randint(0, 51, (n,), generator=g),
        "ts": t0_ns + torch.sort(torch.randint(0, 1_000_000_000, (n,), generator=g)).values,
    }
    return {k: v.to(device) for k, v in out.items()}
