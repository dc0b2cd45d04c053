"""A synthetic market for paper trading: one underlying on a geometric Brownian path, its option chain
priced by the pricing core.

:class:`SyntheticMarket` moves the underlying (time runs ``time_scale`` times faster than the wall clock, so
a 20 s run sees a few hours of market) and prices its chain with :func:`greekfire.quant.bsm_price` in one
vectorised call per step. Each simulated venue's synthetic participants quote around those fair values.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable

import torch

from greekfire.quant import bsm_price
from greekfire.trading.model import SECONDS_PER_YEAR, Instrument


class SyntheticMarket:
    """Fair values for a chain on one underlying. ``step(now_ns)`` moves the spot and reprices the chain;
    the first prices are taken at ``now_ns`` (ns since the epoch; default the wall clock: pass the
    scenario clock's start for a run that does not depend on when it is made)."""

    def __init__(
        self, instruments: list[Instrument], *, spot: float = 100.0, vol: float = 0.20, rate: float = 0.02,
        time_scale: float = 600.0, step_ms: float = 20.0, seed: int = 7, now_ns: int | None = None,
    ) -> None:
        self.instruments = instruments
        self.underlying = next(i for i in instruments if not i.is_option)
        self.options = [i for i in instruments if i.is_option]
        self.spot = spot
        self.vol = vol
        self.rate = rate
        self.time_scale = time_scale
        self.step_ns = int(step_ms * 1e6)
        self.rng = random.Random(seed)
        self._last_ns: int | None = None
        self._fair: dict[int, float] = {}
        self._right = torch.tensor([o.right for o in self.options], dtype=torch.float64)
        self._strike = torch.tensor([o.strike for o in self.options], dtype=torch.float64)
        self.steps = 0
        self._reprice(now_ns if now_ns is not None else time.time_ns())  # first prices at now_ns (ns since epoch)

    def _reprice(self, now_ns: int) -> None:
        self._fair[self.underlying.instrument_id] = self.spot
        if self.options:
            ttm = torch.tensor([max(o.ttm(now_ns), 1e-4) for o in self.options], dtype=torch.float64)
            px = bsm_price(self._right, self.spot, self._strike, ttm, self.rate, 0.0, self.vol).tolist()
            for o, p in zip(self.options, px, strict=True):
                self._fair[o.instrument_id] = p

    def add_options(self, options: Iterable[Instrument], now_ns: int) -> list[Instrument]:
        """Price more options of the underlying from ``now_ns`` on (a new expiry listed during a run); ones
        already priced are skipped. Returns the new ones."""
        known = {o.instrument_id for o in self.options}
        new = [o for o in options if o.is_option and o.instrument_id not in known]
        if new:
            self.instruments = [*self.instruments, *new]
            self.options = [*self.options, *new]
            self._right = torch.tensor([o.right for o in self.options], dtype=torch.float64)
            self._strike = torch.tensor([o.strike for o in self.options], dtype=torch.float64)
            self._reprice(now_ns)
        return new

    def fair_value(self, instrument_id: int) -> float:
        """Current fair value of an instrument (currency per unit)."""
        return self._fair.get(instrument_id, math.nan)

    def set_spot(self, spot: float, now_ns: int) -> None:
        """Put the underlying at ``spot`` and reprice the chain (scripted scenarios and benchmarks)."""
        self.spot = float(spot)
        self._reprice(now_ns)

    def step(self, now_ns: int) -> None:
        """Advance the spot to ``now_ns`` (at most one step per ``step_ms``) and reprice the chain."""
        if self._last_ns is None:
            self._last_ns = now_ns
            return
        if now_ns - self._last_ns < self.step_ns:
            return
        dt = (now_ns - self._last_ns) / 1e9 * self.time_scale / SECONDS_PER_YEAR
        self._last_ns = now_ns
        z = self.rng.gauss(0.0, 1.0)
        self.spot *= math.exp((self.rate - 0.5 * self.vol**2) * dt + self.vol * math.sqrt(dt) * z)
        self.steps += 1
        self._reprice(now_ns)
