"""Errors shared by every layer.

Every error says what was wrong (the field and the value) and, where it can, what is allowed.
"""

from __future__ import annotations

from typing import Any


class GreekfireError(Exception):
    """Base class of greekfire's own errors."""


class ConfigError(GreekfireError):
    """A setting has a bad value.

    ``field`` is the dotted path in the settings tree (``gpu.sample_interval_s``), ``value`` the bad value
    and ``allowed`` a short description of what would be accepted.
    """

    def __init__(self, field: str, value: Any, allowed: str, source: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"bad setting {field}={value!r}{where}: {allowed}")


class ConfigErrors(GreekfireError):
    """Several settings are bad at once; ``errors`` holds each one."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{len(errors)} bad setting(s):\n{lines}")


class DataError(GreekfireError):
    """Bad input data: names the field, the value and the position (row, offset) where known."""

    def __init__(self, field: str, value: Any, reason: str, position: int | str | None = None) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.position = position
        at = f" at {position}" if position is not None else ""
        super().__init__(f"bad {field}={value!r}{at}: {reason}")


class InputFileError(DataError):
    """An input file cannot be read as what the command expects: empty, truncated, corrupt or of another
    format. ``field`` names what was being read (``input``, ``message_file``), ``value`` the file."""


class UnavailableError(GreekfireError):
    """A database or storage location cannot be reached, read or written. ``target`` names it (a URL with
    any credentials masked) and ``reason`` the cause, with a hint where one is known."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"cannot use {target}: {reason}")
