from __future__ import annotations

from pathlib import Path

import pytest

from greekfire.core.errors import ConfigErrors
from greekfire.core.settings import GpuSettings, load_settings

SAMPLE = Path(__file__).resolve().parents[3] / "configs" / "gpu_config.yaml"


def test_sample_config_loads_and_matches_defaults(tmp_settings_env: Path) -> None:
    s = load_settings(SAMPLE)
    assert s.gpu == GpuSettings()  # the sample documents the defaults, key for key
    assert str(s.gpu.dmi_root) == "/" and s.gpu.port == 9400


def test_env_and_bad_values(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEKFIRE_GPU__PLACEMENT", "pack")
    monkeypatch.setenv("GREEKFIRE_GPU__ALERTS__LEAK_SAMPLES", "4")
    s = load_settings(SAMPLE)
    assert s.gpu.placement == "pack" and s.gpu.alerts.leak_samples == 4
    monkeypatch.setenv("GREEKFIRE_GPU__MEMORY_FRACTION", "1.5")
    with pytest.raises(ConfigErrors, match="gpu.memory_fraction"):
        load_settings(SAMPLE)
