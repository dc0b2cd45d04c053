"""``run_paper`` refuses a run length that would end at once instead of accepting it silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from greekfire.core.errors import ConfigError
from greekfire.core.settings import load_settings
from greekfire.strategies.paper import run_paper


@pytest.mark.parametrize("duration", [-1.0, 0.0, float("nan")])
def test_a_run_length_that_is_not_positive_is_refused(duration: float, tmp_settings_env: Path) -> None:
    with pytest.raises(ConfigError, match="duration_s"):
        run_paper(load_settings(), duration, database_url=f"sqlite:///{tmp_settings_env / 'paper.db'}")
