"""`greekfire train run --multirun`: Hydra's sweep syntax expanded into one run per combination, every
combination composed and validated before the first trains."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from greekfire.cli import app
from greekfire.core.errors import ConfigError, ConfigErrors
from greekfire.core.settings import load_settings
from greekfire.training.sweep import expand_sweeps, run_sweep


def test_sweeps_expand_to_the_cartesian_product_in_hydra_order() -> None:
    combos = expand_sweeps(["optim.lr=1e-3,1e-2", "model.hidden=range(32,97,32)", "trainer.max_epochs=1"])
    assert len(combos) == 6
    assert combos[0] == ["optim.lr=0.001", "model.hidden=32", "trainer.max_epochs=1"]
    assert combos[1] == ["optim.lr=0.001", "model.hidden=64", "trainer.max_epochs=1"]
    assert combos[-1] == ["optim.lr=0.01", "model.hidden=96", "trainer.max_epochs=1"]
    assert expand_sweeps(["+tracking.tags=a"]) == [["+tracking.tags=a"]]
    assert expand_sweeps([]) == [[]]


def test_a_broken_sweep_names_the_overrides() -> None:
    with pytest.raises(ConfigError) as exc:
        expand_sweeps(["optim.lr=1e-3,,"])
    assert exc.value.field == "overrides"


def test_every_combination_is_validated_before_the_first_run() -> None:
    s = load_settings()
    ran: list[list[str]] = []

    def one(combo: list[str]) -> dict[str, Any]:
        ran.append(combo)
        return {"version": str(len(ran))}

    with pytest.raises(ConfigErrors) as exc:
        run_sweep(s, "smoke", ["trainer.memory_fraction=0.5,2.0"], one)
    assert "trainer.memory_fraction" in str(exc.value)
    assert ran == []  # the bad second value failed before the first run trained
    rows = run_sweep(s, "smoke", ["optim.lr=1e-3,1e-2"], one)
    assert [r["overrides"] for r in rows] == [["optim.lr=0.001"], ["optim.lr=0.01"]]
    assert [r["summary"]["version"] for r in rows] == ["1", "2"]


def test_the_command_refuses_a_bad_sweep_value_with_the_key() -> None:
    result = CliRunner().invoke(app, ["train", "run", "--multirun", "+experiment=smoke",
                                      "trainer.memory_fraction=0.5,2.0"])
    assert result.exit_code == 2, result.output
    assert "trainer.memory_fraction" in result.output
