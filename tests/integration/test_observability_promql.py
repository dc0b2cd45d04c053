"""Every PromQL expression of every Grafana dashboard (deploy/grafana/dashboards/*.json) and of every rule file
(deploy/prometheus/*-rules.yml, a glob: rule files added later are checked too):

* promtool parses it (the rule files with ``promtool check rules``; the dashboards' expressions written into a
  temporary rules file as recording rules and checked the same way);
* against a real Prometheus scraping our services on loopback (the GPU manager app over a fake NVML, `greekfire
  serve pricing`, `greekfire serve trading --venues fix` with a `greekfire fix exchange`, `greekfire serve
  wheel`, `greekfire hft replay` with its metrics port, and a pushgateway the trainer's own code pushed a good
  and a failed run to), each expression returns at least one series. The failure lists every empty one and
  each target's health (a job whose scrape failed, and why; its process and the end of its log).

An empty query is asked again, for up to a minute, until every job's latest scrape succeeded: one scrape that
failed (a service busy past the 1 s scrape timeout on a loaded machine) makes all its job's series stale, and
the plain selectors on them (``greekfire_fix_session_logged_on{}``) empty, until the next good scrape.

Alert expressions are conditions that are empty while all is well (``x > 0.9``), so an alert's expression is
parsed with a real PromQL parser (promql-parser) and its top-level comparisons and set operators are taken
apart: each operand that is not a number must return series; ``offset`` modifiers are dropped (the test's
Prometheus holds no older data). What is evaluated for each is :func:`stack.data_queries`. This proves the data
behind each alert exists, not that the alert fires (the promtool unit tests of each rule file do that).

The same run renders each dashboard's panels' queries as plots (matplotlib: a grid per dashboard) into
docs/img/dash-<name>.png when GREEKFIRE_DOCS_SCREENSHOTS=1, else into the test's temporary folder. They are our
renders of the queries, not Grafana.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from stack import (
    DASHBOARDS,
    ROOT,
    Expression,
    Stack,
    dashboard_expressions,
    data_queries,
    expressions,
    rule_files,
    running_stack,
)

from conftest import need_binary, poll_until

pytestmark = pytest.mark.integration

DOCS_IMG = ROOT / "docs" / "img"


def test_there_are_dashboards_and_rules_to_check() -> None:
    names = {p.stem for p in DASHBOARDS.glob("*.json")}
    assert {"gpu", "pricing", "trading", "fix", "wheel", "hft", "training"} <= names
    assert len(rule_files()) >= 3
    assert len(dashboard_expressions()) >= 50


def test_promtool_checks_every_rule_file() -> None:
    promtool = need_binary("promtool")
    files = [str(p) for p in rule_files()]
    check = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("SUCCESS") == len(files), check.stdout


def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    promtool = need_binary("promtool")
    exprs = dashboard_expressions()
    rules = [{"record": f"greekfire:dashboard_check:{i}", "expr": e.expr} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout


def test_a_broken_expression_is_caught_by_promtool(tmp_path: Path) -> None:
    """The check above can fail: promtool rejects an expression with a syntax error."""
    promtool = need_binary("promtool")
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "rate(up[1m]"}]}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode != 0


def test_an_alert_is_taken_apart_at_its_conditions() -> None:
    def parts(expr: str, alert: bool = True) -> list[str]:
        return data_queries(Expression("t", expr, alert))

    assert parts("x > 0.9") == ["x{}"]
    assert parts("time() - t > 4 * 86400") == ["time() - t{}"]  # the threshold reads no series: not evaluated
    assert parts("a >= b offset 30m and on (run) c == 1 unless d") == ["a{}", "b{}", "c{}"]
    assert parts("min_over_time(a[30m] offset 30m) > 0") == ["min_over_time(a{}[30m])"]
    assert parts("a > bool 1") == ["a{} > bool 1"]  # a bool comparison is a value, not a filter
    assert parts("rate(a[1m]) > 0", alert=False) == ["rate(a{}[1m]) > 0"]  # panels and recording rules as they are


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Stack]:
    prometheus = need_binary("prometheus")
    pushgateway = need_binary("prometheus-pushgateway")
    with running_stack(tmp_path_factory.mktemp("stack"), shared_data, prometheus, pushgateway) as s:
        yield s


def test_every_dashboard_and_rule_expression_returns_data(stack: Stack) -> None:
    exprs = expressions()
    assert exprs
    pairs = [(e, q) for e in exprs for q in data_queries(e)]
    answers: dict[int, list[dict[str, object]]] = {}

    def ask() -> bool:
        """(Re)ask the queries that have no series yet; done when all have and every job's latest scrape was
        good. A failed scrape (a service busy past the 1 s timeout on a loaded machine) leaves its job's
        instant series stale until the next good one; a series that is never exported stays empty and fails
        below."""
        up = stack.up_now()
        todo = [i for i in range(len(pairs)) if not answers.get(i)]
        with ThreadPoolExecutor(8) as pool:  # Prometheus answers queries in parallel
            answers.update(zip(todo, pool.map(lambda i: stack.query(pairs[i][1]), todo), strict=True))
        return up and all(answers.values())

    poll_until(ask, 60, 1.0)
    empty = [f"{e.source}: {q}" for i, (e, q) in enumerate(pairs) if not answers.get(i)]
    for i, (e, q) in enumerate(pairs):  # shown with -s
        print(f"{len(answers.get(i, [])):4d} series  {e.source}: {q}")
    print(f"{len(pairs)} queries from {len(exprs)} expressions evaluated, {len(pairs) - len(empty)} returned data; "
          f"services ready after {[round(t) for t in stack.started_after_s]} s")
    print(stack.targets_report())
    report = "\n".join(empty)
    assert not empty, (f"{len(empty)} of {len(pairs)} queries returned no series:\n{report}\n"
                       f"targets:\n{stack.targets_report()}")


def _render(stack: Stack, board_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(board_path.read_text())
    panels = board["panels"]
    targets = [t for panel in panels for t in panel["targets"]]
    with ThreadPoolExecutor(8) as pool:
        ranges = dict(zip((id(t) for t in targets), pool.map(lambda t: stack.query_range(t["expr"], 120), targets),
                          strict=True))
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(13, 2.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for t in panel["targets"]:
            for series in ranges[id(t)]:
                xs = [float(v[0]) for v in series["values"]]
                ys = [float(v[1]) for v in series["values"]]
                t0 = xs[0] if xs else 0.0
                label = t.get("legendFormat", "")
                for k, v in series["metric"].items():
                    label = label.replace("{{" + k + "}}", v)
                ax.plot([x - t0 for x in xs], ys, label=label[:40] or None)
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_xlabel("seconds", fontsize=7)
        ax.set_ylabel(unit, fontsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{board['title']} (panel queries rendered from Prometheus, not Grafana)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=72)
    plt.close(fig)


def test_dashboard_renders_from_the_same_prometheus(stack: Stack, tmp_path: Path) -> None:
    folder = DOCS_IMG if os.environ.get("GREEKFIRE_DOCS_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    for board_path in sorted(DASHBOARDS.glob("*.json")):
        out = folder / f"dash-{board_path.stem}.png"
        _render(stack, board_path, out)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000, out
