"""The layer contract of ARCHITECTURE.md (import-linter's "layers" contract in pyproject.toml)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_import_layers_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "KEPT" in proc.stdout


SRC = ROOT / "src" / "greekfire"


def _modules(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_the_gpu_package_asks_torch_for_cuda() -> None:
    """The device is chosen in one place (greekfire.gpu.device); nobody else calls torch.cuda.is_available."""
    offenders = [
        str(p.relative_to(ROOT)) for p in _modules(SRC)
        if "torch.cuda.is_available" in p.read_text() and p.parent.name != "gpu"
    ]
    assert offenders == []


def test_nothing_in_strategies_reaches_into_the_engine_s_parts() -> None:
    """Strategies and their runners read the engine through the strategy API (``ctx``) and
    ``trading.report``, never its OMS, portfolio, router or risk engine as attributes (the contract above
    catches imports; this catches ``engine.portfolio``-style reads, which need no import)."""
    pattern = re.compile(r"\b(eng|engine|_engine)\.(oms|portfolio|router|risk)\b")
    found = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in _modules(SRC / "strategies")
        for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)
    ]
    assert found == []


def test_trading_modules_stay_small_and_long_modules_say_why() -> None:
    """No module of greekfire.trading over 450 lines; any other module over 600 lines says in its docstring
    why it is one piece (the words "one piece" or "one module")."""
    too_long = [
        (str(p.relative_to(ROOT)), n) for p in _modules(SRC / "trading")
        if (n := len(p.read_text().splitlines())) > 450
    ]
    assert too_long == []
    unexplained = []
    for p in _modules(SRC):
        text = p.read_text()
        if len(text.splitlines()) > 600:
            doc = text.split('"""', 2)[1] if text.lstrip().startswith('"""') else ""
            if "one piece" not in doc and "one module" not in doc:
                unexplained.append(str(p.relative_to(ROOT)))
    assert unexplained == []
