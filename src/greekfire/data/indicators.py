"""Indicators of a daily close series: moving averages, RSI, log returns and realized volatility.

numpy in, numpy out, one value per day (NaN until enough days are known); each value uses only that day
and earlier ones. :func:`sma_tensor` and :func:`rsi_tensor` compute the same on torch tensors, many series
at once (one per row). Vols are annualised with sqrt(252) trading days; returns are log returns.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from greekfire.core.errors import DataError

if TYPE_CHECKING:
    import torch

TRADING_DAYS = 252.0
RSI_LENGTH = 14


def sma(x: np.ndarray, n: int) -> np.ndarray:
    """Simple moving average of the last ``n`` values (NaN for the first ``n-1``)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    if n <= 0:
        raise DataError("n", n, "a moving-average length must be >= 1")
    if len(x) >= n:
        c = np.cumsum(np.insert(x, 0, 0.0))
        out[n - 1 :] = (c[n:] - c[:-n]) / n
    return out


def _smooth(x: np.ndarray, alpha: float, first: float) -> np.ndarray:
    """y[0] = alpha*x[0] + (1-alpha)*first, y[i] = alpha*x[i] + (1-alpha)*y[i-1] (one C-level IIR filter)."""
    # lazy: scipy.signal costs about 0.8 s to import; a model server loads this module for the Normalizer only
    from scipy.signal import lfilter

    y, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], x, zi=[(1.0 - alpha) * first])
    return np.asarray(y, dtype=np.float64)


def ema(x: np.ndarray, n: int) -> np.ndarray:
    """Exponential moving average with alpha = 2/(n+1), seeded with the first value."""
    x = np.asarray(x, dtype=np.float64)
    if n <= 0:
        raise DataError("n", n, "an EMA length must be >= 1")
    if len(x) == 0:
        return x.copy()
    return _smooth(x, 2.0 / (n + 1.0), x[0])


def rsi(close: np.ndarray, n: int = RSI_LENGTH) -> np.ndarray:
    """Wilder's relative strength index, 0..100 (NaN until ``n`` changes are known).

    The first average gain/loss is the plain mean of the first ``n`` changes; later ones are smoothed as
    (previous x (n-1) + today) / n. No losses gives 100, no change at all gives 50.
    """
    x = np.asarray(close, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    if len(x) <= n:
        return out
    d = np.diff(x)
    gain, loss = np.clip(d, 0, None), np.clip(-d, 0, None)
    seed_g, seed_l = gain[:n].mean(), loss[:n].mean()
    # averages for days n, n+1, ...: the seed, then Wilder's smoothing of each later change
    avg_g = np.concatenate([[seed_g], _smooth(gain[n:], 1.0 / n, seed_g)])
    avg_l = np.concatenate([[seed_l], _smooth(loss[n:], 1.0 / n, seed_l)])
    with np.errstate(divide="ignore", invalid="ignore"):
        val = 100.0 - 100.0 / (1.0 + avg_g / avg_l)
    val = np.where(avg_l == 0.0, np.where(avg_g == 0.0, 50.0, 100.0), val)
    out[n:] = val
    return out


def log_returns(close: np.ndarray, k: int = 1) -> np.ndarray:
    """log(close_t / close_{t-k}) (NaN for the first ``k``)."""
    x = np.asarray(close, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    if len(x) > k:
        out[k:] = np.log(x[k:] / x[:-k])
    return out


def realized_vol(close: np.ndarray, n: int) -> np.ndarray:
    """Annualised realized vol: sample std (ddof=1) of the last ``n`` daily log returns x sqrt(252).

    NaN until ``n`` returns exist (index ``n``).
    """
    r = log_returns(close, 1)
    out = np.full(r.shape, np.nan)
    if len(r) > n:
        win = np.lib.stride_tricks.sliding_window_view(r[1:], n)
        out[n:] = win.std(axis=1, ddof=1) * math.sqrt(TRADING_DAYS)
    return out


# ------------------------------------------------------------------------------------------------------
# the same indicators on torch tensors: one row per series (symbols x days), the last axis is time; the
# values equal the numpy functions above row by row. torch is imported when they are first called.
def sma_tensor(x: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`sma` along the last axis of ``x`` (NaN for the first ``n-1`` values of each row)."""
    import torch

    if n <= 0:
        raise DataError("n", n, "a moving-average length must be >= 1")
    x = torch.as_tensor(x, dtype=torch.float64)
    out = torch.full_like(x, math.nan)
    t = x.shape[-1]
    if t >= n:
        c = torch.nn.functional.pad(torch.cumsum(x, dim=-1), (1, 0))
        out[..., n - 1 :] = (c[..., n:] - c[..., :-n]) / n
    return out


def rsi_tensor(close: torch.Tensor, n: int = RSI_LENGTH) -> torch.Tensor:
    """:func:`rsi` (Wilder, 0..100) along the last axis of ``close``, all rows at once (NaN until ``n``
    changes are known)."""
    import torch

    x = torch.as_tensor(close, dtype=torch.float64)
    out = torch.full_like(x, math.nan)
    t = x.shape[-1]
    if t <= n:
        return out
    d = torch.diff(x, dim=-1)
    gain, loss = d.clamp(min=0.0), (-d).clamp(min=0.0)
    avg_g, avg_l = gain[..., :n].mean(dim=-1), loss[..., :n].mean(dim=-1)
    gs, ls = [avg_g], [avg_l]
    for i in range(n, t - 1):  # Wilder's smoothing, every row at once
        avg_g = (avg_g * (n - 1) + gain[..., i]) / n
        avg_l = (avg_l * (n - 1) + loss[..., i]) / n
        gs.append(avg_g)
        ls.append(avg_l)
    out[..., n:] = _rsi_of(torch.stack(gs, dim=-1), torch.stack(ls, dim=-1))
    return out


def _rsi_of(avg_g: torch.Tensor, avg_l: torch.Tensor) -> torch.Tensor:
    import torch

    val = 100.0 - 100.0 / (1.0 + avg_g / avg_l)
    flat = torch.where(avg_g == 0.0, torch.full_like(val, 50.0), torch.full_like(val, 100.0))
    return torch.where(avg_l == 0.0, flat, val)
