"""Vendor option-chain layouts as pricing input: a column mapping (or a named preset) from a vendor's CSV
to the columns ``greekfire price`` reads, and the inputs a chain lacks computed from what it has.

A vendor chain gives the quote date, the expiry, bid and ask, the spot and its own implied vol, but no
rate, dividend yield or time to expiry. :func:`pricing_inputs` adds them: ``ttm`` in years ACT/365 from
the two dates, ``market_price`` as the bid/ask mid, and ``rate`` / ``div_yield`` / ``forward`` from
put-call parity (:func:`parity_forwards`). Every other column of the file is carried through unchanged,
so the vendor's implied vol and Greeks stay beside ours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from greekfire.core.errors import DataError
from greekfire.data.schema import normalize_right

FIELDS: dict[str, str] = {
    "right": "call or put (C/P, call/put, 1/-1)",
    "strike": "strike price",
    "spot": "underlying level at the quote",
    "quote_date": "date of the quote",
    "expiry": "expiry date",
    "ttm": "time to expiry, years",
    "bid": "bid price",
    "ask": "ask price",
    "market_price": "option price to solve the implied vol from",
    "rate": "continuously compounded rate, per year",
    "div_yield": "continuously compounded dividend yield, per year",
    "vol": "annualised vol to price at",
    "symbol": "the vendor's contract id",
    "last": "last trade price",
    "volume": "contracts traded",
    "open_interest": "open contracts",
    "vendor_iv": "the vendor's implied vol",
    "vendor_delta": "the vendor's delta",
    "vendor_gamma": "the vendor's gamma",
    "vendor_theta": "the vendor's theta",
    "vendor_vega": "the vendor's vega",
}
"""The fields a ``--columns`` mapping may name (``FIELD=COLUMN``), with what each holds."""

_TEXT_FIELDS = ("right", "symbol")
_DATE_FIELDS = ("quote_date", "expiry")

SPX_VENDOR_COLUMNS: dict[str, str] = {
    "underlying_last": "spot",
    "optionroot": "symbol",
    "type": "right",
    "expiration": "expiry",
    "quotedate": "quote_date",
    "strike": "strike",
    "last": "last",
    "bid": "bid",
    "ask": "ask",
    "volume": "volume",
    "openinterest": "open_interest",
    "impliedvol": "vendor_iv",
    "delta": "vendor_delta",
    "gamma": "vendor_gamma",
    "theta": "vendor_theta",
    "vega": "vendor_vega",
}
"""The SPX vendor layout (``SPX_2018.csv``): vendor column -> our field."""

OPTOPSY_VENDOR_COLUMNS: dict[str, str] = {
    "UnderlyingPrice": "spot",
    "OptionSymbol": "symbol",
    "Type": "right",
    "Expiration": "expiry",
    "DataDate": "quote_date",
    "Strike": "strike",
    "Last": "last",
    "Bid": "bid",
    "Ask": "ask",
    "Volume": "volume",
    "OpenInterest": "open_interest",
    "IVMean": "vendor_iv",
    "Delta": "vendor_delta",
    "Gamma": "vendor_gamma",
    "Theta": "vendor_theta",
    "Vega": "vendor_vega",
}
"""The older vendor layout optopsy reads (``A_2016-01-05.csv``: IVMean/IVBid/IVAsk): vendor column -> ours."""

PARITY_STRIKES = 10
"""Strikes nearest the spot whose call-minus-put mids give each expiry's discount factor (a regression)."""
FORWARD_STRIKES = 6
"""Strikes nearest the spot whose parity forwards are averaged (median) into each expiry's forward."""
RATE_MIN_TTM = 0.05
"""Expiries at least this long (years, about 18 days) vote for the file's rate: shorter ones say little."""


@dataclass(frozen=True, slots=True)
class ChainLayout:
    """How a vendor file maps onto our fields: ``columns`` (our field -> the file's column, matched without
    regard to case or surrounding spaces), ``constants`` (our field -> one value for every row) and the
    ``date_format`` of its dates (None: inferred)."""

    name: str
    columns: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, float] = field(default_factory=dict)
    date_format: str | None = None


PRESETS: dict[str, ChainLayout] = {
    "spx": ChainLayout("spx", {ours: theirs for theirs, ours in SPX_VENDOR_COLUMNS.items()}, {}, "%m/%d/%Y"),
    "optopsy": ChainLayout("optopsy", {ours: theirs for theirs, ours in OPTOPSY_VENDOR_COLUMNS.items()}, {},
                           "%m/%d/%Y"),
}
"""Named layouts for ``--columns NAME``."""


def _allowed() -> str:
    return (f"a preset ({', '.join(PRESETS)}) or FIELD=COLUMN pairs separated by commas (a preset may come "
            f"first, a number instead of a column sets every row), FIELD one of {', '.join(FIELDS)}")


def parse_columns(spec: str) -> ChainLayout:
    """The layout named by a ``--columns`` value: a preset name (``spx``), ``FIELD=COLUMN`` pairs
    (``right=type,strike=strike``), or a preset followed by pairs that override it (``spx,rate=0.02``). A
    number in place of a column sets that field to the number on every row. Raises :class:`DataError`
    naming ``--columns`` and the bad part, with what is allowed."""
    items = [p.strip() for p in spec.split(",") if p.strip()]
    if not items:
        raise DataError("--columns", spec, f"is empty: give {_allowed()}")
    columns: dict[str, str] = {}
    constants: dict[str, float] = {}
    name, date_format = "mapping", None
    if "=" not in items[0]:
        preset = PRESETS.get(items[0].lower())
        if preset is None:
            raise DataError("--columns", items[0], f"is not a preset: give {_allowed()}")
        columns, constants = dict(preset.columns), dict(preset.constants)
        name, date_format = preset.name, preset.date_format
        items = items[1:]
    for item in items:
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise DataError("--columns", item, f"is not FIELD=COLUMN: give {_allowed()}")
        if key not in FIELDS:
            raise DataError("--columns", key, f"is not a field: give {_allowed()}")
        try:
            constants[key] = float(value)
            columns.pop(key, None)
        except ValueError:
            columns[key] = value
            constants.pop(key, None)
    return ChainLayout(name, columns, constants, date_format)


def apply_layout(raw: pd.DataFrame, layout: ChainLayout, source: str = "the file") -> pd.DataFrame:
    """The rows of ``raw`` with our fields named, parsed and typed (dates as ``datetime64``, numbers as
    floats, a bad value a null), followed by the file's other columns as they were; then
    :func:`pricing_inputs` adds what the layout does not give. A mapped column the file lacks raises
    :class:`DataError` naming it, ``source`` (the file) and the file's columns."""
    names = {str(c).lstrip("\ufeff").strip().lower(): c for c in raw.columns}
    ours: dict[str, Any] = {}
    used = set()
    for key, theirs in layout.columns.items():
        col = names.get(theirs.strip().lower())
        if col is None:
            shown = ", ".join(str(c).lstrip("\ufeff").strip() for c in raw.columns)
            raise DataError("--columns", f"{key}={theirs}",
                            f"{source} has no column {theirs!r} (layout {layout.name}); its columns: {shown}")
        used.add(col)
        values = raw[col]
        if key in _DATE_FIELDS:
            text = values.astype(str).str.strip()
            ours[key] = pd.to_datetime(text, format=layout.date_format, errors="coerce") if layout.date_format \
                else pd.to_datetime(text, errors="coerce")
        elif key in _TEXT_FIELDS:
            ours[key] = values.to_numpy(dtype=object)
        else:
            ours[key] = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    for key, value in layout.constants.items():
        ours[key] = np.full(len(raw), value, dtype=np.float64)
    frame = pd.DataFrame(ours, index=raw.index)
    rest = [c for c in raw.columns if c not in used]
    kept = raw[rest].rename(columns=lambda c: str(c).lstrip("\ufeff").strip())
    kept = kept.loc[:, [c for c in kept.columns if c not in frame.columns]]
    return pricing_inputs(pd.concat([frame, kept], axis=1).reset_index(drop=True))


def pricing_inputs(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the pricing inputs it lacks, computed from what it has: ``ttm`` (years ACT/365, from
    ``expiry`` and ``quote_date``), ``market_price`` (the ``bid``/``ask`` mid) and, when neither ``rate``
    nor ``div_yield`` is given, ``rate``, ``div_yield`` and ``forward`` from put-call parity
    (:func:`parity_forwards`; the yield is the one that makes spot grow to the forward,
    ``q = r - ln(F / S) / ttm``). A column already present is left as it is."""
    out = frame.copy()
    cols = set(out.columns)
    if "ttm" not in cols and {"expiry", "quote_date"} <= cols:
        expiry = pd.to_datetime(out["expiry"], errors="coerce")
        quote = pd.to_datetime(out["quote_date"], errors="coerce")
        out["ttm"] = ((expiry - quote).dt.total_seconds() / 86400.0 / 365.0).to_numpy(dtype=np.float64)
    if "market_price" not in cols and {"bid", "ask"} <= cols:
        out["market_price"] = 0.5 * (_num(out, "bid") + _num(out, "ask"))
    needed = {"right", "strike", "spot", "ttm", "market_price"}
    if "div_yield" not in cols and needed <= set(out.columns):
        given = _num(out, "rate") if "rate" in cols else None
        one_rate = given is not None and len(given) > 0 and bool(np.all(given == given[0]))
        if given is None or one_rate:
            rate, forward = parity_forwards(out, rate=float(given[0]) if given is not None and one_rate else None)
            spot, ttm = _num(out, "spot"), _num(out, "ttm")
            with np.errstate(divide="ignore", invalid="ignore"):
                growth = np.log(forward / spot) / ttm
            out["rate"] = rate
            out["div_yield"] = np.where(np.isfinite(growth) & (ttm > 0), rate - growth, rate)
            out["forward"] = forward
    return out


def _num(frame: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)


def parity_forwards(frame: pd.DataFrame, rate: float | None = None) -> tuple[float, np.ndarray]:
    """One discount rate for the chain and a forward per row, from put-call parity on the mids.

    For each (``quote_date``, ``expiry``) with calls and puts at the same strikes: a regression of
    ``C - P`` on ``K`` over the :data:`PARITY_STRIKES` strikes nearest the spot gives its discount factor
    ``D`` (``C - P = D (F - K)``); the rate is the median of ``-ln(D) / ttm`` over expiries of at least
    :data:`RATE_MIN_TTM` years (0 where none qualifies), unless ``rate`` is given. The forward of each expiry is then the median of
    ``K + (C - P) / D`` over the :data:`FORWARD_STRIKES` strikes nearest the spot, with ``D = exp(-rate *
    ttm)``; an expiry without a call-put pair gets ``spot * exp(rate * ttm)`` (no dividend). Columns used:
    ``right``, ``strike``, ``spot``, ``ttm``, ``market_price`` and, where present, ``quote_date`` and
    ``expiry`` (else ``ttm`` groups the rows). Returns ``(rate per year, forward per row)``.
    """
    right = normalize_right(frame["right"].to_numpy()).to_numpy()
    strike, spot, ttm, mid = (_num(frame, c) for c in ("strike", "spot", "ttm", "market_price"))
    keys = [c for c in ("quote_date", "expiry") if c in frame.columns] or ["ttm"]
    ok = np.isfinite(strike) & np.isfinite(mid) & np.isfinite(spot) & np.isfinite(ttm)
    work = pd.DataFrame({"right": right, "strike": strike, "mid": mid, "spot": spot, "ttm": ttm, "ok": ok})
    for k in keys:
        work[f"key_{k}"] = frame[k].to_numpy()
    groups: list[tuple[np.ndarray, list[float], pd.Series, float, float, float]] = []
    for _, g in work.groupby([f"key_{k}" for k in keys], sort=False, dropna=False):
        good = g[g["ok"]]
        calls = good[good["right"] == "C"].groupby("strike")["mid"].mean()
        puts = good[good["right"] == "P"].groupby("strike")["mid"].mean()
        s0 = float(g["spot"].iloc[0])
        t = float(g["ttm"].iloc[0])
        near = sorted(calls.index.intersection(puts.index), key=lambda k: abs(k - s0))[:PARITY_STRIKES]
        diff = calls[near] - puts[near] if near else pd.Series(dtype=float)
        disc = math.nan
        if len(near) >= 2:
            x = np.vstack([np.ones(len(near)), -np.asarray(near, dtype=float)]).T
            disc = float(np.linalg.lstsq(x, diff.to_numpy(), rcond=None)[0][1])
        groups.append((g.index.to_numpy(), near, diff, s0, t, disc))
    if rate is None:
        rates = [-math.log(d) / t for *_, t, d in groups if t >= RATE_MIN_TTM and d > 0]
        rate = float(np.median(rates)) if rates else 0.0
    forward = np.full(len(frame), np.nan)
    for index, near, diff, s0, t, _ in groups:
        disc = math.exp(-rate * t) if math.isfinite(t) else math.nan
        if near:
            forward[index] = float(np.median([k + diff[k] / disc for k in near[:FORWARD_STRIKES]]))
        else:
            forward[index] = s0 * math.exp(rate * t) if math.isfinite(t) else math.nan
    return rate, forward


def vendor_iv_agreement(result: pd.DataFrame) -> dict[str, float | int] | None:
    """How our implied vols (``iv``) compare with the vendor's (``vendor_iv``) on the out-of-the-money
    quotes with a bid whose vol we solved: ``quotes`` (count), ``median_abs_diff``, ``p90_abs_diff`` and
    ``mean_signed_diff`` (ours minus the vendor's), in vol (0.01 = one vol point). None when the frame has
    no ``vendor_iv``, ``iv``, ``bid`` or ``error`` column."""
    if not {"vendor_iv", "iv", "bid", "error", "right", "strike", "spot"} <= set(result.columns):
        return None
    w = np.where(normalize_right(result["right"].to_numpy()).to_numpy() == "C", 1.0, -1.0)
    iv, vendor = _num(result, "iv"), _num(result, "vendor_iv")
    with np.errstate(invalid="ignore"):
        otm = (
            (result["error"].to_numpy() == "") & np.isfinite(iv) & np.isfinite(vendor) & (_num(result, "bid") > 0)
            & (w * (_num(result, "strike") - _num(result, "spot")) > 0)
        )
    diff = (iv - vendor)[otm]
    if not len(diff):
        return {"quotes": 0}
    return {
        "quotes": int(len(diff)),
        "median_abs_diff": round(float(np.median(np.abs(diff))), 4),
        "p90_abs_diff": round(float(np.quantile(np.abs(diff), 0.9)), 4),
        "mean_signed_diff": round(float(np.mean(diff)), 4),
    }
