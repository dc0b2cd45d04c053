"""docs/configuration.md is generated from the settings models and is current: every key, its type,
default, environment variable and meaning."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from greekfire.cli import app
from greekfire.core.settings import GpuSettings, LoggingSettings, RiskSettings, Settings, load_settings
from greekfire.core.settings_doc import allowed, env_var, leaves, reference_markdown, shown_default, type_name

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "configuration.md"


def test_the_committed_page_is_current() -> None:
    assert PAGE.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `greekfire config reference -o docs/configuration.md`"
    )


def test_the_command_prints_and_writes_the_page(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["config", "reference"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout == reference_markdown()
    out = tmp_path / "configuration.md"
    written = runner.invoke(app, ["config", "reference", "-o", str(out)])
    assert written.exit_code == 0, written.output
    assert out.read_text() == reference_markdown()


def test_every_key_has_one_row_with_type_default_variable_and_meaning() -> None:
    rows = {ln.split(" | ")[0].removeprefix("| ").strip("`"): ln for ln in PAGE.read_text().splitlines()
            if ln.startswith("| `")}
    for path, info in leaves(Settings):
        dotted = ".".join(path)
        assert dotted in rows, f"no row for {dotted}"
        cells = [c.strip() for c in rows[dotted].strip().strip("|").split(" | ")]
        assert len(cells) == 6, f"{dotted}: {cells}"
        assert cells[2] == f"`{shown_default(info.default)}`".replace("|", "\\|"), f"{dotted}: default {cells[2]}"
        assert cells[3] == f"`{env_var(path)}`", f"{dotted}: variable {cells[3]}"
        assert cells[5], f"{dotted} has no meaning: give its Field a description"
    assert len(rows) == len(leaves(Settings))


def test_types_bounds_and_choices_are_rendered() -> None:
    assert type_name(GpuSettings.model_fields["memory_fraction"].annotation) == "float or none"
    assert allowed(GpuSettings.model_fields["memory_fraction"]) == "> 0; <= 1"
    assert allowed(RiskSettings.model_fields["var_confidence"]) == "> 0.5; < 1"
    assert type_name(LoggingSettings.model_fields["level"].annotation) == "choice"
    assert allowed(LoggingSettings.model_fields["level"]) == "`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`"
    assert type_name(Settings.model_fields["home"].annotation) == "path"


def test_the_documented_variables_set_their_keys(monkeypatch, tmp_path: Path) -> None:
    """Each variable on the page, given a valid value, sets its key (aliases and nested sections included)."""
    picks = {
        ("logging", "json"): ("true", True),
        ("trading", "risk", "max_order_qty"): ("17", 17),
        ("gpu", "alerts", "leak_samples"): ("3", 3),
        ("storage", "row_group_rows"): ("1024", 1024),
    }
    monkeypatch.setenv("GREEKFIRE_HOME", str(tmp_path))
    for path, (raw, _) in picks.items():
        monkeypatch.setenv(env_var(path), raw)
    s = load_settings()
    for path, (_, want) in picks.items():
        node = s
        for part in path:
            node = getattr(node, "json_format" if part == "json" else part)
        assert node == want, f"{env_var(path)}={picks[path][0]} gave {node!r}"
