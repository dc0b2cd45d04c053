"""``greekfire fix``: the FIX exchange gateway and the QuickFIX acceptance-script runner.

The commands are registered on the main app by :mod:`greekfire.cli`; this module holds their bodies and
their output so the main command file stays readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from greekfire.cli_errors import UsageProblem
from greekfire.core.progress import ProgressHook
from greekfire.core.settings import Settings


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
