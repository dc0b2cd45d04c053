"""Helpers shared by the benchmark scripts: timing, a result table, and the JSON results file."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(
    fn: Callable[[], Any], repeat: int = 3, min_time: float = 0.0, before: Callable[[], Any] | None = None
) -> float:
    """Best wall time in seconds of ``repeat`` calls of ``fn`` (each call may loop until ``min_time``);
    ``before``, when given, runs untimed before each of the ``repeat`` calls."""
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        n = 0
        while True:
            fn()
            n += 1
            el = time.perf_counter() - t0
            if el >= min_time:
                break
        best = min(best, el / n)
    return best


def paired_rates(ours: Callable[[], float], peer: Callable[[], float], rounds: int = 5) -> tuple[float, float, float]:
    """Our rate and the peer's, measured back to back ``rounds`` times: (median of ours, median of the
    peer's, median of the per-round ratios ours / peer).

    ``ours`` and ``peer`` each measure once and return items per second. On a shared machine the speed of
    the whole box drifts over seconds (2x swings of a Python loop have been seen from one second to the
    next); a ratio taken from two measurements made far apart carries that drift whole, a ratio of two
    adjacent ones mostly cancels it, and the median of several drops the round that straddled a change."""
    if rounds < 1:
        raise ValueError(f"rounds: {rounds!r}, must be at least 1")
    pairs = [(ours(), peer()) for _ in range(rounds)]
    med = statistics.median
    return med(o for o, _ in pairs), med(p for _, p in pairs), med(o / p for o, p in pairs)


def report(subject: str, rows: list[dict[str, Any]], notes: list[str] | None = None) -> Path:
    """Print rows as a table and write benchmarks/results/<subject>.json; returns the path.

    Each row: ``{"benchmark": ..., "ours": float, "peer": str, "peer_value": float, "unit": str,
    "ratio": float, ...}`` (extra keys are kept in the JSON).
    """
    table = Table(title=f"benchmark: {subject}")
    cols = ["benchmark", "ours", "peer", "peer_value", "unit", "ratio"]
    for c in cols:
        table.add_column(c, justify="right" if c in {"ours", "peer_value", "ratio"} else "left")

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return "" if v is None else str(v)

    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in cols))
    Console().print(table)
    for n in notes or []:
        print(f"  note: {n}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{subject}.json"
    out.write_text(
        json.dumps(
            {
                "subject": subject,
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "processor": platform.processor()},
                "rows": rows,
                "notes": notes or [],
            },
            indent=2,
            default=str,
        )
    )
    return out
