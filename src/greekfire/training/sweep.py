"""Multirun sweeps of ``greekfire train run --multirun``: Hydra's sweep syntax, one run per combination.

``optim.lr=1e-3,1e-2 model.hidden=range(32,65,32)`` gives four runs (the cartesian product, in Hydra's
order: the last swept key changes fastest). Hydra's own override parser reads the sweep values (choice
lists, ``range(...)``, quoted strings), so what works after Hydra's ``-m`` works here. Every combination is
composed and validated before the first one trains: a typo in the fifth run fails at once, naming its key.
The runs then train one after another on this machine, each with its own version (the config hash), so
``greekfire models compare`` can put them side by side.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from greekfire.core.errors import ConfigError
from greekfire.core.settings import Settings

__all__ = ["expand_sweeps", "run_sweep"]


def expand_sweeps(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of the swept overrides (``key=a,b``, ``key=range(1,4)``, ``key=choice(a,b)``), each
    as a plain override list; overrides without a sweep are repeated in each. ConfigError naming
    ``overrides`` for what Hydra cannot parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError("overrides", " ".join(overrides), f"Hydra override syntax ({exc})") from None
    axes: list[list[str]] = []
    for o in parsed:
        prefix = "+" if o.is_add() else ("++" if o.is_force_add() else ("~" if o.is_delete() else ""))
        key = f"{prefix}{o.key_or_group}"
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            if not values:
                raise ConfigError(o.key_or_group, o.input_line, "a sweep with at least one value")
            axes.append([f"{key}={v}" for v in values])
        else:
            axes.append([o.input_line or f"{key}={o.get_value_element_as_str()}"])
    return [list(combo) for combo in itertools.product(*axes)]


def run_sweep(
    settings: Settings,
    preset: str,
    overrides: Sequence[str],
    run_one: Callable[[list[str]], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """Compose and validate every combination of ``overrides`` over experiment ``preset`` (ConfigErrors
    naming the key of the first bad one, before anything trains), then call ``run_one`` on each in turn.
    Returns one row per run: its overrides and what ``run_one`` returned (``None`` on a node without rank 0)."""
    from greekfire.ml.config import compose_experiment

    combos = expand_sweeps(overrides)
    for combo in combos:
        compose_experiment(preset, combo, settings=settings)
    rows: list[dict[str, Any]] = []
    for k, combo in enumerate(combos):
        summary = run_one(combo)
        rows.append({"run": k, "overrides": combo, "summary": summary})
    return rows
