"""Old code against new code, benchmark by benchmark, on the same machine in the same hour.

``make bench`` on one checkout and then on another compares two different spells of a shared machine:
a row can move by more than 10% between two runs of the same code. This driver runs each benchmark
script of two checkouts in turn (old, new, new, old, ... so neither side always goes first), several
rounds, each run in a fresh process with ``PYTHONPATH`` set to that checkout's ``src``, and compares the
median ratio of each row (ours against the peer measured in the same run) over the rounds::

    python benchmarks/compare.py --old ../old --new . --rounds 3 data engine market quant:european

A subject is a script name (``data`` runs ``bench_data.py``) with an optional section argument after a
colon (``quant:european`` runs ``bench_quant.py european``, whose results file is ``quant_european``).
Each checkout runs its own ``benchmarks/bench_*.py``; to time both sides alike, give the old checkout
a copy of the current harness adapted to its imports. The runs' JSON files are kept in ``--out``;
``--report FILE`` writes the table as Markdown. Rows whose ratio moved the wrong way by more than
``--tolerance`` (default 10%) are marked; the exit status is 0 either way.

Where the machine's allocator or other settings move a figure by more than the code does, ``--env``
sets a variable for both sides' runs (it is named under the table), and ``--more`` adds rounds to the
runs already kept in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def unit_less_is_better(row: dict[str, Any]) -> bool:
    """Whether less of the row's figures (ours and the peer's) is better, read from its unit: a time, a size,
    or a unit marked "lower is better"."""
    unit = str(row.get("unit", ""))
    return "lower is better" in unit or unit.split(" ")[0] in {"ns", "us", "ms", "s", "MB", "GB"}


def lower_is_better(row: dict[str, Any]) -> bool:
    """Whether a row's ratio is better when smaller.

    The scripts write speeds as ours / peer and times as peer / ours (> 1: we win), but rows against a
    goal (latency in us / the goal), the bytes-read row and the start-up row write ours / peer of a
    quantity where less is better. Read from the row: its unit says whether less of it is better, and
    its ratio says which way round it was taken: the nearer (on a log scale) of ours / peer and peer / ours,
    since a ratio taken as the median of paired rounds (``common.paired_rates``) is close to the quotient of
    the medians but not equal to it."""
    less_is_better = unit_less_is_better(row)
    ours, peer, ratio = row.get("ours"), row.get("peer_value"), row.get("ratio")
    if all(isinstance(x, (int, float)) and x > 0 for x in (ours, peer, ratio)):
        quotient, r = math.log(ours / peer), math.log(ratio)
        ours_over_peer = abs(r - quotient) <= abs(r + quotient)
        return less_is_better if ours_over_peer else not less_is_better
    return less_is_better


def results_name(subject: str) -> tuple[str, list[str], str]:
    """(script stem, its arguments, its results file stem) of a subject such as ``quant:european``."""
    script, _, section = subject.partition(":")
    return script, ([section] if section else []), (f"{script}_{section}" if section else script)


def run_side(tree: Path, python: str, subject: str, out: Path, tag: str, timeout: float,
             extra_env: dict[str, str] | None = None) -> Path | None:
    """Run one subject's script in ``tree`` (its own src on PYTHONPATH, ``extra_env`` added to the
    environment); the results JSON copied to ``out``."""
    script, args, stem = results_name(subject)
    env = dict(os.environ, **(extra_env or {}), PYTHONPATH=str(tree / "src"))
    result = tree / "benchmarks" / "results" / f"{stem}.json"
    result.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run([python, str(tree / "benchmarks" / f"bench_{script}.py"), *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    log = out / f"{tag}-{stem}.log"
    log.write_text(proc.stdout + proc.stderr)
    print(f"  {tag:>10} {subject:<16} exit {proc.returncode} in {seconds:5.0f} s", flush=True)
    if proc.returncode or not result.is_file():
        return None
    kept = out / f"{tag}-{stem}.json"
    kept.write_text(result.read_text())
    return kept


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` as a dict; a pair without ``=`` or with an empty name is an error naming it."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def kept_runs(out: Path, stems: list[str]) -> tuple[dict[str, list[Path]], int]:
    """The runs kept in ``out`` (``old-r3-market.json``, ...) of the given results stems, by side, and the
    highest round among them (warm-up runs are not counted)."""
    runs: dict[str, list[Path]] = {"old": [], "new": []}
    rounds = 0
    for p in sorted(out.glob("*-r*-*.json")):
        m = re.fullmatch(r"(old|new)-r(\d+)-(.+)\.json", p.name)
        if m and m.group(3) in stems:
            runs[m.group(1)].append(p)
            rounds = max(rounds, int(m.group(2)))
    return runs, rounds


@dataclass
class RowRuns:
    """One row over one side's runs: its ratios, and our own figure (without the peer) where it is a number."""

    lower: bool  # the ratio is better when smaller
    ours_lower: bool  # our figure is better when smaller (a time, a size), by its unit
    ratios: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)


def collect(paths: list[Path]) -> dict[tuple[str, str, str], RowRuns]:
    """Every row with a numeric ratio over the runs, keyed by (subject, benchmark, peer)."""
    rows: dict[tuple[str, str, str], RowRuns] = {}
    for p in paths:
        data = json.loads(p.read_text())
        for r in data["rows"]:
            if not isinstance(r.get("ratio"), (int, float)):
                continue
            key = (data["subject"], r["benchmark"], str(r.get("peer", "")))
            row = rows.setdefault(key, RowRuns(lower_is_better(r), unit_less_is_better(r)))
            row.ratios.append(float(r["ratio"]))
            if isinstance(r.get("ours"), (int, float)):
                row.ours.append(float(r["ours"]))
    return rows


def table(old: dict[tuple[str, str, str], RowRuns], new: dict[tuple[str, str, str], RowRuns],
          tolerance: float) -> tuple[str, int]:
    """The Markdown table of rows both sides measured, and how many ratios moved the wrong way beyond tolerance.

    The last column is the change of our own figure alone (median over the runs, + is better): where a
    ratio moved but ours did not, the peer's figure moved."""
    lines = ["| subject | benchmark | peer | old ratios | new ratios | median old | median new | change | ours alone |",
             "|---|---|---|---|---|---|---|---|---|"]
    worse = 0
    for key in sorted(set(old) & set(new)):
        o, n = old[key], new[key]
        mo, mn = statistics.median(o.ratios), statistics.median(n.ratios)
        change = mn / mo - 1 if mo else 0.0
        bad = (change > tolerance) if o.lower else (change < -tolerance)
        worse += bad
        mark = f" **worse >{tolerance:.0%}**" if bad else ""
        arrow = " (lower is better)" if o.lower else ""
        ours = "-"
        old_ours, new_ours = (statistics.median(o.ours) if o.ours else 0.0), (statistics.median(n.ours) if n.ours else 0.0)
        if old_ours and new_ours:
            ours = f"{(old_ours / new_ours if o.ours_lower else new_ours / old_ours) - 1:+.1%}"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]}{arrow} | {', '.join(f'{x:.3g}' for x in o.ratios)} | "
                     f"{', '.join(f'{x:.3g}' for x in n.ratios)} | {mo:.3g} | {mn:.3g} | {change:+.1%}{mark} | {ours} |")
    return "\n".join(lines), worse


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("subjects", nargs="+", help="script names, optionally with a section: data engine quant:european")
    ap.add_argument("--old", type=Path, required=True, help="the old checkout (its src/ and benchmarks/)")
    ap.add_argument("--new", type=Path, default=Path(__file__).resolve().parents[1], help="the new checkout")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each subject on each side (default 3)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter both sides run under")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compare"), help="where runs are kept")
    ap.add_argument("--tolerance", type=float, default=0.10, help="a fall beyond this fraction is marked")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    ap.add_argument("--report", type=Path, help="also write the table (Markdown) here")
    ap.add_argument("--warmup", action="store_true",
                    help="run each subject once a side first, not counted (compile caches, page cache)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set this variable for both sides' runs (repeatable), e.g. glibc's MALLOC_MMAP_THRESHOLD_")
    ap.add_argument("--more", action="store_true",
                    help="add rounds to the runs of the same subjects already kept in --out (the same two "
                         "checkouts, unchanged): the new rounds are numbered after them and the table covers all")
    a = ap.parse_args(argv)
    extra_env = parse_env(a.env)
    old_tree, new_tree = a.old.resolve(), a.new.resolve()
    a.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Path]] = {"old": [], "new": []}
    done = 0  # rounds kept from an earlier invocation (--more)
    if a.more:
        runs, done = kept_runs(a.out, [results_name(s)[2] for s in a.subjects])
        print(f"{done} round(s) kept in {a.out}", flush=True)
    if a.warmup:
        print("warm-up (not counted)", flush=True)
        for subject in a.subjects:
            for side, tree in (("old", old_tree), ("new", new_tree)):
                run_side(tree, a.python, subject, a.out, f"{side}-warm", a.timeout, extra_env)
    for k in range(done, done + a.rounds):
        print(f"round {k + 1} of {done + a.rounds}", flush=True)
        for i, subject in enumerate(a.subjects):
            order = ("old", "new") if (k + i) % 2 == 0 else ("new", "old")  # neither side always first
            for side in order:
                tree = old_tree if side == "old" else new_tree
                kept = run_side(tree, a.python, subject, a.out, f"{side}-r{k + 1}", a.timeout, extra_env)
                if kept:
                    runs[side].append(kept)
    text, worse = table(collect(runs["old"]), collect(runs["new"]), a.tolerance)
    summary = f"rows worse by more than {a.tolerance:.0%} (median of {done + a.rounds} runs a side): {worse}"
    if extra_env:
        summary += "; both sides ran with " + " ".join(f"{k}={v}" for k, v in extra_env.items())
    print(text + "\n\n" + summary)
    if a.report:
        a.report.write_text(text + "\n\n" + summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
