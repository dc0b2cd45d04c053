"""Object storage against a real S3-compatible server on loopback (moto's server, with IAM auth on).

The server (the session fixture ``moto_s3``, tests/object_stores.py) starts with
``INITIAL_NO_AUTH_ACTION_COUNT=6``: the first six requests (creating two IAM users, their keys and policies)
pass unauthenticated, every later one is checked against moto's IAM. So bad keys, bad secrets and missing
permissions are rejected as AWS or MinIO would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from conftest import free_port, need, port_open
from greekfire.core.settings import Settings, load_settings
from greekfire.data.dataset import (
    StreamingOptionsDataset,
    read_samples,
    table_to_samples,
    write_samples,
    write_splits,
)
from greekfire.data.features import Samples, build_samples, time_split
from greekfire.data.storage import open_fs
from greekfire.data.storage_check import check_storage
from greekfire.data.synthetic import generate_market, read_partitions, write_partitions
from greekfire.ml.config import compose_experiment
from greekfire.ml.data import load_pricing_data
from greekfire.ml.train import train_pricing
from object_stores import S3_BUCKET as BUCKET

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def moto(moto_s3: dict[str, Any]) -> dict[str, Any]:
    """The session's moto server (tests/object_stores.py: IAM users admin and outsider, bucket BUCKET)."""
    return moto_s3


def settings_for(moto: dict[str, Any], user: str = "admin", *, key: str | None = None, secret: str | None = None,
                 endpoint: str | None = None) -> Settings:  # fmt: skip
    k, s = moto["keys"][user]
    return load_settings(
        overrides={
            "storage.s3_endpoint_url": endpoint or moto["endpoint"],
            "storage.s3_region": "us-east-1",
            "storage.s3_access_key_id": key or k,
            "storage.s3_secret_access_key": secret or s,
            "storage.connect_timeout_s": 2.0,
            "storage.max_attempts": 1,
        }
    )


def fake_samples(n: int, window: int = 20, f_seq: int = 16, f_c: int = 20) -> Samples:
    rng = np.random.default_rng(1)
    return Samples(
        seq=rng.normal(size=(n, window, f_seq)).astype(np.float32),
        contract=rng.normal(size=(n, f_c)).astype(np.float32),
        target=np.arange(n, dtype=np.float32),  # doubles as the sample id
        bs_baseline=np.zeros(n, dtype=np.float32),
        quote_date=np.datetime64("2024-01-01") + np.arange(n) // 50,
        seq_names=[f"s{i}" for i in range(f_seq)],
        contract_names=[f"c{i}" for i in range(f_c)],
    )


@pytest.fixture(scope="module")
def samples_url(moto: dict[str, Any]) -> str:
    url = f"s3://{BUCKET}/samples/v1"
    write_samples(fake_samples(1200), url, settings_for(moto), row_group_size=50, rows_per_file=400)
    return url


def test_partitions_round_trip_on_s3(moto: dict[str, Any]) -> None:
    st = settings_for(moto)
    quotes, bars = generate_market(seed=5, days=3, history_days=90)
    paths = write_partitions(quotes, bars, f"s3://{BUCKET}/market", st)
    assert len(paths["quotes"]) == 3
    keys = {o["Key"] for o in moto["s3"].list_objects_v2(Bucket=BUCKET, Prefix="market/")["Contents"]}
    day = str(quotes["quote_date"].iloc[0].date())
    assert f"market/quotes/quote_date={day}/part-0.parquet" in keys
    q, b = read_partitions(f"s3://{BUCKET}/market", st)
    cols = ["quote_date", "expiry", "right", "strike", "bid", "ask"]
    expect = quotes.sort_values(["quote_date", "expiry", "right", "strike"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(q[cols], expect[cols], check_dtype=False)
    assert len(b) == len(bars) and q.attrs["rate"] == quotes.attrs["rate"]
    # the whole path: samples from what was read back, written to and streamed from the bucket
    s = build_samples(q, b, window=20)
    write_samples(s, f"s3://{BUCKET}/market-samples", st, row_group_size=64)
    streamed = [float(x["target"]) for x in StreamingOptionsDataset(f"s3://{BUCKET}/market-samples", st)]
    np.testing.assert_array_equal(np.array(streamed, dtype=np.float32), s.target)


def test_stream_two_workers_each_sample_once(moto: dict[str, Any], samples_url: str) -> None:
    ds = StreamingOptionsDataset(samples_url, settings_for(moto))
    seen: list[int] = []
    for batch in DataLoader(ds, batch_size=100, num_workers=2):
        assert batch["seq"].shape[1:] == (20, 16)
        seen.extend(batch["target"].int().tolist())
    assert sorted(seen) == list(range(1200))


def test_stream_two_ranks_two_workers_disjoint(moto: dict[str, Any], samples_url: str) -> None:
    per_rank = []
    for rank in range(2):
        ds = StreamingOptionsDataset(
            samples_url, settings_for(moto), rank=rank, world_size=2, shuffle=True, seed=3
        )
        got = [int(t) for b in DataLoader(ds, batch_size=64, num_workers=2) for t in b["target"]]
        assert len(got) == len(ds)
        per_rank.append(got)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(1200))


def test_stream_reads_row_groups_not_whole_files(moto: dict[str, Any], samples_url: str) -> None:
    st = settings_for(moto)
    fs, root = open_fs(samples_url, st)
    total = sum(fs.size(p) for p in fs.find(root))
    ds = StreamingOptionsDataset(samples_url, st, rank=0, world_size=4)
    n = sum(1 for _ in ds)
    assert n == 300 and ds.stats.row_groups_read == 6  # 24 row groups of 50 rows, a quarter of them
    # footers plus a quarter of the column chunks: well under the three objects' size
    assert ds.stats.bytes_read < 0.4 * total, (ds.stats, total)


def test_minio_client_reads_the_same_objects(moto: dict[str, Any], samples_url: str) -> None:
    from minio import Minio

    key, secret = moto["keys"]["admin"]
    client = Minio(
        f"127.0.0.1:{moto['port']}", access_key=key, secret_key=secret, secure=False, region="us-east-1"
    )
    names = sorted(o.object_name for o in client.list_objects(BUCKET, prefix="samples/v1/", recursive=True))
    assert names == [f"samples/v1/part-{i:05d}.parquet" for i in range(3)]
    resp = client.get_object(BUCKET, names[1])
    try:
        body = resp.read()
    finally:
        resp.close()
        resp.release_conn()
    fs, _ = open_fs(samples_url, settings_for(moto))
    assert body == fs.cat(f"{BUCKET}/{names[1]}")
    import io

    part = table_to_samples(pq.read_table(io.BytesIO(body)))
    np.testing.assert_array_equal(part.target, np.arange(400, 800, dtype=np.float32))
    assert len(read_samples(samples_url, settings_for(moto))) == 1200


def test_check_ok_read_and_write(moto: dict[str, Any], samples_url: str) -> None:
    r = check_storage(samples_url, settings_for(moto))
    assert r.ok, r
    w = check_storage(f"s3://{BUCKET}/checkpoints", settings_for(moto), write=True)
    assert w.ok and w.details["write"] == "ok", w


def test_check_endpoint_unreachable(moto: dict[str, Any]) -> None:
    closed = free_port()
    need(not port_open("127.0.0.1", closed), "the chosen free port is in use")
    r = check_storage(f"s3://{BUCKET}/x", settings_for(moto, endpoint=f"http://127.0.0.1:{closed}"))
    assert not r.ok and r.problem == "endpoint_unreachable"
    assert "connection refused" in r.message and "s3_endpoint_url" in r.hint


def test_check_bad_credentials(moto: dict[str, Any]) -> None:
    r = check_storage(f"s3://{BUCKET}/samples", settings_for(moto, key="AKIANOTAREALKEY00000"))
    assert not r.ok and r.problem == "bad_credentials" and "InvalidAccessKeyId" in r.message
    r = check_storage(f"s3://{BUCKET}/samples", settings_for(moto, secret="wrong-secret"))
    assert not r.ok and r.problem == "bad_credentials" and "SignatureDoesNotMatch" in r.message


def test_check_missing_bucket(moto: dict[str, Any]) -> None:
    r = check_storage("s3://no-such-bucket-here/data", settings_for(moto))
    assert not r.ok and r.problem == "missing_bucket" and "NoSuchBucket" in r.message


def test_check_no_permission(moto: dict[str, Any]) -> None:
    r = check_storage(f"s3://{BUCKET}/samples", settings_for(moto, "outsider"))
    assert not r.ok and r.problem == "no_permission" and "AccessDenied" in r.message
    with pytest.raises(Exception, match="no_permission"):
        r.raise_if_failed()


def test_check_missing_path(moto: dict[str, Any]) -> None:
    r = check_storage(f"s3://{BUCKET}/nothing/here", settings_for(moto))
    assert not r.ok and r.problem == "missing_path"


def test_cli_data_check_reports_plainly(moto: dict[str, Any]) -> None:
    key, secret = moto["keys"]["outsider"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GREEKFIRE_"))}
    env.update(
        {
            "GREEKFIRE_STORAGE__S3_ENDPOINT_URL": moto["endpoint"],
            "GREEKFIRE_STORAGE__S3_ACCESS_KEY_ID": key,
            "GREEKFIRE_STORAGE__S3_SECRET_ACCESS_KEY": secret,
            "GREEKFIRE_STORAGE__S3_REGION": "us-east-1",
        }
    )
    out = subprocess.run(
        [sys.executable, "-m", "greekfire.cli", "data", "check", f"s3://{BUCKET}/samples", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] is False and data["problem"] == "no_permission"


def test_the_pricing_trainer_streams_its_training_split_from_s3(moto: dict[str, Any], tmp_path: Path) -> None:
    """The trainer's one data path: prepared splits on S3, the training split streamed batch by batch."""
    rng = np.random.default_rng(2)
    n = 600
    s = fake_samples(n, window=6, f_seq=3, f_c=4)
    s.target = (np.sin(s.contract[:, 0]) + 0.5 * s.contract[:, 1] + 0.1 * s.seq[:, -1, 0]).astype(np.float32)
    s.quote_date = np.datetime64("2024-01-01") + np.sort(rng.integers(0, 60, n))
    train, val, test = time_split(s, val_frac=0.2, test_frac=0.2)
    url = f"s3://{BUCKET}/prepared"
    st = settings_for(moto)
    write_splits({"train": train, "val": val, "test": test}, url, st, row_group_size=50)
    st = load_settings(overrides={**{f"storage.{k}": v for k, v in st.storage.model_dump().items()},
                                  "training.runs_dir": str(tmp_path / "runs"), "training.torch_threads": 1})
    cfg = compose_experiment("lstm_tiny", [
        "data.source=samples", f"data.url={url}", "data.streaming=true", "data.batch_size=25",
        "trainer.max_epochs=2", "tracking.mlflow=false", "tracking.tensorboard=false",
    ])
    data = load_pricing_data(cfg.data, st.storage)
    assert data.streamed and data.train_rows == len(train) and len(data.test["target"]) == len(test)
    result = train_pricing(cfg, st, data=data)
    assert result.global_step == 2 * sum(-(-rows // 25) for rows in _group_rows(len(train), 50))
    assert result.scores["test_n"] == len(test) and np.isfinite(result.scores["test_rmse"])


def _group_rows(n: int, group: int) -> list[int]:
    return [min(group, n - a) for a in range(0, n, group)]
