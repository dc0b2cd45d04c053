"""The wheel's configuration: :class:`WheelConfig`, the ``wheel`` section of the settings tree.

The model lives in :mod:`greekfire.core.settings` (the one settings tree; ``Settings.wheel``) and is named
here as the strategy knows it. Every key, its default and its thetagang counterpart: docs/wheel.md.
Load one from its own YAML file with :meth:`WheelConfig.from_yaml` (the keys at the top level, or under
``wheel:``); a bad or misspelt key raises :class:`~greekfire.core.errors.ConfigErrors` naming it.
"""

from __future__ import annotations

from greekfire.core.settings import WheelSettings, WheelSymbolSettings

WheelConfig = WheelSettings
"""The wheel's configuration (pydantic v2, unknown keys refused): ``Settings.wheel``."""

__all__ = ["WheelConfig", "WheelSymbolSettings", "target_delta", "target_dte", "weights"]


def weights(config: WheelConfig) -> dict[str, float]:
    """Each symbol's target weight, normalised to sum 1."""
    total = sum(config.symbols.values())
    return {k: v / total for k, v in config.symbols.items()}


def target_delta(config: WheelConfig, symbol: str, right: float) -> float:
    """The target |delta| of ``symbol``'s options of ``right`` (+1 call, -1 put): a per-symbol override, else
    the section's value for that right."""
    o = config.symbol_overrides.get(symbol)
    if right > 0:
        return o.call_delta if o is not None and o.call_delta is not None else config.call_delta
    return o.put_delta if o is not None and o.put_delta is not None else config.put_delta


def target_dte(config: WheelConfig, symbol: str) -> tuple[int, int]:
    """``(target, maximum)`` days to expiry for ``symbol``."""
    o = config.symbol_overrides.get(symbol)
    dte = o.dte if o is not None and o.dte is not None else config.dte
    mx = o.max_dte if o is not None and o.max_dte is not None else config.max_dte
    return dte, max(dte, mx)
