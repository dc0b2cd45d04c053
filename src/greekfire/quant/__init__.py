"""greekfire.quant: option pricing math on torch tensors (pure functions, no I/O, no global state).

Conventions: ``ttm`` in years (ACT/365); ``rate`` and ``div_yield`` continuously compounded; ``vol``
annualised; ``right`` a tensor of +1.0 (call) / -1.0 (put) (:func:`parse_right` maps 'C'/'P'/...).
Every function takes tensors or floats that broadcast and returns tensors on the inputs' device and
dtype (float64 by default). See docs/quant.md.
"""

from greekfire.quant._tensors import as_tensors, parse_right
from greekfire.quant.european import (
    GREEK_NAMES,
    black76_greeks,
    black76_price,
    bsm_greeks,
    bsm_greeks_numpy,
    bsm_price,
)
from greekfire.quant.iv import IV_REASONS, IVResult, implied_vol

__all__ = [
    "GREEK_NAMES",
    "IV_REASONS",
    "IVResult",
    "as_tensors",
    "black76_greeks",
    "black76_price",
    "bsm_greeks",
    "bsm_greeks_numpy",
    "bsm_price",
    "implied_vol",
    "parse_right",
]
