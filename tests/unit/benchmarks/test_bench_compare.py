"""benchmarks/compare.py: which way each row's ratio is better, and the old-against-new table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def compare():  # noqa: ANN201
    return load_benchmark_script("compare")


@pytest.mark.parametrize(
    ("row", "lower"),
    [
        # speeds: ours / peer
        ({"ours": 200.0, "peer_value": 100.0, "unit": "options/s", "ratio": 2.0}, False),
        # a time written peer / ours (> 1: we win), whether or not the unit says lower is better
        ({"ours": 0.5, "peer_value": 1.0, "unit": "ms (lower is better)", "ratio": 2.0}, False),
        ({"ours": 4.0, "peer_value": 6.0, "unit": "ms", "ratio": 1.5}, False),
        # latency against a goal and bytes against the whole file: ours / peer of a time or a size
        ({"ours": 9.0, "peer_value": 20.0, "unit": "us", "ratio": 0.45}, True),
        ({"ours": 37.0, "peer_value": 263.0, "unit": "MB (lower is better)", "ratio": 37.0 / 263.0}, True),
        # rows/s written as peer time / our time (the same number as ours / peer in rows/s)
        ({"ours": 2.0e5, "peer_value": 1.9e5, "unit": "rows/s", "ratio": 2.0e5 / 1.9e5}, False),
        # paired rounds: the ratio is the median of the rounds' ratios, near ours / peer but not equal to it
        ({"ours": 20146.7, "peer_value": 3178.0, "unit": "options/s", "ratio": 6.15}, False),
        ({"ours": 53.0, "peer_value": 50.0, "unit": "us", "ratio": 1.08}, True),
    ],
)
def test_which_way_a_ratio_is_better(compare, row: dict, lower: bool) -> None:  # noqa: ANN001
    assert compare.lower_is_better(row) is lower


def test_subject_names_and_their_result_files(compare) -> None:  # noqa: ANN001
    assert compare.results_name("quant:european") == ("quant", ["european"], "quant_european")
    assert compare.results_name("data") == ("data", [], "data")


def test_the_table_takes_medians_and_marks_falls_beyond_the_tolerance(compare, tmp_path: Path) -> None:  # noqa: ANN001
    def run(side: str, k: int, speed: float, latency: float) -> Path:
        p = tmp_path / f"{side}{k}.json"
        p.write_text(json.dumps({"subject": "engine", "rows": [
            {"benchmark": "throughput", "peer": "claim", "ours": speed, "peer_value": 1.0, "unit": "events/s",
             "ratio": speed},
            {"benchmark": "p50", "peer": "goal", "ours": latency, "peer_value": 10.0, "unit": "us",
             "ratio": latency / 10.0},
            {"benchmark": "no peer", "peer": "-", "ours": 1.0, "peer_value": None, "unit": "s", "ratio": None},
        ]}))
        return p

    old = compare.collect([run("old", k, s, lat) for k, (s, lat) in enumerate([(2.0, 5.0), (9.0, 5.0), (2.2, 5.2)])])
    new = compare.collect([run("new", k, s, lat) for k, (s, lat) in enumerate([(1.9, 5.9), (2.0, 6.0), (0.1, 6.1)])])
    text, worse = compare.table(old, new, 0.10)
    lines = {line.split(" | ")[1]: line for line in text.splitlines()[2:]}
    assert set(lines) == {"throughput", "p50"}  # the row without a ratio is left out
    # medians: throughput 2.2 -> 1.9 (-13.6%, worse); p50 0.50 -> 0.60 (+20% of a latency, worse)
    assert "| 2.2 | 1.9 | -13.6% **worse >10%** |" in lines["throughput"]
    assert "| 0.5 | 0.6 | +20.0% **worse >10%** |" in lines["p50"]
    assert worse == 2
    _, none_worse = compare.table(old, new, 0.25)
    assert none_worse == 0
    # our own figure alone, + is better: throughput 2.2 -> 1.9; a latency 5.0 -> 6.0 us is 1/1.2 - 1
    assert lines["throughput"].endswith("| -13.6% |")
    assert lines["p50"].endswith("| -16.7% |")


def test_more_rounds_find_the_runs_kept_before(compare, tmp_path: Path) -> None:  # noqa: ANN001
    for name in ("old-r1-market.json", "new-r1-market.json", "old-r2-market.json", "new-r2-market.json",
                 "old-warm-market.json", "old-r1-data.json", "new-r3-quant_european.json"):
        (tmp_path / name).write_text("{}")
    runs, rounds = compare.kept_runs(tmp_path, ["market", "quant_european"])
    assert [p.name for p in runs["old"]] == ["old-r1-market.json", "old-r2-market.json"]
    assert [p.name for p in runs["new"]] == ["new-r1-market.json", "new-r2-market.json", "new-r3-quant_european.json"]
    assert rounds == 3


def test_variables_for_both_sides_are_name_value_pairs(compare) -> None:  # noqa: ANN001
    assert compare.parse_env(["MALLOC_MMAP_THRESHOLD_=33554432", "A=b=c"]) == {
        "MALLOC_MMAP_THRESHOLD_": "33554432", "A": "b=c"}
    with pytest.raises(SystemExit, match="'MALLOC_TRIM_THRESHOLD_': expected NAME=VALUE"):
        compare.parse_env(["MALLOC_TRIM_THRESHOLD_"])
    with pytest.raises(SystemExit, match="'=1'"):
        compare.parse_env(["=1"])
