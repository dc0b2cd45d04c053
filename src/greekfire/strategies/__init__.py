"""Strategies that run on the trading engine: they subclass :class:`greekfire.trading.strategy.Strategy`
and act only through the context the engine hands them (see docs/strategies.md).

``STRATEGIES`` maps the names accepted by ``greekfire trade --strategy`` to ``module:Class``;
:func:`load_strategy` also accepts any ``module:Class`` path.
"""

from __future__ import annotations

import importlib
from typing import Any

from greekfire.core.errors import ConfigError
from greekfire.trading.strategy import Strategy

STRATEGIES: dict[str, str] = {
    "market_maker": "greekfire.strategies.market_maker:OptionsMarketMaker",
}


def load_strategy(name: str, **params: Any) -> Strategy:
    """A strategy instance by registered name or ``module:Class``; ConfigError names the bad value."""
    target = STRATEGIES.get(name, name)
    if ":" not in target:
        raise ConfigError("trading.strategy", name, f"one of {', '.join(sorted(STRATEGIES))} or module:Class")
    mod_name, cls_name = target.split(":", 1)
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("trading.strategy", name, f"cannot load {target}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError("trading.strategy", name, f"{target} is not a Strategy subclass")
    return cls(**params)
