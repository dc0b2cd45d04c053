"""Strike selection: every candidate contract of every symbol scored in one tensor computation.

A :class:`Candidates` holds one row per contract (symbol index, right, strike, days to expiry, bid, ask,
open interest, volume, implied vol, spot) and the rules that apply to its row (target |delta|, target and
maximum DTE, strike bounds, IV rank, whether the entry filters let that symbol and right be written).
:func:`select` computes, for all rows at once:

- ``delta``: from the pricing registry: the European engine (``wheel.european_engine``, closed form) for
  every row; with ``wheel.exercise: american``, the American engine (``wheel.american_engine``) re-prices
  the rows that pass every other filter and lie within ``AMERICAN_BAND`` of the target by their European
  delta (the only ones that can win on delta; an American engine costs far more per row);
- ``yield``: mid / collateral x 365 / DTE (collateral: the strike for a put, the spot for a call);
- ``liquidity`` (0..1): the mean of open interest / reference, volume / reference (each capped at 1) and
  1 - spread / maximum spread (floored at 0); the references are 10x the minimums (at least 100);
- ``mask``: every filter: a two-sided quote, open interest, volume, spread, premium, yield, DTE in
  [target, maximum], strike bounds, IV rank, the entry filters, and |delta| <= target;
- ``score = -| |delta| - target | - dte_weight x (DTE - target DTE) / 365 + yield_weight x yield
  + liquidity_weight x liquidity``;

and picks the best masked row per (symbol, right) (ties: the first row). Rows are scored in batches of
``wheel.batch_rows`` on the device :func:`greekfire.gpu.device.choose_device` gives for ``wheel.device``,
halving the batch on out-of-memory (:func:`greekfire.gpu.memory.run_with_oom_backoff`); with several GPUs
the symbols are split across them by :class:`greekfire.gpu.placement.Placer` (round robin).

:func:`select_pandas` applies the same rules row by row with pandas (``DataFrame.apply``); it exists for
the benchmark and for the test that both pick the same contracts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from greekfire.gpu.device import choose_device
from greekfire.gpu.memory import run_with_oom_backoff
from greekfire.quant.registry import MarketInputs, OptionBatch, price
from greekfire.strategies.wheel.config import WheelConfig

AMERICAN_BAND = 0.10
"""Rows whose European |delta| is within this of the target get their American delta (see module doc)."""

COLUMNS = ("sym", "right", "strike", "dte", "bid", "ask", "open_interest", "volume", "iv", "spot",
           "target_delta", "dte_target", "max_dte", "strike_min", "strike_max", "iv_rank", "allowed")
"""The columns of a candidate frame (:meth:`Candidates.from_frame`); ``delta`` is optional."""

_F64 = torch.float64


@dataclass(frozen=True)
class Candidates:
    """One row per candidate contract, as tensors of equal length on one device.

    ``sym``: index into ``symbols``; ``right``: +1 call / -1 put; ``strike``, ``bid``, ``ask``, ``spot``:
    currency per share; ``dte``: days to expiry; ``open_interest``, ``volume``: contracts; ``iv``:
    annualised; ``target_delta``: target |delta|; ``dte_target``/``max_dte``: days; ``strike_min`` /
    ``strike_max``: strike bounds (a call's cost basis, strike limits; +-inf: none); ``iv_rank``: 0..1;
    ``allowed``: the entry filters let this symbol and right be written; ``delta``: given deltas (None:
    :func:`select` computes them).
    """

    symbols: tuple[str, ...]
    sym: torch.Tensor
    right: torch.Tensor
    strike: torch.Tensor
    dte: torch.Tensor
    bid: torch.Tensor
    ask: torch.Tensor
    open_interest: torch.Tensor
    volume: torch.Tensor
    iv: torch.Tensor
    spot: torch.Tensor
    target_delta: torch.Tensor
    dte_target: torch.Tensor
    max_dte: torch.Tensor
    strike_min: torch.Tensor
    strike_max: torch.Tensor
    iv_rank: torch.Tensor
    allowed: torch.Tensor
    delta: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.sym.shape[0])

    @property
    def device(self) -> torch.device:
        return self.sym.device

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "symbols" and getattr(self, f.name) is not None}

    def to(self, device: torch.device | str) -> Candidates:
        """The same rows on ``device``."""
        changes: dict[str, Any] = {k: v.to(device) for k, v in self._tensors().items()}
        return replace(self, **changes)

    def rows(self, index: torch.Tensor | slice) -> Candidates:
        """A subset of the rows (a slice or an index tensor)."""
        changes: dict[str, Any] = {k: v[index] for k, v in self._tensors().items()}
        return replace(self, **changes)

    @classmethod
    def from_columns(cls, symbols: Sequence[str], columns: Mapping[str, Any],
                     device: torch.device | str = "cpu") -> Candidates:
        """Rows from equal-length columns (lists, arrays or tensors) named as :data:`COLUMNS`."""
        out: dict[str, torch.Tensor] = {}
        for name in (*COLUMNS, "delta"):
            if name not in columns:
                if name == "delta":
                    continue
                raise KeyError(f"candidate column {name!r} is missing (columns: {', '.join(COLUMNS)})")
            v = columns[name]
            dtype = torch.int64 if name == "sym" else torch.bool if name == "allowed" else _F64
            if not isinstance(v, torch.Tensor):
                v = np.asarray(v.to_numpy() if isinstance(v, pd.Series) else v)
                if not v.flags.writeable:
                    v = v.copy()
            out[name] = torch.as_tensor(v, dtype=dtype).to(device)
        return cls(tuple(symbols), **out)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, symbols: Sequence[str] | None = None,
                   device: torch.device | str = "cpu") -> Candidates:
        """Rows of a candidate frame: ``symbol`` (names) or ``sym`` (indices into ``symbols``) and the other
        :data:`COLUMNS`."""
        cols: dict[str, Any] = {c: frame[c] for c in frame.columns}
        if "sym" not in cols:
            col = frame["symbol"]
            if symbols is not None:
                names = list(symbols)
                codes = pd.Index(names).get_indexer(col)
                if (codes < 0).any():
                    raise KeyError(f"symbols {sorted(set(col[codes < 0]))} are not among {names}")
            elif isinstance(col.dtype, pd.CategoricalDtype):  # chain data: codes are already there
                names, codes = [str(x) for x in col.cat.categories], col.cat.codes.to_numpy()
            else:
                codes, uniques = pd.factorize(col, sort=True)
                names = [str(x) for x in uniques]
            cols["sym"] = np.asarray(codes, dtype=np.int64)
            symbols = names
        if symbols is None:
            raise KeyError("a frame with a sym column needs its symbols")
        return cls.from_columns(symbols, cols, device)


@dataclass
class Selection:
    """What :func:`select` found: ``best`` maps (symbol, right) to the winning row (absent: no row passed
    every filter); ``delta``, ``yield_``, ``liquidity``, ``score`` and ``mask`` per row (on the CPU);
    ``devices`` the devices that scored."""

    best: dict[tuple[str, float], int]
    delta: torch.Tensor
    yield_: torch.Tensor
    liquidity: torch.Tensor
    score: torch.Tensor
    mask: torch.Tensor
    devices: list[str]


# ------------------------------------------------------------------------------------------------- Greeks
def deltas(c: Candidates, config: WheelConfig) -> torch.Tensor:
    """Delta per row from the pricing registry (module doc): the European engine for all rows, then the
    American engine, for American exercise, on the rows that can win on delta."""
    if c.delta is not None:
        return c.delta
    ttm = (c.dte / 365.0).clamp(min=1e-6)
    mkt = MarketInputs(spot=c.spot, rate=config.rate, div_yield=config.dividend_yield, vol=c.iv.clamp(min=1e-4))
    d = price(config.european_engine, OptionBatch(c.right, c.strike, ttm, "european"), mkt, outputs="delta")["delta"]
    if config.exercise != "american" or len(c) == 0:
        return d
    near = _filters(c, config) & ((d.abs() - c.target_delta).abs() <= AMERICAN_BAND)
    idx = torch.nonzero(near).flatten()
    if idx.numel():
        sub = c.rows(idx)
        mkt_a = MarketInputs(spot=sub.spot, rate=config.rate, div_yield=config.dividend_yield,
                             vol=sub.iv.clamp(min=1e-4))
        am = price(config.american_engine, OptionBatch(sub.right, sub.strike, ttm[idx], "american"), mkt_a,
                   outputs="delta")["delta"]
        d = d.clone()
        d[idx] = am.to(d.dtype)
    return d


# ------------------------------------------------------------------------------------------------- rules
def _refs(config: WheelConfig) -> tuple[float, float]:
    return max(10.0 * config.min_open_interest, 100.0), max(10.0 * config.min_volume, 100.0)


def _components(c: Candidates, config: WheelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mid, spread fraction, annualised yield, liquidity) per row."""
    mid = 0.5 * (c.bid + c.ask)
    spread = (c.ask - c.bid) / mid.clamp(min=1e-12)
    collateral = torch.where(c.right > 0, c.spot, c.strike)
    yld = mid / collateral * 365.0 / c.dte.clamp(min=1.0)
    oi_ref, vol_ref = _refs(config)
    liq = ((c.open_interest / oi_ref).clamp(max=1.0) + (c.volume / vol_ref).clamp(max=1.0)
           + (1.0 - spread / config.max_spread).clamp(min=0.0)) / 3.0
    return mid, spread, yld, liq


def _filters(c: Candidates, config: WheelConfig,
             comps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Every filter but the delta one (bool per row)."""
    mid, spread, yld, _ = comps if comps is not None else _components(c, config)
    return ((c.bid > 0) & (c.ask >= c.bid) & (c.open_interest >= config.min_open_interest)
            & (c.volume >= config.min_volume) & (spread <= config.max_spread) & (mid >= config.min_premium)
            & (yld >= config.min_annual_yield) & (c.dte >= c.dte_target) & (c.dte <= c.max_dte)
            & (c.strike >= c.strike_min) & (c.strike <= c.strike_max) & (c.iv_rank >= config.iv_rank_min)
            & c.allowed)


def score_rows(c: Candidates, delta: torch.Tensor, config: WheelConfig) -> torch.Tensor:
    """Per row ``(score, mask, yield, liquidity)`` stacked as a (rows, 4) float64 tensor (mask as 0/1)."""
    comps = _components(c, config)
    _, _, yld, liq = comps
    dist = (delta.abs() - c.target_delta).abs()
    score = (-dist - config.score_dte_weight * (c.dte - c.dte_target) / 365.0
             + config.score_yield_weight * yld + config.score_liquidity_weight * liq)
    mask = _filters(c, config, comps) & (delta.abs() <= c.target_delta + 1e-12) & torch.isfinite(delta)
    return torch.stack([score, mask.to(_F64), yld, liq], dim=1)


def best_rows(score: torch.Tensor, mask: torch.Tensor, group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """The best masked row of each group (highest score, first row on ties); ``len(score)`` where none."""
    n = score.shape[0]
    s = torch.where(mask, score, torch.full_like(score, -math.inf))
    gmax = torch.full((n_groups,), -math.inf, dtype=s.dtype, device=s.device)
    gmax = gmax.scatter_reduce(0, group, s, "amax", include_self=True)
    hit = mask & (s == gmax[group])
    rows = torch.arange(n, device=s.device)
    out = torch.full((n_groups,), n, dtype=torch.int64, device=s.device)
    return out.scatter_reduce(0, group, torch.where(hit, rows, torch.full_like(rows, n)), "amin", include_self=True)


def _devices(device: torch.device, n_symbols: int) -> list[torch.device]:
    """One device, or with several GPUs one per symbol group (round-robin placement)."""
    if device.type != "cuda" or torch.cuda.device_count() < 2 or n_symbols < 2:
        return [device]
    from greekfire.gpu.discovery import discover
    from greekfire.gpu.placement import Placer

    inv = discover()
    placer = Placer("round_robin", min_free_mb=0)
    picked = [torch.device(placer.choose(inv.devices).device.torch_device)
              for _ in range(min(n_symbols, len(inv.gpus)))]
    return [d for d in dict.fromkeys(picked) if d.type == "cuda"] or [device]


def _score_on(c: Candidates, config: WheelConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(deltas, (rows, 4) scores) of ``c`` computed on ``device`` in OOM-safe batches."""
    c = c.to(device)
    d = deltas(c, config)

    def batch(idx: torch.Tensor) -> torch.Tensor:
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        return score_rows(c.rows(slice(lo, hi)), d[lo:hi], config)

    out = run_with_oom_backoff(batch, torch.arange(len(c), device=device), config.batch_rows,
                               device=str(device)) if len(c) else torch.empty((0, 4), dtype=_F64)
    return d, out


def select(c: Candidates, config: WheelConfig, device: torch.device | str | None = None) -> Selection:
    """Score every row of ``c`` and pick the best contract per (symbol, right) (module doc). ``device``
    (default ``wheel.device``) goes through :func:`~greekfire.gpu.device.choose_device`."""
    dev = choose_device(device if device is not None else config.device)
    n, n_sym = len(c), len(c.symbols)
    devs = _devices(dev, n_sym)
    if len(devs) == 1:
        d, out = _score_on(c, config, devs[0])
        d, out = d.cpu(), out.cpu()
    else:  # symbols split across GPUs, results gathered on the CPU in row order
        d = torch.full((n,), math.nan, dtype=_F64)
        out = torch.zeros((n, 4), dtype=_F64)
        sym = c.sym.cpu()
        for k, dv in enumerate(devs):
            idx = torch.nonzero(sym % len(devs) == k).flatten()
            if idx.numel():
                dk, ok = _score_on(c.rows(idx.to(c.device)), config, dv)
                d[idx], out[idx] = dk.cpu(), ok.cpu()
    score, mask = out[:, 0], out[:, 1] > 0.5
    group = c.sym.cpu() * 2 + (c.right.cpu() > 0).to(torch.int64)
    best = best_rows(score, mask, group, 2 * n_sym).tolist()
    picks = {(c.symbols[g // 2], 1.0 if g % 2 else -1.0): r for g, r in enumerate(best) if r < n}
    return Selection(picks, d, out[:, 2], out[:, 3], score, mask, [str(x) for x in devs])


# ------------------------------------------------------------------------------------------------- pandas
def _bsm_delta(right: float, spot: float, strike: float, ttm: float, rate: float, q: float, vol: float) -> float:
    sd = vol * math.sqrt(ttm)
    d1 = (math.log(spot / strike) + (rate - q + 0.5 * vol * vol) * ttm) / sd
    nd1 = 0.5 * (1.0 + math.erf(d1 / math.sqrt(2.0)))
    return math.exp(-q * ttm) * (nd1 if right > 0 else nd1 - 1.0)


def select_pandas(frame: pd.DataFrame, config: WheelConfig) -> dict[tuple[str, float], int]:
    """The same rules as :func:`select`, one row at a time (``DataFrame.apply``): the best row position per
    (symbol, right). Deltas: the frame's ``delta`` column, else Black-Scholes-Merton per row (so it matches
    :func:`select` for ``exercise: european``). For the benchmark and the equivalence test only."""
    oi_ref, vol_ref = _refs(config)
    has_delta = "delta" in frame.columns

    def one(r: pd.Series) -> float:
        bid, ask, dte = float(r["bid"]), float(r["ask"]), float(r["dte"])
        right, strike, spot = float(r["right"]), float(r["strike"]), float(r["spot"])
        mid = 0.5 * (bid + ask)
        spread = (ask - bid) / max(mid, 1e-12)
        collateral = spot if right > 0 else strike
        yld = mid / collateral * 365.0 / max(dte, 1.0)
        if not (bid > 0 and ask >= bid and r["open_interest"] >= config.min_open_interest
                and r["volume"] >= config.min_volume and spread <= config.max_spread
                and mid >= config.min_premium and yld >= config.min_annual_yield
                and r["dte_target"] <= dte <= r["max_dte"] and r["strike_min"] <= strike <= r["strike_max"]
                and r["iv_rank"] >= config.iv_rank_min and bool(r["allowed"])):
            return math.nan
        if has_delta:
            delta = float(r["delta"])
        else:
            delta = _bsm_delta(right, spot, strike, max(dte / 365.0, 1e-6), config.rate, config.dividend_yield,
                               max(float(r["iv"]), 1e-4))
        target = float(r["target_delta"])
        if not (math.isfinite(delta) and abs(delta) <= target + 1e-12):
            return math.nan
        liq = (min(r["open_interest"] / oi_ref, 1.0) + min(r["volume"] / vol_ref, 1.0)
               + max(1.0 - spread / config.max_spread, 0.0)) / 3.0
        return (-abs(abs(delta) - target) - config.score_dte_weight * (dte - r["dte_target"]) / 365.0
                + config.score_yield_weight * yld + config.score_liquidity_weight * liq)

    scores = frame.apply(one, axis=1)
    keys = frame["symbol"] if "symbol" in frame.columns else frame["sym"]
    table = pd.DataFrame({"key": keys.to_numpy(), "right": frame["right"].to_numpy(),
                          "score": scores.to_numpy(), "pos": np.arange(len(frame))}).dropna(subset=["score"])
    best = table.loc[table.groupby(["key", "right"], sort=False, observed=True)["score"].idxmax()]
    return {(k, float(rt)): int(p) for k, rt, p in zip(best["key"], best["right"], best["pos"], strict=True)}


def synthetic_candidates(n: int, n_symbols: int = 10, seed: int = 0, config: WheelConfig | None = None) -> pd.DataFrame:
    """A random candidate frame of ``n`` rows over ``n_symbols`` symbols (tests and the benchmark): strikes
    50%..150% of spot, DTE 1..200, model-ish bid/ask from a random vol, random open interest and volume."""
    cfg = config or WheelConfig()
    rng = np.random.default_rng(seed)
    names = [f"S{i:03d}" for i in range(n_symbols)]
    sym = rng.integers(0, n_symbols, n)
    spots = rng.uniform(20.0, 500.0, n_symbols)
    spot = spots[sym]
    right = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    strike = np.round(spot * rng.uniform(0.5, 1.5, n), 1)
    dte = rng.integers(1, 200, n).astype(np.float64)
    iv = rng.uniform(0.1, 0.6, n)
    # a rough option value: intrinsic + time value ~ 0.4 sigma sqrt(T) S exp(-moneyness^2)
    t = dte / 365.0
    mny = np.log(strike / spot) / (iv * np.sqrt(t))
    value = np.maximum(right * (spot - strike), 0.0) + 0.4 * iv * np.sqrt(t) * spot * np.exp(-0.5 * mny * mny)
    half = np.maximum(0.01, value * rng.uniform(0.01, 0.3, n)) / 2.0
    bid = np.maximum(np.round(value - half, 2), 0.0)
    ask = np.round(value + half, 2) + 0.01
    return pd.DataFrame({
        "symbol": pd.Categorical.from_codes(sym, names), "right": right, "strike": strike, "dte": dte, "bid": bid, "ask": ask,
        "open_interest": rng.integers(0, 5000, n).astype(np.float64),
        "volume": rng.integers(0, 500, n).astype(np.float64), "iv": iv, "spot": spot,
        "target_delta": np.where(right > 0, cfg.call_delta, cfg.put_delta), "dte_target": float(cfg.dte),
        "max_dte": float(cfg.max_dte), "strike_min": -np.inf, "strike_max": np.inf,
        "iv_rank": rng.random(n), "allowed": True,
    })
