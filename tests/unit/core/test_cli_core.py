from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from greekfire import __version__
from greekfire.cli import STATE, app
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
