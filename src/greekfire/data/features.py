"""Model features: the underlying's history, the contract at the quote date, and calendar time.

One sample is a window of ``window`` trading days of underlying features (up to and including the quote
date, never after it) plus the contract's features at the quote date; the target is mid price / strike.

Units: ttm in years (ACT/365); vols annualised (sqrt(252) trading days); returns are log returns; Greeks
from :mod:`greekfire.quant` at the 20-day historical vol (vega per 1.00 vol, theta per year), divided by
the strike (or multiplied by spot^2 / strike for gamma) so every feature is scale free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter
from greekfire.data.schema import DROP_REASONS, conform_bars, conform_quotes, quote_problems

TRADING_DAYS = 252.0
SMA_LENGTHS = (5, 10, 20, 50)
EMA_LENGTHS = (5, 10, 20, 50)
RETURN_LENGTHS = (1, 5, 20)
RV_LENGTHS = (5, 20, 60)
RSI_LENGTH = 14
HIST_VOL_LENGTH = 20  # the vol the Greeks and the Black-Scholes baseline use

SEQ_NAMES: tuple[str, ...] = (
    *(f"log_ret_{n}" for n in RETURN_LENGTHS),
    *(f"close_over_sma_{n}" for n in SMA_LENGTHS),
    *(f"close_over_ema_{n}" for n in EMA_LENGTHS),
    f"rsi_{RSI_LENGTH}",
    *(f"rv_{n}" for n in RV_LENGTHS),
)
CONTRACT_NAMES: tuple[str, ...] = (
    "moneyness",
    "log_moneyness",
    "ttm",
    "sqrt_ttm",
    "hist_vol",
    "std_log_moneyness",
    "bs_delta",
    "bs_gamma_s2_k",
    "bs_vega_k",
    "bs_theta_k",
    "bs_rho_k",
    "is_call",
    "is_put",
    "is_european",
    "is_american",
    "days_to_expiry",
    "dow_sin",
    "dow_cos",
    "month_sin",
    "month_cos",
)
# features that are already on a unit scale: the normaliser leaves them as they are
UNSCALED: frozenset[str] = frozenset(
    {"is_call", "is_put", "is_european", "is_american", "dow_sin", "dow_cos", "month_sin", "month_cos"}
)
_GREEK_CHUNK = 65_536
ROWS_DROPPED = counter("greekfire_data_rows_dropped", "quote rows dropped while building samples", ["reason"])
SAMPLES_BUILT = counter("greekfire_data_samples_built", "samples built from quote rows")
SAMPLE_DROP_REASONS = (*DROP_REASONS, "no_underlying_bar", "insufficient_history")


# ---------------------------------------------------------------------------------------------- indicators
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


def underlying_features(bars: pd.DataFrame) -> pd.DataFrame:
    """Per-day underlying features (:data:`SEQ_NAMES`), indexed like the date-sorted ``bars``.

    Each row uses only that day's close and earlier ones.
    """
    b = conform_bars(bars)
    close = b["close"].to_numpy()
    cols: dict[str, np.ndarray] = {}
    for k in RETURN_LENGTHS:
        cols[f"log_ret_{k}"] = log_returns(close, k)
    for n in SMA_LENGTHS:
        cols[f"close_over_sma_{n}"] = close / sma(close, n) - 1.0
    for n in EMA_LENGTHS:
        e = ema(close, n)
        e[: n - 1] = np.nan  # too few values for the average to mean anything
        cols[f"close_over_ema_{n}"] = close / e - 1.0
    cols[f"rsi_{RSI_LENGTH}"] = rsi(close, RSI_LENGTH) / 100.0
    for n in RV_LENGTHS:
        cols[f"rv_{n}"] = realized_vol(close, n)
    out = pd.DataFrame(cols, columns=list(SEQ_NAMES))
    out.insert(0, "date", b["date"].to_numpy())
    out.insert(1, "close", close)
    out[f"hist_vol_{HIST_VOL_LENGTH}"] = realized_vol(close, HIST_VOL_LENGTH)
    return out


# ------------------------------------------------------------------------------------------------- samples
@dataclass(slots=True)
class Samples:
    """Model-ready arrays (all numpy; N samples sorted by quote date).

    ``seq`` float32 [N, window, F_seq]; ``contract`` float32 [N, F_c]; ``target`` float32 [N] (mid / strike);
    ``bs_baseline`` float32 [N] (Black-Scholes price / strike at the 20-day historical vol);
    ``quote_date`` datetime64[D] [N]; ``row_id`` int64 [N] (position in the ``quotes`` frame given to
    :func:`build_samples` each sample came from); ``dropped`` bad rows by reason.
    """

    seq: np.ndarray
    contract: np.ndarray
    target: np.ndarray
    bs_baseline: np.ndarray
    quote_date: np.ndarray
    seq_names: list[str]
    contract_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    row_id: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @property
    def window(self) -> int:
        """Days per sequence."""
        return int(self.seq.shape[1])

    def take(self, index: np.ndarray) -> Samples:
        """The samples at ``index`` (integer positions or a boolean mask); names and counts are kept."""
        return replace(
            self,
            seq=self.seq[index],
            contract=self.contract[index],
            target=self.target[index],
            bs_baseline=self.bs_baseline[index],
            quote_date=self.quote_date[index],
            row_id=None if self.row_id is None else self.row_id[index],
            dropped=dict(self.dropped),
        )


def _greeks(
    right: np.ndarray,
    spot: np.ndarray,
    strike: np.ndarray,
    ttm: np.ndarray,
    rate: float,
    div: float,
    vol: np.ndarray,
) -> dict[str, np.ndarray]:
    import torch

    from greekfire.quant import bsm_greeks

    parts: list[dict[str, np.ndarray]] = []
    # chunks keep each call small: eager kernels, no one-off compilation cost for a feature pass
    for a in range(0, len(right), _GREEK_CHUNK):
        sl = slice(a, a + _GREEK_CHUNK)
        t = [torch.tensor(np.asarray(v[sl], dtype=np.float64)) for v in (right, spot, strike, ttm, vol)]
        g = bsm_greeks(t[0], t[1], t[2], t[3], float(rate), float(div), t[4])
        parts.append({k: v.detach().cpu().numpy() for k, v in g.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def build_samples(
    quotes: pd.DataFrame,
    underlying: pd.DataFrame,
    window: int = 20,
    *,
    rate: float | None = None,
    div_yield: float | None = None,
) -> Samples:
    """Turn quotes and the underlying's daily bars into :class:`Samples`.

    ``quotes``: the quote schema (:mod:`greekfire.data.schema`); ``underlying``: daily bars of ONE
    underlying (``date``, ``close``). ``rate`` and ``div_yield`` are continuously compounded, per year,
    used for the Greeks and the baseline (default: ``quotes.attrs`` as the synthetic market sets them,
    else 0). Bad quote rows are dropped and counted by reason in
    ``samples.dropped``, as are quotes whose date has no bar (``no_underlying_bar``) or too little history
    for the window and the indicators (``insufficient_history``).
    """
    if window < 1:
        raise DataError("window", window, "the window must be >= 1 day")
    # a generated market carries its own rate and yield; real data defaults to zero unless told
    rate = float(quotes.attrs.get("rate", 0.0) if rate is None else rate)
    div_yield = float(quotes.attrs.get("div_yield", 0.0) if div_yield is None else div_yield)
    if "underlying" in underlying.columns and underlying["underlying"].nunique(dropna=True) > 1:
        names = sorted(map(str, underlying["underlying"].dropna().unique()))
        raise DataError(
            "underlying.underlying", names, "pass the bars of one underlying (filter the frame first)"
        )
    conformed = conform_quotes(quotes)
    why = quote_problems(conformed).to_numpy()
    source_rows = np.flatnonzero(why == "")  # positions in the caller's frame, kept for row_id
    clean = conformed.iloc[source_rows].reset_index(drop=True)
    dropped = {r: int((why == r).sum()) for r in DROP_REASONS}
    dropped = {r: dropped.get(r, 0) for r in SAMPLE_DROP_REASONS}
    feats = underlying_features(underlying)
    days = feats["date"].to_numpy().astype("datetime64[D]")
    if len(days) != len(np.unique(days)):
        raise DataError("underlying.date", "duplicates", "one bar per date is required")
    seq_all = feats[list(SEQ_NAMES)].to_numpy(dtype=np.float64)
    hv_all = feats[f"hist_vol_{HIST_VOL_LENGTH}"].to_numpy()

    qd = clean["quote_date"].to_numpy().astype("datetime64[D]")
    pos = np.searchsorted(days, qd)
    has_bar = (
        (pos < len(days)) & (days[np.minimum(pos, len(days) - 1)] == qd)
        if len(days)
        else np.zeros(len(qd), bool)
    )
    dropped["no_underlying_bar"] = int((~has_bar).sum())

    # a day is usable as a window end when the window's days and the hist vol are all known
    row_ok = np.isfinite(seq_all).all(axis=1)
    day_ok = np.zeros(len(days), dtype=bool)
    if len(days) >= window:
        win_ok = np.lib.stride_tricks.sliding_window_view(row_ok, window).all(axis=1)
        day_ok[window - 1 :] = win_ok & np.isfinite(hv_all[window - 1 :])
    enough = np.zeros(len(qd), dtype=bool)
    enough[has_bar] = day_ok[pos[has_bar]]
    dropped["insufficient_history"] = int((has_bar & ~enough).sum())

    keep = np.flatnonzero(enough)
    keep = keep[np.argsort(qd[keep], kind="stable")]
    q = clean.iloc[keep]
    p = pos[keep]
    n = len(keep)

    seq = np.empty((n, window, len(SEQ_NAMES)), dtype=np.float32)
    if n:
        windows = np.lib.stride_tricks.sliding_window_view(seq_all, window, axis=0)  # [D-w+1, F, w]
        seq[:] = windows[p - window + 1].transpose(0, 2, 1)

    spot = q["spot"].to_numpy(dtype=np.float64)
    strike = q["strike"].to_numpy(dtype=np.float64)
    expiry = q["expiry"].to_numpy().astype("datetime64[D]")
    qdate = qd[keep]
    dte = (expiry - qdate).astype(np.int64).astype(np.float64)
    ttm = dte / 365.0
    hv = hv_all[p]
    is_call = (q["right"].to_numpy() == "C").astype(np.float64)
    right = np.where(is_call > 0, 1.0, -1.0)
    style = q["style"].to_numpy()
    is_american = np.array([s == "A" for s in style], dtype=np.float64)

    g = (
        _greeks(right, spot, strike, ttm, rate, div_yield, hv)
        if n
        else {k: np.zeros(0) for k in ("value", "delta", "gamma", "vega", "theta", "rho")}
    )
    dow = pd.DatetimeIndex(qdate).day_of_week.to_numpy().astype(np.float64)
    month = pd.DatetimeIndex(qdate).month.to_numpy().astype(np.float64)
    log_m = np.log(spot / strike)
    contract_cols = {
        "moneyness": spot / strike,
        "log_moneyness": log_m,
        "ttm": ttm,
        "sqrt_ttm": np.sqrt(ttm),
        "hist_vol": hv,
        "std_log_moneyness": log_m / (hv * np.sqrt(ttm)),
        "bs_delta": g["delta"],
        "bs_gamma_s2_k": g["gamma"] * spot * spot / strike,
        "bs_vega_k": g["vega"] / strike,
        "bs_theta_k": g["theta"] / strike,
        "bs_rho_k": g["rho"] / strike,
        "is_call": is_call,
        "is_put": 1.0 - is_call,
        "is_european": 1.0 - is_american,
        "is_american": is_american,
        "days_to_expiry": dte,
        "dow_sin": np.sin(2 * np.pi * dow / 7.0),
        "dow_cos": np.cos(2 * np.pi * dow / 7.0),
        "month_sin": np.sin(2 * np.pi * (month - 1) / 12.0),
        "month_cos": np.cos(2 * np.pi * (month - 1) / 12.0),
    }
    contract = (
        np.stack([contract_cols[c] for c in CONTRACT_NAMES], axis=1).astype(np.float32)
        if n
        else (np.zeros((0, len(CONTRACT_NAMES)), dtype=np.float32))
    )
    mid = 0.5 * (q["bid"].to_numpy(dtype=np.float64) + q["ask"].to_numpy(dtype=np.float64))
    for reason, count in dropped.items():
        if count:
            ROWS_DROPPED.labels(reason=reason).inc(count)
    SAMPLES_BUILT.inc(n)
    return Samples(
        seq=seq,
        contract=contract,
        target=(mid / strike).astype(np.float32),
        bs_baseline=(g["value"] / strike).astype(np.float32) if n else np.zeros(0, np.float32),
        quote_date=qdate,
        seq_names=list(SEQ_NAMES),
        contract_names=list(CONTRACT_NAMES),
        dropped=dropped,
        row_id=source_rows[keep].astype(np.int64),
    )


def time_split(
    samples: Samples, val_frac: float = 0.15, test_frac: float = 0.15
) -> tuple[Samples, Samples, Samples]:
    """Split by quote date into (train, val, test): earliest dates train, latest test, no date in two.

    Fractions are of the distinct quote dates (each rounded, at least one date when > 0). Never shuffles:
    every train date is before every val date, which is before every test date.
    """
    for name, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0.0 <= frac < 1.0:
            raise DataError(name, frac, "a fraction in [0, 1)")
    dates = np.unique(samples.quote_date)
    nd = len(dates)
    n_test = max(1, round(nd * test_frac)) if test_frac > 0 else 0
    n_val = max(1, round(nd * val_frac)) if val_frac > 0 else 0
    n_train = nd - n_val - n_test
    if n_train < 1:
        raise DataError(
            "samples.quote_date",
            f"{nd} distinct dates",
            f"too few dates for val_frac={val_frac}, test_frac={test_frac}",
        )
    train_end = dates[n_train - 1]
    val_end = dates[n_train + n_val - 1] if n_val else train_end
    qd = samples.quote_date
    return (
        samples.take(qd <= train_end),
        samples.take((qd > train_end) & (qd <= val_end)),
        samples.take(qd > val_end),
    )


def feature_moments(x: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation over every axis but the last (float64).

    The one place the standardisation statistics are computed, for :class:`Normalizer` (numpy samples)
    and the models' in-network scaler alike: a constant feature gets std 1 (centred, not blown up), and
    the unit-scale features in :data:`UNSCALED` get mean 0 and std 1 (left as they are).
    """
    x = np.asarray(x)
    if len(names) != x.shape[-1]:
        raise DataError("feature_names", list(names), f"expected {x.shape[-1]} names, one per feature column")
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0) if len(flat) else np.zeros(x.shape[-1])
    std = flat.std(axis=0) if len(flat) else np.ones(x.shape[-1])
    std = np.where(std > 1e-8, std, 1.0)
    for i, nm in enumerate(names):
        if nm in UNSCALED:
            mean[i], std[i] = 0.0, 1.0
    return mean, std


class Normalizer:
    """Per-feature standardisation fit on the training split only; save it with the model.

    One-hot and cyclical features (:data:`UNSCALED`) are left as they are. ``transform`` returns new
    :class:`Samples`; targets are not touched (mid / strike is already scale free).
    """

    VERSION = 1

    def __init__(
        self,
        seq_names: list[str],
        contract_names: list[str],
        seq_mean: np.ndarray,
        seq_std: np.ndarray,
        contract_mean: np.ndarray,
        contract_std: np.ndarray,
    ) -> None:
        self.seq_names = list(seq_names)
        self.contract_names = list(contract_names)
        self.seq_mean = np.asarray(seq_mean, dtype=np.float32)
        self.seq_std = np.asarray(seq_std, dtype=np.float32)
        self.contract_mean = np.asarray(contract_mean, dtype=np.float32)
        self.contract_std = np.asarray(contract_std, dtype=np.float32)

    @classmethod
    def fit(cls, train: Samples) -> Normalizer:
        """Fit on the training split (never on val/test: that would leak their statistics)."""
        if len(train) == 0:
            raise DataError("train", 0, "cannot fit a normaliser on zero samples")
        sm, ss = feature_moments(train.seq, train.seq_names)
        cm, cs = feature_moments(train.contract, train.contract_names)
        return cls(train.seq_names, train.contract_names, sm, ss, cm, cs)

    def transform(self, samples: Samples) -> Samples:
        """Standardised copy of ``samples`` (float32)."""
        if samples.seq_names != self.seq_names or samples.contract_names != self.contract_names:
            raise DataError(
                "samples.feature_names", samples.contract_names, "do not match the normaliser's features"
            )
        return replace(
            samples,
            seq=((samples.seq - self.seq_mean) / self.seq_std).astype(np.float32),
            contract=((samples.contract - self.contract_mean) / self.contract_std).astype(np.float32),
            dropped=dict(samples.dropped),
        )

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and strings (JSON- and torch.save-friendly)."""
        return {
            "version": self.VERSION,
            "seq_names": list(self.seq_names),
            "contract_names": list(self.contract_names),
            "seq_mean": self.seq_mean.tolist(),
            "seq_std": self.seq_std.tolist(),
            "contract_mean": self.contract_mean.tolist(),
            "contract_std": self.contract_std.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Normalizer:
        """Rebuild a normaliser saved with :meth:`state_dict`."""
        if state.get("version") != cls.VERSION:
            raise DataError("normalizer.version", state.get("version"), f"expected {cls.VERSION}")
        return cls(
            state["seq_names"],
            state["contract_names"],
            np.asarray(state["seq_mean"]),
            np.asarray(state["seq_std"]),
            np.asarray(state["contract_mean"]),
            np.asarray(state["contract_std"]),
        )
