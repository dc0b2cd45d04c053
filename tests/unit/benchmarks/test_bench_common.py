"""benchmarks/common.py: rates of ours and a peer measured back to back, and the median of their ratios."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def common():  # noqa: ANN201
    return load_benchmark_script("common")


def _feed(values: list[float]) -> Callable[[], float]:
    it = iter(values)
    return lambda: next(it)


def test_paired_rates_takes_the_median_of_each_round_s_ratio(common) -> None:  # noqa: ANN001
    # three rounds: the machine is fast, then slow for the peer's turn, then slow for both
    ours, peer, ratio = common.paired_rates(_feed([10.0, 30.0, 8.0]), _feed([5.0, 10.0, 8.0]), rounds=3)
    assert (ours, peer) == (10.0, 8.0)  # medians of each side
    assert ratio == 2.0  # ratios 2, 3, 1: their median, not 10 / 8 = 1.25 from medians taken apart


def test_paired_rates_alternates_ours_and_the_peer(common) -> None:  # noqa: ANN001
    calls: list[str] = []

    def mark(name: str) -> Callable[[], float]:
        def fn() -> float:
            calls.append(name)
            return 1.0
        return fn

    common.paired_rates(mark("ours"), mark("peer"), rounds=2)
    assert calls == ["ours", "peer", "ours", "peer"]


def test_paired_rates_needs_a_round(common) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="rounds: 0, must be at least 1"):
        common.paired_rates(lambda: 1.0, lambda: 1.0, rounds=0)
