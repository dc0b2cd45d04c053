"""Launch options, backend choice (Horovod stays one switch) and shared checkpoints on a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from greekfire.core.errors import ConfigError, UnavailableError
from greekfire.training.distributed import LaunchOptions, WorkerSpec, horovod_missing, resolve_backend
from greekfire.training.elastic import SharedCheckpoints


@pytest.mark.parametrize(("opts", "field"), [
    (LaunchOptions(nnodes="2:1", rdzv="h:1"), "--nnodes"), (LaunchOptions(nnodes="x"), "--nnodes"),
    (LaunchOptions(nproc=0), "--nproc"), (LaunchOptions(max_restarts=-1), "--max-restarts"),
    (LaunchOptions(nnodes="2"), "--rdzv"), (LaunchOptions(rdzv="localhost"), "--rdzv"),
])
def test_bad_options_name_the_option(opts: LaunchOptions, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        opts.validate()
    assert err.value.field == field


def test_elastic_range_and_when_torchrun_is_needed() -> None:
    assert LaunchOptions(nnodes="1:4", rdzv="127.0.0.1:29400").node_range() == (1, 4)
    assert not LaunchOptions().distributed
    assert LaunchOptions(nproc=2).distributed and LaunchOptions(max_restarts=1).distributed


def test_backend_choice_on_this_machine() -> None:
    assert resolve_backend("gloo") == "gloo"
    assert resolve_backend("auto", "cpu") == "gloo"
    with pytest.raises(ConfigError, match="one of auto, gloo, nccl, horovod"):
        resolve_backend("mpi")


def test_horovod_fails_with_what_is_missing() -> None:
    missing = horovod_missing()
    assert missing is not None  # no Horovod loop here: even an installed Horovod is refused, with the reason
    with pytest.raises(UnavailableError) as err:
        resolve_backend("horovod")
    assert "horovod" in str(err.value) and "\n" not in str(err.value)


def test_spec_round_trips() -> None:
    spec = WorkerSpec("smoke", ["optim.lr=0.1"], "gloo", "job", "/tmp/x", "/tmp/r.json", settings={"training.seed": 3})
    assert WorkerSpec.from_json(spec.to_json()) == spec


def test_shared_checkpoints_publish_and_fetch(tmp_path: Path) -> None:
    shared = SharedCheckpoints(str(tmp_path / "shared"), "job-1")
    assert not shared.exists() and shared.fetch(tmp_path / "got.ckpt") is None
    for payload in (b"first", b"second"):
        src = tmp_path / "last.ckpt"
        src.write_bytes(payload)
        shared.publish(src)
    got = shared.fetch(tmp_path / "local" / "got.ckpt")
    assert got is not None and got.read_bytes() == b"second"
    assert sorted(p.name for p in (tmp_path / "shared" / "job-1").iterdir()) == ["last.ckpt"]  # no temp left
