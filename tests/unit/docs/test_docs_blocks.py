"""The docs test's own machinery: blocks are found, tagged and run, and a broken example fails."""

from __future__ import annotations

from pathlib import Path

from docs_blocks import Block, check_block, parse_blocks, prepare_folder, run_block

PAGE = """# A page

```python
print("hello")
```

- a list item with a block:

  ```bash
  greekfire --version
  ```

```text
shown only
```

```
untagged
```
"""


def test_blocks_are_found_with_their_line_and_language() -> None:
    blocks = parse_blocks(PAGE, "docs/x.md")
    assert [(b.line, b.lang) for b in blocks] == [(3, "python"), (9, "bash"), (13, "text"), (17, "")]
    assert blocks[1].code == "greekfire --version\n"
    assert [b.runs for b in blocks] == [True, True, False, False]


def test_untagged_and_bash_without_greekfire_are_refused() -> None:
    assert "give the block a language" in (check_block(Block("p.md", 1, "", "x\n")) or "")
    assert "no greekfire command" in (check_block(Block("p.md", 1, "bash", "make demo\n")) or "")
    assert "unknown language" in (check_block(Block("p.md", 1, "pyhton", "1\n")) or "")
    assert check_block(Block("p.md", 1, "bash", "GREEKFIRE_API__PORT=1 greekfire config show\n")) is None


def test_an_unclosed_block_is_an_error() -> None:
    try:
        parse_blocks("```python\nprint(1)\n", "p.md")
    except ValueError as exc:
        assert "p.md:1" in str(exc)
    else:
        raise AssertionError("an unclosed block must be refused")


def test_a_broken_python_example_fails_and_a_good_one_passes(tmp_path: Path) -> None:
    prepare_folder(tmp_path)
    good = run_block(Block("p.md", 1, "python", "open('made.txt', 'w').write('x')\n"), tmp_path, 0)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "work" / "made.txt").read_text() == "x"  # the next block of the page sees it
    bad = run_block(Block("p.md", 5, "python", "from greekfire.quant import no_such_name\n"), tmp_path, 1)
    assert bad.returncode != 0 and "no_such_name" in bad.stderr


def test_a_failing_greekfire_command_fails_the_bash_block(tmp_path: Path) -> None:
    prepare_folder(tmp_path)
    ok = run_block(Block("p.md", 1, "bash", "greekfire config show --json > s.json\n"), tmp_path, 0)
    assert ok.returncode == 0, ok.stderr
    assert '"home"' in (tmp_path / "work" / "s.json").read_text()
    # an unknown option: Typer exits 2, and `set -e` stops the block there
    bad = run_block(Block("p.md", 3, "bash", "greekfire config show --no-such-flag\necho after\n"), tmp_path, 1)
    assert bad.returncode != 0 and "after" not in bad.stdout
