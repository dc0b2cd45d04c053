"""Every Prometheus rules file under deploy/prometheus (``<name>-rules.yml``) against promtool and its own unit
tests (``<name>-rules.test.yml``): promtool parses it and its tests pass; every alert has a test case in which
it fires and one in which it does not; every alert has a severity, a summary, a description and a runbook link
to a section of docs/operations.md that exists; and every metric a rule reads is one greekfire exports (its
name appears in src/greekfire) or one Prometheus and the pushgateway make themselves."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import need_binary

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
OPERATIONS = ROOT / "docs" / "operations.md"
RULE_FILES = sorted(RULES_DIR.glob("*-rules.yml"))
SEVERITIES = {"critical", "warning", "info"}
# made by Prometheus (up) and by the pushgateway (push_time_seconds), not by greekfire
EXTERNAL_METRICS = {"up", "push_time_seconds"}
# PromQL words that look like metric names in an expression
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "offset", "bool", "rate", "irate", "increase", "delta", "time", "vector", "histogram_quantile",
    "min_over_time", "max_over_time", "avg_over_time", "absent", "le", "topk", "bottomk", "abs", "clamp_min",
}


def _alerts(rules_file: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(rules_file.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but - and _ dropped, spaces to -."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            out.add(text.replace(" ", "-"))
    return out


def _metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (label matchers, strings, durations and PromQL words removed)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\boffset\s+\w+", "", expr)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {w for w in words if w not in PROMQL_WORDS}


def _exported(name: str, source: str) -> bool:
    base = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
    return f'"{name}"' in source or f'"{base}"' in source


@pytest.fixture(scope="module")
def source() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "src" / "greekfire").rglob("*.py"))


def test_the_rules_files_are_found() -> None:
    names = {p.name for p in RULE_FILES}
    assert {"gpu-rules.yml", "training-rules.yml", "wheel-rules.yml", "trading-rules.yml", "fix-rules.yml",
            "feed-rules.yml", "inference-rules.yml"} <= names, names


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=lambda p: p.name)
def test_promtool_checks_the_rules_and_runs_their_unit_tests(rules_file: Path) -> None:
    promtool = need_binary("promtool")
    tests_file = rules_file.with_name(rules_file.name.replace("-rules.yml", "-rules.test.yml"))
    assert tests_file.exists(), f"{rules_file.name} has no unit tests ({tests_file.name})"
    assert yaml.safe_load(tests_file.read_text())["rule_files"] == [rules_file.name]
    check = subprocess.run([promtool, "check", "rules", rules_file.name], cwd=RULES_DIR, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    n_rules = sum(len(g["rules"]) for g in yaml.safe_load(rules_file.read_text())["groups"])
    assert f"SUCCESS: {n_rules} rules found" in check.stdout, check.stdout
    test = subprocess.run([promtool, "test", "rules", tests_file.name], cwd=RULES_DIR, capture_output=True,
                          text=True, timeout=60)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "SUCCESS" in test.stdout


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_is_tested_firing_and_not_firing(rules_file: Path) -> None:
    tests_file = rules_file.with_name(rules_file.name.replace("-rules.yml", "-rules.test.yml"))
    assert tests_file.exists(), f"{rules_file.name} has no unit tests ({tests_file.name})"
    cases = [c for t in yaml.safe_load(tests_file.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    alerts = {a["alert"] for a in _alerts(rules_file)}
    assert not alerts - fires, f"{rules_file.name}: no test case where these fire: {sorted(alerts - fires)}"
    assert not alerts - quiet, f"{rules_file.name}: no test case where these stay quiet: {sorted(alerts - quiet)}"
    assert not (fires | quiet) - alerts, f"{tests_file.name} tests alerts the rules do not have"


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_has_severity_text_and_a_runbook(rules_file: Path) -> None:
    anchors = _anchors(OPERATIONS.read_text())
    for a in _alerts(rules_file):
        name = a["alert"]
        assert a.get("labels", {}).get("severity") in SEVERITIES, name
        ann = a.get("annotations", {})
        assert ann.get("summary") and ann.get("description"), name
        url = ann.get("runbook_url", "")
        assert url.startswith("docs/operations.md#"), f"{name}: runbook_url {url!r}"
        assert url.split("#", 1)[1] in anchors, f"{name}: docs/operations.md has no section #{url.split('#', 1)[1]}"


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=lambda p: p.name)
def test_every_metric_a_rule_reads_is_exported(rules_file: Path, source: str) -> None:
    for a in _alerts(rules_file):
        names = _metric_names(str(a["expr"]))
        assert names, f"{a['alert']}: no metric found in {a['expr']!r}"
        missing = {n for n in names if n not in EXTERNAL_METRICS and not _exported(n, source)}
        assert not missing, f"{a['alert']} reads metrics no greekfire code exports: {sorted(missing)}"


def test_the_metric_name_reader_finds_names_and_only_names() -> None:
    expr = ('sum by (instance, le) (rate(greekfire_x_bucket{status="e"}[5m])) > on (job) 0.5 * '
            'greekfire_y offset 1h unless up{job="a"} == 0')
    assert _metric_names(expr) == {"greekfire_x_bucket", "greekfire_y", "up"}
    assert _exported("greekfire_trading_orders_total", 'counter("greekfire_trading_orders", ...)')
    assert not _exported("greekfire_trading_nothing_total", 'counter("greekfire_trading_orders", ...)')
