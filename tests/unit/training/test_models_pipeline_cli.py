"""`greekfire models pipeline`: the command CI runs step by step (the steps themselves: test_pipeline*)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from greekfire.cli import app

ROOT = Path(__file__).resolve().parents[3]


def test_an_unknown_step_is_one_line_and_exit_2(tmp_settings_env: Path) -> None:
    r = CliRunner().invoke(app, ["models", "pipeline", "deploi"])
    assert r.exit_code == 2, r.output
    assert "step 'deploi': one of test, train, validate, register, deploy, ab, rollback" in r.output
    assert "Traceback" not in r.output


def test_deploy_sets_the_image_tag_of_the_manifests(tmp_settings_env: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "deploy" / "k8s" / "training", tmp_path / "deploy" / "k8s" / "training")
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state.json"
    r = CliRunner().invoke(app, ["models", "pipeline", "deploy", "--image", "greekfire:smoke-42", "--state",
                                 str(state), "--json"])
    assert r.exit_code == 0, r.output
    (result,) = json.loads(r.output)
    assert result["step"] == "deploy" and result["status"] == "passed", result
    assert "smoke-42" in (tmp_path / "deploy" / "k8s" / "training" / "kustomization.yaml").read_text()
    assert "smoke-42" not in (ROOT / "deploy" / "k8s" / "training" / "kustomization.yaml").read_text()
