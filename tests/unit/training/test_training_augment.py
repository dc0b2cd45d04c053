"""Augmentation of pricing data (noise on inputs, resampled chains) and prefetching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from greekfire.core.errors import DataError
from greekfire.data.features import Samples
from greekfire.training.augment import add_input_noise, prefetch, resample_chains


def _samples(n: int = 60) -> Samples:
    rng = np.random.default_rng(0)
    return Samples(
        seq=rng.normal(size=(n, 5, 2)).astype(np.float32), contract=rng.normal(size=(n, 3)).astype(np.float32),
        target=np.arange(n, dtype=np.float32), bs_baseline=np.zeros(n, dtype=np.float32),
        quote_date=np.datetime64("2024-01-01") + np.arange(n) // 20,
        seq_names=["a", "b"], contract_names=["x", "y", "z"],
    )


def test_noise_is_multiplicative_on_chosen_columns_and_seeded() -> None:
    batch = {"seq": torch.ones(100, 5, 2), "contract": torch.full((100, 3), 2.0), "target": torch.arange(100.0)}
    g = torch.Generator().manual_seed(1)
    out = add_input_noise(batch, 0.05, keys=("contract",), columns=[1], generator=g)
    assert torch.equal(out["seq"], batch["seq"]) and torch.equal(out["target"], batch["target"])
    assert torch.equal(out["contract"][:, [0, 2]], batch["contract"][:, [0, 2]])
    rel = out["contract"][:, 1] / 2.0 - 1
    assert 0.03 < float(rel.std()) < 0.07  # std 0.05 of the value
    again = add_input_noise(batch, 0.05, keys=("contract",), columns=[1], generator=torch.Generator().manual_seed(1))
    assert torch.equal(again["contract"], out["contract"])
    with pytest.raises(DataError, match="std"):
        add_input_noise(batch, -1.0)


def test_resampled_chains_keep_each_dates_size_and_rows() -> None:
    s = _samples()
    r = resample_chains(s, seed=3)
    assert len(r) == len(s)
    for d in np.unique(s.quote_date):
        ids = r.target[r.quote_date == d]
        assert len(ids) == 20
        assert set(ids) <= set(s.target[s.quote_date == d])  # drawn from that chain only
    assert len(set(r.target)) < len(s)  # with replacement: some rows repeat
    assert np.array_equal(resample_chains(s, seed=3).target, r.target)


def test_prefetch_keeps_order_and_raises_the_readers_error() -> None:
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():  # type: ignore[no-untyped-def]
        yield 1
        raise OSError("storage went away")

    it = prefetch(broken(), depth=2)
    assert next(it) == 1
    with pytest.raises(OSError, match="storage went away"):
        next(it)


def test_augment_callback_noises_the_batch_by_step() -> None:
    from types import SimpleNamespace
    from typing import Any

    from greekfire.training.augment import Augment

    cb = Augment(0.02, seed=5)

    def at(step: int) -> Any:
        batch = {"contract": torch.ones(64, 3), "target": torch.zeros(64)}  # no seq (an MLP): contract is noised
        cb.on_train_batch_start(SimpleNamespace(global_step=step, global_rank=0), None, batch, 0)  # type: ignore[arg-type]
        return batch

    a, b, c = at(3), at(3), at(4)
    assert torch.equal(a["contract"], b["contract"]) and not torch.equal(a["contract"], c["contract"])
    assert not torch.equal(a["contract"], torch.ones(64, 3)) and torch.equal(a["target"], torch.zeros(64))
