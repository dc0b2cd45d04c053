"""The server's input check: its one-comparison path passes exactly the inputs the per-feature checks pass
(finite, moneyness > 0, ttm >= 0, vol >= 0), and a bad input still names its first offender."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from greekfire.core.errors import DataError
from greekfire.ml.serving import FEATURE_BOUNDS, _all_clean, check_inputs

MODEL: Any = SimpleNamespace(contract_names=["moneyness", "ttm", "rate", "vol"], uses_sequence=False)
EDGES = [0.0, -0.0, 1e-45, -1e-45, 5e-324, 1e-30, -1e-30, 1.0, -1.0, 3.4e38, 1e300, math.inf, -math.inf, math.nan]


def _passes_per_feature(row: list[float]) -> bool:
    """The rule written out: each value finite, each bounded feature inside its bound."""
    for name, v in zip(MODEL.contract_names, row, strict=True):
        if not math.isfinite(v):
            return False
        if name in FEATURE_BOUNDS:
            low, strict = FEATURE_BOUNDS[name]
            if (v <= low) if strict else (v < low):
                return False
    return True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_fast_path_agrees_with_the_rule_on_every_edge_value(dtype: torch.dtype) -> None:
    checked = 0
    for col, v in itertools.product(range(4), EDGES):
        row = [1.0, 0.5, 0.03, 0.2]
        row[col] = v
        x = torch.tensor([[1.0, 0.5, 0.03, 0.2], row], dtype=dtype)
        want = _passes_per_feature([float(t) for t in x[1]])  # the values as dtype holds them
        assert _all_clean(MODEL, x) is want, (dtype, col, v)
        if want:
            check_inputs(MODEL, x, None)
        else:
            with pytest.raises(DataError) as exc:
                check_inputs(MODEL, x, None)
            assert exc.value.field == f"contract[1].{MODEL.contract_names[col]}"
        checked += 1
    assert checked == 4 * len(EDGES)


def test_the_first_offender_is_named_non_finite_before_out_of_range() -> None:
    x = torch.tensor([[1.0, -0.5, 0.03, 0.2], [1.0, 0.5, 0.03, math.nan]])
    with pytest.raises(DataError) as exc:
        check_inputs(MODEL, x, None)
    assert exc.value.field == "contract[1].vol" and "finite" in exc.value.reason
    y = torch.tensor([[1.0, 0.5, 0.03, -0.2], [0.0, 0.5, 0.03, 0.2]])
    with pytest.raises(DataError) as exc:
        check_inputs(MODEL, y, None)
    assert exc.value.field == "contract[1].moneyness" and "> 0" in exc.value.reason  # column order, as before


def test_a_tensor_that_needs_grad_or_is_not_float_takes_the_long_path() -> None:
    x = torch.tensor([[1.0, 0.5, 0.03, 0.2]], requires_grad=True)
    assert _all_clean(MODEL, x)
    check_inputs(MODEL, x, None)
    assert not _all_clean(MODEL, torch.tensor([[1, 1, 0, 0]]))
