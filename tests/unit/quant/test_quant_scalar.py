"""The plain-float closed form for small chains against the tensor pricing core."""

from __future__ import annotations

import pytest
import torch

from greekfire.quant import bsm_greeks, bsm_greeks_scalar


def test_small_chain_closed_form_agrees_with_the_pricing_core_on_a_wide_grid() -> None:
    # calls and puts, deep in and out of the money, one minute to two years, low to extreme vol, r and q
    grid = [(w, k, t, v) for w in (1.0, -1.0) for k in (40.0, 90.0, 100.0, 115.0, 250.0)
            for t in (1.0 / 525_600, 0.02, 0.5, 2.0) for v in (0.05, 0.3, 1.5)]
    w, k, t, v = (list(col) for col in zip(*grid, strict=True))
    for rate, q in ((0.03, 0.01), (-0.005, 0.04)):
        rows = bsm_greeks_scalar(w, 100.0, k, t, rate, q, v)
        assert rows is not None and len(rows) == len(grid)
        f64 = torch.float64
        g = bsm_greeks(torch.tensor(w, dtype=f64), 100.0, torch.tensor(k, dtype=f64), torch.tensor(t, dtype=f64),
                       rate, q, torch.tensor(v, dtype=f64))
        for j, name in enumerate(("delta", "gamma", "vega", "theta")):
            ours = [r[j] for r in rows]
            assert ours == pytest.approx(g[name].tolist(), rel=1e-9, abs=1e-12), name
    # outside the plain domain the caller is told to use the pricing core
    assert bsm_greeks_scalar([1.0], 100.0, [100.0], [0.5], 0.0, 0.0, [0.0]) is None
    assert bsm_greeks_scalar([1.0], float("nan"), [100.0], [0.5], 0.0, 0.0, [0.2]) is None
