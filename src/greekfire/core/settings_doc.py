"""The configuration reference page (docs/configuration.md), generated from the settings models.

Every key of :class:`~greekfire.core.settings.Settings` gets one table row: its dotted key, type, default,
environment variable, allowed values and meaning (the field's description). ``greekfire config reference``
and ``python -m greekfire.core.settings_doc`` print the page; a test checks the committed page is current.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from greekfire.core.settings import CONFIG_ENV, ENV_PREFIX, Settings

_TYPE_NAMES: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "text", Path: "path",
                               SecretStr: "secret text"}


def shown_default(value: Any) -> str:
    """A default as the pages write it: ``none``, ``true``/``false``, numbers with thousands separators
    from 10,000 up, anything else as text (a secret's default is shown: defaults hold no credentials)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _split_optional(ann: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (ann, False)."""
    if get_origin(ann) in (Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) == 1 and len(get_args(ann)) == 2:
            return args[0], True
    return ann, False


def type_name(ann: Any) -> str:
    """A short type name for the page: ``int``, ``float``, ``path or none``, ``choice`` ..."""
    inner, optional = _split_optional(ann)
    if get_origin(inner) is Literal:
        name = "choice"
    else:
        name = _TYPE_NAMES.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{name} or none" if optional else name


def allowed(info: FieldInfo) -> str:
    """What the model accepts beyond the type: choices, bounds and patterns (empty when anything goes)."""
    inner, _ = _split_optional(info.annotation)
    parts: list[str] = []
    if get_origin(inner) is Literal:
        parts.append(", ".join(f"`{v}`" for v in get_args(inner)))
    bounds = ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<="))
    for meta in info.metadata:
        for kind, attr, sign in bounds:
            if isinstance(meta, kind):
                parts.append(f"{sign} {shown_default(getattr(meta, attr))}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return "; ".join(parts)


def leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], FieldInfo]]:
    """Every leaf setting of ``model`` as (key path by alias, field), sections depth first in model order."""
    out: list[tuple[tuple[str, ...], FieldInfo]] = []
    for name, f in model.model_fields.items():
        key = prefix + (f.alias or name,)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += leaves(ann, key)
        else:
            out.append((key, f))
    return out


def env_var(path: tuple[str, ...]) -> str:
    """The environment variable that sets the key at ``path``: ``GREEKFIRE_<SECTION>__<KEY>``."""
    return ENV_PREFIX + "__".join(p.upper() for p in path)


def _cell(text: str) -> str:
    # a bare pipe would split the table cell
    return text.replace("|", "\\|").replace("\n", " ")


def _sections(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], type[BaseModel]]]:
    out: list[tuple[tuple[str, ...], type[BaseModel]]] = [(prefix, model)]
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _sections(ann, prefix + (f.alias or name,))
    return out


def _doc_line(model: type[BaseModel]) -> str:
    """The first paragraph of a section's docstring, Sphinx roles (``:func:`x` ``) reduced to code."""
    text = " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)


def reference_markdown(model: type[BaseModel] = Settings) -> str:
    """The whole configuration reference page as Markdown (the text of docs/configuration.md)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- generated from src/greekfire/core/settings.py by `greekfire config reference`; do not edit -->",
        "",
        "Every setting of greekfire, generated from the settings models. Sources, strongest first: values",
        "given on the command line or to `load_settings`, environment variables, the YAML file named by",
        f"`--config` or `{CONFIG_ENV}`, then the defaults below. A key `section.key` is set by the variable",
        f"`{ENV_PREFIX}<SECTION>__<KEY>` (nested sections add one `__` per level) or in YAML under its",
        "section; an unknown key or a bad value stops the command with the key, the value and what is",
        "allowed. `greekfire config show` prints the effective values. Each system's page lists its own",
        "settings with more context: see the [documentation index](index.md).",
        "",
        "Regenerate this page after changing a settings model (a test checks it is current):",
        "",
        "```console",
        "greekfire config reference -o docs/configuration.md",
        "```",
    ]
    by_section: dict[tuple[str, ...], list[tuple[tuple[str, ...], FieldInfo]]] = {}
    for path, info in leaves(model):
        by_section.setdefault(path[:-1], []).append((path, info))
    for prefix, section in _sections(model):
        rows = by_section.get(prefix)
        if not rows:
            continue
        title = ".".join(prefix) if prefix else "top level"
        intro = _doc_line(section) if prefix else "Keys outside any section."
        lines += ["", f"## {title}", "", intro, ""]
        lines += ["| key | type | default | environment variable | allowed | meaning |", "|---|---|---|---|---|---|"]
        for path, info in rows:
            cells = [
                f"`{'.'.join(path)}`",
                type_name(info.annotation),
                f"`{_cell(shown_default(info.default))}`",
                f"`{env_var(path)}`",
                _cell(allowed(info)),
                _cell(info.description or ""),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reference(out: Path | None = None) -> str:
    """Write the page to ``out`` (``None``: return it only) and return its text."""
    text = reference_markdown()
    if out is not None:
        out.write_text(text)
    return text


if __name__ == "__main__":  # python -m greekfire.core.settings_doc [PATH]
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    page = write_reference(target)
    if target is None:
        sys.stdout.write(page)
