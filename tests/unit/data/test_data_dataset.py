"""Map-style and streaming datasets; sample files round trip; sharding over workers and ranks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from greekfire.core.errors import DataError
from greekfire.data.dataset import (
    OptionsDataset,
    StreamingOptionsDataset,
    read_samples,
    write_samples,
    write_splits,
)
from greekfire.data.features import Samples


def fake_samples(n: int = 1000, window: int = 4, f_seq: int = 3, f_c: int = 5) -> Samples:
    rng = np.random.default_rng(0)
    return Samples(
        seq=rng.normal(size=(n, window, f_seq)).astype(np.float32),
        contract=rng.normal(size=(n, f_c)).astype(np.float32),
        target=np.arange(n, dtype=np.float32),  # the target doubles as a sample id
        bs_baseline=np.zeros(n, dtype=np.float32),
        quote_date=np.datetime64("2024-01-01") + np.arange(n) // 10,
        seq_names=[f"s{i}" for i in range(f_seq)],
        contract_names=[f"c{i}" for i in range(f_c)],
        dropped={"crossed": 3},
    )


def test_map_style_items() -> None:
    s = fake_samples(10)
    ds = OptionsDataset(s)
    item = ds[3]
    assert set(item) == {"seq", "contract", "target"}
    assert (
        item["seq"].shape == (4, 3) and item["contract"].shape == (5,) and item["seq"].dtype == torch.float32
    )
    assert float(item["target"]) == 3.0
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["seq"].shape == (4, 4, 3)


def test_write_read_round_trip(tmp_path: Path) -> None:
    s = fake_samples(100)
    paths = write_samples(s, str(tmp_path / "s"), row_group_size=16, rows_per_file=40)
    assert len(paths) == 3
    back = read_samples(str(tmp_path / "s"))
    np.testing.assert_array_equal(back.seq, s.seq)
    np.testing.assert_array_equal(back.contract, s.contract)
    np.testing.assert_array_equal(back.quote_date, s.quote_date)
    assert back.seq_names == s.seq_names and back.dropped == {"crossed": 3}


def ids(ds) -> list[int]:
    return [int(x["target"]) for x in ds]


def test_streaming_workers_each_sample_once(tmp_path: Path) -> None:
    s = fake_samples(1000)
    write_samples(s, str(tmp_path), row_group_size=50, rows_per_file=300)
    ds = StreamingOptionsDataset(str(tmp_path))
    assert len(ds) == 1000
    seen = []
    for batch in DataLoader(ds, batch_size=64, num_workers=2):
        seen.extend(batch["target"].int().tolist())
    assert sorted(seen) == list(range(1000))


def test_streaming_ranks_disjoint_and_partial_reads(tmp_path: Path) -> None:
    s = fake_samples(1000, window=20, f_seq=16)  # ~1.3 MB of incompressible floats
    write_samples(s, str(tmp_path), row_group_size=50)
    total_bytes = sum(p.stat().st_size for p in tmp_path.glob("*.parquet"))
    shards = [
        StreamingOptionsDataset(str(tmp_path), rank=r, world_size=4, shuffle=True, seed=5) for r in range(4)
    ]
    got = [ids(d) for d in shards]
    assert sorted(sum(got, [])) == list(range(1000))
    assert [len(g) for g in got] == [len(d) for d in shards] == [250] * 4
    # rank 0 read only its 5 of 20 row groups: far less than the file
    st = shards[0].stats
    assert st.row_groups_read == 5
    assert st.bytes_read < 0.5 * total_bytes


def test_shuffle_changes_with_epoch(tmp_path: Path) -> None:
    write_samples(fake_samples(200), str(tmp_path), row_group_size=20)
    ds = StreamingOptionsDataset(str(tmp_path), shuffle=True, seed=1)
    a = ids(ds)
    ds.set_epoch(1)
    b = ids(ds)
    assert sorted(a) == sorted(b) == list(range(200)) and a != b


def test_streaming_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no .parquet"):
        len(StreamingOptionsDataset(str(tmp_path)))


def test_streaming_ready_batches(tmp_path: Path) -> None:
    write_samples(fake_samples(230), str(tmp_path), row_group_size=100)
    ds = StreamingOptionsDataset(str(tmp_path), batch_size=40, shuffle=True, seed=2)
    batches = list(DataLoader(ds, batch_size=None, num_workers=0))
    assert sorted(b["target"].shape[0] for b in batches) == [20, 20, 30, 40, 40, 40, 40]  # groups 100, 100, 30
    assert all(b["seq"].shape[1:] == (4, 3) for b in batches)
    assert sorted(int(t) for b in batches for t in b["target"]) == list(range(230))


def batch_ids(loader) -> list[list[int]]:  # noqa: ANN001
    return [b["target"].int().tolist() for b in loader]


def test_stream_ranks_get_equal_batches_and_resume_skips(tmp_path: Path) -> None:
    # 230 rows in groups of 50: 5 groups (the last one 30 rows) cannot be dealt evenly over 2 ranks
    write_samples(fake_samples(230), str(tmp_path), row_group_size=50)
    ranks = [StreamingOptionsDataset(str(tmp_path), rank=r, world_size=2, batch_size=20, equal_shards=True)
             for r in range(2)]
    got = [batch_ids(DataLoader(d, batch_size=None)) for d in ranks]
    assert len(got[0]) == len(got[1]) == ranks[0].num_batches() == ranks[1].num_batches() == 6
    assert not set(sum(got[0], [])) & set(sum(got[1], []))
    uneven = StreamingOptionsDataset(str(tmp_path), rank=0, world_size=2, batch_size=20)
    assert uneven.num_batches() == 8  # its groups of 50, 50 and 30 rows: 3 + 3 + 2 batches without the cap
    ranks[0].skip_batches(4)
    assert batch_ids(DataLoader(ranks[0], batch_size=None)) == got[0][4:]
    assert batch_ids(DataLoader(ranks[0], batch_size=None)) == got[0]  # the skip is for one pass only
    with pytest.raises(DataError, match="equal_shards"):
        StreamingOptionsDataset(str(tmp_path), equal_shards=True)


def test_write_splits_lays_out_train_val_test(tmp_path: Path) -> None:
    s = fake_samples(90)
    out = write_splits({"train": s.take(np.arange(60)), "val": s.take(np.arange(60, 90))}, str(tmp_path / "p"))
    assert sorted(out) == ["train", "val"]
    assert len(read_samples(str(tmp_path / "p" / "train"))) == 60
    assert len(read_samples(str(tmp_path / "p" / "val"))) == 30
    with pytest.raises(DataError, match="splits"):
        write_splits({"train": s}, str(tmp_path / "q"))


def test_footprint_follows_the_files_not_the_reader(tmp_path: Path) -> None:
    s = fake_samples(200)
    write_samples(s, str(tmp_path / "a"), row_group_size=50)
    a = StreamingOptionsDataset(str(tmp_path / "a"))
    before = a.footprint()
    assert before == StreamingOptionsDataset(str(tmp_path / "a"), shuffle=True, batch_size=8, rank=1,
                                             world_size=2).footprint()
    changed = s.take(np.arange(200))
    changed.contract[7, 1] += 1.0
    time.sleep(0.01)  # a new modification time even on coarse clocks
    write_samples(changed, str(tmp_path / "a"), row_group_size=50)
    assert StreamingOptionsDataset(str(tmp_path / "a")).footprint() != before
