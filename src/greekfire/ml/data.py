"""Data glue for pricing models: sample sources, splits, in-memory batched datasets and a resumable loader.

Sources (``data.source`` in the experiment config):

- ``bs_liu``: Black-Scholes calls on the ranges of Liu, Oosterlee & Bohte (2019): S/K in [0.4, 1.6],
  ttm in [0.2, 1.1] years, r in [0.02, 0.1], vol in [0.01, 1.0]; target V/K.
- ``bs_culkin``: Culkin & Das (2017): S in [10, 500], K/S in [0.7, 1.3] (K in [7, 650]), ttm in
  [1 day, 3 years], q in [0, 0.03], r in [0.01, 0.03], vol in [0.05, 0.9]; target C/K.
- ``heston``: the synthetic Heston market of :mod:`greekfire.data.synthetic` through
  :func:`greekfire.data.features.build_samples` (history window + contract features; target mid/strike).
- ``spx``: real SPXW quotes through the same feature builder, split by quote date.
- ``random``: a smooth made-up function of sequence and contract features (tests; no dependencies).

Rows are tensors in memory; a batch is gathered with one fancy-index (``__getitems__``), not row by row,
so a 500k-row epoch costs milliseconds of indexing rather than seconds of Python.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from greekfire.core.errors import DataError
from greekfire.ml.config import DataConfig
from greekfire.quant import MarketInputs, OptionBatch, price

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]


@dataclass
class PricingData:
    """Train / validation / test tensors (keys ``contract``, ``target``; ``seq`` and ``baseline`` optional)."""

    train: Batch
    val: Batch
    test: Batch
    contract_names: list[str]
    seq_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> int:
        """Time steps per sample (0 when there is no sequence)."""
        seq = self.train.get("seq")
        return 0 if seq is None else int(seq.shape[1])


def _fingerprint(*arrays: Tensor | np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        arr = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def _bsm_price(right: Tensor, spot: Tensor, strike: Tensor, ttm: Tensor, rate: Tensor, q: Tensor, vol: Tensor) -> Tensor:
    """Black-Scholes price through the registry of pricing engines (engine ``bsm``)."""
    # small fused kernels are faster than compiling one on a CPU box; keep generation predictable
    market = MarketInputs(spot, rate, q, vol=vol)
    return price("bsm", OptionBatch(right, strike, ttm), market, compile=False)["value"]


def bs_liu_samples(n: int, seed: int) -> tuple[Tensor, Tensor, list[str]]:
    """Liu et al. (2019) Table 5 ranges: features [S/K, ttm years, r, vol], target call V/K (float64)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 4, generator=g, dtype=torch.float64)
    moneyness = 0.4 + 1.2 * u[:, 0]
    ttm = 0.2 + 0.9 * u[:, 1]
    rate = 0.02 + 0.08 * u[:, 2]
    vol = 0.01 + 0.99 * u[:, 3]
    one = torch.ones_like(moneyness)
    target = _bsm_price(one, moneyness, one, ttm, rate, torch.zeros_like(one), vol)
    return torch.stack([moneyness, ttm, rate, vol], dim=1), target, ["moneyness", "ttm", "rate", "vol"]


def bs_culkin_samples(n: int, seed: int) -> tuple[Tensor, Tensor, list[str]]:
    """Culkin & Das (2017) ranges: features [S/K, ttm, q, r, vol], target call C/K (float64)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 6, generator=g, dtype=torch.float64)
    spot = 10.0 + 490.0 * u[:, 0]
    strike = spot * (0.7 + 0.6 * u[:, 1])
    ttm = 1.0 / 365.0 + (3.0 - 1.0 / 365.0) * u[:, 2]
    q = 0.03 * u[:, 3]
    rate = 0.01 + 0.02 * u[:, 4]
    vol = 0.05 + 0.85 * u[:, 5]
    price = _bsm_price(torch.ones_like(spot), spot, strike, ttm, rate, q, vol)
    feats = torch.stack([spot / strike, ttm, q, rate, vol], dim=1)
    return feats, price / strike, ["moneyness", "ttm", "div_yield", "rate", "vol"]


def random_samples(n: int, window: int, n_seq: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """A smooth made-up target of a history window and 3 contract features (for tests): (seq, contract, y)."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(n, window, n_seq, generator=g)
    contract = torch.randn(n, 3, generator=g)
    trend = seq[:, -5:, 0].mean(dim=1)
    target = torch.sin(contract[:, 0]) + 0.5 * contract[:, 1] * trend + 0.1 * contract[:, 2] ** 2
    return seq, contract, target


def _random_split(n: int, val_frac: float, test_frac: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    n_test = int(round(n * test_frac))
    n_val = max(1, int(round(n * val_frac)))
    return perm[n_test + n_val :], perm[n_test : n_test + n_val], perm[:n_test]


def _take(tensors: Batch, idx: Tensor) -> Batch:
    return {k: v[idx] for k, v in tensors.items()}


def _from_samples(cfg: DataConfig, samples: Any, source: str) -> PricingData:
    """Turn greekfire.data Samples into split tensors with the data team's time split."""
    from greekfire.data.features import time_split

    parts = time_split(samples, cfg.val_frac, cfg.test_frac)
    train_s, val_s, test_s = (parts[k] for k in ("train", "val", "test")) if isinstance(parts, dict) else parts

    def to_batch(s: Any) -> Batch:
        b = {
            "seq": torch.as_tensor(np.asarray(s.seq, dtype=np.float32)),
            "contract": torch.as_tensor(np.asarray(s.contract, dtype=np.float32)),
            "target": torch.as_tensor(np.asarray(s.target, dtype=np.float32)),
        }
        if getattr(s, "bs_baseline", None) is not None:
            b["baseline"] = torch.as_tensor(np.asarray(s.bs_baseline, dtype=np.float32))
        return b

    train, val, test = to_batch(train_s), to_batch(val_s), to_batch(test_s)
    contract_names = list(samples.contract_names)
    if cfg.baseline_feature:
        # the baseline is known when pricing (historical vol only), so it is a fair input
        for b in (train, val, test):
            b["contract"] = torch.cat([b["contract"], torch.nan_to_num(b["baseline"]).unsqueeze(1)], dim=1)
        contract_names.append("bs_price_k")
    if len(train["target"]) == 0 or len(val["target"]) == 0:
        raise DataError("data.val_frac", cfg.val_frac, f"{source}: the time split left an empty train or val set")
    dates = {
        name: (str(np.min(s.quote_date)), str(np.max(s.quote_date))) if len(s.target) else ("", "")
        for name, s in (("train", train_s), ("val", val_s), ("test", test_s))
    }
    return PricingData(
        train,
        val,
        test,
        contract_names=contract_names,
        seq_names=list(samples.seq_names),
        fingerprint=_fingerprint(samples.seq, samples.contract, samples.target),
        info={"source": source, "dates": dates, "dropped": getattr(samples, "dropped", None)},
    )


def load_heston(cfg: DataConfig) -> PricingData:
    """Synthetic Heston market -> history-window samples, time split (train oldest, test newest)."""
    from greekfire.data.features import build_samples
    from greekfire.data.synthetic import generate_market

    quotes, underlying = generate_market(seed=cfg.seed, days=cfg.heston_days)
    return _from_samples(cfg, build_samples(quotes, underlying, window=cfg.window), "heston")


def default_spx_path() -> Path:
    """The SPXW 2018 quotes in the shared data folder beside the project checkout."""
    return Path(__file__).resolve().parents[4] / "shared" / "data" / "options" / "SPX_2018.csv"


def load_spx(cfg: DataConfig) -> PricingData:
    """Real SPXW 2018 quotes with S&P 500 history -> samples, split by quote date."""
    from greekfire.data.features import build_samples
    from greekfire.data.spx import load_sp500_history, load_spx_quotes

    path = Path(cfg.spx_path) if cfg.spx_path else default_spx_path()
    if not path.is_file():
        raise DataError("data.spx_path", str(path), "the SPXW quotes CSV does not exist")
    quotes = load_spx_quotes(path)
    underlying = load_sp500_history()
    return _from_samples(cfg, build_samples(quotes, underlying, window=cfg.window), "spx")


def load_pricing_data(cfg: DataConfig) -> PricingData:
    """Build the train/val/test tensors for ``cfg.source`` (see the module docstring)."""
    if cfg.source in ("bs_liu", "bs_culkin"):
        make = bs_liu_samples if cfg.source == "bs_liu" else bs_culkin_samples
        feats, target, names = make(cfg.n_samples, cfg.seed)
        tensors = {"contract": feats.float(), "target": target.float()}
        tr, va, te = _random_split(cfg.n_samples, cfg.val_frac, cfg.test_frac, cfg.seed)
        fp = _fingerprint(torch.tensor([cfg.n_samples, cfg.seed]), feats[:64], target[:64])
        return PricingData(_take(tensors, tr), _take(tensors, va), _take(tensors, te), names,
                           fingerprint=f"{cfg.source}-{fp}", info={"source": cfg.source})
    if cfg.source == "random":
        seq, contract, target = random_samples(cfg.n_samples, cfg.window, cfg.seq_features, cfg.seed)
        tensors = {"seq": seq, "contract": contract, "target": target}
        tr, va, te = _random_split(cfg.n_samples, cfg.val_frac, cfg.test_frac, cfg.seed)
        return PricingData(
            _take(tensors, tr), _take(tensors, va), _take(tensors, te), ["c0", "c1", "c2"],
            seq_names=[f"s{i}" for i in range(cfg.seq_features)],
            fingerprint=f"random-{_fingerprint(seq[:64], contract[:64], target[:64])}-{cfg.n_samples}",
            info={"source": "random"},
        )
    if cfg.source == "heston":
        return load_heston(cfg)
    if cfg.source == "spx":
        return load_spx(cfg)
    raise DataError("data.source", cfg.source, "unknown source")  # pragma: no cover - pydantic guards it


class TensorBatchDataset(Dataset[Batch]):
    """Rows of aligned tensors; ``__getitems__`` gathers a whole batch with one index per tensor."""

    def __init__(self, tensors: Batch) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise DataError("tensors", lengths, "all tensors need the same number of rows")
        self.tensors = tensors
        self.n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


def batch_collate(batch: Any) -> Any:
    """The dataset already returns a stacked batch (see ``__getitems__``)."""
    return batch


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled batches from ``(seed, epoch)``, split over ``num_replicas`` ranks, resumable mid-epoch.

    The permutation depends only on the seed and the epoch, so a resumed run sees exactly the batches the
    uninterrupted run would have. After :meth:`arm_resume`, the next iterator asks ``position()`` for
    (epoch, batches already consumed) and skips those batches.
    """

    def __init__(
        self, n: int, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = False,
        num_replicas: int = 1, rank: int = 0,
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        # Lightning calls set_epoch on ``batch_sampler.sampler``; point it at ourselves
        self.sampler = self
        self.position: Callable[[], tuple[int, int]] | None = None
        self._resume_armed = False

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at each epoch start."""
        self.epoch = epoch

    def arm_resume(self) -> None:
        """Skip the already-consumed batches on the next iterator (after loading a checkpoint)."""
        self._resume_armed = True

    def _rank_indices(self) -> Tensor:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.n)
        per_rank = self.n // self.num_replicas  # equal shares keep DDP ranks in step
        return order[self.rank * per_rank : (self.rank + 1) * per_rank] if self.num_replicas > 1 else order

    def __len__(self) -> int:
        per_rank = self.n // self.num_replicas
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self._resume_armed and self.position is not None:
            self.epoch, skip = self.position()
            self._resume_armed = False
        idx = self._rank_indices().tolist()
        for b in range(skip, len(self)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


class ResumableDataLoader(DataLoader[Batch]):
    """A DataLoader that Lightning treats as stateful, so a mid-epoch checkpoint resumes at its batch."""

    def state_dict(self) -> dict[str, Any]:
        sampler = self.batch_sampler
        return {"epoch": getattr(sampler, "epoch", 0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.batch_sampler
        if isinstance(sampler, ResumableBatchSampler):
            sampler.set_epoch(int(state.get("epoch", 0)))
            sampler.arm_resume()


def make_loader(
    tensors: Batch, batch_size: int, *, seed: int, shuffle: bool, num_workers: int = 0,
    num_replicas: int = 1, rank: int = 0, position: Callable[[], tuple[int, int]] | None = None,
) -> DataLoader[Batch]:
    """A loader over in-memory tensors; shuffled loaders are resumable (see :class:`ResumableBatchSampler`)."""
    ds = TensorBatchDataset(tensors)
    sampler = ResumableBatchSampler(
        len(ds), batch_size, seed=seed, shuffle=shuffle, num_replicas=num_replicas, rank=rank,
    )
    sampler.position = position
    # a private generator: DataLoader draws a base seed per iterator, and drawing it from the global RNG
    # would shift dropout masks between an interrupted and an uninterrupted run
    return ResumableDataLoader(
        ds, batch_sampler=sampler, collate_fn=batch_collate, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0,
    )
