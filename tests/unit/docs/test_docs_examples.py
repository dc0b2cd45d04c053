"""Every code example of the user docs (docs/**.md and README.md) runs, in page order.

``python`` and ``bash`` blocks run (see docs_blocks.py for the rules); a test per block, named
``<page>:<line>:<lang>``. A page's blocks share one temporary folder, and selecting one block (``-k``) first
runs the blocks before it on its page.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from docs_blocks import (
    ROOT,
    SHARED,
    Block,
    check_block,
    doc_pages,
    needs_shared_data,
    parse_blocks,
    prepare_folder,
    run_block,
)

from conftest import need, work_unit

PAGES = doc_pages()
PAGE_BLOCKS: dict[str, list[Block]] = {
    str(p.relative_to(ROOT)): parse_blocks(p.read_text(), str(p.relative_to(ROOT))) for p in PAGES
}
RUNNABLE = [b for blocks in PAGE_BLOCKS.values() for b in blocks if b.runs]

# pages other parts of the project write; a link to one of them is allowed before it lands
PAGES_WRITTEN_ELSEWHERE: set[str] = set()


@dataclass
class PageRun:
    """A page's folder and how far its blocks have run."""

    base: Path
    done: int = 0
    failed: str | None = None
    outputs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PageRun]:
    runs: dict[str, PageRun] = {}
    for page in PAGE_BLOCKS:
        base = tmp_path_factory.mktemp(re.sub(r"[^A-Za-z0-9]+", "_", page))
        prepare_folder(base)
        runs[page] = PageRun(base)
    return runs


def _report(block: Block, proc: subprocess.CompletedProcess[str]) -> str:
    tail = lambda s: "\n".join(s.strip().splitlines()[-40:])  # noqa: E731
    return (
        f"{block.label} exited {proc.returncode}\n--- code ---\n{block.code}--- stdout (tail) ---\n"
        f"{tail(proc.stdout)}\n--- stderr (tail) ---\n{tail(proc.stderr)}"
    )


def _run_page_until(page: str, block: Block, run: PageRun) -> None:
    """Run the page's runnable blocks up to and including ``block``, each once."""
    runnable = [b for b in PAGE_BLOCKS[page] if b.runs]
    target = runnable.index(block)
    while run.done <= target:
        if run.failed:
            pytest.fail(f"{block.label}: an earlier block of this page failed ({run.failed})", pytrace=False)
        current = runnable[run.done]
        if needs_shared_data(current):
            need(SHARED.is_dir(), f"{current.label} reads ../shared/data, which is absent beside the project")
        try:
            proc = run_block(current, run.base, run.done)
        except subprocess.TimeoutExpired as exc:
            run.failed = current.label
            pytest.fail(f"{current.label} ran past {exc.timeout} s", pytrace=False)
        run.done += 1
        if proc.returncode != 0:
            run.failed = current.label
            pytest.fail(_report(current, proc), pytrace=False)
        run.outputs.append(proc.stdout)


@pytest.mark.parametrize("page", list(PAGE_BLOCKS))
def test_every_block_is_tagged(page: str) -> None:
    """A block says whether it runs (python, bash) or is shown (text, console, yaml, ...)."""
    problems = [p for b in PAGE_BLOCKS[page] if (p := check_block(b))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", list(PAGE_BLOCKS))
def test_relative_links_resolve(page: str) -> None:
    """Links to files of the repository (pages, configs, scripts) point at something that exists."""
    src = ROOT / page
    text = re.sub(r"```.*?```", "", src.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (src.parent / target.split("#")[0]).resolve()
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        if not path.exists() and str(rel) not in PAGES_WRITTEN_ELSEWHERE:
            broken.append(target)
    assert not broken, f"{page}: links to missing files: {broken}"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.label for b in RUNNABLE])
def test_docs_example(block: Block, page_runs: dict[str, PageRun]) -> None:
    """The example runs to the end with exit status 0."""
    assert check_block(block) is None, check_block(block)
    _run_page_until(block.page, block, page_runs[block.page])


def test_each_page_is_one_unit_of_work_for_the_test_workers() -> None:
    """`make test` hands a page's examples to one worker (they build on each other), pages to any."""
    file = "tests/unit/docs/test_docs_examples.py"
    units = {b.label: work_unit(f"{file}::test_docs_example[{b.label}]") for b in RUNNABLE}
    assert units and all(u == f"{file}::{label.rsplit(':', 2)[0]}" for label, u in units.items())
    assert len(set(units.values())) == len({b.page for b in RUNNABLE}) > 1
    assert work_unit(f"{file}::test_relative_links_resolve[docs/quant.md]") == file
    assert work_unit("tests/unit/quant/test_quant_compiled.py::test_compiled_greeks_equal_eager") == (
        "tests/unit/quant/test_quant_compiled.py")


def test_there_are_examples_on_every_system_page() -> None:
    """Each user page carries at least one example that runs."""
    pages = ["docs/core.md", "docs/gpu.md", "docs/quant.md", "docs/market.md", "docs/trading.md",
             "docs/data.md", "docs/pricing-model.md", "README.md"]
    without = [p for p in pages if not any(b.runs for b in PAGE_BLOCKS.get(p, []))]
    assert not without, f"pages without a runnable example: {without}"


def _cells(row: str) -> int:
    """Cells of a Markdown table row: unescaped pipes split cells, even inside code spans."""
    return len(re.findall(r"(?<!\\)\|", row.strip().strip("|"))) + 1


@pytest.mark.parametrize("page", list(PAGE_BLOCKS))
def test_tables_have_as_many_cells_as_their_header(page: str) -> None:
    """A row with a stray pipe (``|theta|``) renders as a broken table; escape it or reword."""
    # code blocks blanked line for line, so the numbers below are the page's own
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), (ROOT / page).read_text(), flags=re.S)
    bad, header = [], None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = _cells(line)
        elif _cells(line) != header:
            bad.append(f"line {n}: {_cells(line)} cells, header has {header}")
    assert not bad, f"{page}: " + "; ".join(bad)
