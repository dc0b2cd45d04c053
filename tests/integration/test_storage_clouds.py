"""The storage layer on the three clouds, each against its local server (tests/object_stores.py): moto's S3
server (IAM on), gcp-storage-emulator (GCS JSON API) and Azurite (Blob; Shared Key and SAS checked).

For each: a Parquet file and a checkpoint-sized binary written through ``open_fs``, listed, read back
byte-equal; ``check_storage`` passing; the pricing samples streamed by rank; and the error paths named
(missing bucket or container, bad credentials, unreachable endpoint, missing path, missing permission).

The GCS emulator checks no credentials, so "bad credentials" on GCS is the client-side case (a key file that
is absent or not a key), and "no permission" is not tested on GCS; moto and Azurite reject bad keys
themselves.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import ROOT, free_port, need, port_open
from greekfire.core.settings import Settings, load_settings
from greekfire.data.dataset import StreamingOptionsDataset, read_samples, write_samples
from greekfire.data.features import Samples
from greekfire.data.storage import open_fs, publish_folder
from greekfire.data.storage_check import check_storage, storage_error
from object_stores import CLOUD_ENV_PREFIXES, clean_env

pytestmark = pytest.mark.integration
CLOUDS = ["s3", "gs", "az"]
BUCKET = "greekfire-clouds"


@dataclass
class Cloud:
    """One cloud's server, a bucket (container) on it, and settings that work (``good``)."""

    scheme: str
    server: dict[str, Any]
    good: dict[str, Any]

    def url(self, *parts: str, bucket: str = BUCKET) -> str:
        return "/".join([f"{self.scheme}://{bucket}", *parts])

    def settings(self, **changes: Any) -> Settings:
        """The working settings with ``changes`` (keys of the storage section)."""
        values = {**self.good, **changes}
        return load_settings(overrides={f"storage.{k}": v for k, v in values.items() if v is not None})


def _good_settings(scheme: str, server: dict[str, Any]) -> dict[str, Any]:
    common = {"connect_timeout_s": 2.0, "max_attempts": 1}
    if scheme == "s3":
        key, secret = server["keys"]["admin"]
        return {**common, "s3_endpoint_url": server["endpoint"], "s3_region": "us-east-1",
                "s3_access_key_id": key, "s3_secret_access_key": secret}  # fmt: skip
    if scheme == "gs":
        return {**common, "gcs_endpoint_url": server["endpoint"], "gcs_anon": True, "gcs_project": "greekfire-test"}
    return {**common, "azure_account_name": server["account"], "azure_endpoint_url": server["endpoint"],
            "azure_account_key": server["key"]}  # fmt: skip


@pytest.fixture(autouse=True)
def _no_cloud_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own cloud credentials must neither leak into these tests nor make them pass."""
    for name in list(os.environ):
        if name.startswith(CLOUD_ENV_PREFIXES) and name != "GREEKFIRE_QUANT__BACKGROUND_COMPILE":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module", params=CLOUDS)
def cloud(request: pytest.FixtureRequest) -> Cloud:
    """Each cloud in turn (its server started once per session), with the bucket BUCKET created through
    the storage layer."""
    server = request.getfixturevalue({"s3": "moto_s3", "gs": "gcs_emulator", "az": "azurite"}[request.param])
    c = Cloud(request.param, server, _good_settings(request.param, server))
    fs, _ = open_fs(c.url(), c.settings(), fresh=True)
    if c.scheme == "s3":  # s3fs's mkdir sends a LocationConstraint us-east-1, which S3 refuses
        if BUCKET not in {b["Name"] for b in server["s3"].list_buckets()["Buckets"]}:
            server["s3"].create_bucket(Bucket=BUCKET)
    elif not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return c


def _table(n: int = 1000) -> pa.Table:
    rng = np.random.default_rng(3)
    return pa.table({"strike": rng.uniform(50, 150, n), "right": rng.choice(["C", "P"], n),
                     "id": np.arange(n, dtype=np.int64)})  # fmt: skip


def _checkpoint() -> tuple[bytes, dict[str, torch.Tensor]]:
    """A real torch checkpoint of about 12 MiB: larger than one 5 MiB upload part, so every client
    uploads it in several parts or blocks."""
    g = torch.Generator().manual_seed(11)
    state = {"layer.weight": torch.randn(1536, 2048, generator=g), "layer.bias": torch.randn(2048, generator=g)}
    buf = io.BytesIO()
    torch.save({"state_dict": state, "epoch": 3}, buf)
    return buf.getvalue(), state


def test_parquet_and_checkpoint_round_trip(cloud: Cloud) -> None:
    st = cloud.settings()
    prefix = f"roundtrip-{uuid.uuid4().hex[:8]}"
    fs, root = open_fs(cloud.url(prefix), st)
    table = _table()
    with fs.open(f"{root}/quotes.parquet", "wb") as fh:
        pq.write_table(table, fh, row_group_size=250)
    blob, state = _checkpoint()
    with fs.open(f"{root}/model.ckpt", "wb", block_size=5 << 20) as fh:
        fh.write(blob)

    # read back through a fresh client: nothing from the writer's caches
    fs2, root2 = open_fs(cloud.url(prefix), st, fresh=True)
    assert fs2 is not fs
    listing = {Path(e["name"]).name: e["size"] for e in fs2.ls(root2, detail=True)}
    assert listing.keys() == {"quotes.parquet", "model.ckpt"}
    assert listing["model.ckpt"] == len(blob) > 10 << 20
    assert fs2.cat_file(f"{root2}/model.ckpt") == blob
    assert fs2.cat_file(f"{root2}/model.ckpt", start=7 << 20, end=(7 << 20) + 4096) == blob[7 << 20 : (7 << 20) + 4096]
    with fs2.open(f"{root2}/model.ckpt", "rb") as fh:
        loaded = torch.load(fh, weights_only=True)
    assert loaded["epoch"] == 3
    assert all(torch.equal(loaded["state_dict"][k], v) for k, v in state.items())
    with fs2.open(f"{root2}/quotes.parquet", "rb") as fh:
        pf = pq.ParquetFile(fh)
        assert pf.metadata.num_row_groups == 4
        assert pf.read_row_group(2).equals(table.slice(500, 250))
        assert pf.read().equals(table)

    check = check_storage(cloud.url(prefix), st)
    assert check.ok, check
    assert check.details["objects_seen"] >= 1


def test_check_storage_read_and_write_ok(cloud: Cloud) -> None:
    w = check_storage(cloud.url("checkpoints"), cloud.settings(), write=True)
    assert w.ok and w.details["write"] == "ok", w
    fs, root = open_fs(cloud.url("checkpoints"), cloud.settings(), fresh=True)
    assert not [p for p in (fs.find(root) if fs.exists(root) else []) if ".greekfire-check-" in p]  # probe removed


def _fake_samples(n: int, window: int = 20, f_seq: int = 16, f_c: int = 20) -> Samples:
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


def test_pricing_samples_stream_by_rank(cloud: Cloud) -> None:
    """The pricing data on each cloud: each of 2 ranks reads its own row groups, together every sample once."""
    st = cloud.settings()
    url = cloud.url(f"samples-{uuid.uuid4().hex[:8]}")
    samples = _fake_samples(600)
    write_samples(samples, url, st, row_group_size=50, rows_per_file=200)
    fs, root = open_fs(url, st)
    total = sum(fs.size(p) for p in fs.find(root))
    per_rank = []
    for rank in range(2):
        ds = StreamingOptionsDataset(url, st, rank=rank, world_size=2)
        got = [int(t) for item in ds for t in np.atleast_1d(item["target"].numpy())]
        assert len(got) == len(ds) == 300
        assert ds.stats.row_groups_read == 6  # 3 files x 4 row groups, half of them
        # ranged reads of its own row groups (plus the footers), not whole objects
        assert ds.stats.bytes_read < 0.75 * total, (ds.stats, total)
        per_rank.append(got)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == list(range(600))
    back = read_samples(url, st)
    np.testing.assert_array_equal(back.target, samples.target)
    np.testing.assert_array_equal(back.seq, samples.seq)


def test_missing_bucket(cloud: Cloud) -> None:
    missing = f"no-such-{uuid.uuid4().hex[:10]}"
    for write in (False, True):
        r = check_storage(cloud.url("data", bucket=missing), cloud.settings(), write=write)
        assert not r.ok and r.problem == "missing_bucket", r
        assert missing in r.message and ("container" if cloud.scheme == "az" else "bucket") in r.hint.lower()
    # a job writing there fails, and the error says which problem it is
    fs, root = open_fs(cloud.url("data", bucket=missing), cloud.settings())
    with pytest.raises(Exception) as info:
        fs.pipe_file(f"{root}/x.bin", b"x")
    err = storage_error(cloud.url("data", bucket=missing), info.value)
    assert "missing_bucket" in str(err), err


def _bad_credentials(cloud: Cloud, tmp_path: Path) -> list[Settings]:
    if cloud.scheme == "s3":
        return [cloud.settings(s3_access_key_id="AKIANOTAREALKEY00000"), cloud.settings(s3_secret_access_key="wrong")]
    if cloud.scheme == "az":
        other = base64_key()
        key_file = tmp_path / "azure-key"
        key_file.write_text(other + "\n")
        return [cloud.settings(azure_account_key=other),
                cloud.settings(azure_account_key=None, azure_account_key_file=str(key_file))]  # fmt: skip
    garbage = tmp_path / "key.json"
    garbage.write_text("{not json")
    return [cloud.settings(gcs_anon=False, gcs_credentials_file=str(garbage)),
            cloud.settings(gcs_anon=False, gcs_credentials_file=str(tmp_path / "absent.json"))]  # fmt: skip


def base64_key() -> str:
    import base64
    import secrets

    return base64.b64encode(secrets.token_bytes(64)).decode()


def test_bad_credentials(cloud: Cloud, tmp_path: Path) -> None:
    for st in _bad_credentials(cloud, tmp_path):
        r = check_storage(cloud.url(), st)
        assert not r.ok and r.problem == "bad_credentials", r
        assert "credentials" in r.hint or "key" in r.hint, r.hint
        w = check_storage(cloud.url("checkpoints"), st, write=True)
        assert not w.ok and w.problem == "bad_credentials", w


def test_endpoint_unreachable(cloud: Cloud) -> None:
    closed = free_port()
    need(not port_open("127.0.0.1", closed), "the chosen free port is in use")
    endpoint = {"s3": "s3_endpoint_url", "gs": "gcs_endpoint_url", "az": "azure_endpoint_url"}[cloud.scheme]
    target = f"http://127.0.0.1:{closed}" + ("/greekfire" if cloud.scheme == "az" else "")
    r = check_storage(cloud.url("x"), cloud.settings(**{endpoint: target}))
    assert not r.ok and r.problem == "endpoint_unreachable", r
    assert "connection refused" in r.message and endpoint in r.hint


def test_missing_path(cloud: Cloud) -> None:
    r = check_storage(cloud.url("nothing", "here"), cloud.settings())
    assert not r.ok and r.problem == "missing_path", r


@pytest.mark.parametrize("cloud", ["s3", "az"], indirect=True)
def test_no_permission(cloud: Cloud) -> None:
    """Valid credentials without the right: moto's IAM user of another bucket; an Azure read-only SAS."""
    if cloud.scheme == "s3":
        key, secret = cloud.server["keys"]["outsider"]
        st = cloud.settings(s3_access_key_id=key, s3_secret_access_key=secret)
        r = check_storage(cloud.url(), st)
        assert not r.ok and r.problem == "no_permission" and "AccessDenied" in r.message, r
        return
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        cloud.server["account"], BUCKET, account_key=cloud.server["key"],
        permission=ContainerSasPermissions(read=True, list=True), expiry=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    st = cloud.settings(azure_account_key=None, azure_sas_token=sas)
    open_fs(cloud.url("ro"), cloud.settings())[0].pipe_file(f"{BUCKET}/ro/a.bin", b"readable")
    assert check_storage(cloud.url("ro"), st).ok  # reading is allowed
    w = check_storage(cloud.url("ro"), st, write=True)
    assert not w.ok and w.problem == "no_permission" and "AuthorizationPermissionMismatch" in w.message, w
    assert "SAS" in w.hint


def _cli_check(url: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "greekfire.cli", "data", "check", url, "--write", "--json"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    return out.returncode, json.loads(out.stdout or "{}")


@pytest.mark.parametrize("cloud", ["s3", "gs", "az"], indirect=True)
def test_cli_credentials_from_the_environment(cloud: Cloud, tmp_path: Path) -> None:
    """`greekfire data check` with credentials from the environment only: S3 from the AWS chain's
    variables, Azure from its connection-string variable, and a secret file named by a GREEKFIRE_ variable."""
    srv = cloud.server
    if cloud.scheme == "s3":
        key, secret = srv["keys"]["admin"]
        env = clean_env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1",
                        GREEKFIRE_STORAGE__S3_ENDPOINT_URL=srv["endpoint"])  # fmt: skip
    elif cloud.scheme == "gs":
        env = clean_env(GREEKFIRE_STORAGE__GCS_ENDPOINT_URL=srv["endpoint"], GREEKFIRE_STORAGE__GCS_ANON="true")
    else:
        conn = f"BlobEndpoint={srv['endpoint']};AccountName={srv['account']};AccountKey={srv['key']};"
        env = clean_env(AZURE_STORAGE_CONNECTION_STRING=conn)
    rc, data = _cli_check(cloud.url("cli"), env)
    assert rc == 0 and data["ok"] is True, data
    if cloud.scheme == "az":  # the account key from a mounted secret file
        key_file = tmp_path / "azure-account-key"
        key_file.write_text(srv["key"])
        env = clean_env(GREEKFIRE_STORAGE__AZURE_ACCOUNT_NAME=srv["account"],
                        GREEKFIRE_STORAGE__AZURE_ENDPOINT_URL=srv["endpoint"],
                        GREEKFIRE_STORAGE__AZURE_ACCOUNT_KEY_FILE=str(key_file))  # fmt: skip
        rc, data = _cli_check(cloud.url("cli"), env)
        assert rc == 0 and data["ok"] is True, data
        key_file.write_text(base64_key())
        rc, data = _cli_check(cloud.url("cli"), env)
        assert rc == 1 and data["problem"] == "bad_credentials", data


@pytest.mark.parametrize("cloud", ["az"], indirect=True)
def test_azure_anonymous_reads_a_public_container(cloud: Cloud) -> None:
    """``azure_anon``: no credentials; a public container is readable, writing and private containers are not."""
    from azure.storage.blob import BlobServiceClient

    srv = cloud.server
    conn = f"BlobEndpoint={srv['endpoint']};AccountName={srv['account']};AccountKey={srv['key']};"
    container = BlobServiceClient.from_connection_string(conn).create_container("public-data", public_access="container")
    container.upload_blob("prices/a.bin", b"open to all")
    st = cloud.settings(azure_account_key=None, azure_anon=True)
    r = check_storage("az://public-data/prices", st)
    assert r.ok and r.details["objects_seen"] == 1, r
    fs, _ = open_fs("az://public-data/prices", st)
    assert fs.cat_file("public-data/prices/a.bin") == b"open to all"
    w = check_storage("az://public-data/prices", st, write=True)
    assert not w.ok and w.problem == "bad_credentials", w  # writing needs credentials, and none were given
    private = check_storage(cloud.url(), st)
    assert not private.ok and private.problem == "bad_credentials", private  # a private container stays closed


def test_a_finished_run_folder_is_published(cloud: Cloud, tmp_path: Path) -> None:
    """``storage.runs_url``: the trainer copies the run folder (config, summary, checkpoints) there."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"name": "smoke"}')
    blob, _ = _checkpoint()
    (run / "checkpoints" / "last.ckpt").write_bytes(blob)
    url = cloud.url(f"runs-{uuid.uuid4().hex[:8]}/smoke/v1")
    written = publish_folder(run, url, cloud.settings())
    assert written == ["checkpoints/last.ckpt", "config.json"]
    fs, root = open_fs(url, cloud.settings(), fresh=True)
    assert fs.cat_file(f"{root}/config.json") == b'{"name": "smoke"}'
    assert fs.cat_file(f"{root}/checkpoints/last.ckpt") == blob
