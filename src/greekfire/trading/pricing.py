"""The pricing inputs the engine owns: interest rate, dividend yield and a volatility per option.

One :class:`PricingInputs` per engine. The portfolio prices its Greeks with it, the risk engine its VaR
(parametric and Monte Carlo), and a strategy *declares* into it the volatility it quotes with (through its
context, :meth:`greekfire.trading.strategy.StrategyContext.declare_vol`), so the book is valued and limited
on the same assumption the quotes are made on. The surface is flat per option (one number each, with a
default); a smile model can replace it behind the same methods.

Units: rates and yields continuously compounded per year, volatilities annualised (0.20 is 20%).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from greekfire.core.errors import DataError


class PricingInputs:
    """Rate, dividend yield, default volatility and per-option volatilities.

    ``on_change(instrument_id)`` listeners hear of every volatility that changed (the portfolio marks that
    option's underlying for revaluation)."""

    def __init__(self, *, rate: float = 0.0, div_yield: float = 0.0, default_vol: float = 0.20) -> None:
        self.rate = rate
        self.div_yield = div_yield
        self.default_vol = _check_vol("default_vol", default_vol)
        self._vols: dict[int, float] = {}
        self._underlying_vols: dict[str, float] = {}
        self.vols: Mapping[int, float] = MappingProxyType(self._vols)  # per option, read-only
        self.declared: dict[str, str] = {}  # underlying -> who declared its volatility (audit and summary)
        self.listeners: list[Callable[[int], None]] = []

    def vol(self, instrument_id: int) -> float:
        """Annualised volatility of an option (its own, else the default)."""
        return self._vols.get(instrument_id, self.default_vol)

    def underlying_vol(self, underlying: str) -> float:
        """Annualised volatility of an underlying's price, for VaR (declared flat vol, else the default)."""
        return self._underlying_vols.get(underlying, self.default_vol)

    def set_vol(self, instrument_id: int, vol: float) -> None:
        """Set one option's volatility (annualised); listeners hear of it when it changed."""
        _check_vol("vol", vol)
        if self._vols.get(instrument_id) != vol:
            self._vols[instrument_id] = vol
            for fn in self.listeners:
                fn(instrument_id)

    def set_flat(self, underlying: str, option_ids: Iterable[int], vol: float, *, by: str = "") -> None:
        """One volatility for every option of ``underlying`` (``option_ids``) and for the VaR of its price."""
        _check_vol("vol", vol)
        for iid in option_ids:
            self.set_vol(iid, vol)
        self._underlying_vols[underlying] = vol
        if by:
            self.declared[underlying] = by


def _check_vol(name: str, vol: float) -> float:
    if not (isinstance(vol, int | float) and math.isfinite(vol) and vol > 0):
        raise DataError(name, vol, "a volatility must be a finite number > 0 (annualised, 0.20 is 20%)")
    return float(vol)
