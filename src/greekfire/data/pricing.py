"""File pricing behind ``greekfire price``: a CSV or Parquet of options in, the same rows with values,
Greeks, implied vols and a per-row error code out.

Input columns: ``right`` (C/P/call/put/1/-1), ``spot`` (the forward for ``--model black76``), ``strike``,
``ttm`` in years (or ``expiry`` and ``quote_date``, ACT/365), ``rate`` and ``div_yield`` (continuously
compounded), and ``vol`` (annualised) or ``market_price`` (or both). An engine with model parameters
(``--model heston``: ``v0``, ``kappa``, ``theta``, ``sigma``, ``rho``) takes them from columns of those
names. A missing column fails at once naming it; a bad row gets ``error = bad_input`` (or the implied-vol
reason) and the other rows are still priced.

Every model is a pricing engine of :mod:`greekfire.quant.registry`, looked up by name and used through its
capabilities (the outputs it gives, the inputs it needs, its implied vol), so a registered plugin engine
prices files like a built-in one.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from greekfire.core.errors import ConfigError, DataError, InputFileError
from greekfire.core.progress import ProgressHook
from greekfire.data.chains import apply_layout, parse_columns, vendor_iv_agreement
from greekfire.gpu.device import choose_device
from greekfire.quant import (
    DEFAULT_ENGINES,
    GREEK_NAMES,
    IV_REASONS,
    MarketInputs,
    OptionBatch,
    PricingEngine,
    engine_names,
    get_engine,
    parse_right,
)

OUTPUT_COLUMNS = (*GREEK_NAMES, "iv", "error")
CHUNK_ROWS = 65_536
PARAM_FILL = 0.1
"""The placeholder of a model parameter on a bad row (any value the engine accepts)."""


def resolve_device(device: str) -> torch.device:
    """The torch device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (chosen by :func:`greekfire.gpu.device.
    choose_device`: ``auto`` takes a GPU when torch sees one); DataError naming ``device`` when it cannot be had."""
    try:
        return choose_device(device)
    except ConfigError as exc:
        raise DataError("device", device, exc.allowed) from None


def resolve_engine(style: str, model: str | None) -> PricingEngine:
    """The registered engine ``model`` (the style's default when None), checked to price ``style``."""
    if style not in DEFAULT_ENGINES:
        raise DataError("style", style, "must be european or american")
    engine = get_engine(model or DEFAULT_ENGINES[style])
    if style not in engine.capabilities.styles:
        raise DataError("model", engine.name, f"with --style {style} must be one of {', '.join(engine_names(style))}")
    return engine


def engine_device(engine: PricingEngine, device: str) -> torch.device:
    """The device ``engine`` prices on for ``device``: as :func:`resolve_device`, except that ``auto`` falls
    back to the CPU for an engine that does not run on the GPU it would pick."""
    dev = resolve_device(device)
    devices = engine.capabilities.devices
    if dev.type not in devices:
        if device.strip().lower() == "auto" and "cpu" in devices:
            return torch.device("cpu")
        raise DataError("device", device, f"--model {engine.name} runs on {', '.join(devices)}")
    return dev


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, chosen by suffix. An empty, truncated or corrupt file raises
    :class:`InputFileError` naming it."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError("input", str(path), "must end in .csv or .parquet")
    kind = "CSV" if suffix == ".csv" else "Parquet"
    if path.is_file() and path.stat().st_size == 0:
        raise InputFileError("input", str(path), f"the file is empty (0 bytes); expected a {kind} file of options")
    try:
        # utf-8-sig: a vendor CSV that starts with a byte-order mark keeps its first column's name
        return pd.read_csv(path, encoding="utf-8-sig") if suffix == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        # ArrowInvalid, UnicodeDecodeError and the parsers' errors all mean the same thing to the user
        raise InputFileError("input", str(path), f"not a readable {kind} file: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


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


def _check_columns(frame: pd.DataFrame, engine: PricingEngine) -> None:
    cols = set(frame.columns)
    for name in ("right", "spot", "strike", "rate", "div_yield"):
        if name not in cols:
            raise DataError("column", name, "is required and missing from the input")
    if "ttm" not in cols and not {"expiry", "quote_date"} <= cols:
        missing = "ttm" if not ({"expiry", "quote_date"} & cols) else ({"expiry", "quote_date"} - cols).pop()
        raise DataError("column", missing, "is required (give ttm in years, or expiry and quote_date)")
    caps = engine.capabilities
    if "vol" in caps.inputs and "vol" not in cols and "market_price" not in cols:
        raise DataError("column", "vol", "is required (give vol, market_price or both)")
    if "vol" in caps.inputs and "vol" not in cols and caps.implied_vol is None:
        raise DataError("column", "vol", f"is required: --model {engine.name} gives no implied vol to price at")
    for name in caps.params:
        if name not in cols:
            raise DataError("column", name, f"is required for --model {engine.name}")


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
    chunk_rows: int = CHUNK_ROWS,
) -> pd.DataFrame:
    """Price every row of ``frame`` with the registered engine ``model`` (the style's default when None);
    returns the input columns plus values, the Greeks the engine gives (NaN for the others), ``iv`` (where
    ``market_price`` is given and the engine has an implied vol) and ``error``. ``steps`` goes to engines
    that take it (``crr``). Rows are priced in chunks of at most ``chunk_rows``; ``on_chunk(rows)`` is
    called after each."""
    engine = resolve_engine(style, model)
    caps = engine.capabilities
    _check_columns(frame, engine)
    dev = engine_device(engine, device)
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
    params = {k: _numeric(frame, k) for k in caps.params}
    uses_vol = "vol" in caps.inputs
    has_vol, has_mkt = "vol" in frame.columns, "market_price" in frame.columns
    solve_iv = has_mkt and caps.implied_vol is not None
    base_ok = (
        np.isfinite(right) & np.isfinite(spot) & (spot > 0) & np.isfinite(strike) & (strike > 0)
        & np.isfinite(ttm) & (ttm >= 0) & np.isfinite(rate) & np.isfinite(div)
    )
    if uses_vol and has_vol and not solve_iv:
        base_ok &= np.isfinite(vol) & (vol >= 0)
    for arr in params.values():
        base_ok &= np.isfinite(arr)
    greek_names = tuple(name for name in GREEK_NAMES if name in caps.outputs)
    out = {name: np.full(n, np.nan) for name in (*GREEK_NAMES, "iv")}
    error = np.where(base_ok, "", IV_REASONS[5]).astype(object)
    chunk = min(chunk_rows, caps.max_batch or chunk_rows)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        ok = base_ok[sl]

        def t(a: np.ndarray, fill: float = 1.0, ok: np.ndarray = ok, sl: slice = sl) -> torch.Tensor:
            # bad rows get harmless placeholders so a batch never carries NaN into its neighbours
            return torch.as_tensor(np.where(ok, a[sl], fill), device=dev).to(dt)

        w, S, K, T, r, q = t(right), t(spot, 100.0), t(strike, 100.0), t(ttm), t(rate, 0.0), t(div, 0.0)
        batch = OptionBatch(w, K, T, style)
        hp = {k: t(v_, PARAM_FILL) for k, v_ in params.items()}
        sigma = t(vol, 0.2)
        priceable = ok
        if solve_iv:
            iv_res = engine(batch, MarketInputs(S, r, q, price=t(mkt, math.nan), params=hp), outputs="iv", steps=steps)
            iv = iv_res["iv"].double().cpu().numpy()
            codes = iv_res["iv_code"].cpu().numpy()
            out["iv"][sl] = np.where(ok, iv, np.nan)
            reasons = np.array([IV_REASONS[c] for c in range(len(IV_REASONS))], dtype=object)[codes]
            error[sl] = np.where(ok & (error[sl] == ""), reasons, error[sl])
            if uses_vol:
                # the Greeks are taken at the given vol where there is one, else at the implied vol
                vol_chunk = vol[sl]
                use = np.where(np.isfinite(vol_chunk) & (vol_chunk >= 0), vol_chunk, iv)
                priceable = ok & np.isfinite(use)
                sigma = torch.as_tensor(np.where(priceable, use, 0.2), device=dev).to(dt)
        market = MarketInputs(S, r, q, vol=sigma if uses_vol else None, params=hp)
        greeks = engine(batch, market, outputs=greek_names, steps=steps)
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


COLUMN_UNITS: dict[str, str] = {
    "spot": "ccy",
    "strike": "ccy",
    "forward": "ccy",
    "ttm": "years",
    "rate": "per year",
    "div_yield": "per year",
    "vol": "annual",
    "market_price": "ccy",
    "bid": "ccy",
    "ask": "ccy",
    "value": "ccy",
    "iv": "annual",
    "vendor_iv": "vendor's",
    "delta": "per 1 spot",
    "gamma": "per 1 spot²",
    "vega": "per 1.00 vol",
    "theta": "per year",
    "theta_per_day": "per day",
    "rho": "per 1.00 rate",
    "epsilon": "per 1.00 yield",
    "vanna": "delta per 1.00 vol",
    "volga": "vega per 1.00 vol",
    "charm": "delta per year",
}
"""The unit of each priced column, for headers such as ``ttm (years)`` (conventions in docs/quant.md; ``ccy``:
the underlying's currency per unit of underlying)."""

PREVIEW_COLUMNS = ("right", "strike", "ttm", "iv", "vendor_iv", "vol", "value", "delta", "vega", "market_price", "error")
"""The columns a preview shows (those of them the result has), the most telling first."""

SUMMARY_UNITS: dict[str, str] = {"rate": "per year", "iv_vs_vendor": "vol, 0.01 = one vol point", "seconds": "s"}
"""The unit of each summary entry that has one (the others are counts or names)."""


def with_unit(name: str, units: dict[str, str] = COLUMN_UNITS) -> str:
    """``name`` with its unit in brackets when it has one: ``ttm (years)``, ``vega (per 1.00 vol)``."""
    unit = units.get(name)
    return f"{name} ({unit})" if unit else name


def preview(result: pd.DataFrame, rows: int = 10) -> pd.DataFrame:
    """The first ``rows`` rows of a priced frame, the :data:`PREVIEW_COLUMNS` it has, headers with units."""
    cols = [c for c in PREVIEW_COLUMNS if c in result.columns]
    return result.loc[:, cols].head(rows).rename(columns=with_unit)


def load_chain(input_path: str | Path, columns: str | None = None) -> pd.DataFrame:
    """Read a CSV/Parquet file of options for pricing: as it is (already in our columns), or through a
    ``--columns`` layout (a preset such as ``spx`` or ``FIELD=COLUMN`` pairs, see
    :mod:`greekfire.data.chains`), which names our fields and adds what the file lacks: ``ttm`` (years),
    ``market_price`` (the mid), ``rate``, ``div_yield`` and ``forward``."""
    layout = parse_columns(columns) if columns is not None else None  # a bad mapping fails before the read
    frame = read_table(Path(input_path))
    return apply_layout(frame, layout, str(input_path)) if layout is not None else frame


def price_chain(
    input_path: str | Path,
    *,
    columns: str | None = None,
    style: str = "european",
    model: str | None = None,
    steps: int = 200,
    device: str = "auto",
    dtype: str = "float64",
    progress: ProgressHook | None = None,
    background_compile: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read (:func:`load_chain`) and price a file; returns the priced rows and a summary mapping: counts,
    the rate used, ``iv_vs_vendor`` (our implied vols against the vendor's, see
    :func:`greekfire.data.chains.vendor_iv_agreement`) where the file has the vendor's, and the seconds.
    Kernels that would compile run eagerly until this machine has built them; ``background_compile`` (the
    command's ``quant.background_compile``) starts that build in a background process. ``progress`` hears
    the rows priced (see :func:`_price_with_notices`); it draws nothing itself."""
    t0 = time.perf_counter()
    engine = resolve_engine(style, model)
    frame = load_chain(input_path, columns)
    result = _price_with_notices(frame, engine, style=style, model=model, steps=steps, device=device, dtype=dtype,
                                 progress=progress, background_compile=background_compile)
    counts = result["error"].value_counts().to_dict()
    summary: dict[str, Any] = {
        "rows": len(result),
        "priced": int(np.isfinite(result["value"].to_numpy()).sum()),
        "flagged": int(sum(v for k, v in counts.items() if k)),
        "errors": {k: int(v) for k, v in counts.items() if k},
        "style": style,
        "model": engine.name,
        "device": str(engine_device(engine, device)),
    }
    if columns is not None:
        summary["columns"] = columns
    rates = pd.to_numeric(result["rate"], errors="coerce").dropna().unique() if "rate" in result else []
    if len(rates) == 1:
        summary["rate"] = round(float(rates[0]), 6)
    agreement = vendor_iv_agreement(result)
    if agreement is not None:
        summary["iv_vs_vendor"] = agreement
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return result, summary


def price_file(
    input_path: str | Path,
    output_path: str | Path,
    *,
    columns: str | None = None,
    style: str = "european",
    model: str | None = None,
    steps: int = 200,
    device: str = "auto",
    dtype: str = "float64",
    progress: ProgressHook | None = None,
    background_compile: bool = False,
) -> dict[str, Any]:
    """Price a CSV/Parquet file into another (formats by suffix); returns the summary of
    :func:`price_chain` with ``output``."""
    if Path(output_path).suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise DataError("output", str(output_path), "must end in .csv or .parquet")
    t0 = time.perf_counter()
    result, summary = price_chain(input_path, columns=columns, style=style, model=model, steps=steps, device=device,
                                  dtype=dtype, progress=progress, background_compile=background_compile)
    write_table(result, Path(output_path))
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["output"] = str(output_path)
    return summary


PROGRESS_ROWS = 2_048
"""American runs are priced in chunks of this many rows, each reported to the progress hook (a chunk takes
about a second eager on one core); any run over :data:`CHUNK_ROWS` rows reports per chunk of that size."""
BUILD_AFTER_S = 30.0
"""A run pricing without compiled kernels starts building them in the background once it has run this
long (seconds) without them, or as it ends: a short run keeps the cores to itself."""
SWITCH_AFTER_S = 10.0
"""A run takes the compiled kernels (once built) only after pricing this long (seconds) without them:
loading them costs several seconds a process (tracing), more than they save on a small chain."""


def _notice(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _price_with_notices(
    frame: pd.DataFrame, engine: PricingEngine, *, style: str, model: str | None, steps: int, device: str,
    dtype: str, progress: ProgressHook | None, background_compile: bool,
) -> pd.DataFrame:
    """:func:`price_frame` for :func:`price_chain`, telling ``progress`` (a :data:`ProgressHook`, stage
    ``pricing``, in rows) after each chunk of American runs of any size and of other runs over
    :data:`CHUNK_ROWS` rows. The kernels that would compile run eagerly (same
    results) until the run has lasted :data:`SWITCH_AFTER_S` and this machine has built them; if it has
    not and ``background_compile`` is set (``quant.background_compile`` for the command), the run starts their
    build in the background (:mod:`greekfire.data.compile_warmup`) and says so in one line on stderr, as it
    does when it loads compiled kernels. Without it, the run stays eager unless the kernels were built."""
    from greekfire.core.compile_cache import compile_cache_dir, kernels_built, use_compile_cache
    from greekfire.data.compile_warmup import kernel_set_key, start_background_build
    from greekfire.quant._fused import eager_until_compiled, on_compile

    use_compile_cache()
    key = kernel_set_key(style, engine.name, dtype, engine_device(engine, device))
    built = kernels_built(key)
    wanted_at: list[float] = []  # when a kernel first ran eagerly for want of its compiled version
    building: list[bool] = []
    loaded: list[bool] = []

    def loading(_name: str) -> None:
        if not loaded:
            loaded.append(True)
            _notice("loading the compiled pricing kernels (built on this machine before; a few seconds)...")

    def build() -> None:
        if background_compile and not building:
            building.append(True)
            start_background_build(style, engine.name, dtype, device, compile_cache_dir() / "greekfire" / "build.log")

    def wanted(_name: str) -> None:
        if wanted_at:
            return
        wanted_at.append(time.monotonic())
        if not built and background_compile:
            _notice("compiling pricing kernels in the background (first run on this machine, a few minutes; cached "
                    "for next time); this run prices without them")

    def ready() -> bool:
        # a long run starts the build while it prices (and takes the kernels once built); a short one
        # leaves the cores to itself and starts the build as it ends
        waited = time.monotonic() - wanted_at[0] if wanted_at else 0.0
        if not built and waited > BUILD_AFTER_S:
            build()
        return waited > SWITCH_AFTER_S and kernels_built(key)

    kwargs: dict[str, Any] = {"style": style, "model": model, "steps": steps, "device": device, "dtype": dtype}
    with ExitStack() as stack:
        stack.enter_context(on_compile(loading))
        stack.enter_context(eager_until_compiled(on_want=wanted, ready=ready))
        if progress is not None and (style == "american" or len(frame) > CHUNK_ROWS):
            done, total = [0], len(frame)

            def advance(k: int) -> None:
                done[0] += k
                progress("pricing", done[0], total, "rows")

            chunk = PROGRESS_ROWS if style == "american" else CHUNK_ROWS
            result = price_frame(frame, **kwargs, chunk_rows=chunk, on_chunk=advance)
        else:
            result = price_frame(frame, **kwargs)
    if wanted_at and not built:
        build()
    return result
