"""Where the benchmark peers run: the interpreter of the peers virtualenv (``make peers``), or why not.

The peers (hftbacktest, nautilus_trader) pin numpy/pandas below ours, so they live in their own virtualenv
(.venv-peers at the repository root, built by ``make peers`` from benchmarks/peers-requirements.txt). An
environment variable naming another interpreter overrides it.
"""

from __future__ import annotations

from pathlib import Path

from greekfire.core.settings import env_get

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"


def peer_python(env_var: str) -> tuple[str | None, str]:
    """(interpreter, "") when a peers interpreter is there, else (None, why not)."""
    named = env_get(env_var)
    if named:
        return (named, "") if Path(named).exists() else (None, f"{env_var}={named} does not exist")
    python = PEERS_VENV / "bin" / "python"
    if (PEERS_VENV / ".installed").exists() and python.exists():
        return str(python), ""
    log = PEERS_VENV / "install.log"
    if log.exists():
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
        last = lines[-1][-200:] if lines else "no output"
        return None, f"`make peers` failed ({last}); see .venv-peers/install.log"
    return None, f"no peers virtualenv (run `make peers`, or set {env_var})"
