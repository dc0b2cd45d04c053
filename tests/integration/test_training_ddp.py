"""Distributed training through the real command line: ``greekfire train run`` under torchrun.

Two "nodes" are two ``greekfire train run --nproc 1 --nnodes ...`` processes on this machine; each is a
torchrun elastic agent, they meet at a c10d rendezvous on loopback, and their workers form a gloo group.

- Gradient synchronisation: 2 nodes x 1 process on half the global batch each give the same weights after
  N steps as one process on the whole global batch.
- Fault tolerance (acceptance 1): an elastic job (2:2 nodes, 2 restarts) whose worker on node B is killed
  with SIGKILL mid-run; torchrun restarts the group, the workers resume from ``last.ckpt`` on shared storage,
  and the final weights equal those of an uninterrupted run, bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import ROOT, command_env, free_port, poll_until

pytestmark = pytest.mark.integration

COMMON = ["tracking.mlflow=false", "tracking.tensorboard=false", "trainer.accelerator=cpu",
          "trainer.enable_progress_bar=false", "optim.scheduler=none", "trainer.early_stopping_patience=0"]


def _env(runs: Path) -> dict[str, str]:
    return command_env(OMP_NUM_THREADS="1", GREEKFIRE_TRAINING__RUNS_DIR=str(runs),
                       GREEKFIRE_TRAINING__TORCH_THREADS="1", GREEKFIRE_LOGGING__LEVEL="WARNING",
                       # a restarted group whose gloo mesh does not connect fails in 60 s and torchrun restarts
                       # it again (--max-restarts 2), instead of hanging the default 300 s
                       GREEKFIRE_TRAINING__DIST_TIMEOUT_S="60",
                       # both "nodes" are on loopback: gloo binds there instead of the address the host name
                       # resolves to (the default, which a restarted group may fail to reach)
                       GLOO_SOCKET_IFNAME="lo")


def _node(args: list[str], runs: Path, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "greekfire.cli", "train", "run", "--json", *args]
    # its own session: a test that gives up kills the agent and the workers it started (no orphans)
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(runs), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _kill_tree(p: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)


def _finish(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                _kill_tree(q)
            raise AssertionError("nodes did not finish: " + " | ".join(x.read_text()[-1500:] for x in logs)) from None
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log.read_text()[-3000:]
    outs = [log.read_text() for log in logs]
    reports = [o for o in outs if '"world_size"' in o]
    assert len(reports) == 1, outs  # the node that held rank 0 reports, the other says it finished
    text = reports[0]
    return json.loads(text[text.index("{"): text.rindex("}") + 1])


def _two_nodes(tmp: Path, name: str, overrides: list[str], extra: list[str], runs: Path) -> tuple[
        list[subprocess.Popen[bytes]], list[Path]]:  # fmt: skip
    port = free_port()
    logs = [tmp / f"{name}-node{i}.log" for i in range(2)]
    args = ["--nproc", "1", "--rdzv", f"127.0.0.1:{port}", *extra, "+experiment=smoke", *COMMON, *overrides]
    return [_node(args, runs, log) for log in logs], logs


def _weights(ckpt: str | Path) -> dict[str, torch.Tensor]:
    state = torch.load(str(ckpt), map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.") and isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 0}


def test_two_nodes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    """DDP averages the ranks' gradients: the same update as one process on the union of their batches.

    Each epoch is one global batch of all 320 training rows (each rank takes its contiguous half of the
    epoch's permutation), so the single process with a 320-row batch sees exactly the same rows per step.
    Tolerance 2e-5 absolute: the two runs sum the same float32 loss terms in a different order (two
    160-row means averaged by all-reduce vs one 320-row mean), a relative difference of a few float32 ulps
    (1.2e-7) per gradient element; AdamW's update divides by sqrt(v), which turns such a difference into at
    most lr x (relative gradient difference) per step for ordinary elements, far below 2e-5 after 6 steps
    at lr 3e-3. A missing or wrong all-reduce (each rank stepping on its own half) moves weights by ~1e-3.
    """
    steps = 6
    base = ["data.n_samples=400", "trainer.max_steps=" + str(steps), "trainer.max_epochs=100",
            "trainer.gradient_clip_val=null"]
    runs = tmp_path / "runs"
    procs, logs = _two_nodes(tmp_path, "ddp", [*base, "data.batch_size=160", "name=sync_ddp"], ["--nnodes", "2"],
                             runs)
    single = subprocess.run(
        [sys.executable, "-m", "greekfire.cli", "train", "run", "--json", "+experiment=smoke", *COMMON, *base,
         "data.batch_size=320", "name=sync_one"],
        cwd=ROOT, env=_env(runs), capture_output=True, text=True, timeout=300,
    )
    ddp = _finish(procs, logs)
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads(single.stdout[single.stdout.index("{"): single.stdout.rindex("}") + 1])
    assert ddp["world_size"] == 2 and one["world_size"] == 1
    assert ddp["global_step"] == one["global_step"] == steps
    a, b = _weights(ddp["last_checkpoint"]), _weights(one["last_checkpoint"])
    assert a.keys() == b.keys() and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 2e-5, f"DDP and single-process weights differ by {worst:.3g}"


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` and that run a greekfire training worker (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid and "greekfire.training.distributed" in cmdline:
            found.append(int(entry.name))
    return found


def test_killed_worker_restarts_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """Acceptance 1. Same seed, same data order (the sampler's permutation depends on seed and epoch, the
    position comes back with the loop counters), RNG state in the checkpoint: the resumed run replays the
    steps after the last published checkpoint exactly, so the weights are equal with no tolerance."""
    steps, every = 600, 20  # enough steps after the first checkpoint that the kill lands mid-run on a busy machine
    base = ["data.n_samples=1000", f"trainer.max_steps={steps}", "trainer.max_epochs=100", "data.batch_size=16",
            f"trainer.checkpoint_every_n_steps={every}", "name=elastic"]
    shared = tmp_path / "shared"
    # 2:2: the restarted group must have both nodes again (a 1-node round would train a different world
    # size and could never give the uninterrupted run's weights)
    elastic = ["--nnodes", "2:2", "--max-restarts", "2", "--checkpoint-url", str(shared)]

    ref_procs, ref_logs = _two_nodes(tmp_path, "ref", base, [*elastic, "--job-id", "reference"], tmp_path / "ref")
    reference = _finish(ref_procs, ref_logs)
    assert reference["restarts"] == 0 and reference["resumed_from"] is None

    procs, logs = _two_nodes(tmp_path, "killed", base, [*elastic, "--job-id", "killed"], tmp_path / "killed")
    published = shared / "killed" / "last.ckpt"
    try:
        assert poll_until(published.is_file, 240, 0.02), logs[1].read_text()[-2000:]
        workers = _children(procs[1].pid)
        assert len(workers) == 1, f"node B's worker not found among the children of {procs[1].pid}"
        os.kill(workers[0], signal.SIGKILL)
    except BaseException:
        for p in procs:
            _kill_tree(p)
        raise
    result = _finish(procs, logs)
    # the killed worker's agent saw it die; the group came back and resumed from the shared checkpoint (the
    # restart count is the reporting agent's own, which may be the node whose worker was not killed)
    assert "exitcode: -9" in logs[1].read_text(), logs[1].read_text()[-2000:]
    assert result["resumed_from"] == f"{shared}/killed/last.ckpt", "no restart resumed from the shared checkpoint"
    assert result["world_size"] == 2 and result["global_step"] == steps
    a, b = _weights(result["last_checkpoint"]), _weights(reference["last_checkpoint"])
    assert a.keys() == b.keys() and a
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed weights differ from the uninterrupted run in {different}"


def test_last_checkpoint_is_published_to_s3(moto_s3: dict[str, Any], tmp_path: Path) -> None:
    """The shared storage may be an object store: the moto S3 server on loopback (IAM on)."""
    from greekfire.core.settings import load_settings
    from greekfire.training.elastic import SharedCheckpointIO, SharedCheckpoints
    from object_stores import S3_BUCKET

    key, secret = moto_s3["keys"]["admin"]
    storage = load_settings(overrides={
        "storage.s3_endpoint_url": moto_s3["endpoint"], "storage.s3_region": "us-east-1",
        "storage.s3_access_key_id": key, "storage.s3_secret_access_key": secret,
    }).storage
    shared = SharedCheckpoints(f"s3://{S3_BUCKET}/checkpoints", "job-s3", storage)
    io = SharedCheckpointIO(shared)
    assert shared.fetch(tmp_path / "none.ckpt") is None
    for step in (10, 20):
        io.save_checkpoint({"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step},
                           tmp_path / "run" / "last.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 20}, tmp_path / "run" / "best.ckpt")
    assert io.published == 2  # last.ckpt twice; best.ckpt stays in the run folder
    got = shared.fetch(tmp_path / "fetched" / "last.ckpt")
    assert got is not None
    loaded = torch.load(str(got), map_location="cpu", weights_only=True)
    assert loaded["global_step"] == 20 and torch.equal(loaded["state_dict"]["w"], torch.full((3,), 20.0))
    assert shared.exists() and shared.location == f"s3://{S3_BUCKET}/checkpoints/job-s3/last.ckpt"


def test_horovod_backend_fails_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "greekfire.cli", "train", "run", "+experiment=smoke", "--backend", "horovod", *COMMON],
        cwd=ROOT, env=_env(tmp_path / "runs"), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "horovod" in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_two_ranks_stream_their_row_groups_from_s3(moto_s3: dict[str, Any], tmp_path: Path) -> None:
    """DDP on streamed samples: each of 2 ranks reads its own row groups from the S3 server (moto)."""
    import numpy as np

    from greekfire.core.settings import load_settings
    from greekfire.data.dataset import write_splits
    from greekfire.data.features import Samples
    from object_stores import S3_BUCKET

    def fake(n: int) -> Samples:
        rng = np.random.default_rng(n)
        contract = rng.random((n, 4)).astype(np.float32)
        return Samples(seq=rng.normal(size=(n, 5, 2)).astype(np.float32), contract=contract,
                       target=contract.mean(1).astype(np.float32), bs_baseline=np.zeros(n, dtype=np.float32),
                       quote_date=np.datetime64("2024-01-01") + np.arange(n) // 64,
                       seq_names=["a", "b"], contract_names=["c0", "c1", "c2", "c3"])

    key, secret = moto_s3["keys"]["admin"]
    storage_env = {"GREEKFIRE_STORAGE__S3_ENDPOINT_URL": moto_s3["endpoint"],
                   "GREEKFIRE_STORAGE__S3_REGION": "us-east-1", "GREEKFIRE_STORAGE__S3_ACCESS_KEY_ID": key,
                   "GREEKFIRE_STORAGE__S3_SECRET_ACCESS_KEY": secret}
    storage = load_settings(overrides={"storage." + k.removeprefix("GREEKFIRE_STORAGE__").lower(): v
                                       for k, v in storage_env.items()}).storage
    url = f"s3://{S3_BUCKET}/ddp-stream"
    # 512 training rows in 8 row groups of 64: 4 groups per rank, 2 batches of 32 per group
    write_splits({"train": fake(512), "val": fake(128)}, url, storage, row_group_size=64)
    env = {**_env(tmp_path / "runs"), **storage_env}
    proc = subprocess.run(
        [sys.executable, "-m", "greekfire.cli", "train", "run", "--json", "--nproc", "2", "+experiment=smoke",
         *COMMON, "data.source=samples", f"data.url={url}", "data.streaming=true", "data.batch_size=32",
         "trainer.max_epochs=1", "name=stream_ddp"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{"): proc.stdout.rindex("}") + 1])
    assert out["world_size"] == 2
    assert out["global_step"] == 8  # each rank 4 row groups x 2 batches: half the data each, in step
