"""Torch datasets over :class:`~greekfire.data.features.Samples`: in memory, or streamed from Parquet.

Each item is ``{"seq": float32[window, F_seq], "contract": float32[F_c], "target": float32[]}``.
:class:`OptionsDataset` holds samples (or any aligned tensors) in memory; with ``batched=True`` a whole
batch is gathered with one index per tensor. The training loaders over both kinds are in
:mod:`greekfire.data.loaders`.

:func:`write_samples` stores prepared samples as Parquet (``seq`` flattened into a fixed-size list
column, shapes and feature names in the file's metadata). :class:`StreamingOptionsDataset` reads such
files from any fsspec URL one row group at a time with ranged reads, so a worker never downloads a whole
file; the row groups are dealt round-robin over (DDP rank, DataLoader worker), so every sample is seen
exactly once per epoch across all of them.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from greekfire.core.errors import DataError
from greekfire.core.metrics import counter
from greekfire.data.features import Samples
from greekfire.data.storage import StorageLike, is_object_store, open_fs

META_KEY = b"greekfire.samples"
ROW_GROUPS_READ = counter("greekfire_data_stream_row_groups", "Parquet row groups read by streaming datasets")
BYTES_READ = counter("greekfire_data_stream_bytes", "bytes read from storage by streaming datasets")


Batch = dict[str, Tensor]


class OptionsDataset(Dataset[Batch]):
    """Map-style dataset over in-memory :class:`Samples` (tensors share the numpy memory), or over any
    mapping of aligned tensors (``contract``, ``target``, optional ``seq``, ``baseline``...).

    ``batched=True``: ``__getitems__`` gathers a whole batch with one fancy index per tensor and returns
    it stacked (pair it with :func:`greekfire.data.loaders.batch_collate`, as
    :func:`~greekfire.data.loaders.make_loader` does), so a 500k-row epoch costs
    milliseconds of indexing rather than seconds of Python. Otherwise items are single rows, for the
    default ``DataLoader`` collation.
    """

    def __init__(self, samples: Samples | Mapping[str, Tensor], *, batched: bool = False) -> None:
        if isinstance(samples, Samples):
            self.samples: Samples | None = samples
            tensors = {
                "seq": torch.from_numpy(np.ascontiguousarray(samples.seq, dtype=np.float32)),
                "contract": torch.from_numpy(np.ascontiguousarray(samples.contract, dtype=np.float32)),
                "target": torch.from_numpy(np.ascontiguousarray(samples.target, dtype=np.float32)),
            }
        else:
            self.samples = None
            tensors = dict(samples)
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise DataError("tensors", lengths, "all tensors need the same number of rows")
        self.tensors = tensors
        self.n = next(iter(lengths.values()))
        self.batched = batched

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> Any:
        if not self.batched:
            return [self[i] for i in indices]
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


def samples_to_table(samples: Samples) -> pa.Table:
    """Samples as an Arrow table (``seq`` flattened per row); shapes and names go in the metadata."""
    n, window, f_seq = samples.seq.shape
    f_c = samples.contract.shape[1]
    seq = pa.FixedSizeListArray.from_arrays(pa.array(samples.seq.reshape(-1), pa.float32()), window * f_seq)
    contract = pa.FixedSizeListArray.from_arrays(pa.array(samples.contract.reshape(-1), pa.float32()), f_c)
    meta = {
        "window": window,
        "seq_names": list(samples.seq_names),
        "contract_names": list(samples.contract_names),
        "dropped": dict(samples.dropped),
    }
    return pa.table(
        {
            "seq": seq,
            "contract": contract,
            "target": pa.array(samples.target.astype(np.float32)),
            "bs_baseline": pa.array(samples.bs_baseline.astype(np.float32)),
            "quote_date": pa.array(samples.quote_date.astype("datetime64[D]"), pa.date32()),
        }
    ).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


def table_to_samples(table: pa.Table) -> Samples:
    """Inverse of :func:`samples_to_table`."""
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    if "window" not in meta:
        raise DataError(
            "parquet.metadata", list((table.schema.metadata or {}).keys()), "not a greekfire samples file"
        )
    window, seq_names, contract_names = meta["window"], meta["seq_names"], meta["contract_names"]
    n = table.num_rows
    seq = table.column("seq").combine_chunks().flatten().to_numpy().reshape(n, window, len(seq_names))
    contract = table.column("contract").combine_chunks().flatten().to_numpy().reshape(n, len(contract_names))
    return Samples(
        seq=seq.astype(np.float32),
        contract=contract.astype(np.float32),
        target=table.column("target").to_numpy().astype(np.float32),
        bs_baseline=table.column("bs_baseline").to_numpy().astype(np.float32),
        quote_date=table.column("quote_date").to_numpy().astype("datetime64[D]"),
        seq_names=list(seq_names),
        contract_names=list(contract_names),
        dropped={k: int(v) for k, v in meta.get("dropped", {}).items()},
    )


def write_samples(
    samples: Samples,
    url: str,
    settings: StorageLike = None,
    *,
    row_group_size: int = 4096,
    rows_per_file: int | None = None,
) -> list[str]:
    """Write samples as Parquet file(s) under the folder ``url`` (any fsspec URL); returns the paths.

    ``row_group_size`` (rows) is the unit a streaming reader fetches and shards; ``rows_per_file`` splits
    into ``part-00000.parquet``, ``part-00001.parquet``... (default: one file).
    """
    if row_group_size < 1:
        raise DataError("row_group_size", row_group_size, "must be >= 1 row")
    fs, root = open_fs(url, settings)
    fs.makedirs(root, exist_ok=True)
    n = len(samples)
    per = rows_per_file or max(n, 1)
    paths = []
    for k, start in enumerate(range(0, max(n, 1), per)):
        part = samples.take(np.arange(start, min(start + per, n)))
        buf = io.BytesIO()
        pq.write_table(samples_to_table(part), buf, row_group_size=row_group_size, compression="zstd")
        path = f"{root.rstrip('/')}/part-{k:05d}.parquet"
        with fs.open(path, "wb") as fh:
            fh.write(buf.getvalue())
        paths.append(path)
    return paths


def write_splits(
    splits: Mapping[str, Samples], url: str, settings: StorageLike = None, *, row_group_size: int = 4096,
    rows_per_file: int | None = None,
) -> dict[str, list[str]]:
    """Write prepared splits (``train``, ``val`` and optionally ``test``) under ``url/<split>/`` with
    :func:`write_samples`: the layout the pricing trainer's ``samples`` source reads (and streams)."""
    missing = [name for name in ("train", "val") if name not in splits]
    unknown = [name for name in splits if name not in ("train", "val", "test")]
    if missing or unknown:
        raise DataError("splits", sorted(splits), "expected train, val and optionally test")
    root = url.rstrip("/")
    return {
        name: write_samples(part, f"{root}/{name}", settings, row_group_size=row_group_size,
                            rows_per_file=rows_per_file)
        for name, part in splits.items()
    }


def read_samples(url: str, settings: StorageLike = None) -> Samples:
    """Read every samples file under ``url`` into memory (files in name order)."""
    fs, root = open_fs(url, settings)
    files = _sample_files(fs, root)
    if not files:
        raise DataError("url", url, "no .parquet sample files found")
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            tables.append(pq.read_table(fh))
    meta = tables[0].schema.metadata
    return table_to_samples(pa.concat_tables(tables).replace_schema_metadata(meta))


def _sample_files(fs: Any, root: str) -> list[str]:
    if fs.isfile(root):
        return [root]
    return sorted(p for p in fs.find(root) if p.endswith(".parquet"))


class _CountingFile(io.RawIOBase):
    """Read-only file wrapper that counts the bytes pyarrow asks for (ranged reads on object stores)."""

    def __init__(self, fh: Any, stats: StreamStats) -> None:
        self._fh = fh
        self._stats = stats

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._fh.seek(offset, whence))

    def tell(self) -> int:
        return int(self._fh.tell())

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._stats.bytes_read += len(data)
        BYTES_READ.inc(len(data))
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


@dataclass
class StreamStats:
    """What one iterator read (in the process that iterated): bytes, row groups, files opened, samples."""

    bytes_read: int = 0
    row_groups_read: int = 0
    files_opened: int = 0
    samples: int = 0


class StreamingOptionsDataset(IterableDataset):
    """Iterable dataset over Parquet sample files (from :func:`write_samples`) on any fsspec URL.

    Row groups are the unit of work: all (file, row group) pairs are listed from the footers; rank ``r``
    takes every ``world_size``-th pair starting at ``r``, and its DataLoader worker ``w`` every
    ``num_workers``-th of those starting at ``w``. ``rank``/``world_size`` default to torch.distributed's when it is initialised, else 0/1;
    pass them to simulate ranks. ``shuffle`` permutes row-group order and rows within a group, seeded by
    ``seed + epoch`` (call :meth:`set_epoch`), identically on every rank, so shards stay disjoint.
    Ranks may get a different number of samples when row groups do not divide evenly.

    ``batch_size`` makes it yield ready batches (``seq`` [B, window, F_seq]...; use
    ``DataLoader(ds, batch_size=None)``, or :func:`greekfire.data.loaders.make_stream_loader`): much
    faster than one dict per sample. Batches never span two row groups, so the last one of each group may
    be smaller.

    For training (batch mode only): ``equal_shards`` makes every rank yield the same number of batches
    per pass (per DataLoader worker, the fewest any rank has; the surplus of a pass is dropped), so DDP
    ranks stay in step; :meth:`skip_batches` makes the next pass skip the batches a resumed run already
    consumed.
    """

    def __init__(
        self,
        url: str,
        settings: StorageLike = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        block_size: int = 1 << 20,
        batch_size: int | None = None,
        equal_shards: bool = False,
    ) -> None:
        super().__init__()
        self.url = url
        self.settings = settings
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self._rank = rank
        self._world = world_size
        self.block_size = int(block_size)
        if batch_size is not None and batch_size < 1:
            raise DataError("batch_size", batch_size, "must be >= 1 (or None for single samples)")
        self.batch_size = batch_size
        if equal_shards and batch_size is None:
            raise DataError("equal_shards", True, "needs batch_size (equal shards count batches)")
        self.equal_shards = equal_shards
        self._skip = 0
        self.stats = StreamStats()
        self._units: list[tuple[str, int, int]] | None = None  # (path, row group, rows)
        self._meta: dict[str, Any] | None = None
        self._footers: dict[str, Any] = {}

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle order for the next pass (same on every rank)."""
        self.epoch = int(epoch)

    def _dist(self) -> tuple[int, int]:
        if self._rank is not None or self._world is not None:
            rank, world = int(self._rank or 0), int(self._world or 1)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world = 0, 1
        if not 0 <= rank < world:
            raise DataError("rank", rank, f"must be in [0, world_size={world})")
        return rank, world

    def _open(self, fs: Any, path: str, metadata: Any = None) -> pq.ParquetFile:
        # no read-ahead cache: each read is one ranged GET of exactly what pyarrow asks for
        fh = (
            fs.open(path, "rb", block_size=self.block_size, cache_type="none")
            if is_object_store(fs)
            else (fs.open(path, "rb"))
        )
        self.stats.files_opened += 1
        # a footer read once (in units()) is passed back in, so workers do not fetch it again
        return pq.ParquetFile(_CountingFile(fh, self.stats), metadata=metadata)

    def units(self) -> list[tuple[str, int, int]]:
        """All (file, row group, rows) pairs, in file order (reads the footers once)."""
        if self._units is None:
            fs, root = open_fs(self.url, self.settings, fresh=True)
            files = _sample_files(fs, root)
            if not files:
                raise DataError("url", self.url, "no .parquet sample files found")
            units: list[tuple[str, int, int]] = []
            for f in files:
                pf = self._open(fs, f)
                if self._meta is None:
                    self._meta = json.loads((pf.schema_arrow.metadata or {}).get(META_KEY, b"{}"))
                md = pf.metadata
                self._footers[f] = md
                units.extend((f, i, md.row_group(i).num_rows) for i in range(md.num_row_groups))
                pf.close()
            self._units = units
        return self._units

    def footprint(self) -> str:
        """16 hex digits of SHA-256 over the files' names, their storage checksums (fsspec's
        ``checksum``: the ETag on S3, size and modification time on a local disk) and their row groups:
        it changes when a file is rewritten, and reading it downloads no data."""
        units = self.units()
        fs, _ = open_fs(self.url, self.settings, fresh=True)
        h = hashlib.sha256()
        for path in sorted(self._footers):
            h.update(path.rsplit("/", 1)[-1].encode())
            h.update(str(fs.checksum(path)).encode())
        h.update(repr([(path.rsplit("/", 1)[-1], group, rows) for path, group, rows in units]).encode())
        return h.hexdigest()[:16]

    @property
    def meta(self) -> dict[str, Any]:
        """window, seq_names, contract_names, dropped (from the first file's metadata)."""
        self.units()
        return dict(self._meta or {})

    def _rank_units(self, rank: int | None = None) -> list[tuple[str, int, int]]:
        """The row groups of ``rank`` (default: this one): every world_size-th of the (shuffled) order."""
        me, world = self._dist()
        units = self.units()
        order = np.arange(len(units))
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(len(units))
        return [units[j] for j in order[(me if rank is None else rank) :: world]]

    def _batches(self, units: list[tuple[str, int, int]]) -> int:
        bs = self.batch_size or 1
        return sum(-(-rows // bs) for _, _, rows in units)

    def _worker_cap(self, worker: int, workers: int) -> int | None:
        """Most batches worker ``worker`` of this rank may yield this pass (None: no cap)."""
        if not self.equal_shards:
            return None
        _, world = self._dist()
        return min(self._batches(self._rank_units(r)[worker::workers]) for r in range(world))

    def num_batches(self, workers: int = 1) -> int:
        """Batches this rank yields in one pass over ``workers`` DataLoader workers (batch mode)."""
        if self.batch_size is None:
            raise DataError("batch_size", None, "num_batches counts batches: set batch_size")
        total = 0
        for w in range(max(1, workers)):
            n = self._batches(self._rank_units()[w::max(1, workers)])
            cap = self._worker_cap(w, max(1, workers))
            total += n if cap is None else min(n, cap)
        return total

    def skip_batches(self, n: int) -> None:
        """Skip the first ``n`` batches of the next pass (a resumed run's already-consumed batches).

        DataLoader workers hand out batches in turn, so worker ``w`` of ``k`` skips ``n // k`` batches plus
        one when ``w < n % k``: exact while every worker still has batches left.
        """
        if n < 0:
            raise DataError("skip_batches", n, "must be >= 0")
        self._skip = int(n)

    def __len__(self) -> int:
        """Samples in this rank's shard (all DataLoader workers of the rank together)."""
        return sum(rows for _, _, rows in self._rank_units())

    def _my_units(self) -> list[tuple[str, int, int]]:
        wid, nw = self._worker()
        return self._rank_units()[wid::nw]

    @staticmethod
    def _worker() -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        wid, nw = self._worker()
        cap = self._worker_cap(wid, nw)
        skip = self._skip // nw + (1 if wid < self._skip % nw else 0)
        self._skip = 0  # once: the pass after this one starts at its beginning
        items = self._iter_units(self._my_units())
        if cap is None and not skip:
            return items
        return self._limited(items, cap, skip)

    @staticmethod
    def _limited(items: Generator[Batch, None, None], cap: int | None, skip: int) -> Iterator[Batch]:
        try:
            for produced, batch in enumerate(items):
                if cap is not None and produced >= cap:
                    return
                if produced >= skip:
                    yield batch
        finally:
            items.close()  # a capped pass stops early: close the files now, not at garbage collection

    def _iter_units(self, mine: list[tuple[str, int, int]]) -> Generator[Batch, None, None]:
        meta = self.meta
        window, f_seq, f_c = meta["window"], len(meta["seq_names"]), len(meta["contract_names"])
        fs, _ = open_fs(self.url, self.settings, fresh=True)
        rng = np.random.default_rng(self.seed + self.epoch + 7919)
        open_files: dict[str, pq.ParquetFile] = {}
        try:
            for path, rg, _rows in mine:
                pf = open_files.get(path)
                if pf is None:
                    pf = open_files[path] = self._open(fs, path, self._footers.get(path))
                table = pf.read_row_group(rg, columns=["seq", "contract", "target"])
                self.stats.row_groups_read += 1
                ROW_GROUPS_READ.inc()
                n = table.num_rows
                seq = torch.from_numpy(
                    table.column("seq").combine_chunks().flatten().to_numpy().reshape(n, window, f_seq).copy()
                )
                contract = torch.from_numpy(
                    table.column("contract").combine_chunks().flatten().to_numpy().reshape(n, f_c).copy()
                )
                target = torch.from_numpy(table.column("target").to_numpy().copy())
                if self.batch_size:  # whole tensors per slice: no per-sample Python work
                    order = torch.from_numpy(rng.permutation(n)) if self.shuffle else None
                    for a in range(0, n, self.batch_size):
                        idx = (
                            order[a : a + self.batch_size]
                            if order is not None
                            else slice(a, a + self.batch_size)
                        )
                        batch = {"seq": seq[idx], "contract": contract[idx], "target": target[idx]}
                        self.stats.samples += int(batch["target"].shape[0])
                        yield batch
                    continue
                rows = rng.permutation(n) if self.shuffle else range(n)
                for i in rows:
                    self.stats.samples += 1
                    yield {"seq": seq[i], "contract": contract[i], "target": target[i]}
        finally:
            for pf in open_files.values():
                pf.close()
