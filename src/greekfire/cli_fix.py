"""``greekfire fix``: the FIX exchange gateway and the QuickFIX acceptance-script runner.

:data:`fix_app` is registered on the main app by :mod:`greekfire.cli` (``greekfire fix ...``); its commands
reach the main module's settings and consoles through :func:`_cli`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from greekfire.cli_errors import UsageProblem, fail
from greekfire.core.errors import ConfigError, ConfigErrors, GreekfireError
from greekfire.core.progress import ProgressHook, terminal_bars
from greekfire.core.settings import Settings

fix_app = typer.Typer(help="FIX 4.4: the exchange gateway, QuickFIX's acceptance scripts.", no_args_is_help=True)


def _cli() -> ModuleType:
    """The main command module (its settings, consoles, JSON printer). Imported when a command runs:
    greekfire.cli imports this module to register :data:`fix_app`, so importing it back at the top would be
    circular."""
    import greekfire.cli

    return greekfire.cli


def script_folder(folder: Path) -> Path:
    """The folder holding the ``.def`` scripts: ``folder`` itself, or its one sub-folder that has them
    (``fix44/`` holds ``definitions_server_fix44/``)."""
    if not folder.is_dir():
        raise UsageProblem(f"FOLDER {str(folder)!r}: no such folder (give the folder of QuickFIX's .def scripts)")
    if any(folder.glob("*.def")):
        return folder
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("*.def")))
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise UsageProblem(f"FOLDER {str(folder)!r}: holds no .def scripts, nor does any folder in it")
    names = ", ".join(p.name for p in subs)
    raise UsageProblem(f"FOLDER {str(folder)!r}: several script folders ({names}); name one of them")


def find_dictionary(folder: Path, given: Path | None, settings: Settings) -> Path:
    """``--dictionary``, else ``FIX44.xml`` beside or above the scripts, else ``fix.data_dictionary``."""
    if given is not None:
        if not given.is_file():
            raise UsageProblem(f"--dictionary {str(given)!r}: no such file")
        return given
    for candidate in (folder / "FIX44.xml", folder.parent / "FIX44.xml"):
        if candidate.is_file():
            return candidate
    if settings.fix.data_dictionary is not None and settings.fix.data_dictionary.is_file():
        return settings.fix.data_dictionary
    raise UsageProblem(f"no FIX44.xml beside {str(folder)!r}: pass --dictionary PATH or set fix.data_dictionary")


def run_conformance(
    folder: Path, dictionary: Path, only: str | None, jobs: int, progress: ProgressHook | None,
) -> dict[str, Any]:
    """Run the scripts; the summary :func:`print_conformance` and ``--json`` print."""
    from greekfire.fix.conformance import ScriptResult, run_scripts

    total = len([p for p in folder.glob("*.def") if not only or only in p.name])
    if total == 0:
        raise UsageProblem(f"--only {only!r}: matches none of the scripts in {str(folder)!r}")
    done = [0]

    def on_result(_: ScriptResult) -> None:
        done[0] += 1
        if progress is not None:
            progress("scripts", done[0], total, "scripts")

    results = run_scripts(folder, dictionary, on_result, only=only, jobs=jobs)
    passed = sum(r.passed for r in results)
    return {
        "folder": str(folder), "dictionary": str(dictionary), "total": len(results), "passed": passed,
        "failed": len(results) - passed,
        "scripts": [{"name": r.name, "passed": r.passed, "seconds": round(r.seconds, 2), "line": r.line,
                     "reason": r.reason} for r in results],
    }


def print_conformance(console: Console, out: dict[str, Any]) -> None:
    table = Table(title=f"QuickFIX acceptance scripts: {out['folder']}")
    for c in ("script", "result", "seconds", "why (line)"):
        table.add_column(c, justify="right" if c == "seconds" else "left")
    for s in out["scripts"]:
        result = "[green]passed[/green]" if s["passed"] else "[red]failed[/red]"
        why = "" if s["passed"] else f"{s['reason']} (line {s['line']})"
        table.add_row(s["name"], result, f"{s['seconds']:.1f}", why)
    console.print(table)
    colour = "green" if out["failed"] == 0 else "red"
    console.print(f"[{colour}]{out['passed']} of {out['total']} passed[/{colour}]")


def print_exchange(console: Console, out: dict[str, Any]) -> None:
    table = Table(title="FIX exchange")
    table.add_column("what")
    table.add_column("value", justify="right")
    for k, v in out.items():
        table.add_row(k, str(v))
    console.print(table)


@fix_app.command("conformance")
def fix_conformance(
    folder: Annotated[Path, typer.Argument(help="folder of QuickFIX's .def scripts (or the folder above it)")],
    dictionary: Annotated[Path | None, typer.Option("--dictionary", help="FIX44.xml (default: beside the scripts, else fix.data_dictionary)")] = None,
    only: Annotated[str | None, typer.Option("--only", help="run only the scripts whose name contains this")] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, max=16, help="acceptors running scripts side by side")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as JSON")] = False,
) -> None:
    """Play QuickFIX's acceptance scripts against greekfire's FIX acceptor; exit 1 when any fails."""
    cli = _cli()
    scripts = script_folder(folder)
    path = find_dictionary(scripts, dictionary, cli.settings())
    try:
        with terminal_bars(cli.err_console, not as_json) as progress:
            out = run_conformance(scripts, path, only, jobs, progress)
    except GreekfireError as exc:
        raise fail("fix conformance", exc) from None
    if as_json:
        cli.print_json(out)
    else:
        print_conformance(cli.console, out)
    if out["failed"]:
        raise typer.Exit(1)


@fix_app.command("exchange")
def fix_exchange(
    port: Annotated[int | None, typer.Option("--port", min=0, max=65535, help="default: fix.port (0: any free port)")] = None,
    host: Annotated[str | None, typer.Option("--host", help="default: fix.host")] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="seconds to run (default: until Ctrl-C or SIGTERM)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the counters as JSON when it stops")] = False,
) -> None:
    """The built-in exchange simulator over FIX 4.4: a FIX acceptor in front of the matching engine, one
    session per CompID in fix.clients; `greekfire trade --paper --venues fix` trades with it."""
    import signal
    import threading

    from greekfire.trading.fixexchange import FixExchange

    cli = _cli()
    if duration is not None and not duration > 0:
        raise UsageProblem(f"--duration {duration!r}: must be a positive number of seconds")
    s = cli.settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if duration is not None:
        threading.Timer(duration, stop.set).start()
    clients = ", ".join(s.fix.clients)

    def listening(bound: int) -> None:
        cli.err_console.print(f"greekfire fix exchange: listening on {host or s.fix.host}:{bound} "
                          f"({s.fix.exchange_comp_id} <- {clients}, FIX 4.4)", soft_wrap=True, highlight=False)

    try:
        out = FixExchange(s, host=host, port=port).serve(stop, on_listening=listening)
    except (ConfigError, ConfigErrors, OSError) as exc:  # a service that does not answer: exit 1 (the group)
        raise fail("fix exchange", exc) from None
    if as_json:
        cli.print_json(out)
    else:
        print_exchange(cli.console, out)
