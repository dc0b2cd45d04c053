"""Distributed training: DDP scaling (1 vs 2 gloo processes) and data streaming from S3 (moto) vs local Parquet.

- DDP scaling: the pricing MLP of the ``smoke`` experiment (3 x 64, SiLU) wrapped in torch's
  DistributedDataParallel, 2 processes on loopback (gloo), each on its own batch of 256 rows; the peer
  is one process on one batch of 256 rows (no process group). Samples/s over the timed steps after a
  warm-up, all processes together. One torch thread per process.
- Streaming: ``StreamingOptionsDataset`` (row groups of 4096 rows, batches of 256) reading rank 0's half
  of 32,768 samples, from moto's S3 server on loopback vs the same files on the local disk (the peer),
  and the S3 stream behind ``prefetch`` (2 batches read ahead). Noise augmentation rows/s beside it.

Bounded: about a minute on two CPUs. Allocator: torch's default CPU allocator (glibc malloc).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from greekfire.core.settings import load_settings  # noqa: E402
from greekfire.data.dataset import StreamingOptionsDataset, write_samples  # noqa: E402
from greekfire.data.features import Samples  # noqa: E402
from greekfire.data.storage import StorageLike  # noqa: E402
from greekfire.ml.config import ModelConfig  # noqa: E402
from greekfire.ml.module import build_model  # noqa: E402
from greekfire.training.augment import add_input_noise, prefetch  # noqa: E402

BATCH, STEPS, WARMUP, FEATURES = 256, 150, 20, 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_steps(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = build_model(ModelConfig.model_validate({"hidden": 64, "layers": 3}), FEATURES)
    model: torch.nn.Module = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.rand(BATCH, FEATURES, generator=g), torch.rand(BATCH, generator=g)
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x, None), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(str(elapsed))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def ddp_samples_per_s(world: int) -> float:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "t")
        if world == 1:
            _train_steps(0, 1, 0, out)
        else:
            mp.spawn(_train_steps, args=(world, _free_port(), out), nprocs=world, join=True)
        elapsed = float(Path(out).read_text())
    return world * BATCH * STEPS / elapsed


def fake_samples(n: int) -> Samples:
    rng = np.random.default_rng(1)
    return Samples(
        seq=rng.normal(size=(n, 20, 4)).astype(np.float32), contract=rng.normal(size=(n, FEATURES)).astype(np.float32),
        target=rng.random(n).astype(np.float32), bs_baseline=np.zeros(n, dtype=np.float32),
        quote_date=np.datetime64("2024-01-01") + np.arange(n) // 500,
        seq_names=[f"s{i}" for i in range(4)], contract_names=[f"c{i}" for i in range(FEATURES)],
    )


def stream_rows_per_s(url: str, storage: StorageLike, *, ahead: int = 0) -> float:
    ds = StreamingOptionsDataset(url, storage, batch_size=BATCH, rank=0, world_size=2, shuffle=True, seed=1)
    ds.units()  # footers read once, outside the timing (as a training run does at start)
    t0 = time.perf_counter()
    rows = 0
    batches = prefetch(iter(ds), ahead) if ahead else iter(ds)
    for b in batches:
        rows += len(b["target"])
    return rows / (time.perf_counter() - t0)


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    one = ddp_samples_per_s(1)
    two = ddp_samples_per_s(2)
    rows.append({"benchmark": "DDP train samples/s, 2 gloo processes vs 1", "ours": two, "peer": "1 process",
                 "peer_value": one, "unit": "samples/s", "ratio": two / one})
    moto = Path(sys.executable).parent / "moto_server"
    with tempfile.TemporaryDirectory() as tmp:
        samples = fake_samples(32_768)
        local = f"{tmp}/local/train"
        write_samples(samples, local, row_group_size=4096, rows_per_file=16_384)
        local_rate = max(stream_rows_per_s(local, None) for _ in range(2))
        g = torch.Generator().manual_seed(0)
        batch = {"seq": torch.from_numpy(samples.seq[:BATCH]), "contract": torch.from_numpy(samples.contract[:BATCH])}
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < 1.0:
            add_input_noise(batch, 0.01, keys=("seq", "contract"), generator=g)
            n += BATCH
        noise_rate = n / (time.perf_counter() - t0)
        rows.append({"benchmark": "noise augmentation (seq + contract) rows/s", "ours": noise_rate,
                     "peer": "local stream", "peer_value": local_rate, "unit": "rows/s",
                     "ratio": noise_rate / local_rate})
        if not moto.exists():
            print("  note: moto_server not installed: S3 streaming not measured")
        else:
            port = _free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GREEKFIRE_"))}
            server = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    with socket.socket() as s:
                        if s.connect_ex(("127.0.0.1", port)) == 0:
                            break
                    time.sleep(0.1)
                st = load_settings(overrides={
                    "storage.s3_endpoint_url": f"http://127.0.0.1:{port}", "storage.s3_region": "us-east-1",
                    "storage.s3_access_key_id": "bench", "storage.s3_secret_access_key": "bench",
                }).storage
                import boto3

                boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                             aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
                url = "s3://bench/samples/train"
                write_samples(samples, url, st, row_group_size=4096, rows_per_file=16_384)
                s3_rate = max(stream_rows_per_s(url, st) for _ in range(2))
                s3_ahead = max(stream_rows_per_s(url, st, ahead=2) for _ in range(2))
            finally:
                server.terminate()
                server.wait(timeout=10)
            rows.append({"benchmark": "stream rows/s, rank 0 of 2, S3 (moto) vs local Parquet", "ours": s3_rate,
                         "peer": "local Parquet", "peer_value": local_rate, "unit": "rows/s",
                         "ratio": s3_rate / local_rate})
            rows.append({"benchmark": "stream rows/s, S3 (moto) with prefetch 2 vs without", "ours": s3_ahead,
                         "peer": "S3 no prefetch", "peer_value": s3_rate, "unit": "rows/s",
                         "ratio": s3_ahead / s3_rate})
    report("training_ddp", rows, notes=[
        f"torch {torch.__version__}, 1 torch thread per process, default CPU allocator; {os.cpu_count()} CPUs",
        f"DDP: MLP 3x64 on {FEATURES} features, batch {BATCH} per process, {STEPS} timed steps after {WARMUP}",
        "streaming: 32,768 samples (window 20 x 4, 6 contract features), row groups 4096, batches 256",
    ])


if __name__ == "__main__":
    main()
