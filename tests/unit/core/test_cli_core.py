from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from greekfire import __version__
from greekfire.cli import STATE, app, named_subcommand
from greekfire.core.logging import JsonFormatter, configure_logging

runner = CliRunner()


@pytest.fixture(autouse=True)
def fresh_state() -> None:
    STATE._settings = None
    STATE.config = None


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_config_show_json_masks_secrets(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREEKFIRE_STORAGE__S3_SECRET_ACCESS_KEY", "s3cr3t")
    r = runner.invoke(app, ["config", "show", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["gpu"]["sample_interval_s"] == 5.0
    assert "s3cr3t" not in r.stdout


def test_config_show_bad_yaml_exits_with_field(tmp_settings_env: Path) -> None:
    cfg = tmp_settings_env / "bad.yaml"
    cfg.write_text("gpu:\n  metric_naming: nvidia\n")
    r = runner.invoke(app, ["--config", str(cfg), "config", "show"])
    assert r.exit_code == 2
    assert "gpu.metric_naming" in r.output and "nvidia" in r.output


def test_json_logging_and_rotation(tmp_path: Path) -> None:
    import io

    buf = io.StringIO()
    logfile = tmp_path / "logs" / "gf.log"
    configure_logging("DEBUG", json_format=True, file=logfile, max_bytes=2000, backup_count=2, stream=buf)
    lg = logging.getLogger("greekfire.test")
    for i in range(100):
        lg.info("order %d accepted", i, extra={"order_id": i})
    line = json.loads(buf.getvalue().splitlines()[0])
    assert line["msg"] == "order 0 accepted" and line["order_id"] == 0 and line["level"] == "INFO"
    rotated = sorted(p.name for p in logfile.parent.iterdir())
    assert rotated == ["gf.log", "gf.log.1", "gf.log.2"]  # size-based rotation kept backup_count files
    configure_logging("WARNING")


def test_json_formatter_includes_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert "ValueError: boom" in out["exc"]


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["gpu", "status", "--json"], "gpu"),
        (["-c", "s.yaml", "--log-level", "debug", "trade", "--paper"], "trade"),
        (["--config", "price.yaml", "price", "x.csv"], "price"),
        (["--config=s.yaml", "--log-json", "wheel", "backtest"], "wheel"),
        (["--help"], None),
        (["--version", "gpu"], None),
        ([], None),
    ],
)
def test_named_subcommand_skips_the_root_options_and_their_values(argv: list[str], name: str | None) -> None:
    assert named_subcommand(argv) == name


def test_a_run_builds_only_the_sub_command_it_names(tmp_settings_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    import typer.main

    built: list[list[str]] = []
    real = typer.main.get_command

    def spy(typer_instance):  # noqa: ANN001, ANN202
        cmd = real(typer_instance)
        built.append(sorted(cmd.commands))
        return cmd

    monkeypatch.setattr(typer.main, "get_command", spy)
    every = len(app.registered_groups), len(app.registered_commands)
    for argv in (["config", "show", "--json"], ["nosuch"]):
        monkeypatch.setattr(sys, "argv", ["greekfire", *argv])
        with pytest.raises(SystemExit) as exit_:
            app()
        assert (len(app.registered_groups), len(app.registered_commands)) == every  # restored after the run
        if argv[0] == "config":
            assert exit_.value.code == 0
            assert json.loads(capsys.readouterr().out)["gpu"]["sample_interval_s"] == 5.0
        else:
            assert exit_.value.code == 2 and "No such command" in capsys.readouterr().err
    assert built[0] == ["config"]
    assert {"config", "gpu", "price", "trade", "wheel", "hft", "fix"} <= set(built[1])  # an unknown name: all
