"""Fenced code blocks of the user docs, and how the docs test runs them.

A page's blocks are run in order in one temporary folder, so a block may use the files an earlier block of
the same page wrote. What runs, by the block's language tag:

- ``python``: the block is a whole program, run in a fresh interpreter (the one running the tests, with
  this checkout's ``src`` first on the path); one whose first line is ``# file: NAME.py`` is also saved as
  ``NAME.py`` in the page's folder, for later blocks that import it (a page's "save this as" module);
- ``bash``: the block runs under ``bash -euo pipefail`` with ``greekfire`` and ``python`` on the PATH
  pointing at this checkout; it must contain at least one ``greekfire`` command (commands that are only
  shown, such as ``make`` or a server that never exits, belong in a ``console`` block).

Every other tag is shown, never run (``text``, ``console``, ``yaml``, ``json``, ...); a block without a
tag is an error, so nothing is left unrun by accident.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "src"
SHARED = ROOT.parent / "shared"

RUN_LANGS = frozenset({"python", "bash"})
SHOWN_LANGS = frozenset({"text", "console", "yaml", "json", "toml", "ini", "csv", "http", "sql", "promql"})

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
# a command line of a bash block: optional VAR=value assignments, then `greekfire`
_GREEKFIRE_LINE = re.compile(r"^\s*(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*greekfire(?:\s|$)")


@dataclass(frozen=True)
class Block:
    """One fenced block: the page it is on (relative to the repository), its first line and its text."""

    page: str
    line: int
    lang: str
    code: str

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS

    @property
    def label(self) -> str:
        return f"{self.page}:{self.line}:{self.lang or 'untagged'}"


def doc_pages(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    pages = [root / "README.md"] if (root / "README.md").is_file() else []
    return pages + sorted((root / "docs").rglob("*.md"))


def parse_blocks(text: str, page: str) -> list[Block]:
    """The fenced blocks of one Markdown text, in order (line numbers are 1-based, of the opening fence)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        lang = m.group("info").strip().split(" ")[0].lower() if m.group("info").strip() else ""
        start = i + 1
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(fence[0] * len(fence)) and set(close) <= {fence[0]}:
                break
            raw = lines[i]
            # content of a fence inside a list item is indented like the fence
            body.append(raw[indent:] if raw[:indent].strip() == "" else raw.lstrip())
            i += 1
        else:
            raise ValueError(f"{page}:{start}: the code block opened here is never closed")
        blocks.append(Block(page, start, lang, "\n".join(body) + "\n"))
        i += 1
    return blocks


def check_block(block: Block) -> str | None:
    """What is wrong with a block's tagging, or None."""
    if not block.lang:
        return f"{block.label}: give the block a language ('python'/'bash' to run it, 'text'/'console'/... to show it)"
    if block.lang not in RUN_LANGS | SHOWN_LANGS:
        return f"{block.label}: unknown language tag {block.lang!r}; use one of {sorted(RUN_LANGS | SHOWN_LANGS)}"
    if block.lang == "bash" and not any(_GREEKFIRE_LINE.match(ln) for ln in block.code.splitlines()):
        return f"{block.label}: a bash block runs; this one has no greekfire command (tag shown commands 'console')"
    return None


def needs_shared_data(block: Block) -> bool:
    """True when the block reads the real-data folder beside the project (``../shared/...``)."""
    return "../shared/" in block.code


def prepare_folder(base: Path) -> Path:
    """A page's working folder ``base/work``, with ``base/shared`` pointing at the real-data folder (so
    ``../shared/data`` means what it means from the repository root) and shims for ``greekfire``/``python``."""
    work = base / "work"
    work.mkdir(parents=True, exist_ok=True)
    if SHARED.is_dir() and not (base / "shared").exists():
        (base / "shared").symlink_to(SHARED, target_is_directory=True)
    bin_dir = base / "bin"
    bin_dir.mkdir(exist_ok=True)
    greekfire = bin_dir / "greekfire"
    greekfire.write_text(f"#!{sys.executable}\nfrom greekfire.cli import app\napp(prog_name='greekfire')\n")
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for exe in (greekfire, python):
        exe.chmod(0o755)
    return work


def block_env(base: Path) -> dict[str, str]:
    """The environment a block runs in: no GREEKFIRE_* settings of the caller (and no background kernel
    build), this checkout first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREEKFIRE_") and k != "CI"}
    env["GREEKFIRE_QUANT__BACKGROUND_COMPILE"] = "false"  # no minutes-long kernel build left behind
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(base / "bin"), env.get("PATH", "")])
    return env


def run_block(block: Block, base: Path, number: int, timeout_s: float = 240.0) -> subprocess.CompletedProcess[str]:
    """Run one block in ``base/work``; the script is kept beside it (``base/block<number>``) for a look after."""
    work = base / "work"
    if block.lang == "python":
        script = base / f"block{number}.py"
        script.write_text(block.code)
        saved = re.match(r"# file: ([A-Za-z_][A-Za-z0-9_]*\.py)\n", block.code)
        if saved:
            (work / saved.group(1)).write_text(block.code)
        cmd = [sys.executable, str(script)]
    elif block.lang == "bash":
        script = base / f"block{number}.sh"
        script.write_text("set -euo pipefail\n" + block.code)
        cmd = ["bash", str(script)]
    else:
        raise ValueError(f"{block.label}: a {block.lang!r} block is shown, not run")
    return subprocess.run(
        cmd, cwd=work, env=block_env(base), capture_output=True, text=True, timeout=timeout_s, check=False
    )
