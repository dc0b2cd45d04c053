"""``greekfire models``: the model registry (list, register, promote, rollback, history) and run comparison.

:data:`models_app` is registered on the main app by :mod:`greekfire.cli`; MLflow and the registry are imported
inside each command (MLflow takes seconds to import). Errors end as one line with exit code 2 (usage,
configuration) or 1 (a refused promotion, an unreachable server).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.table import Table

models_app = typer.Typer(help="Model registry: versions, gated promotion, audited rollback, run comparison.",
                         no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
ActorOpt = Annotated[str | None, typer.Option("--actor", help="who acts (default: the OS user); goes into the audit")]


def _cli() -> ModuleType:
    """The main command module (settings, consoles, JSON printer), imported when a command runs (it imports
    this module to register :data:`models_app`)."""
    import greekfire.cli

    return greekfire.cli


def _registry() -> Any:
    from greekfire.training.registry import open_registry

    return open_registry(_cli().STATE.settings)


def _entry_row(e: Any) -> list[str]:
    return [str(e.id), e.at.strftime("%Y-%m-%d %H:%M:%S"), e.action, e.alias, e.from_version or "-",
            e.to_version or "-", e.actor, e.reason]


def _print_entry(e: Any, as_json: bool) -> None:
    cli = _cli()
    if as_json:
        cli.print_json(e.as_dict())
        return
    cli.console.print(f"{e.action}: {e.alias} {e.from_version or '-'} -> {e.to_version or '-'} by {e.actor} "
                      f"at {e.at.isoformat(timespec='seconds')}: {e.reason}")


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Every registered version with its aliases, held-out metrics and data version."""
    reg = _registry()
    versions = reg.versions()
    metric = reg.settings.models.gate_metric
    cli = _cli()
    if as_json:
        cli.print_json({"model": reg.name, "gate_metric": metric, "versions": [v.as_dict() for v in versions]})
        return
    table = Table(title=f"model {reg.name}")
    for c in ("version", "aliases", metric, "run", "data version", "created"):
        table.add_column(c)
    for v in versions:
        value = v.metrics.get(metric)
        table.add_row(v.version, ", ".join(v.aliases), "-" if value is None else f"{value:.6g}", (v.run_id or "-")[:12],
                      v.data_version or "-", v.created.strftime("%Y-%m-%d %H:%M"))
    cli.console.print(table)


@models_app.command("register")
def models_register(
    run: Annotated[str, typer.Argument(help="MLflow run id of a finished training run")],
    as_json: JsonOpt = False,
) -> None:
    """Register a training run's model as a new version (printed)."""
    reg = _registry()
    version = reg.register(run)
    if as_json:
        _cli().print_json({"model": reg.name, "version": version, "run": run})
    else:
        _cli().console.print(f"registered {reg.name} version {version} from run {run}")


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="version number to promote")],
    to: Annotated[str, typer.Option("--to", help="alias: champion or challenger")] = "champion",
    reason: Annotated[str, typer.Option("--reason", help="why (goes into the audit)")] = "",
    actor: ActorOpt = None,
    force: Annotated[bool, typer.Option("--force", help="skip the gate (recorded as such)")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Point champion (or challenger) at VERSION if it beats the champion on the gate metric; a refusal
    exits 1 and is recorded too."""
    from greekfire.cli_errors import UsageProblem

    if to not in ("champion", "challenger"):
        raise UsageProblem(f"--to {to!r}: champion or challenger")
    reg = _registry()
    entry = reg.promote(version, alias=to, actor=actor, reason=reason or ("forced" if force else ""), gate=not force)
    _print_entry(entry, as_json)


@models_app.command("rollback")
def models_rollback(
    reason: Annotated[str, typer.Option("--reason", help="why (required; goes into the audit)")],
    to: Annotated[
        str | None, typer.Option("--to", help="version (default: the champion before the latest change)")
    ] = None,
    actor: ActorOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point champion back at an earlier version, without the gate, recording who, when, why, from and to."""
    entry = _registry().rollback(to, actor=actor, reason=reason)
    _print_entry(entry, as_json)


@models_app.command("history")
def models_history(
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="only the newest N entries")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit history: every promotion, refusal and rollback, oldest first."""
    reg = _registry()
    entries = reg.history(limit)
    cli = _cli()
    if as_json:
        cli.print_json({"model": reg.name, "history": [e.as_dict() for e in entries]})
        return
    table = Table(title=f"model {reg.name}: audit history")
    for c in ("id", "when (UTC)", "action", "alias", "from", "to", "who", "why"):
        table.add_column(c)
    for e in entries:
        table.add_row(*_entry_row(e))
    cli.console.print(table)


@models_app.command("compare")
def models_compare(
    runs: Annotated[list[str], typer.Argument(help="MLflow run ids")],
    out: Annotated[Path, typer.Option("--out", help="folder for the learning-curve PNGs")] = Path("models-compare"),
    as_json: JsonOpt = False,
) -> None:
    """A table of the runs' final metrics and differing parameters; PNG plots of their learning curves."""
    from greekfire.training.compare import compare_runs

    cmp = compare_runs(runs, _cli().STATE.settings, out_dir=out)
    cli = _cli()
    if as_json:
        cli.print_json(cmp.as_dict())
        return
    table = Table(title="runs")
    table.add_column("")
    for r in runs:
        table.add_column(f"{cmp.info[r]['name'] or ''} {r[:8]}")
    for key in ("status", "data_version", "git_commit"):
        table.add_row(key, *[str(cmp.info[r].get(key) or "-")[:20] for r in runs])
    for name in sorted(cmp.metrics):
        vals = cmp.metrics[name]
        table.add_row(name, *["-" if r not in vals else f"{vals[r]:.6g}" for r in runs])
    for name, pvals in sorted(cmp.params.items()):
        table.add_row(f"[dim]{name}[/dim]", *[pvals[r][:20] for r in runs])
    cli.console.print(table)
    for p in cmp.plots:
        cli.console.print(f"plot: {p}")


@models_app.command("pipeline")
def models_pipeline(
    steps: Annotated[list[str], typer.Argument(help="steps in order: test train validate register deploy ab rollback")],
    experiment: Annotated[str, typer.Option("--experiment", help="the smoke model's experiment (configs/train)")] = "smoke",
    state: Annotated[Path, typer.Option("--state", help="JSON file the steps share (CI runs them one at a time)")] = Path(
        ".greekfire/pipeline-state.json"),
    image: Annotated[str | None, typer.Option("--image", help="deploy: the new image, NAME:TAG or NAME@sha256:...")] = None,
    apply: Annotated[bool, typer.Option("--apply", help="deploy: also kubectl apply -k (needs a cluster)")] = False,
    test_path: Annotated[list[str] | None, typer.Option("--test-path", help="test: pytest paths (repeatable)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The models pipeline, step by step as CI runs it: tests, a smoke model trained, validated against the
    champion, registered, deployed (the manifests' image tag), judged by the A/B test; a failed validation or
    A/B test rolls back on its own. Exit 1 when a step failed."""
    from greekfire.cli_errors import UsageProblem
    from greekfire.training.pipeline import STEPS, PipelineOptions, open_pipeline_registry, pipeline

    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise UsageProblem(f"step {bad[0]!r}: one of {', '.join(STEPS)}")
    cli = _cli()
    settings = cli.STATE.settings
    needs_registry = any(s in ("validate", "register", "ab", "rollback") for s in steps)
    options = PipelineOptions(settings=settings, experiment=experiment, state_path=state, image=image, apply=apply,
                              test_paths=tuple(test_path) if test_path else ("tests/unit/ml",),
                              registry=open_pipeline_registry(settings) if needs_registry else None)
    results = pipeline(steps, options)
    if as_json:
        cli.print_json([{"step": r.step, "status": r.status, "detail": r.detail} for r in results])
    else:
        for r in results:
            cli.console.print(f"{r.step}: {r.status}: {r.detail}")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)
