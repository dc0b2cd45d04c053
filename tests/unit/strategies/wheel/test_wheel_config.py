"""The wheel's configuration: defaults, the settings tree, its own YAML, and typos that fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from greekfire.core.errors import ConfigErrors
from greekfire.core.settings import load_settings
from greekfire.strategies.wheel.config import WheelConfig, target_delta, target_dte, weights

ROOT = Path(__file__).resolve().parents[4]


def test_defaults_follow_the_issue() -> None:
    c = WheelConfig()
    assert (c.put_delta, c.call_delta, c.dte, c.max_dte, c.roll_pnl, c.roll_dte, c.roll_min_pnl) == (
        0.30, 0.30, 45, 180, 0.9, 15, 0.0)
    assert c.call_below_cost_basis is False


def test_a_typo_key_fails_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="dtee"):
        WheelConfig.model_validate({"dtee": 30})
    f = tmp_path / "wheel.yaml"
    f.write_text("put_delta: 0.25\nroll_pnll: 0.8\n")
    with pytest.raises(ConfigErrors) as err:
        WheelConfig.from_yaml(f)
    (e,) = err.value.errors
    assert e.field == "wheel.roll_pnll" and "did you mean 'roll_pnl'" in e.allowed


def test_a_bad_value_names_key_and_value(tmp_path: Path) -> None:
    f = tmp_path / "wheel.yaml"
    f.write_text("wheel:\n  put_delta: 1.5\n")
    with pytest.raises(ConfigErrors) as err:
        WheelConfig.from_yaml(f)
    assert err.value.errors[0].field == "wheel.put_delta" and err.value.errors[0].value == 1.5


def test_cross_checks() -> None:
    with pytest.raises(ValidationError, match="exceeds max_dte"):
        WheelConfig(dte=200, max_dte=100)
    with pytest.raises(ValidationError, match="weights must be > 0"):
        WheelConfig(symbols={"SPY": 0.0})
    with pytest.raises(ValidationError, match="not among symbols"):
        WheelConfig(symbols={"SPY": 1.0}, symbol_overrides={"QQQ": {"put_delta": 0.2}})


def test_settings_tree_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEKFIRE_WHEEL__PUT_DELTA", "0.2")
    s = load_settings(overrides={"wheel.dte": 30})
    assert isinstance(s.wheel, WheelConfig) and s.wheel.put_delta == 0.2 and s.wheel.dte == 30


def test_the_shipped_yaml_is_the_defaults() -> None:
    path = ROOT / "configs" / "wheel.yaml"
    assert WheelConfig.from_yaml(path) == WheelConfig()
    text = path.read_text()
    for key in WheelConfig.model_fields:  # every key is there, commented or set
        assert f"{key}:" in text, key
    assert yaml.safe_load(text) is None or isinstance(yaml.safe_load(text), dict)


def test_per_symbol_targets_and_weights() -> None:
    c = WheelConfig(symbols={"SPY": 3.0, "QQQ": 1.0},
                    symbol_overrides={"QQQ": {"put_delta": 0.2, "dte": 30, "max_dte": 60}})
    assert weights(c) == {"SPY": 0.75, "QQQ": 0.25}
    assert target_delta(c, "QQQ", -1.0) == 0.2 and target_delta(c, "QQQ", 1.0) == 0.30
    assert target_delta(c, "SPY", -1.0) == 0.30
    assert target_dte(c, "QQQ") == (30, 60) and target_dte(c, "SPY") == (45, 180)
