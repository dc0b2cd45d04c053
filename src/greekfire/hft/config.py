"""The pipeline's configuration: the ``hft`` settings section (greekfire.core.settings.HftSettings) and what
the stages build from it (CPUs per stage, feature parameters, risk limits)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from greekfire.core.errors import ConfigError
from greekfire.core.settings import HftSettings, load_settings
from greekfire.hft.features import FeatureParams


def load_hft(config_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> HftSettings:
    """The ``hft`` section from the YAML file / environment / ``overrides`` (dotted keys under ``hft``, e.g.
    ``{"workers": 2}``); ConfigErrors naming each bad key."""
    full = {f"hft.{k}": v for k, v in (overrides or {}).items()}
    return load_settings(config_path, full).hft


def stage_names(workers: int) -> list[str]:
    """The pipeline's processes in placement order: feed, worker0.., strategy, gateway, exchange."""
    return ["feed", *[f"worker{i}" for i in range(workers)], "strategy", "gateway", "exchange"]


def stage_cpus(cfg: HftSettings) -> dict[str, int | None]:
    """CPU id of each stage from ``hft.cpus`` (positions into this process's allowed CPUs, so that a
    configuration means the same under taskset or a cgroup; stages beyond the list are not pinned).
    ConfigError when a position is outside the allowed CPUs."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    names = stage_names(cfg.workers)
    out: dict[str, int | None] = dict.fromkeys(names)
    for name, pos in zip(names, cfg.cpus, strict=False):
        if not 0 <= pos < len(allowed):
            raise ConfigError("hft.cpus", cfg.cpus, f"positions in 0..{len(allowed) - 1} (this process may use "
                              f"{len(allowed)} CPUs)")
        out[name] = allowed[pos]
    return out


def feature_params(cfg: HftSettings) -> FeatureParams:
    """The feature and signal parameters of the book/feature workers."""
    return FeatureParams(levels=cfg.levels, enter=cfg.enter, max_spread=cfg.max_spread)
