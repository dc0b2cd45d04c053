"""Model features: the underlying's history, the contract at the quote date, and calendar time.

One sample is a window of ``window`` trading days of underlying features (up to and including the quote
date, never after it) plus the contract's features at the quote date; the target is mid price / strike.

Units: ttm in years (ACT/365); vols annualised (sqrt(252) trading days); returns are log returns; Greeks
from :mod:`greekfire.quant` at the 20-day historical vol (vega per 1.00 vol, theta per year), divided by
the strike (or multiplied by spot^2 / strike for gamma) so every feature is scale free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter
from greekfire.data.indicators import RSI_LENGTH, ema, log_returns, realized_vol, rsi, sma
from greekfire.data.schema import DROP_REASONS, conform_bars, conform_quotes, quote_problems
from greekfire.quant import bsm_greeks

SMA_LENGTHS = (5, 10, 20, 50)
EMA_LENGTHS = (5, 10, 20, 50)
RETURN_LENGTHS = (1, 5, 20)
RV_LENGTHS = (5, 20, 60)
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

    The one place the standardisation statistics are computed, for :class:`Normalizer` (fit on numpy
    samples or on a model's training tensors): a constant feature gets std 1 (centred, not blown up), and
    the unit-scale features in :data:`UNSCALED` get mean 0 and std 1 (left as they are).
    """
    x = np.asarray(x)
    if len(names) != x.shape[-1]:
        raise DataError("feature_names", list(names), f"expected {x.shape[-1]} names, one per feature column")
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0) if len(flat) else np.zeros(x.shape[-1])
    std = flat.std(axis=0) if len(flat) else np.ones(x.shape[-1])
    return _standardising(mean, std, names)


def _standardising(mean: np.ndarray, std: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rule of :func:`feature_moments` applied to raw moments: constant -> std 1, unit-scale -> (0, 1)."""
    std = np.where(std > 1e-8, std, 1.0)
    for i, nm in enumerate(names):
        if nm in UNSCALED:
            mean[i], std[i] = 0.0, 1.0
    return mean, std


class _RunningMoments:
    """Per-feature mean and population std merged batch by batch (Chan et al.'s pairwise update, float64)."""

    def __init__(self, n_features: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def update(self, x: np.ndarray) -> None:
        flat = np.asarray(x).reshape(-1, len(self.mean)).astype(np.float64)
        nb = len(flat)
        if nb == 0:
            return
        mb = flat.mean(axis=0)
        delta = mb - self.mean
        total = self.n + nb
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + ((flat - mb) ** 2).sum(axis=0) + delta**2 * (self.n * nb / total)
        self.n = total

    def result(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            return _standardising(np.zeros(len(self.mean)), np.ones(len(self.mean)), names)
        return _standardising(self.mean.copy(), np.sqrt(self.m2 / self.n), names)


class Normalizer(nn.Module):
    """Per-feature standardisation of the history window (``seq``) and the contract features, fit on the
    training split only: the one input scaler of the data layer and of the pricing models.

    The data layer fits it on :class:`Samples` (:meth:`fit`) and standardises numpy samples
    (:meth:`transform`); a pricing network holds one as its first layer (:meth:`fit_tensors` on the
    training rows, then :meth:`scale_contract` / :meth:`scale_seq` in ``forward``), so the statistics are
    buffers saved in the checkpoint with the weights and the feature names travel with them
    (``state_dict()``'s ``_extra_state``). One-hot and cyclical features (:data:`UNSCALED`) are left as
    they are and constant features are only centred (see :func:`feature_moments`); targets are never
    touched (mid / strike is already scale free).
    """

    VERSION = 1

    seq_mean: Tensor
    seq_std: Tensor
    contract_mean: Tensor
    contract_std: Tensor

    def __init__(
        self,
        seq_names: Sequence[str],
        contract_names: Sequence[str],
        seq_mean: Any = None,
        seq_std: Any = None,
        contract_mean: Any = None,
        contract_std: Any = None,
    ) -> None:
        super().__init__()
        self.seq_names = list(seq_names)
        self.contract_names = list(contract_names)
        for name, value, n, fill in (
            ("seq_mean", seq_mean, len(self.seq_names), 0.0),
            ("seq_std", seq_std, len(self.seq_names), 1.0),
            ("contract_mean", contract_mean, len(self.contract_names), 0.0),
            ("contract_std", contract_std, len(self.contract_names), 1.0),
        ):
            if value is None:
                buf = torch.full((n,), fill)
            elif isinstance(value, Tensor):
                buf = value.detach().cpu()
            else:
                buf = torch.as_tensor(np.asarray(value, dtype=np.float32))
            if buf.shape != (n,):
                raise DataError(f"normalizer.{name}", list(buf.shape), f"expected {n} values, one per feature")
            self.register_buffer(name, buf.to(torch.float32))

    @classmethod
    def fit(cls, train: Samples) -> Normalizer:
        """Fit on the training split (never on val/test: that would leak their statistics)."""
        if len(train) == 0:
            raise DataError("train", 0, "cannot fit a normaliser on zero samples")
        sm, ss = feature_moments(train.seq, train.seq_names)
        cm, cs = feature_moments(train.contract, train.contract_names)
        return cls(train.seq_names, train.contract_names, sm, ss, cm, cs)

    @torch.no_grad()
    def fit_tensors(self, contract: Tensor | np.ndarray, seq: Tensor | np.ndarray | None = None) -> None:
        """Set the statistics in place from training rows: ``contract`` [N, F_c] and ``seq`` [N, window, F_seq]
        (when the normaliser has sequence features), named as the normaliser's features."""
        for x, names, mean_buf, std_buf in (
            (contract, self.contract_names, self.contract_mean, self.contract_std),
            (seq, self.seq_names, self.seq_mean, self.seq_std),
        ):
            if x is None:
                continue
            arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
            mean, std = feature_moments(arr, names)
            mean_buf.copy_(torch.from_numpy(mean).to(mean_buf.dtype))
            std_buf.copy_(torch.from_numpy(std).to(std_buf.dtype))

    @torch.no_grad()
    def fit_batches(self, batches: Iterable[Mapping[str, Tensor]]) -> None:
        """Set the statistics from one pass over training batches (``contract`` [B, F_c] and, when the
        normaliser has sequence features, ``seq`` [B, window, F_seq]): the rule of :meth:`fit_tensors`,
        accumulated batch by batch, for a training split streamed from storage."""
        groups = (
            ("contract", self.contract_names, self.contract_mean, self.contract_std),
            ("seq", self.seq_names, self.seq_mean, self.seq_std),
        )
        acc = {key: _RunningMoments(len(names)) for key, names, _, _ in groups if names}
        for batch in batches:
            for key, moments in acc.items():
                x = batch[key]
                moments.update(x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x))
        for key, names, mean_buf, std_buf in groups:
            if key in acc:
                mean, std = acc[key].result(names)
                mean_buf.copy_(torch.from_numpy(mean).to(mean_buf.dtype))
                std_buf.copy_(torch.from_numpy(std).to(std_buf.dtype))

    def scale_contract(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` over the last axis of contract features [..., F_c] (in ``x``'s dtype)."""
        return (x - self.contract_mean.to(x.dtype)) / self.contract_std.to(x.dtype)

    def scale_seq(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` over the last axis of history windows [..., F_seq] (in ``x``'s dtype)."""
        return (x - self.seq_mean.to(x.dtype)) / self.seq_std.to(x.dtype)

    def forward(self, contract: Tensor, seq: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Standardised ``(contract, seq)``."""
        return self.scale_contract(contract), None if seq is None else self.scale_seq(seq)

    def transform(self, samples: Samples) -> Samples:
        """Standardised copy of ``samples`` (float32)."""
        if samples.seq_names != self.seq_names or samples.contract_names != self.contract_names:
            raise DataError(
                "samples.feature_names", samples.contract_names, "do not match the normaliser's features"
            )
        return replace(
            samples,
            seq=((samples.seq - self.seq_mean.cpu().numpy()) / self.seq_std.cpu().numpy()).astype(np.float32),
            contract=(
                (samples.contract - self.contract_mean.cpu().numpy()) / self.contract_std.cpu().numpy()
            ).astype(np.float32),
            dropped=dict(samples.dropped),
        )

    def get_extra_state(self) -> dict[str, Any]:
        """The feature names and the format version, saved in ``state_dict()`` beside the statistics."""
        return {"version": self.VERSION, "seq_names": list(self.seq_names), "contract_names": list(self.contract_names)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the feature names saved by :meth:`get_extra_state`."""
        if state.get("version") != self.VERSION:
            raise DataError("normalizer.version", state.get("version"), f"expected {self.VERSION}")
        self.seq_names = list(state["seq_names"])
        self.contract_names = list(state["contract_names"])

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and strings (JSON-friendly); :meth:`from_state_dict` reads it back."""
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
    def from_state_dict(cls, state: Mapping[str, Any]) -> Normalizer:
        """Rebuild a normaliser from its ``state_dict()`` (tensors and ``_extra_state``) or its
        :meth:`to_dict` (plain lists, the form earlier versions returned from ``state_dict()``)."""
        meta = state.get("_extra_state", state)
        if meta.get("version") != cls.VERSION:
            raise DataError("normalizer.version", meta.get("version"), f"expected {cls.VERSION}")
        return cls(
            meta["seq_names"],
            meta["contract_names"],
            state["seq_mean"],
            state["seq_std"],
            state["contract_mean"],
            state["contract_std"],
        )
