"""How the ``greekfire`` command reports an error: one line on stderr naming the command, the input, the
field or key, the value and what is allowed, and an exit code saying whose mistake it was (2: a usage
error, a bad option, setting or missing file; 1: the data itself is bad or a service cannot be used). The
traceback is printed only under ``--log-level debug``.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from greekfire.core.errors import ConfigError, ConfigErrors, GreekfireError, InputFileError

_debug = False


def set_debug(on: bool) -> None:
    """Print tracebacks before the one-line message (``--log-level debug``)."""
    global _debug
    _debug = on


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: exit codes: a usage error (a bad option, setting or missing file) and a data error (the input itself is bad)
EXIT_USAGE = 2
EXIT_DATA = 1


def one_line(text: str) -> str:
    """``text`` with every run of whitespace, newlines included, made one space."""
    return " ".join(str(text).split())


def say_error(command: str, message: str) -> None:
    """One line on stderr, never wrapped (scripts and people both read it)."""
    typer.echo(f"greekfire {command}: error: {one_line(message)}".replace("  ", " "), err=True)


def config_message(exc: ConfigError | ConfigErrors) -> str:
    """Each bad setting of ``exc``, on one line."""
    if isinstance(exc, ConfigErrors):
        return "; ".join(str(e) for e in exc.errors)
    return str(exc)


class ErrorReportingGroup(TyperGroup):
    """The ``greekfire`` group: an error in any command ends as one line on stderr naming the input, the
    field and value and what is allowed, with exit code 2 for usage errors and 1 for bad data. The
    traceback is printed only under ``--log-level debug``."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # every error but the command line's own: one line (after the traceback when debugging)
            if isinstance(exc, typer.Exit | typer.Abort) or type(exc).__module__.startswith(("typer", "click")):
                raise
            if _debug:
                traceback.print_exception(exc)
            code = EXIT_DATA
            if isinstance(exc, UsageProblem):
                message, code = str(exc), EXIT_USAGE
            elif isinstance(exc, ConfigError | ConfigErrors):
                message, code = f"configuration error: {config_message(exc)}", EXIT_USAGE
            elif isinstance(exc, GreekfireError):
                message = str(exc)
            elif isinstance(exc, FileNotFoundError):
                message, code = f"file {exc.filename!r} does not exist", EXIT_USAGE
            elif isinstance(exc, OSError) and exc.filename:
                message = f"cannot use {exc.filename!r}: {exc.strerror or exc}"
            else:
                message = f"unexpected {type(exc).__name__}: {exc} (--log-level debug prints the traceback)"
            say_error(command_name(exc.__traceback__, ctx.command_path), message)
            raise typer.Exit(code) from None


def fail(command: str, exc: Exception) -> typer.Exit:
    """Print ``exc`` as one line and give the exit to raise: 1 for an unreadable input file, else 2 (these
    commands' own errors are about their options and settings)."""
    if _debug:
        traceback.print_exception(exc)
    if isinstance(exc, ConfigError | ConfigErrors):
        say_error(command, f"configuration error: {config_message(exc)}")
        return typer.Exit(EXIT_USAGE)
    say_error(command, str(exc))
    return typer.Exit(EXIT_DATA if isinstance(exc, InputFileError) else EXIT_USAGE)


class UsageProblem(Exception):
    """A bad option or argument found by a command itself (exit 2, one line)."""


def venues_option(value: str | None) -> int | str | None:
    """``--venues``: a number of simulated venues (1-16), or ``fix``; UsageProblem for anything else."""
    if value is None or value == "fix":
        return value
    if not value.isdigit() or not 1 <= int(value) <= 16:
        raise UsageProblem(f"--venues {value!r}: a number of simulated venues (1-16), or `fix`")
    return int(value)


def command_name(tb: Any, root: str) -> str:
    """The sub-command an error came from (``market itch``): the innermost click context on the way."""
    name = ""
    while tb is not None:
        for c in (tb.tb_frame.f_locals.get("ctx"), tb.tb_frame.f_locals.get("self")):
            path = getattr(c, "command_path", None)  # a click context (typer carries its own click)
            if isinstance(path, str) and path.startswith(f"{root} "):
                name = path.removeprefix(f"{root} ")
        tb = tb.tb_next
    return name or "command"


def require_file(path: Path | None, what: str) -> None:
    """A missing input file is a usage error (exit 2) naming the argument and the path."""
    if path is not None and not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UsageProblem(f"{what} {str(path)!r} {state}")
