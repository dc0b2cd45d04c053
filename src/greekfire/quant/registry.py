"""The registry of pricing engines: one call signature for every model (QuantLib's instrument/engine split,
in tensor form and without its object graph).

An :class:`OptionBatch` says what is priced (right, strike, ttm, style), :class:`MarketInputs` what it is
priced on (spot, rate, dividend yield, vol and/or a market price, model parameters such as Heston's); an
engine registered by name turns the two into a dict of tensors::

    from greekfire.quant import MarketInputs, OptionBatch, price
    batch = OptionBatch(right=[1.0, -1.0], strike=[95.0, 105.0], ttm=0.5, style="american")
    out = price("qdfp", batch, MarketInputs(spot=100.0, rate=0.04, div_yield=0.01, vol=0.25),
                outputs=("value", "delta"))

Every engine carries its :class:`Capabilities` (outputs, how it takes Greeks, implied vol, styles, devices,
the inputs and options it needs), so callers choose by capability and never branch on model names.
Adding an engine is one module with a function and its :func:`register_engine` decorator; modules named by
the ``greekfire.pricing_engines`` entry-point group are imported the first time a name is looked up that is
not registered yet, so ``greekfire price --model <name>`` finds an installed plugin without being told.

Units as everywhere in :mod:`greekfire.quant`: ``ttm`` years (ACT/365), ``rate``/``div_yield`` continuously
compounded, ``vol`` annualised, ``right`` +1 call / -1 put, values in currency per unit of underlying.
Inputs are converted by the engine (float64 unless a float32 tensor is given; the device follows the
inputs).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np
import torch

from greekfire.core.errors import DataError
from greekfire.quant._tensors import TensorLike

log = logging.getLogger(__name__)

STYLES = ("european", "american")
ENTRY_POINT_GROUP = "greekfire.pricing_engines"
IV_OUTPUTS = ("iv", "iv_code")
"""What ``outputs=("iv",)`` adds to the result: the implied vol and its reason code (see ``IV_REASONS``)."""


@dataclass(frozen=True, slots=True)
class OptionBatch:
    """The options of a batch (the instrument side): ``right`` +1 call / -1 put, ``strike``, ``ttm`` in
    years, and the exercise ``style`` shared by the batch (``european`` or ``american``). Fields take tensors,
    arrays or floats that broadcast together with the market inputs."""

    right: TensorLike
    strike: TensorLike
    ttm: TensorLike
    style: str = "european"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise DataError("style", self.style, f"must be one of {', '.join(STYLES)}")

    @classmethod
    def from_dates(
        cls, right: TensorLike, strike: TensorLike, expiry: Any, valuation: Any, style: str = "european"
    ) -> OptionBatch:
        """A batch whose ``ttm`` is ``expiry - valuation`` in years of 365 days (ACT/365); the dates are
        anything numpy reads as ``datetime64`` (strings, ``datetime``, arrays, pandas columns)."""
        days = (np.asarray(expiry, dtype="datetime64[s]") - np.asarray(valuation, dtype="datetime64[s]")) / np.timedelta64(
            86400, "s"
        )
        return cls(right, strike, np.asarray(days, dtype=np.float64) / 365.0, style)


@dataclass(frozen=True, slots=True)
class MarketInputs:
    """What the batch is priced on: ``spot`` (the forward for Black-76), ``rate`` and ``div_yield``
    (continuously compounded), ``vol`` (annualised) and/or ``price`` (a market price, currency per unit,
    for implied vols), and ``params``: model parameters by name (Heston's ``v0 kappa theta sigma rho``)."""

    spot: TensorLike
    rate: TensorLike = 0.0
    div_yield: TensorLike = 0.0
    vol: TensorLike | None = None
    price: TensorLike | None = None
    params: Mapping[str, TensorLike] = field(default_factory=dict)

    def require_vol(self, engine: str = "") -> TensorLike:
        """``vol``, or a DataError naming it when it is missing."""
        if self.vol is None:
            raise DataError("vol", None, f"is required by pricing engine {engine!r}")
        return self.vol

    def require_price(self) -> TensorLike:
        """``price``, or a DataError naming it when it is missing."""
        if self.price is None:
            raise DataError("price", None, "a market price is required for implied vols")
        return self.price


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can do, for callers to choose by (and for the table in the docs).

    ``outputs``: the keys it can return (``value``, Greeks, ``stderr``...); ``greeks``: how its Greeks are
    taken (``analytic``, ``bump`` for bump-and-reprice, ``none``); ``implied_vol``: the engine whose
    inversion gives this one's implied vols (its own name, ``bsm`` for the market's quoting convention, or
    None); ``styles`` and ``devices`` (device types) it prices; ``inputs``: the market inputs it needs besides
    spot, rate and dividend yield (``vol`` or parameter names looked up in ``MarketInputs.params``);
    ``options``: the keyword options it takes (others are ignored, so one call can serve every engine);
    ``max_batch``: the most options a caller should hand it at once (0: no limit; Monte Carlo holds
    options x paths).
    """

    outputs: tuple[str, ...] = ("value",)
    greeks: str = "none"
    implied_vol: str | None = None
    styles: tuple[str, ...] = ("european",)
    devices: tuple[str, ...] = ("cpu", "cuda")
    inputs: tuple[str, ...] = ("vol",)
    options: tuple[str, ...] = ()
    max_batch: int = 0

    def __post_init__(self) -> None:
        if "value" not in self.outputs:
            raise DataError("outputs", self.outputs, "must include value")
        for style in self.styles:
            if style not in STYLES:
                raise DataError("styles", style, f"must be among {', '.join(STYLES)}")
        if self.greeks not in ("analytic", "bump", "none"):
            raise DataError("greeks", self.greeks, "must be analytic, bump or none")

    @property
    def params(self) -> tuple[str, ...]:
        """The model parameters the engine needs from ``MarketInputs.params`` (its inputs other than vol)."""
        return tuple(name for name in self.inputs if name != "vol")


class PriceFn(Protocol):
    """An engine's pricing function: the batch, the market, the outputs asked for (a subset of its
    capabilities' outputs, in the caller's order) and the options it declared that the caller gave."""

    def __call__(
        self, batch: OptionBatch, market: MarketInputs, outputs: tuple[str, ...], options: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]: ...


class ImpliedVolFn(Protocol):
    """An engine's inversion: implied vols of ``market.price`` as ``(vol, code)`` tensors (codes of
    ``IV_REASONS``; NaN vol wherever the code is not 0)."""

    def __call__(
        self, batch: OptionBatch, market: MarketInputs, options: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True, slots=True)
class PricingEngine:
    """A registered engine: its ``name``, a one-line ``summary``, its :class:`Capabilities`, the pricing
    function and, when it inverts its own prices, the implied-vol function. Call it (or :func:`price`)."""

    name: str
    summary: str
    capabilities: Capabilities
    compute: PriceFn
    invert: ImpliedVolFn | None = None

    def __call__(
        self, batch: OptionBatch, market: MarketInputs, *, outputs: Iterable[str] | str = ("value",),
        **options: Any,
    ) -> dict[str, torch.Tensor]:
        """Price ``batch`` on ``market``: a dict of tensors keyed by ``outputs`` (in that order; ``"iv"``
        adds ``iv`` and ``iv_code`` from ``market.price``). Options the engine does not take are ignored."""
        caps = self.capabilities
        wanted = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        if batch.style not in caps.styles:
            raise DataError("style", batch.style, f"pricing engine {self.name!r} prices {', '.join(caps.styles)} options")
        for name in wanted:
            if name not in caps.outputs and name not in IV_OUTPUTS:
                raise DataError("outputs", name, f"pricing engine {self.name!r} gives {', '.join(caps.outputs)}")
        device = _device_of(batch, market)
        if device.type not in caps.devices:
            raise DataError("device", str(device), f"pricing engine {self.name!r} runs on {', '.join(caps.devices)}")
        result: dict[str, torch.Tensor] = {}
        if any(name in IV_OUTPUTS for name in wanted):
            # the inverting engine may be another one (its own options, not this engine's)
            vol, code = implied_vols(self, batch, market, options)
            result["iv"], result["iv_code"] = vol, code
        priced = tuple(name for name in wanted if name not in IV_OUTPUTS)
        if priced:
            if "vol" in caps.inputs:
                market.require_vol(self.name)
            for name in caps.params:
                if name not in market.params:
                    raise DataError("params", name, f"is required by pricing engine {self.name!r}")
            opts = {k: v for k, v in options.items() if k in caps.options}
            result.update(self.compute(batch, market, priced, opts))
        order = [key for name in wanted for key in (IV_OUTPUTS if name in IV_OUTPUTS else (name,))]
        return {key: result[key] for key in dict.fromkeys(order)}


def _device_of(batch: OptionBatch, market: MarketInputs) -> torch.device:
    for value in (batch.right, batch.strike, batch.ttm, market.spot, market.rate, market.div_yield, market.vol,
                  market.price, *market.params.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def implied_vols(
    engine: PricingEngine, batch: OptionBatch, market: MarketInputs, options: Mapping[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implied vols of ``market.price`` under ``engine``'s quoting convention (its ``implied_vol``
    capability: its own inversion or another engine's)."""
    market.require_price()
    by = engine.capabilities.implied_vol
    if by is None:
        raise DataError("outputs", "iv", f"pricing engine {engine.name!r} gives no implied vol")
    inverter = engine if by == engine.name else get_engine(by)
    if inverter.invert is None:
        raise DataError("outputs", "iv", f"pricing engine {inverter.name!r} registers no implied-vol function")
    if batch.style not in inverter.capabilities.styles:
        raise DataError("style", batch.style, f"implied vols by {inverter.name!r} are for {', '.join(inverter.capabilities.styles)} options")
    opts = {k: v for k, v in options.items() if k in inverter.capabilities.options}
    return inverter.invert(batch, market, opts)


# ---------------------------------------------------------------------------------------------------
# the registry
_ENGINES: dict[str, PricingEngine] = {}
_plugins_loaded = False
_plugin_errors: dict[str, str] = {}


def register_engine(
    name: str,
    capabilities: Capabilities,
    *,
    summary: str = "",
    implied_vol: ImpliedVolFn | None = None,
    replace: bool = False,
) -> Callable[[PriceFn], PriceFn]:
    """Decorator registering a pricing function as engine ``name`` (the function is returned unchanged).

    ``capabilities`` say what it does; ``implied_vol`` is its own inversion (then set
    ``capabilities.implied_vol`` to ``name``). Registering a name twice raises DataError unless ``replace``.
    Example::

        @register_engine("intrinsic", Capabilities(inputs=(), styles=("european", "american")))
        def intrinsic(batch, market, outputs, options):
            w, S, K = as_tensors(batch.right, market.spot, batch.strike)
            return {"value": torch.clamp(w * (S - K), min=0.0)}
    """

    def add(fn: PriceFn) -> PriceFn:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise DataError("name", name, "an engine name is letters, digits, '-' and '_'")
        if name in _ENGINES and not replace:
            raise DataError("name", name, "is already a registered pricing engine (pass replace=True)")
        doc = (fn.__doc__ or "").strip().splitlines()
        _ENGINES[name] = PricingEngine(name, summary or (doc[0] if doc else name), capabilities, fn, implied_vol)
        return fn

    return add


def unregister_engine(name: str) -> None:
    """Remove engine ``name`` (a DataError when it is not registered)."""
    if _ENGINES.pop(name, None) is None:
        raise DataError("name", name, "is not a registered pricing engine")


def load_plugins() -> dict[str, str]:
    """Import the modules of the ``greekfire.pricing_engines`` entry-point group once (they register their
    engines on import). A plugin that fails to load is logged and skipped; returns ``{entry point: error}``."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken plugin must not take the built-in engines down with it
                _plugin_errors[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("pricing engine plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
    return dict(_plugin_errors)


def import_engine_modules(modules: Iterable[str]) -> list[str]:
    """Import each named module (``package.module``) so that it registers its engines; returns the engine
    names registered afterwards. A module that cannot be imported raises DataError naming it."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise DataError("engine_module", module, f"cannot be imported ({exc})") from None
    return engine_names()


def engine_names(style: str | None = None) -> list[str]:
    """Names of the registered engines (entry-point plugins included), in registration order; with
    ``style``, only those that price it."""
    load_plugins()
    return [n for n, e in _ENGINES.items() if style is None or style in e.capabilities.styles]


def get_engine(name: str, *, style: str | None = None) -> PricingEngine:
    """The engine registered as ``name``; with ``style``, one that prices that style. An unknown name (or a
    style the engine does not price) raises DataError listing the engines that qualify."""
    engine = _ENGINES.get(name)
    if engine is None:
        load_plugins()
        engine = _ENGINES.get(name)
    if engine is None or (style is not None and style not in engine.capabilities.styles):
        names = engine_names(style)
        what = f"with style {style} " if style is not None and engine is not None else ""
        hint = f"; plugins that failed to load: {_plugin_errors}" if _plugin_errors else ""
        raise DataError("model", name, f"{what}must be one of {sorted(names)}{hint}")
    return engine


def engines() -> dict[str, PricingEngine]:
    """All registered engines by name (a copy)."""
    load_plugins()
    return dict(_ENGINES)


def price(
    engine: str | PricingEngine, batch: OptionBatch, market: MarketInputs, *,
    outputs: Iterable[str] | str = ("value",), **options: Any,
) -> dict[str, torch.Tensor]:
    """Price ``batch`` on ``market`` with the engine of that name (or that engine): a dict of tensors keyed
    by ``outputs``. See :meth:`PricingEngine.__call__`."""
    eng = engine if isinstance(engine, PricingEngine) else get_engine(engine, style=batch.style)
    return eng(batch, market, outputs=outputs, **options)


def capability_table() -> str:
    """The registered engines' capabilities as a Markdown table (the one in docs/quant-engines.md)."""
    rows = [
        "| engine | what | styles | outputs | Greeks | implied vol | inputs | options | devices |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in engines().items():
        c = e.capabilities
        iv = "own" if c.implied_vol == name else (f"via {c.implied_vol}" if c.implied_vol else "no")
        rows.append(
            f"| `{name}` | {e.summary} | {', '.join(c.styles)} | {', '.join(c.outputs)} | {c.greeks} | {iv} | "
            f"{', '.join(c.inputs) or '-'} | {', '.join(c.options) or '-'} | {', '.join(c.devices)} |"
        )
    return "\n".join(rows) + "\n"
