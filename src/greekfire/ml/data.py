"""Data glue for pricing models: sample sources and splits into train / validation / test tensors.

Sources (``data.source`` in the experiment config):

- ``bs_liu``: Black-Scholes calls on the ranges of Liu, Oosterlee & Bohte (2019): S/K in [0.4, 1.6],
  ttm in [0.2, 1.1] years, r in [0.02, 0.1], vol in [0.01, 1.0]; target V/K.
- ``bs_culkin``: Culkin & Das (2017): S in [10, 500], K/S in [0.7, 1.3] (K in [7, 650]), ttm in
  [1 day, 3 years], q in [0, 0.03], r in [0.01, 0.03], vol in [0.05, 0.9]; target C/K.
- ``heston``: the synthetic Heston market of :mod:`greekfire.data.synthetic` through
  :func:`greekfire.data.features.build_samples` (history window + contract features; target mid/strike).
- ``spx``: real SPXW quotes through the same feature builder, split by quote date.
- ``quotes``: option quotes in the quote schema of :mod:`greekfire.data.schema` under ``data.url``: a
  market written by ``greekfire data generate`` (``quotes/`` and ``underlying/``), or any Parquet file or
  folder (local or an fsspec URL such as ``s3://bucket/prefix``) of quotes; without ``underlying/`` bars
  the underlying's daily close is the quotes' median spot of each date. Same features and time split.
- ``samples``: prepared sample files (:func:`greekfire.data.dataset.write_splits`) under ``data.url``, a
  local folder or any fsspec URL (``s3://bucket/prefix``): ``train/``, ``val/`` and optionally ``test/``.
  With ``data.streaming`` the training split is streamed one row group at a time
  (:func:`greekfire.data.loaders.make_stream_loader`) instead of being read into memory.
- ``random``: a smooth made-up function of sequence and contract features (tests; no dependencies).

The batches themselves come from :mod:`greekfire.data.loaders` (in-memory :func:`make_loader` or the
stream): this module makes no loader of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from greekfire.core.errors import DataError, InputFileError
from greekfire.data.dataset import Batch, StreamingOptionsDataset, read_samples
from greekfire.data.features import Samples, build_samples, time_split
from greekfire.data.schema import ATTRS_KEY, QUOTE_COLUMNS, conform_quotes, read_bars
from greekfire.data.spx import load_sp500_history, load_spx_quotes
from greekfire.data.storage import arrow_filesystem, open_fs
from greekfire.data.synthetic import generate_market
from greekfire.ml.config import DataConfig
from greekfire.quant import MarketInputs, OptionBatch, price

log = logging.getLogger(__name__)


@dataclass
class PricingData:
    """Train / validation / test tensors (keys ``contract``, ``target``; ``seq`` and ``baseline`` optional).

    A streamed training split (``train_url`` set) is not in memory: ``train`` then holds its first row
    group only (for shapes and batch-size probing), ``train_rows`` counts all of it, and ``storage`` is
    what reads it.
    """

    train: Batch
    val: Batch
    test: Batch
    contract_names: list[str]
    seq_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    train_url: str | None = None
    train_rows: int = 0
    storage: Any = None

    def __post_init__(self) -> None:
        if self.train_url is None:
            self.train_rows = len(self.train.get("target", ()))

    @property
    def window(self) -> int:
        """Time steps per sample (0 when there is no sequence)."""
        seq = self.train.get("seq")
        return 0 if seq is None else int(seq.shape[1])

    @property
    def streamed(self) -> bool:
        """True when the training split is read from storage batch by batch."""
        return self.train_url is not None

    def train_stream(self, batch_size: int, *, seed: int = 0, shuffle: bool = True) -> StreamingOptionsDataset:
        """The streamed training split in batches of ``batch_size`` rows (one pass per iteration)."""
        if self.train_url is None:
            raise DataError("data.streaming", False, "this training split is in memory, not streamed")
        # rank 0 of 1: every DDP rank sees the whole split here (the same normaliser on all of them)
        return StreamingOptionsDataset(self.train_url, self.storage, shuffle=shuffle, seed=seed, rank=0, world_size=1,
                                       batch_size=batch_size)


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


def _to_batch(s: Samples) -> Batch:
    return {
        "seq": torch.as_tensor(np.asarray(s.seq, dtype=np.float32)),
        "contract": torch.as_tensor(np.asarray(s.contract, dtype=np.float32)),
        "target": torch.as_tensor(np.asarray(s.target, dtype=np.float32)),
        "baseline": torch.as_tensor(np.asarray(s.bs_baseline, dtype=np.float32)),
    }


def _with_baseline_feature(b: Batch) -> Batch:
    # the baseline is known when pricing (historical vol only), so it is a fair input
    return {**b, "contract": torch.cat([b["contract"], torch.nan_to_num(b["baseline"]).unsqueeze(1)], dim=1)}


def _from_samples(cfg: DataConfig, samples: Samples, source: str) -> PricingData:
    """Turn greekfire.data Samples into split tensors with the data layer's time split."""
    train_s, val_s, test_s = time_split(samples, cfg.val_frac, cfg.test_frac)
    train, val, test = _to_batch(train_s), _to_batch(val_s), _to_batch(test_s)
    contract_names = list(samples.contract_names)
    if cfg.baseline_feature:
        train, val, test = (_with_baseline_feature(b) for b in (train, val, test))
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
    quotes, underlying = generate_market(seed=cfg.seed, days=cfg.heston_days)
    return _from_samples(cfg, build_samples(quotes, underlying, window=cfg.window), "heston")


def default_spx_path() -> Path:
    """The SPXW 2018 quotes in the shared data folder beside the project checkout."""
    return Path(__file__).resolve().parents[4] / "shared" / "data" / "options" / "SPX_2018.csv"


def load_spx(cfg: DataConfig) -> PricingData:
    """Real SPXW 2018 quotes with S&P 500 history -> samples, split by quote date."""
    path = Path(cfg.spx_path) if cfg.spx_path else default_spx_path()
    if not path.is_file():
        raise DataError("data.spx_path", str(path), "the SPXW quotes CSV does not exist")
    quotes = load_spx_quotes(path)
    underlying = load_sp500_history()
    return _from_samples(cfg, build_samples(quotes, underlying, window=cfg.window), "spx")


def data_source_for(url: str, storage: Any = None) -> str:
    """The ``data.source`` that reads ``url`` (``--data``): ``samples`` for a folder of prepared samples
    (``train/`` and ``val/``), else ``quotes``. Raises InputFileError when nothing is there."""
    fs, root = open_fs(url, storage)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise InputFileError("--data", url, "no such file or folder")
    if fs.isdir(f"{root}/train") and fs.isdir(f"{root}/val"):
        return "samples"
    return "quotes"


def read_quote_parquet(url: str, storage: Any = None) -> pd.DataFrame:
    """Option quotes from a Parquet file or folder at ``url`` (any fsspec URL; Hive folders such as
    ``quote_date=2024-01-02/`` are read as columns), conformed to the quote schema, with the writer's
    ``attrs`` (a generated market's rate and dividend yield). A file without the schema's required
    columns raises InputFileError naming ``url`` and the missing columns."""
    # lazy: pyarrow.dataset costs about half a second to import
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    fs, root = open_fs(url, storage)
    try:
        dataset = ds.dataset(root, filesystem=arrow_filesystem(fs), format="parquet",
                             partitioning="hive")
        names = dataset.schema.names
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputFileError("--data", url, f"cannot read it as Parquet: {' '.join(str(exc).split())[:200]}") from None
    try:
        conform_quotes(pd.DataFrame(columns=names))
    except DataError as exc:  # conform_quotes names the required columns that are missing
        raise InputFileError("--data", url, f"the Parquet lacks the quote columns {exc.value} "
                             "(the quote schema of greekfire.data.schema; columns found: "
                             f"{names[:12]})") from None
    table = dataset.to_table(columns=[c for c in QUOTE_COLUMNS if c in names])
    quotes = conform_quotes(table.to_pandas())
    if dataset.files:  # the writer's attrs (a generated market's rate, div_yield), from the first footer
        with fs.open(dataset.files[0], "rb") as fh:
            raw = (pq.read_schema(fh).metadata or {}).get(ATTRS_KEY)
        if raw:
            quotes.attrs.update(json.loads(raw))
    return quotes


def load_quotes(cfg: DataConfig, storage: Any = None) -> PricingData:
    """The ``quotes`` source: quotes under ``cfg.url`` (see the module docstring) -> samples, time split."""
    url = (cfg.url or "").rstrip("/")
    fs, root = open_fs(url, storage)
    market = fs.isdir(f"{root.rstrip('/')}/quotes")  # the layout `greekfire data generate` writes
    quotes = read_quote_parquet(f"{url}/quotes" if market else url, storage)
    names = sorted(map(str, quotes["underlying"].dropna().unique()))
    if len(names) > 1:
        raise InputFileError("--data", url, f"quotes of several underlyings {names[:5]}: train on one "
                             "(write a file per underlying)")
    if market and fs.isdir(f"{root.rstrip('/')}/underlying"):
        bars = read_bars(f"{url}/underlying", storage)
    else:  # no bars beside the quotes: the underlying's level each quote date, from the quotes themselves
        spot = quotes.dropna(subset=["quote_date", "spot"]).groupby("quote_date")["spot"].median()
        bars = pd.DataFrame({"date": spot.index, "close": spot.to_numpy()})
    samples = build_samples(quotes, bars, window=cfg.window)
    if len(samples) == 0:
        dropped = {k: v for k, v in samples.dropped.items() if v}
        raise InputFileError("--data", url, f"no usable samples from {len(quotes)} quote rows (dropped: {dropped}); "
                             f"a sample needs {cfg.window}+ days of underlying history for the window and about "
                             "60 for the indicators: give more quote dates or daily bars in underlying/")
    return _from_samples(cfg, samples, "quotes")


def load_prepared(cfg: DataConfig, storage: Any = None) -> PricingData:
    """The ``samples`` source: ``train/``, ``val/`` and optional ``test/`` sample files under ``cfg.url``,
    read with ``storage`` (:class:`~greekfire.core.settings.StorageSettings`; local paths need none)."""
    url = (cfg.url or "").rstrip("/")
    if not url:
        raise DataError("data.url", cfg.url, "the samples source needs a folder or URL of prepared samples")
    splits = {name: f"{url}/{name}" for name in ("train", "val", "test")}
    val_s = read_samples(splits["val"], storage)
    try:
        test_s = read_samples(splits["test"], storage)
    except DataError:  # no test split: score on none rather than on data the run has seen
        test_s = val_s.take(np.zeros(0, dtype=np.int64))
    stream = StreamingOptionsDataset(splits["train"], storage, rank=0, world_size=1, batch_size=cfg.batch_size)
    units = stream.units()
    meta = stream.meta
    if meta["contract_names"] != val_s.contract_names or meta["seq_names"] != val_s.seq_names:
        raise DataError("data.url", url, "the train and val sample files hold different features")
    # the training files by their storage checksums (the same whether they are then streamed or read), the small
    # splits by their values
    fingerprint = f"{stream.footprint()[:8]}-{_fingerprint(val_s.target, test_s.target)}"
    contract_names = list(val_s.contract_names)
    val, test = _to_batch(val_s), _to_batch(test_s)
    if cfg.baseline_feature:
        raise DataError("data.baseline_feature", True, "prepared samples carry their features as written; "
                        "write bs_price_k into them instead")
    info = {"source": "samples", "url": url, "streaming": cfg.streaming}
    common = dict(contract_names=contract_names, seq_names=list(val_s.seq_names),
                  fingerprint=f"samples-{fingerprint}", info=info, storage=storage)
    if cfg.streaming:
        batches = iter(stream)
        head = next(batches)  # the first batch of the first row group: shapes and batch-size probing
        getattr(batches, "close", lambda: None)()  # the rest is read batch by batch while training
        return PricingData(dict(head), val, test, train_url=splits["train"],
                           train_rows=sum(n for _, _, n in units), **common)  # type: ignore[arg-type]
    return PricingData(_to_batch(read_samples(splits["train"], storage)), val, test, **common)  # type: ignore[arg-type]


def load_pricing_data(cfg: DataConfig, storage: Any = None) -> PricingData:
    """Build the train/val/test tensors for ``cfg.source`` (see the module docstring); ``storage``
    (:class:`~greekfire.core.settings.StorageSettings`) reads remote sample files."""
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
    if cfg.source == "quotes":
        return load_quotes(cfg, storage)
    if cfg.source == "samples":
        return load_prepared(cfg, storage)
    raise DataError("data.source", cfg.source, "unknown source")  # pragma: no cover - pydantic guards it
