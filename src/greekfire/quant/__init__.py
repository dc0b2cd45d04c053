"""greekfire.quant: option pricing math on torch tensors (pure functions, no I/O, no global state).

Conventions: ``ttm`` in years (ACT/365); ``rate`` and ``div_yield`` continuously compounded; ``vol``
annualised; ``right`` a tensor of +1.0 (call) / -1.0 (put) (:func:`parse_right` maps 'C'/'P'/...).
Every function takes tensors or floats that broadcast and returns tensors on the inputs' device and
dtype (float64 by default). See docs/quant.md.
"""

from greekfire.quant._tensors import as_tensors, parse_right
from greekfire.quant.american import (
    american_greeks,
    american_implied_vol,
    american_price,
    baw_price,
    bs2002_price,
    crr_price,
)
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
from greekfire.quant.scalar import bsm_greeks_scalar

__all__ = [
    "ACCURATE",
    "FAST",
    "GREEK_NAMES",
    "HIGH_PRECISION",
    "IV_REASONS",
    "HestonParams",
    "IVResult",
    "MCResult",
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
    "crr_price",
    "gbm_paths",
    "heston_calibrate",
    "heston_paths",
    "heston_price",
    "implied_vol",
    "mc_european",
    "mc_var",
    "parametric_var",
    "parse_right",
    "portfolio_greeks",
    "qdfp_price",
    "scenario_grid",
]
