"""Strike selection on tensors: each filter removes what it should, the best pick equals the row-by-row
pandas implementation of the same rules, and batching (the OOM back-off's unit) changes nothing."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from greekfire.quant.registry import MarketInputs, OptionBatch, price
from greekfire.strategies.wheel.config import WheelConfig
from greekfire.strategies.wheel.select import (
    AMERICAN_BAND,
    Candidates,
    select,
    select_pandas,
    synthetic_candidates,
)

CFG = WheelConfig(exercise="european", min_open_interest=10, min_volume=5, dte=30, max_dte=90)


def base_rows() -> pd.DataFrame:
    """One symbol, puts at spot 100, 40 days: strikes 80..100; the 95 strike is nearest a 0.30 delta
    without going over it."""
    strikes = [80.0, 85.0, 90.0, 93.0, 95.0, 97.0, 100.0]
    n = len(strikes)
    return pd.DataFrame({
        "symbol": ["SPY"] * n, "right": [-1.0] * n, "strike": strikes, "dte": [40.0] * n,
        "bid": [0.2, 0.4, 0.9, 1.4, 1.9, 2.5, 3.6], "ask": [0.25, 0.45, 0.95, 1.5, 2.0, 2.6, 3.7],
        "open_interest": [500.0] * n, "volume": [50.0] * n, "iv": [0.2] * n, "spot": [100.0] * n,
        "target_delta": [0.30] * n, "dte_target": [30.0] * n, "max_dte": [90.0] * n,
        "strike_min": [-math.inf] * n, "strike_max": [math.inf] * n, "iv_rank": [0.5] * n, "allowed": [True] * n,
    })


def pick(frame: pd.DataFrame, cfg: WheelConfig = CFG) -> float | None:
    sel = select(Candidates.from_frame(frame), cfg, "cpu")
    assert sel.best == select_pandas(frame, cfg)  # the two implementations agree on every case here
    row = sel.best.get(("SPY", -1.0))
    return None if row is None else float(frame["strike"].iloc[row])


def test_best_is_the_nearest_delta_at_or_under_the_target() -> None:
    f = base_rows()
    sel = select(Candidates.from_frame(f), CFG, "cpu")
    deltas = sel.delta.abs().tolist()
    under = [(abs(d - 0.30), k) for d, k in zip(deltas, f["strike"], strict=True) if d <= 0.30]
    assert pick(f) == min(under)[1]
    assert all(d > 0.30 for d, k in zip(deltas, f["strike"], strict=True) if k > pick(f))


@pytest.mark.parametrize(("column", "value"), [
    ("open_interest", 5.0), ("volume", 1.0), ("bid", 0.0), ("dte", 20.0), ("dte", 120.0), ("iv_rank", 0.05),
    ("allowed", False), ("strike_max", 94.0),
])
def test_each_filter_removes_the_winner(column: str, value: float) -> None:
    f = base_rows()
    winner = pick(f)
    f.loc[f["strike"] == winner, column] = value
    cfg = CFG.model_copy(update={"iv_rank_min": 0.1})
    assert pick(f, cfg) != winner


def test_spread_premium_and_yield_filters() -> None:
    f = base_rows()
    winner = pick(f)
    wide = f.copy()
    wide.loc[wide["strike"] == winner, "ask"] = 5.0  # spread far over half the mid
    assert pick(wide) != winner
    assert pick(f, CFG.model_copy(update={"min_premium": 10.0})) is None
    assert pick(f, CFG.model_copy(update={"min_annual_yield": 5.0})) is None


def test_cost_basis_floor_for_calls() -> None:
    f = base_rows().assign(right=1.0, strike=[95.0, 100.0, 103.0, 105.0, 108.0, 110.0, 115.0])
    sel = select(Candidates.from_frame(f), CFG, "cpu")
    free = float(f["strike"].iloc[sel.best[("SPY", 1.0)]])
    floored = f.assign(strike_min=free + 1.0)
    sel2 = select(Candidates.from_frame(floored), CFG, "cpu")
    assert float(f["strike"].iloc[sel2.best[("SPY", 1.0)]]) > free


def test_many_symbols_agree_with_pandas_and_batches_change_nothing() -> None:
    f = synthetic_candidates(4000, n_symbols=12, seed=5, config=CFG)
    c = Candidates.from_frame(f)
    full = select(c, CFG, "cpu")
    assert len(full.best) >= 20
    assert full.best == select_pandas(f, CFG)
    small = select(c, CFG.model_copy(update={"batch_rows": 333}), "cpu")
    assert small.best == full.best and torch.equal(small.mask, full.mask)
    # every pick passes every rule, and no masked row of its group scores higher
    for (sym, right), r in full.best.items():
        assert f["symbol"].iloc[r] == sym and f["right"].iloc[r] == right and bool(full.mask[r])
        same = (f["symbol"] == sym).to_numpy() & (f["right"] == right).to_numpy() & full.mask.numpy()
        assert float(full.score[r]) == float(full.score[torch.from_numpy(same)].max())


def test_american_deltas_come_from_the_american_engine_near_the_target() -> None:
    f = base_rows().assign(dte=[200.0] * 7, max_dte=[300.0] * 7)
    cfg = CFG.model_copy(update={"exercise": "american", "american_engine": "bs2002", "rate": 0.05})
    sel = select(Candidates.from_frame(f), cfg, "cpu")
    euro = select(Candidates.from_frame(f), CFG.model_copy(update={"rate": 0.05}), "cpu")
    near = ((euro.delta.abs() - 0.30).abs() <= AMERICAN_BAND)
    am = price("bs2002", OptionBatch(torch.tensor(f["right"].to_numpy()), torch.tensor(f["strike"].to_numpy()),
                                     torch.tensor(f["dte"].to_numpy()) / 365.0, "american"),
               MarketInputs(torch.tensor(f["spot"].to_numpy()), 0.05, 0.0, torch.tensor(f["iv"].to_numpy())),
               outputs="delta")["delta"]
    assert torch.allclose(sel.delta[near], am[near])
    assert torch.equal(sel.delta[~near], euro.delta[~near])
    assert (sel.delta[near].abs() > euro.delta[near].abs()).all()  # early exercise makes puts more sensitive
    # given deltas are taken as they are (the pandas twin reads the same column)
    given = f.assign(delta=sel.delta.numpy())
    assert select(Candidates.from_frame(given), cfg, "cpu").best == select_pandas(given, cfg)


def test_out_of_memory_halves_the_batch_and_keeps_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import greekfire.strategies.wheel.select as sel_mod

    f = synthetic_candidates(3000, n_symbols=5, seed=9, config=CFG)
    c = Candidates.from_frame(f)
    want = select(c, CFG, "cpu")
    real = sel_mod.score_rows
    sizes: list[int] = []

    def tight(rows: Candidates, delta: torch.Tensor, config: WheelConfig) -> torch.Tensor:
        sizes.append(len(rows))
        if len(rows) > 700:  # a device that holds at most 700 rows at once
            raise MemoryError("simulated: out of memory")
        return real(rows, delta, config)

    monkeypatch.setattr(sel_mod, "score_rows", tight)
    got = select(c, CFG, "cpu")
    assert got.best == want.best and torch.equal(got.score, want.score)
    scored = [n for n in sizes if n <= 700]  # the batches that went through, after the halvings
    assert sizes[0] == 3000 and sum(scored) == 3000 and sizes[len(sizes) - len(scored):] == scored
