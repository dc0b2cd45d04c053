"""The runnable example of docs/strategies.md runs as written: a toy strategy on a paper engine, acting only
through its context, buys and holds what it bought, with no error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[3] / "docs" / "strategies.md"


def test_the_first_strategy_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    (code,) = [b for b in blocks if "class " in b and "(Strategy)" in b][:1]  # "A first strategy"
    scope: dict[str, object] = {"__name__": "docs_example"}
    exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 - the page's own example
    out = capsys.readouterr().out
    assert "errors {}" in out and "refused {}" in out
    strategy = scope["strategy"]
    assert strategy.fills >= 1 and strategy.ctx.positions.get(strategy.call, 0) == strategy.fills  # type: ignore[attr-defined]
