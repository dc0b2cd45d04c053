"""The ``greekfire`` command. Thin: parse, call one library function, print.

Each system adds its sub-command group here; the work is done in the library so tests and servers
build the same objects the command line does.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from greekfire import __version__
from greekfire.core.errors import ConfigError, ConfigErrors, GreekfireError
from greekfire.core.logging import configure_logging
from greekfire.core.settings import Settings, load_settings, settings_dict

app = typer.Typer(
    name="greekfire",
    help="GPU-accelerated options research and trading: price, learn, trade, manage risk.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("greekfire.cli")


class State:
    """What the root callback parsed, handed to every sub-command."""

    def __init__(self) -> None:
        self.config: Path | None = None
        self.log_level: str | None = None
        self.log_json: bool = False
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config)
            lg = self._settings.logging
            configure_logging(
                level=self.log_level or lg.level,
                json_format=self.log_json or lg.json_format,
                file=lg.file,
                max_bytes=lg.max_bytes,
                backup_count=lg.backup_count,
            )
        return self._settings


STATE = State()


def _version(value: bool) -> None:
    if value:
        console.print(f"greekfire {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file (default: $GREEKFIRE_CONFIG)")
    ] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="DEBUG, INFO, WARNING, ERROR")] = None,
    log_json: Annotated[bool, typer.Option("--log-json", help="log JSON lines instead of the console")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """greekfire: one system that prices, learns, trades, manages risk and runs in production."""
    STATE.config = config
    STATE.log_level = log_level.upper() if log_level else None
    STATE.log_json = log_json


def settings() -> Settings:
    """The effective settings; a bad setting prints each field path and value, then exits 2."""
    try:
        return STATE.settings
    except (ConfigErrors, ConfigError) as exc:
        err_console.print(f"[red]configuration error[/red]: {exc}")
        raise typer.Exit(2) from None


def print_json(data: Any) -> None:
    """Print plain JSON to stdout (no Rich markup, so it can be piped)."""
    typer.echo(json.dumps(data, indent=2, default=str))


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of YAML")] = False,
) -> None:
    """Print the effective settings (defaults + YAML + environment), secrets masked."""
    data = settings_dict(settings())
    if as_json:
        print_json(data)
    else:
        import yaml

        typer.echo(yaml.safe_dump(data, sort_keys=False))


# --------------------------------------------------------------------------------------------------------
# demo: one stage per system that exists. Each stage is ``module:function`` taking the settings and
# returning a mapping of what it did (printed in the summary table).
DEMO_STAGES: list[tuple[str, str]] = [
    ("foundation", "greekfire.core.demo:run_demo"),
]


@app.command("demo")
def demo(
    only: Annotated[list[str] | None, typer.Option("--only", help="run only these stages")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Run one short stage per system on embedded defaults and print a summary table."""
    s = settings()
    s.home.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    failed = 0
    for name, target in DEMO_STAGES:
        if only and name not in only:
            continue
        mod_name, fn_name = target.split(":")
        if not as_json:
            console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
            summary = fn(s)
            status = "ok"
        except GreekfireError as exc:
            summary, status = {"error": str(exc)}, "failed"
            failed += 1
        except Exception as exc:  # a demo stage must not hide the others
            log.exception("demo stage %s failed", name)
            summary, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
            failed += 1
        results.append(
            {"stage": name, "status": status, "seconds": round(time.perf_counter() - t0, 2), "summary": summary}
        )
    if as_json:
        print_json(results)
    else:
        table = Table(title="greekfire demo", show_lines=True)
        table.add_column("stage", style="bold")
        table.add_column("status")
        table.add_column("seconds", justify="right")
        table.add_column("what it did")
        for r in results:
            what = "\n".join(f"{k}: {v}" for k, v in r["summary"].items())
            colour = "green" if r["status"] == "ok" else "red"
            table.add_row(r["stage"], f"[{colour}]{r['status']}[/{colour}]", f"{r['seconds']:.1f}", what)
        console.print(table)
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
