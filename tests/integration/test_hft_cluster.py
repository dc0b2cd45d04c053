"""Acceptance 3 of the HFT engine: a book/feature worker killed (SIGKILL) in the middle of the stream; its
instruments move to the other workers, the loss is reported, the events it had not acknowledged are
replayed to the new owners, and the run ends with the books, feature state and orders of an uninterrupted
run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from conftest import poll_until
from greekfire.hft.cluster import ClusterControl, partition, reassign
from greekfire.hft.config import load_hft
from greekfire.hft.pipeline import Pipeline, reference_run
from greekfire.market import synth

pytestmark = pytest.mark.integration


def test_reassign_spreads_a_dead_workers_instruments_over_the_living() -> None:
    owner = partition(12, 3)
    assert owner.tolist() == [0, 1, 2] * 4
    moved = reassign(owner, 1, [0, 2])
    assert moved == {0: 2, 2: 2}
    assert 1 not in owner.tolist() and np.count_nonzero(owner == 0) == 6


def test_a_killed_worker_loses_nothing(tmp_path: Path) -> None:
    itch = tmp_path / "synthetic.itch"
    itch.write_bytes(synth.synthetic_stream(150_000, n_stocks=12, seed=5))
    cfg = load_hft(overrides={
        "workers": 3, "n_locates": 64, "max_orders": 1 << 17, "decide_every": 8, "enter": 0.12,
        "ring_capacity": 8192, "wait": "block", "status_file": str(tmp_path / "status.json"),
    })
    ref = reference_run(itch, cfg)
    pipe = Pipeline(cfg, itch=itch, source="file", rate=40_000)
    try:
        pipe.start()
        victim = 1
        ctl: ClusterControl = pipe.ctl
        assert poll_until(lambda: ctl.acked[victim] > 40_000, timeout_s=120, step_s=0.002)
        os.kill(pipe.pids[f"worker{victim}"], signal.SIGKILL)
        result = pipe.wait(timeout_s=300)
    finally:
        pipe.stop()

    # the loss is reported: which worker, how it ended, where its instruments went, what it had acknowledged
    assert len(result.losses) == 1
    loss = result.losses[0]
    assert loss["worker"] == victim and loss["exit_code"] == -signal.SIGKILL
    assert loss["acked_seq"] > 40_000
    assert set(loss["moved_to"]) == {"worker0", "worker2"} and sum(loss["moved_to"].values()) > 0
    # the new owners rebuilt the instruments from the replay log
    replayed = sum(w["replayed"] for w in result.stats["workers"].values())
    assert replayed > 0 and set(result.stats["workers"]) == {"worker0", "worker2"}
    # nothing was lost or doubled: books, feature state (aggregated over the process group) and orders equal
    # an uninterrupted run
    assert np.array_equal(result.depth, ref.depth)
    np.testing.assert_array_equal(result.state, ref.state)
    assert result.fills() == ref.fills()
    assert len(result.orders) > 10
    assert result.stats["strategy"]["decisions"] == ref.stats["decisions"]


def test_torch_feature_workers_equal_the_numba_reference(tmp_path: Path) -> None:
    """Two workers computing the features as torch batches (CPU tensors here; the GPU where a worker gets
    one) end with the feature state of the single-process numba reference."""
    itch = tmp_path / "synthetic.itch"
    itch.write_bytes(synth.synthetic_stream(40_000, n_stocks=8, seed=9))
    base = {"workers": 2, "n_locates": 32, "max_orders": 1 << 16, "decide_every": 4, "enter": 0.12,
            "ring_capacity": 4096, "wait": "block", "status_file": str(tmp_path / "status.json")}
    ref = reference_run(itch, load_hft(overrides=base))
    result = Pipeline(load_hft(overrides={**base, "feature_backend": "torch"}), itch=itch, source="file",
                      rate=50_000).run(timeout_s=300)
    assert result.state is not None and ref.state is not None
    np.testing.assert_allclose(result.state, ref.state, rtol=1e-12, atol=1e-9, equal_nan=True)
    assert np.array_equal(result.depth, ref.depth)
    assert result.fills() == ref.fills() and len(result.orders) > 0
