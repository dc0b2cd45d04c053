"""Tick features: hand-computed values, and a batch equal to the per-instrument loop on both back ends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from greekfire.core.errors import DataError
from greekfire.hft.features import (
    F_IMB,
    F_MICRO,
    F_MID,
    F_OFI,
    F_PATTERN,
    F_SIGNAL,
    F_SPREAD,
    F_VOL,
    FEATURES,
    FeatureEngine,
    FeatureParams,
    features_loop,
    occurrence_rank,
)


def snap(bids: list[tuple[int, int]], asks: list[tuple[int, int]], levels: int = 2) -> np.ndarray:
    d = np.zeros((1, 2, levels, 2), np.int64)
    for s, side in enumerate((bids, asks)):
        for i, (px, q) in enumerate(side):
            d[0, s, i] = (px, q)
    return d


FIRST = snap([(100, 300), (99, 200)], [(102, 100), (103, 400)])
SECOND = snap([(101, 50), (100, 300)], [(103, 400), (104, 100)])


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_features_against_hand_computed_values(backend: str) -> None:
    p = FeatureParams(levels=2, decay=0.5, vol_halflife=50.0, enter=0.3, max_spread=5)
    eng = FeatureEngine(4, p, backend=backend, device="cpu")
    a = eng.update(np.array([2]), FIRST)[0]
    assert a[F_SPREAD] == 2 and a[F_MID] == 101
    assert a[F_MICRO] == pytest.approx((100 * 100 + 102 * 300) / 400)
    assert a[F_IMB] == pytest.approx((200 + 0.5 * -200) / (400 + 0.5 * 600))  # 1/7
    assert a[F_OFI] == 0 and a[F_VOL] == 0 and a[F_PATTERN] == 0 and a[F_SIGNAL] == 0
    b = eng.update(np.array([2]), SECOND)[0]
    # bid up 100 -> 101 (+50 new), ask up 102 -> 103 (the 100 offered at 102 gone)
    assert b[F_OFI] == pytest.approx(50 + 100)
    assert b[F_PATTERN] == 1  # the best ask level was lifted
    alpha = 1 - 0.5 ** (1 / 50)
    assert b[F_VOL] == pytest.approx(math.sqrt(alpha) * abs(math.log(102 / 101)))
    imb = ((50 - 400) + 0.5 * (300 - 100)) / (450 + 0.5 * 400)
    assert b[F_IMB] == pytest.approx(imb)
    assert b[F_SIGNAL] == -1  # imbalance -0.38 <= -enter; the up pattern needs a positive imbalance
    # another instrument is untouched by instrument 2's history
    c = eng.update(np.array([3]), SECOND)[0]
    assert c[F_OFI] == 0 and c[F_PATTERN] == 0 and c[F_VOL] == 0


def test_empty_side_and_wide_spread_give_nan_and_no_signal() -> None:
    eng = FeatureEngine(1, FeatureParams(levels=1, enter=0.1, max_spread=1))
    one_sided = eng.update(np.array([0]), snap([(100, 500)], [], levels=1))[0]
    assert math.isnan(one_sided[F_SPREAD]) and math.isnan(one_sided[F_MICRO])
    assert one_sided[F_IMB] == 1 and one_sided[F_SIGNAL] == 0
    wide = eng.update(np.array([0]), snap([(100, 500)], [(110, 10)], levels=1))[0]
    assert wide[F_SPREAD] == 10 and wide[F_IMB] > 0.1 and wide[F_SIGNAL] == 0


def random_snapshots(n: int, n_instr: int, levels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    instr = rng.integers(0, n_instr, n)
    base = 10_000 + rng.integers(-3, 4, n)
    d = np.zeros((n, 2, levels, 2), np.int64)
    for i in range(levels):
        d[:, 0, i, 0] = base - i
        d[:, 1, i, 0] = base + 1 + rng.integers(0, 2, n) + i
        d[:, 0, i, 1] = rng.integers(0, 4, n) * 100
        d[:, 1, i, 1] = rng.integers(0, 4, n) * 100
    return instr, d


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_batch_equals_the_per_instrument_loop(backend: str) -> None:
    p = FeatureParams(levels=3, enter=0.4, max_spread=3)
    instr, d = random_snapshots(3000, 37, 3, seed=11)
    ref = features_loop(instr, d, p, n_instruments=37)
    eng = FeatureEngine(37, p, backend=backend, device="cpu")
    got = np.concatenate([eng.update(instr[a : a + 700], d[a : a + 700]) for a in range(0, 3000, 700)])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert set(np.unique(ref[:, F_SIGNAL])) == {-1.0, 0.0, 1.0}  # the case exercises every signal
    assert np.count_nonzero(ref[:, F_PATTERN]) > 0 and np.count_nonzero(ref[:, F_OFI]) > 0


def test_state_moves_between_engines() -> None:
    p = FeatureParams(levels=2)
    instr, d = random_snapshots(400, 5, 2, seed=3)
    ref = features_loop(instr, d, p, n_instruments=5)
    a = FeatureEngine(5, p)
    a.update(instr[:200], d[:200])
    b = FeatureEngine(5, p, backend="torch", device="cpu")
    b.load_state(a.state)
    np.testing.assert_allclose(b.update(instr[200:], d[200:]), ref[200:], rtol=1e-12, equal_nan=True)


def test_occurrence_rank() -> None:
    assert occurrence_rank(np.array([4, 1, 4, 4, 1, 7])).tolist() == [0, 0, 1, 2, 1, 0]


def test_bad_input_names_the_field() -> None:
    with pytest.raises(DataError, match="backend"):
        FeatureEngine(3, backend="jax")
    with pytest.raises(DataError, match="decay"):
        FeatureEngine(3, FeatureParams(decay=0))
    eng = FeatureEngine(3)
    with pytest.raises(DataError, match="instruments"):
        eng.update(np.array([5]), FIRST)
    with pytest.raises(DataError, match="depth.shape"):
        eng.update(np.array([0, 1]), FIRST)
    assert len(FEATURES) == eng.update(np.array([0]), FIRST).shape[1]


def test_snapshot_of_all_books_matches_the_row_features() -> None:
    instr, d = random_snapshots(50, 50, 2, seed=5)
    d = d[np.argsort(instr)][:20]
    eng = FeatureEngine(20, FeatureParams(levels=2))
    rows = eng.update(np.arange(20), d)
    snap_all = eng.snapshot(d)
    np.testing.assert_allclose(snap_all["imbalance"].numpy(), rows[:, F_IMB], rtol=1e-12)
    np.testing.assert_allclose(snap_all["microprice"].numpy(), rows[:, F_MICRO], rtol=1e-12, equal_nan=True)
