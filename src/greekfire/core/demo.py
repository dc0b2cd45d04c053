"""Demo stage of the foundation: settings, logging and metrics working together."""

from __future__ import annotations

import logging
import platform
from typing import Any

from greekfire import __version__
from greekfire.core.metrics import REGISTRY, counter
from greekfire.core.settings import Settings

log = logging.getLogger(__name__)


def run_demo(settings: Settings) -> dict[str, Any]:
    """Load settings, log through the configured handlers, count on the registry; return a summary."""
    runs = counter("greekfire_demo_runs", "greekfire demo stages run")
    runs.inc()
    families = sum(1 for _ in REGISTRY.collect())
    log.info("greekfire %s on Python %s", __version__, platform.python_version())
    return {
        "version": __version__,
        "python": platform.python_version(),
        "home": str(settings.home),
        "database": settings.database.url.get_secret_value().split("://", 1)[0],
        "metric families": families,
    }
