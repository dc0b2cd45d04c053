"""File pricing behind ``greekfire price``: a CSV or Parquet of options in, the same rows with values,
Greeks, implied vols and a per-row error code out.

Input columns: ``right`` (C/P/call/put/1/-1), ``spot`` (the forward for ``--model black76``), ``strike``,
``ttm`` in years (or ``expiry`` and ``quote_date``, ACT/365), ``rate`` and ``div_yield`` (continuously
compounded), and ``vol`` (annualised) or ``market_price`` (or both). ``--model heston`` also needs ``v0``,
``kappa``, ``theta``, ``sigma``, ``rho``. A missing column fails at once naming it; a bad row gets
``error = bad_input`` (or the implied-vol reason) and the other rows are still priced.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from greekfire.core.errors import DataError
from greekfire.quant import (
    GREEK_NAMES,
    IV_REASONS,
    american_greeks,
    american_implied_vol,
    black76_greeks,
    bsm_greeks,
    heston_price,
    implied_vol,
    parse_right,
)

EUROPEAN_MODELS = ("bsm", "black76", "heston")
AMERICAN_MODELS = ("qdfp", "crr", "baw", "bs2002")
HESTON_COLUMNS = ("v0", "kappa", "theta", "sigma", "rho")
OUTPUT_COLUMNS = (*GREEK_NAMES, "iv", "error")
CHUNK_ROWS = 65_536


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DataError("device", device, "CUDA is not available to torch here (use cpu or auto)")
    return torch.device(device)


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, chosen by suffix."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise DataError("input", str(path), "must end in .csv or .parquet")


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV or Parquet file, chosen by suffix."""
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".parquet", ".pq"):
        frame.to_parquet(path, index=False)
    else:
        raise DataError("output", str(path), "must end in .csv or .parquet")


def _check_columns(frame: pd.DataFrame, model: str) -> None:
    cols = set(frame.columns)
    for name in ("right", "spot", "strike", "rate", "div_yield"):
        if name not in cols:
            raise DataError("column", name, "is required and missing from the input")
    if "ttm" not in cols and not {"expiry", "quote_date"} <= cols:
        missing = "ttm" if not ({"expiry", "quote_date"} & cols) else ({"expiry", "quote_date"} - cols).pop()
        raise DataError("column", missing, "is required (give ttm in years, or expiry and quote_date)")
    if "vol" not in cols and "market_price" not in cols:
        raise DataError("column", "vol", "is required (give vol, market_price or both)")
    if model == "heston":
        for name in HESTON_COLUMNS:
            if name not in cols:
                raise DataError("column", name, "is required for --model heston")


def _numeric(frame: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)


def _ttm(frame: pd.DataFrame) -> np.ndarray:
    if "ttm" in frame.columns:
        return _numeric(frame, "ttm")
    expiry = pd.to_datetime(frame["expiry"], errors="coerce")
    quote = pd.to_datetime(frame["quote_date"], errors="coerce")
    return ((expiry - quote).dt.total_seconds() / 86400.0 / 365.0).to_numpy(dtype=np.float64)


def price_frame(
    frame: pd.DataFrame,
    *,
    style: str = "european",
    model: str | None = None,
    steps: int = 200,
    device: str = "auto",
    dtype: str = "float64",
    on_chunk: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Price every row of ``frame``; returns the input columns plus values, Greeks, ``iv`` and ``error``."""
    model = model or ("bsm" if style == "european" else "qdfp")
    if style not in ("european", "american"):
        raise DataError("style", style, "must be european or american")
    allowed = EUROPEAN_MODELS if style == "european" else AMERICAN_MODELS
    if model not in allowed:
        raise DataError("model", model, f"with --style {style} must be one of {', '.join(allowed)}")
    _check_columns(frame, model)
    dev = resolve_device(device)
    dt = {"float64": torch.float64, "float32": torch.float32}.get(dtype)
    if dt is None:
        raise DataError("dtype", dtype, "must be float64 or float32")
    n = len(frame)
    right = parse_right(frame["right"].to_numpy(), strict=False).numpy()
    spot, strike = _numeric(frame, "spot"), _numeric(frame, "strike")
    rate, div = _numeric(frame, "rate"), _numeric(frame, "div_yield")
    ttm = _ttm(frame)
    vol = _numeric(frame, "vol") if "vol" in frame.columns else np.full(n, np.nan)
    mkt = _numeric(frame, "market_price") if "market_price" in frame.columns else np.full(n, np.nan)
    heston = {k: _numeric(frame, k) for k in HESTON_COLUMNS} if model == "heston" else {}
    has_vol, has_mkt = "vol" in frame.columns, "market_price" in frame.columns
    base_ok = (
        np.isfinite(right) & np.isfinite(spot) & (spot > 0) & np.isfinite(strike) & (strike > 0)
        & np.isfinite(ttm) & (ttm >= 0) & np.isfinite(rate) & np.isfinite(div)
    )
    if has_vol and not has_mkt:
        base_ok &= np.isfinite(vol) & (vol >= 0)
    for arr in heston.values():
        base_ok &= np.isfinite(arr)
    out = {name: np.full(n, np.nan) for name in (*GREEK_NAMES, "iv")}
    error = np.where(base_ok, "", IV_REASONS[5]).astype(object)
    for start in range(0, n, CHUNK_ROWS):
        sl = slice(start, min(n, start + CHUNK_ROWS))
        ok = base_ok[sl]

        def t(a: np.ndarray, fill: float = 1.0, ok: np.ndarray = ok, sl: slice = sl) -> torch.Tensor:
            # bad rows get harmless placeholders so a batch never carries NaN into its neighbours
            return torch.as_tensor(np.where(ok, a[sl], fill), device=dev).to(dt)

        w, S, K, T, r, q = t(right), t(spot, 100.0), t(strike, 100.0), t(ttm), t(rate, 0.0), t(div, 0.0)
        sigma = t(vol, 0.2)
        if has_mkt:
            price_t = t(mkt, math.nan)
            if style == "european":
                iv_res = implied_vol(price_t, w, S, K, T, r, q)
            else:
                iv_res = american_implied_vol(price_t, w, S, K, T, r, q, model=model, steps=steps)
            iv = iv_res.vol.double().cpu().numpy()
            codes = iv_res.code.cpu().numpy()
            out["iv"][sl] = np.where(ok, iv, np.nan)
            reasons = np.array([IV_REASONS[int(c)] for c in range(6)], dtype=object)[codes]
            error[sl] = np.where(ok & (error[sl] == ""), reasons, error[sl])
            vol_chunk = vol[sl]
            use = np.where(np.isfinite(vol_chunk) & (vol_chunk >= 0), vol_chunk, iv)
            priceable = ok & np.isfinite(use)
            sigma = torch.as_tensor(np.where(priceable, use, 0.2), device=dev).to(dt)
        else:
            priceable = ok
        if style == "american":
            greeks = american_greeks(w, S, K, T, r, q, sigma, model=model, steps=steps)
        elif model == "black76":
            greeks = black76_greeks(w, S, K, T, r, sigma)
        elif model == "heston":
            hp = {k: t(v_, 0.1) for k, v_ in heston.items()}
            greeks = {"value": heston_price(w, S, K, T, r, q, hp["v0"], hp["kappa"], hp["theta"], hp["sigma"], hp["rho"])}
        else:
            greeks = bsm_greeks(w, S, K, T, r, q, sigma)
        for name, g in greeks.items():
            out[name][sl] = np.where(priceable, g.double().cpu().numpy(), np.nan)
        if on_chunk is not None:
            on_chunk(sl.stop - sl.start)
    result = frame.copy()
    for name in GREEK_NAMES:
        result[name] = out[name]
    result["iv"] = out["iv"]
    result["error"] = error
    return result


def price_file(
    input_path: str | Path,
    output_path: str | Path,
    *,
    style: str = "european",
    model: str | None = None,
    steps: int = 200,
    device: str = "auto",
    dtype: str = "float64",
    progress: bool = False,
) -> dict[str, Any]:
    """Price a CSV/Parquet file into another (formats by suffix); returns a summary mapping."""
    t0 = time.perf_counter()
    if Path(output_path).suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise DataError("output", str(output_path), "must end in .csv or .parquet")
    frame = read_table(Path(input_path))
    if progress and len(frame) > CHUNK_ROWS:
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task("pricing", total=len(frame))
            result = price_frame(frame, style=style, model=model, steps=steps, device=device, dtype=dtype,
                                 on_chunk=lambda k: bar.advance(task, k))
    else:
        result = price_frame(frame, style=style, model=model, steps=steps, device=device, dtype=dtype)
    write_table(result, Path(output_path))
    counts = result["error"].value_counts().to_dict()
    flagged = int(sum(v for k, v in counts.items() if k))
    return {
        "rows": len(result),
        "priced": int(np.isfinite(result["value"].to_numpy()).sum()),
        "flagged": flagged,
        "errors": {k: int(v) for k, v in counts.items() if k},
        "style": style,
        "model": model or ("bsm" if style == "european" else "qdfp"),
        "device": str(resolve_device(device)),
        "seconds": round(time.perf_counter() - t0, 3),
        "output": str(output_path),
    }
