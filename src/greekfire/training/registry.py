"""The model registry: every trained model a numbered version, aliases ``champion`` and ``challenger``,
promotion gated on held-out metrics, rollback to any earlier version, and an audit history of each change.

Versions and aliases live in MLflow's model registry (the tracking server's database); the history of who
moved an alias, when, why, from which version to which, lives in our database (:mod:`greekfire.training.audit`),
because MLflow keeps none. The gate compares the candidate's held-out metric (``models.gate_metric``, default
``test_rmse``: the test split, which no checkpoint selection has seen) with the champion's, and asks for a
relative improvement of ``models.gate_margin``.

Example::

    reg = ModelRegistry(settings)
    v = reg.register(result.mlflow_run_id)           # "3"
    print(reg.gate(v).reason)                         # test_rmse 0.0041 < 0.0052 * (1 - 0.02): passes
    reg.promote(v, actor="alice", reason="weekly retrain")      # raises GateFailed when the gate refuses
    reg.rollback("1", actor="bob", reason="bad fills since v3")  # champion back to version 1
    for e in reg.history():
        print(e.at, e.action, e.alias, e.from_version, e.to_version, e.actor, e.reason)
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from greekfire.core.errors import ConfigError, GreekfireError, UnavailableError
from greekfire.core.settings import Settings
from greekfire.ml.tracking import TAG_DATA_VERSION, TAG_ERROR, TAG_GIT_COMMIT, TAG_STATUS, mlflow_uri
from greekfire.training.audit import AuditEntry, AuditLog, default_actor

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
#: where train_pricing stores the best checkpoint inside a run (``runs:/<id>/model/best.ckpt``)
ARTIFACT_PATH = "model"


class GateFailed(GreekfireError):
    """The promotion gate refused a version; ``result`` says why (the refusal is in the audit history)."""

    def __init__(self, result: GateResult) -> None:
        self.result = result
        super().__init__(f"promotion refused: {result.reason}")


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on ``candidate`` against ``champion`` (None: no champion yet)."""

    passed: bool
    metric: str
    mode: str
    margin: float
    candidate: str
    candidate_value: float | None
    champion: str | None
    champion_value: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


@dataclass
class VersionInfo:
    """One registered version: its run, aliases, held-out metrics and provenance tags."""

    version: str
    run_id: str | None
    source: str
    aliases: list[str]
    created: datetime
    metrics: dict[str, float] = field(default_factory=dict)
    data_version: str | None = None
    git_commit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``created`` as ISO 8601)."""
        d = asdict(self)
        d["created"] = self.created.isoformat()
        return d


def gate_decision(metric: str, mode: str, margin: float, candidate: str, cand: float | None,
                  champion: str | None, champ: float | None) -> GateResult:
    """The promotion rule: with no champion the candidate passes; else ``mode`` min needs
    ``cand < champ - margin * |champ|`` (max: ``cand > champ + margin * |champ|``), strictly: a candidate
    only as good as the champion does not replace it. A missing or non-finite candidate metric fails."""
    def result(passed: bool, reason: str) -> GateResult:
        return GateResult(passed, metric, mode, margin, candidate, cand, champion, champ, reason)

    if cand is None or not math.isfinite(cand):
        return result(False, f"version {candidate} has no finite held-out metric {metric!r} ({cand})")
    if champion is None:
        return result(True, f"no champion yet: version {candidate} ({metric} {cand:.6g}) passes")
    if candidate == champion:
        return result(False, f"version {candidate} is the champion already")
    if champ is None or not math.isfinite(champ):
        return result(True, f"the champion (version {champion}) has no finite {metric!r}: version {candidate} passes")
    if mode == "min":
        bar = champ - margin * abs(champ)
        passed, op = cand < bar, "<" if cand < bar else ">="
    else:
        bar = champ + margin * abs(champ)
        passed, op = cand > bar, ">" if cand > bar else "<="
    word = "passes" if passed else "fails"
    return result(passed, f"{metric} {cand:.6g} (version {candidate}) {op} {bar:.6g} (champion version {champion}: "
                          f"{champ:.6g}, margin {margin:g}, {mode}imise): {word}")


class ModelRegistry:
    """The registered model ``models.name`` on the MLflow tracking server (``training.mlflow_tracking_uri``,
    else the local store) with its audit history (``models.audit_url``, else ``database.url``)."""

    def __init__(self, settings: Settings, *, tracking_uri: str | None = None, audit: AuditLog | None = None,
                 name: str | None = None) -> None:
        from mlflow.tracking import MlflowClient  # lazy: MLflow takes seconds to import

        self.settings = settings
        self.name = name or settings.models.name
        self.tracking_uri = tracking_uri or mlflow_uri(settings)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.audit = audit or AuditLog.from_settings(settings)

    # ------------------------------------------------------------------ versions
    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(self.name, description="greekfire option-pricing network")

    def register(self, run_id: str, *, artifact_path: str = ARTIFACT_PATH) -> str:
        """Register the model of MLflow run ``run_id`` (its ``model/`` artifacts) as a new version; returns
        the version number as text. ConfigError when the run does not exist, failed (its error is in tag
        ``greekfire.error``) or stored no model."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            raise ConfigError("run", run_id, f"no such MLflow run on {self.tracking_uri}: {exc.message}") from None
        tags = run.data.tags
        if run.info.status == "FAILED" or tags.get(TAG_STATUS) == "failed":
            raise ConfigError("run", run_id, f"the run failed ({tags.get(TAG_ERROR, 'no error recorded')}): "
                              "only a finished run can be registered")
        if not self.client.list_artifacts(run_id, artifact_path):
            raise ConfigError("run", run_id, f"the run stored no model under {artifact_path}/ "
                              "(train with tracking.log_model=true)")
        self._ensure_model()
        mv = self.client.create_model_version(
            self.name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id,
            tags={k: v for k, v in {"data_version": tags.get(TAG_DATA_VERSION),
                                    "git_commit": tags.get(TAG_GIT_COMMIT)}.items() if v},
        )
        log.info("registered %s version %s from run %s", self.name, mv.version, run_id)
        return str(mv.version)

    def versions(self) -> list[VersionInfo]:
        """Every version, oldest first."""
        found = self.client.search_model_versions(f"name = '{self.name}'")
        infos = sorted((self._info(mv) for mv in found), key=lambda v: int(v.version))
        if infos:  # search results carry no aliases on every store: take them from the registered model
            aliases = self.client.get_registered_model(self.name).aliases or {}
            for info in infos:
                info.aliases = sorted(a for a, v in aliases.items() if str(v) == info.version)
        return infos

    def info(self, version: str) -> VersionInfo:
        """One version; ConfigError when it does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version(self.name, str(version)))
        except MlflowException:
            raise ConfigError("version", version, f"no version {version} of model {self.name!r}") from None

    def _info(self, mv: Any) -> VersionInfo:
        metrics: dict[str, float] = {}
        tags: dict[str, str] = {}
        if mv.run_id:
            try:
                run = self.client.get_run(mv.run_id)
                metrics, tags = dict(run.data.metrics), dict(run.data.tags)
            except Exception as exc:  # a deleted run: the version stays listed
                log.warning("run %s of version %s: %s", mv.run_id, mv.version, exc)
        return VersionInfo(
            version=str(mv.version), run_id=mv.run_id, source=mv.source, aliases=sorted(mv.aliases or []),
            created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC), metrics=metrics,
            data_version=tags.get(TAG_DATA_VERSION), git_commit=tags.get(TAG_GIT_COMMIT),
        )

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points at, None when unset."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def model_uri(self, ref: str) -> str:
        """The artifact URI (``runs:/<id>/model``) of a version number or an alias; ConfigError when unset."""
        version = ref if ref.isdigit() else self.alias_version(ref)
        if version is None:
            raise ConfigError("model", ref, f"model {self.name!r} has no {ref} (promote a version first)")
        return self.info(version).source

    def load(self, ref: str, *, device: str = "cpu") -> Any:
        """The :class:`~greekfire.ml.serving.LoadedModel` of a version or an alias, its ``info`` noting
        ``version`` and the registry ``source`` (``models:/<name>@<alias>``)."""
        from greekfire.ml.serving import load_pricing_model

        version = ref if ref.isdigit() else self.alias_version(ref)
        if version is None:
            raise ConfigError("model", ref, f"model {self.name!r} has no {ref} (promote a version first)")
        model = load_pricing_model(self.info(version).source, device=device, tracking_uri=self.tracking_uri)
        model.source = f"models:/{self.name}/{version}"
        model.info["version"] = version
        return model

    # ------------------------------------------------------------------ gate, promotion, rollback
    def gate(self, version: str) -> GateResult:
        """The gate's verdict on ``version`` against the current champion (see :func:`gate_decision`)."""
        m = self.settings.models
        cand = self.info(version)
        champion = self.alias_version(CHAMPION)
        champ = self.info(champion) if champion is not None else None
        res = gate_decision(m.gate_metric, m.gate_mode, m.gate_margin, cand.version, cand.metrics.get(m.gate_metric),
                            champion, None if champ is None else champ.metrics.get(m.gate_metric))
        if champ is not None and cand.data_version and champ.data_version and cand.data_version != champ.data_version:
            res = GateResult(**{**res.as_dict(), "reason": res.reason + f" (note: scored on other data: "
                                f"{cand.data_version} vs {champ.data_version})"})
        return res

    def _set(self, alias: str, version: str | None) -> None:
        if version is None:
            self.client.delete_registered_model_alias(self.name, alias)
        else:
            self.client.set_registered_model_alias(self.name, alias, str(version))

    def promote(self, version: str, *, alias: str = CHAMPION, actor: str | None = None, reason: str = "",
                gate: bool = True, details: dict[str, Any] | None = None) -> AuditEntry:
        """Point ``alias`` (champion or challenger) at ``version`` after the gate passes (``gate=False``:
        without it, e.g. when an A/B test decided); a challenger promoted to champion stops being the
        challenger. Recorded in the audit; a refusal is recorded too and raises GateFailed."""
        if alias not in ALIASES:
            raise ConfigError("alias", alias, f"one of {ALIASES}")
        version = self.info(version).version
        before = self.alias_version(alias)
        verdict = self.gate(version) if gate else None
        info = {**(details or {}), **({"gate": verdict.as_dict()} if verdict else {})}
        if verdict is not None and not verdict.passed:
            self.audit.record(model=self.name, action="refused", alias=alias, from_version=before, to_version=version,
                              actor=actor, reason=f"{reason + ': ' if reason else ''}{verdict.reason}", details=info)
            raise GateFailed(verdict)
        self._set(alias, version)
        if alias == CHAMPION and self.alias_version(CHALLENGER) == version:
            self._set(CHALLENGER, None)
        why = reason or (verdict.reason if verdict else "promoted without the gate")
        return self.audit.record(model=self.name, action="promote", alias=alias, from_version=before,
                                 to_version=version, actor=actor, reason=why, details=info)

    def previous_champion(self) -> str | None:
        """The version the champion held before its latest change (from the audit history), if any."""
        current = self.alias_version(CHAMPION)
        for e in reversed(self.history()):
            if e.alias == CHAMPION and e.action in ("promote", "rollback") and e.to_version == current:
                return e.from_version
        return None

    def rollback(self, to_version: str | None = None, *, actor: str | None = None, reason: str = "",
                 details: dict[str, Any] | None = None) -> AuditEntry:
        """Point ``champion`` back at ``to_version`` (any registered version; None: the one before the
        latest change), without the gate, and record who, when, why, from and to. ConfigError when there is
        nothing to roll back to."""
        if not reason:
            raise ConfigError("reason", reason, "a rollback needs a reason (it goes into the audit history)")
        current = self.alias_version(CHAMPION)
        target = to_version if to_version is not None else self.previous_champion()
        if target is None:
            raise ConfigError("--to", None, "no earlier champion in the audit history: name the version to roll back to")
        target = self.info(target).version
        if target == current:
            raise ConfigError("--to", target, f"version {target} is the champion already")
        self._set(CHAMPION, target)
        return self.audit.record(model=self.name, action="rollback", alias=CHAMPION, from_version=current,
                                 to_version=target, actor=actor, reason=reason, details=details)

    def rollback_challenger(self, *, actor: str | None = None, reason: str,
                            details: dict[str, Any] | None = None) -> AuditEntry:
        """End a challenger's trial: unset ``challenger`` so that all traffic goes back to the champion; the
        audit says rollback of alias challenger from its version to the champion's."""
        current = self.alias_version(CHALLENGER)
        if current is None:
            raise ConfigError("challenger", None, f"model {self.name!r} has no challenger")
        self._set(CHALLENGER, None)
        return self.audit.record(model=self.name, action="rollback", alias=CHALLENGER, from_version=current,
                                 to_version=self.alias_version(CHAMPION), actor=actor or default_actor(),
                                 reason=reason, details=details)

    def history(self, limit: int | None = None) -> list[AuditEntry]:
        """The audit history of this model, oldest first."""
        return self.audit.history(self.name, limit=limit)

    def close(self) -> None:
        """Release the audit database."""
        self.audit.close()


def open_registry(settings: Settings) -> ModelRegistry:
    """:class:`ModelRegistry` for ``settings``; UnavailableError naming the tracking server when MLflow
    cannot be reached."""
    reg = ModelRegistry(settings)
    try:
        reg.client.search_registered_models(max_results=1)
    except Exception as exc:  # MLflow raises MlflowException or requests' errors
        reg.close()
        raise UnavailableError(reg.tracking_uri, f"the MLflow tracking server does not answer: "
                               f"{' '.join(str(exc).split())[:200]}") from None
    return reg
