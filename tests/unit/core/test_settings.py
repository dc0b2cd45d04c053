from __future__ import annotations

from pathlib import Path

import pytest

from greekfire.core.errors import ConfigErrors
from greekfire.core.settings import load_settings, settings_dict


def test_defaults_load(tmp_settings_env: Path) -> None:
    s = load_settings()
    assert s.gpu.sample_interval_s == 5.0
    assert s.database.url.get_secret_value().startswith("sqlite:///")


def test_yaml_then_env_then_overrides(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_settings_env / "c.yaml"
    cfg.write_text("gpu:\n  sample_interval_s: 2.5\n  placement: pack\nlogging:\n  level: DEBUG\n")
    s = load_settings(cfg)
    assert s.gpu.sample_interval_s == 2.5 and s.gpu.placement == "pack" and s.logging.level == "DEBUG"
    monkeypatch.setenv("GREEKFIRE_GPU__SAMPLE_INTERVAL_S", "7")
    s = load_settings(cfg)
    assert s.gpu.sample_interval_s == 7.0
    assert s.gpu.placement == "pack"  # the YAML value the environment did not touch survives
    s = load_settings(cfg, overrides={"gpu.sample_interval_s": 9, "gpu.alerts.memory_pct": 80})
    assert s.gpu.sample_interval_s == 9.0
    assert s.gpu.placement == "pack"  # an override of one key keeps the section's other sources
    assert s.gpu.alerts.memory_pct == 80 and s.gpu.alerts.temperature_c == 85.0
    assert s.logging.level == "DEBUG"


def test_config_env_variable(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_settings_env / "c.yaml"
    cfg.write_text("api:\n  port: 8123\n")
    monkeypatch.setenv("GREEKFIRE_CONFIG", str(cfg))
    assert load_settings().api.port == 8123


def test_bad_yaml_value_names_field_path_and_value(tmp_settings_env: Path) -> None:
    cfg = tmp_settings_env / "bad.yaml"
    cfg.write_text("gpu:\n  sample_interval_s: -3\n  placement: random\n")
    with pytest.raises(ConfigErrors) as ei:
        load_settings(cfg)
    fields = {e.field: e for e in ei.value.errors}
    assert "gpu.sample_interval_s" in fields and fields["gpu.sample_interval_s"].value == -3
    assert "gpu.placement" in fields and fields["gpu.placement"].value == "random"
    assert "least_loaded" in str(ei.value)  # says what is allowed


def test_unknown_key_is_an_error(tmp_settings_env: Path) -> None:
    cfg = tmp_settings_env / "typo.yaml"
    cfg.write_text("gpu:\n  sample_intervl_s: 1\n")
    with pytest.raises(ConfigErrors) as ei:
        load_settings(cfg)
    assert ei.value.errors[0].field == "gpu.sample_intervl_s"


def test_bad_env_value_names_field(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEKFIRE_API__PORT", "99999")
    with pytest.raises(ConfigErrors) as ei:
        load_settings()
    assert ei.value.errors[0].field == "api.port" and "99999" in str(ei.value)


def test_missing_config_file_is_clear(tmp_settings_env: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        load_settings(tmp_settings_env / "nope.yaml")


def test_secrets_masked(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEKFIRE_DATABASE__URL", "postgresql://trader:hunter2@db.local/gf")
    monkeypatch.setenv("GREEKFIRE_STORAGE__S3_SECRET_ACCESS_KEY", "topsecret")
    d = settings_dict(load_settings())
    assert "hunter2" not in str(d) and "topsecret" not in str(d)
    assert d["database"]["url"].endswith("@db.local/gf")
    assert d["storage"]["s3_secret_access_key"] == "********"
