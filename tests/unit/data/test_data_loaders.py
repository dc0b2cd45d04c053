"""Training loaders: in-memory batches gathered whole and resumable; streamed batches that follow the
trainer's epoch and position."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_data_dataset import batch_ids, fake_samples

from greekfire.core.errors import DataError
from greekfire.data.dataset import OptionsDataset, write_samples
from greekfire.data.loaders import make_loader, make_stream_loader


def test_in_memory_batches_are_gathered_whole_and_resumable() -> None:
    s = fake_samples(100)
    ds = OptionsDataset(s, batched=True)
    batch = ds.__getitems__([3, 7, 9])
    assert batch["seq"].shape == (3, 4, 3) and batch["target"].tolist() == [3.0, 7.0, 9.0]
    loader = make_loader(s, 16, seed=4, shuffle=True)
    epoch0 = batch_ids(loader)
    assert len(loader) == len(epoch0) == 7 and sorted(sum(epoch0, [])) == list(range(100))
    loader.batch_sampler.set_epoch(1)
    epoch1 = batch_ids(loader)
    assert epoch1 != epoch0 and sorted(sum(epoch1, [])) == list(range(100))
    # a mid-epoch checkpoint: the restored loader continues at its batch
    again = make_loader(s, 16, seed=4, shuffle=True, position=lambda: (1, 3))
    again.load_state_dict(loader.state_dict())
    assert batch_ids(again) == epoch1[3:]
    with pytest.raises(DataError, match="same number of rows"):
        OptionsDataset({"contract": torch.zeros(3, 2), "target": torch.zeros(4)})


def test_stream_loader_follows_the_trainers_epoch_and_position(tmp_path: Path) -> None:
    write_samples(fake_samples(200), str(tmp_path), row_group_size=40)
    where = {"epoch": 0, "consumed": 0}
    loader = make_stream_loader(str(tmp_path), None, 16, seed=3,
                                position=lambda: (where["epoch"], where["consumed"]))
    epoch0 = batch_ids(loader)
    assert len(loader) == len(epoch0) == 15 and sorted(sum(epoch0, [])) == list(range(200))
    where["epoch"] = 1
    epoch1 = batch_ids(loader)
    assert epoch1 != epoch0 and sorted(sum(epoch1, [])) == list(range(200))
    where["consumed"] = 5
    assert batch_ids(loader) == epoch1  # no skipping unless a checkpoint was restored
    loader.load_state_dict(loader.state_dict())
    assert batch_ids(loader) == epoch1[5:]


def test_stream_loader_with_workers_sees_every_row_once(tmp_path: Path) -> None:
    write_samples(fake_samples(300), str(tmp_path), row_group_size=40)
    loader = make_stream_loader(str(tmp_path), None, 16, seed=5, num_workers=2)
    got = batch_ids(loader)
    assert len(got) == len(loader) and sorted(sum(got, [])) == list(range(300))
