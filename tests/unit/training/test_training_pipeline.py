"""The model pipeline's steps (greekfire.training.pipeline): train a real smoke model, gate, register, set the
manifests' image, A/B verdict, and the automatic rollback after a failed gate or A/B test.

The registry here is a small in-memory one with the pipeline's ModelRegistry interface (the MLflow-backed
registry has its own tests); everything else is real: training, the kustomization file, and kubectl's
kustomize where it is installed.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from greekfire.core.errors import ConfigError
from greekfire.core.settings import load_settings
from greekfire.training.pipeline import (
    STEPS,
    PipelineOptions,
    PipelineState,
    current_image,
    pipeline,
    render,
    set_image,
    split_image,
)

ROOT = Path(__file__).resolve().parents[3]
KUSTOMIZE_DIR = ROOT / "deploy" / "k8s" / "training"
NEW = "registry.example.com/greekfire/greekfire:abc123"


class MemoryRegistry:
    """Versions, a champion score and an audit list; the gate: lower test_rmse than the champion's."""

    def __init__(self, champion_rmse: float | None, verdict: str = "undecided") -> None:
        self.champion_rmse = champion_rmse
        self.verdict = verdict
        self.versions: dict[str, str] = {}
        self.audit: list[tuple[str, str, str]] = []

    def gate(self, scores: Mapping[str, float]) -> tuple[bool, str]:
        rmse = scores["test_rmse"]
        if self.champion_rmse is None:
            return True, "no champion yet"
        ok = rmse < self.champion_rmse
        return ok, f"test_rmse {rmse:.4g} vs champion {self.champion_rmse:.4g}"

    def register(self, model_uri: str, run_id: str | None, scores: Mapping[str, float]) -> str:
        version = str(len(self.versions) + 1)
        self.versions[version] = model_uri
        return version

    def ab_verdict(self, version: str):  # type: ignore[no-untyped-def]
        return self.verdict

    def promote(self, version: str, reason: str) -> None:
        self.audit.append(("promote", version, reason))

    def rollback(self, version: str, reason: str) -> None:
        self.audit.append(("rollback", version, reason))


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    out = tmp_path / "k8s"
    shutil.copytree(KUSTOMIZE_DIR, out)
    return out


def options(tmp_path: Path, manifests: Path, registry: MemoryRegistry | None, **kw: object) -> PipelineOptions:
    settings = load_settings(overrides={"training.runs_dir": str(tmp_path / "runs"), "training.torch_threads": 1,
                                        "training.config_dir": str(ROOT / "configs" / "train")})
    return PipelineOptions(settings, kustomize_dir=manifests, image=NEW, registry=registry,  # type: ignore[arg-type]
                           state_path=tmp_path / "state.json", project_dir=ROOT, **kw)  # type: ignore[arg-type]


def trained_state(path: Path, rmse: float) -> None:
    PipelineState(checkpoint="/runs/smoke/last.ckpt", model_uri="/runs/smoke/last.ckpt",
                  scores={"test_rmse": rmse}).save(path)


def test_split_image_forms() -> None:
    assert split_image("reg.io:5000/g/greekfire:1.2") == {"newName": "reg.io:5000/g/greekfire", "newTag": "1.2"}
    assert split_image("reg.io:5000/g/greekfire") == {"newName": "reg.io:5000/g/greekfire"}
    assert split_image("g@sha256:ab") == {"newName": "g", "digest": "sha256:ab"}


def test_set_image_rewrites_only_the_images_block(manifests: Path) -> None:
    before = (manifests / "kustomization.yaml").read_text()
    old = current_image(manifests, "greekfire")
    assert old is not None and old.startswith("registry.example.com/")
    assert set_image(manifests, "greekfire", NEW) == old
    after = (manifests / "kustomization.yaml").read_text()
    assert current_image(manifests, "greekfire") == NEW
    # comments and every other key are kept
    assert after.splitlines()[:3] == before.splitlines()[:3]
    doc, orig = yaml.safe_load(after), yaml.safe_load(before)
    assert {k: v for k, v in doc.items() if k != "images"} == {k: v for k, v in orig.items() if k != "images"}
    rendered = render(manifests)
    if rendered is not None:  # kubectl (the dev extra) renders the new tag into every workload
        assert rendered.count(f"image: {NEW}") == 5 and old not in rendered


def test_unknown_step_is_a_config_error(tmp_path: Path, manifests: Path) -> None:
    with pytest.raises(ConfigError, match="steps"):
        pipeline(["train", "ship-it"], options(tmp_path, manifests, MemoryRegistry(None)))
    assert "rollback" in STEPS


def test_failed_gate_rolls_back_before_anything_is_deployed(tmp_path: Path, manifests: Path) -> None:
    registry = MemoryRegistry(champion_rmse=0.01)
    opts = options(tmp_path, manifests, registry)
    trained_state(opts.state_path, rmse=0.02)
    before = current_image(manifests, "greekfire")
    results = pipeline(["validate", "register", "deploy", "ab"], opts)
    assert [(r.step, r.status) for r in results] == [("validate", "failed"), ("rollback", "passed")]
    assert "0.02 vs champion 0.01" in results[0].detail
    assert "the champion stays" in results[1].detail
    assert registry.versions == {} and current_image(manifests, "greekfire") == before
    assert PipelineState.load(opts.state_path).rolled_back


def test_failed_ab_test_restores_the_image_and_withdraws_the_challenger(tmp_path: Path, manifests: Path) -> None:
    registry = MemoryRegistry(champion_rmse=0.05, verdict="rollback")
    opts = options(tmp_path, manifests, registry)
    trained_state(opts.state_path, rmse=0.02)
    before = current_image(manifests, "greekfire")
    results = pipeline(["validate", "register", "deploy", "ab"], opts)
    assert [(r.step, r.status) for r in results] == [
        ("validate", "passed"), ("register", "passed"), ("deploy", "passed"), ("ab", "failed"), ("rollback", "passed")]
    assert current_image(manifests, "greekfire") == before
    assert registry.audit == [("rollback", "1", "ab failed: the A/B test found version 1 worse than the champion")]
    state = PipelineState.load(opts.state_path)
    assert state.rolled_back and state.image == before and [r["step"] for r in state.results][-1] == "rollback"


def test_steps_share_state_across_invocations(tmp_path: Path, manifests: Path) -> None:
    """CI runs one step per invocation: each reads what the earlier ones wrote."""
    registry = MemoryRegistry(champion_rmse=None, verdict="promote")
    opts = options(tmp_path, manifests, registry)
    trained_state(opts.state_path, rmse=0.02)
    for step in ("validate", "register", "deploy", "ab"):
        [result] = pipeline([step], opts)
        assert result.status == "passed", result
    assert registry.audit == [("promote", "1", "the A/B test found the challenger better")]
    assert current_image(manifests, "greekfire") == NEW


def test_registry_steps_say_the_registry_is_missing(tmp_path: Path, manifests: Path) -> None:
    opts = options(tmp_path, manifests, None)
    trained_state(opts.state_path, rmse=0.02)
    results = pipeline(["validate"], opts)
    assert results[0].status == "failed" and "model registry" in results[0].detail
    assert results[1].step == "rollback" and results[1].status == "passed"


def test_deploy_needs_an_image(tmp_path: Path, manifests: Path) -> None:
    opts = options(tmp_path, manifests, MemoryRegistry(None))
    opts.image = None
    [result] = pipeline(["deploy"], opts)
    assert result.status == "failed" and "image" in result.detail


def test_test_step_runs_pytest(tmp_path: Path, manifests: Path) -> None:
    folder = tmp_path / "proj" / "tests"
    folder.mkdir(parents=True)
    (folder / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    (folder / "test_bad.py").write_text("def test_bad():\n    assert 1 + 1 == 3\n")
    opts = options(tmp_path, manifests, None, test_paths=["tests/test_ok.py"])
    opts.project_dir = tmp_path / "proj"
    assert pipeline(["test"], opts)[0].status == "passed"
    opts.test_paths = ["tests"]
    result = pipeline(["test"], opts)[0]
    assert result.status == "failed" and "1 failed, 1 passed" in result.detail
    opts.test_paths = ["nowhere"]
    assert pipeline(["test"], opts)[0].status == "skipped"


@pytest.mark.slow
def test_train_then_the_whole_pipeline(tmp_path: Path, manifests: Path) -> None:
    """A real smoke model through every step: trained, gated (no champion), registered, deployed, promoted."""
    registry = MemoryRegistry(champion_rmse=None, verdict="promote")
    opts = options(tmp_path, manifests, registry, overrides=[
        "data.n_samples=2000", "trainer.max_epochs=1", "tracking.mlflow=false", "tracking.tensorboard=false"])
    results = pipeline(["train", "validate", "register", "deploy", "ab"], opts)
    assert [r.status for r in results] == ["passed"] * 5, results
    state = PipelineState.load(opts.state_path)
    assert state.checkpoint and Path(state.checkpoint).exists()
    assert 0 < state.scores["test_rmse"] < 1
    assert registry.versions == {"1": state.model_uri} and state.image == NEW
