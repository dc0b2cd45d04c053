"""The HFT tick features on a real GPU: batches staged through pinned memory give the numbers of the
per-instrument numba loop on the CPU."""

from __future__ import annotations

import numpy as np
import torch

from greekfire.hft.features import FeatureEngine, FeatureParams, features_loop


def test_gpu_feature_batches_equal_the_cpu_loop(dev: torch.device) -> None:
    rng = np.random.default_rng(4)
    n, n_instr, levels = 20_000, 3000, 5
    instr = rng.integers(0, n_instr, n)
    d = np.zeros((n, 2, levels, 2), np.int64)
    base = 10_000 + rng.integers(-3, 4, n)
    for i in range(levels):
        d[:, 0, i, 0], d[:, 1, i, 0] = base - i, base + 1 + i + rng.integers(0, 2, n)
        d[:, 0, i, 1], d[:, 1, i, 1] = rng.integers(0, 5, n) * 100, rng.integers(0, 5, n) * 100
    p = FeatureParams(levels=levels, enter=0.3, max_spread=4)
    ref = features_loop(instr, d, p, n_instruments=n_instr)
    eng = FeatureEngine(n_instr, p, backend="torch", device=str(dev))
    assert eng.device.type == dev.type
    got = np.concatenate([eng.update(instr[a : a + 4096], d[a : a + 4096]) for a in range(0, n, 4096)])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9, equal_nan=True)
