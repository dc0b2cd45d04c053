"""greekfire.quant: option pricing math on torch tensors (pure functions, no I/O, no global state).

Conventions: ``ttm`` in years (ACT/365); ``rate`` and ``div_yield`` continuously compounded; ``vol``
annualised; ``right`` a tensor of +1.0 (call) / -1.0 (put) (:func:`parse_right` maps 'C'/'P'/...).
Every function takes tensors or floats that broadcast and returns tensors on the inputs' device and
dtype (float64 by default). See docs/quant.md.

Models are also reachable by name through one call signature: the registry of pricing engines
(:mod:`greekfire.quant.registry`: :func:`price`, :func:`register_engine`, :func:`capability_table`), where the
built-in engines of :mod:`greekfire.quant.engines` are registered. See docs/quant-engines.md.
"""

from greekfire.quant._tensors import as_tensors, parse_right
from greekfire.quant.american import (
    BUMP_GREEKS,
    american_greeks,
    american_implied_vol,
    american_price,
    baw_price,
    bs2002_price,
    bump_greeks,
    crr_price,
)
from greekfire.quant.engines import DEFAULT_ENGINES
from greekfire.quant.european import (
    GREEK_NAMES,
    STANDARD_GREEKS,
    black76_greeks,
    black76_price,
    bsm_greeks,
    bsm_greeks_numpy,
    bsm_price,
)
from greekfire.quant.heston import HestonParams, heston_calibrate, heston_price
from greekfire.quant.iv import IV_REASONS, IVResult, implied_vol
from greekfire.quant.montecarlo import MCResult, gbm_paths, heston_paths, mc_european
from greekfire.quant.portfolio import mc_var, parametric_var, portfolio_greeks, scenario_grid
from greekfire.quant.qdfp import ACCURATE, FAST, HIGH_PRECISION, QdFpScheme, qdfp_price
from greekfire.quant.registry import (
    Capabilities,
    MarketInputs,
    OptionBatch,
    PricingEngine,
    capability_table,
    engine_names,
    get_engine,
    import_engine_modules,
    price,
    register_engine,
    unregister_engine,
)
from greekfire.quant.scalar import bsm_greeks_scalar

__all__ = [
    "ACCURATE",
    "BUMP_GREEKS",
    "DEFAULT_ENGINES",
    "FAST",
    "GREEK_NAMES",
    "HIGH_PRECISION",
    "IV_REASONS",
    "Capabilities",
    "HestonParams",
    "IVResult",
    "MCResult",
    "MarketInputs",
    "OptionBatch",
    "PricingEngine",
    "QdFpScheme",
    "STANDARD_GREEKS",
    "american_greeks",
    "american_implied_vol",
    "american_price",
    "as_tensors",
    "baw_price",
    "black76_greeks",
    "black76_price",
    "bs2002_price",
    "bsm_greeks",
    "bsm_greeks_numpy",
    "bsm_greeks_scalar",
    "bsm_price",
    "bump_greeks",
    "capability_table",
    "crr_price",
    "engine_names",
    "gbm_paths",
    "get_engine",
    "heston_calibrate",
    "heston_paths",
    "heston_price",
    "implied_vol",
    "import_engine_modules",
    "mc_european",
    "mc_var",
    "parametric_var",
    "parse_right",
    "portfolio_greeks",
    "price",
    "qdfp_price",
    "register_engine",
    "scenario_grid",
    "unregister_engine",
]
