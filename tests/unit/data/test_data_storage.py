"""Storage layer without servers: fsspec filesystems from settings, local checks, plain failures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import need_module
from greekfire.core.errors import ConfigError, ConfigErrors
from greekfire.core.settings import load_settings, settings_dict
from greekfire.data.storage import azure_options, gcs_options, open_fs, s3_options
from greekfire.data.storage_check import check_storage


def test_s3_options_come_from_settings() -> None:
    st = load_settings(
        overrides={
            "storage.s3_endpoint_url": "http://127.0.0.1:9000",
            "storage.s3_region": "eu-west-1",
            "storage.s3_access_key_id": "AKIDEXAMPLE",
            "storage.s3_secret_access_key": "s3cr3t",
            "storage.max_attempts": 2,
        }
    )
    opts = s3_options(st)
    assert opts["endpoint_url"] == "http://127.0.0.1:9000"
    assert opts["key"] == "AKIDEXAMPLE" and opts["secret"] == "s3cr3t"
    assert opts["client_kwargs"] == {"region_name": "eu-west-1"}
    assert opts["config_kwargs"]["retries"]["max_attempts"] == 2
    fs, path = open_fs("s3://bucket/some/prefix", st)
    assert path == "bucket/some/prefix" and fs.retries == 2


def test_local_and_memory_urls(tmp_path: Path) -> None:
    fs, path = open_fs(str(tmp_path / "a"))
    fs.makedirs(path, exist_ok=True)
    assert Path(path).is_dir()
    mem, mpath = open_fs("memory://greekfire-test/x")
    assert "memory" in mem.protocol and mpath.endswith("greekfire-test/x")


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="storage.url"):
        open_fs("nosuchscheme://x/y")


def test_check_local_read_write_and_missing(tmp_path: Path) -> None:
    assert check_storage(str(tmp_path / "new"), write=True).ok
    missing = check_storage(str(tmp_path / "absent"))
    assert not missing.ok and missing.problem == "missing_path" and "write the data first" in missing.hint
    (tmp_path / "data").mkdir()
    pd.DataFrame({"x": [1.0]}).to_parquet(tmp_path / "data" / "f.parquet")
    assert check_storage(str(tmp_path / "data")).ok
    # every file's footer is read: a corrupt partition fails the check and is named
    (tmp_path / "data" / "part=1").mkdir()
    (tmp_path / "data" / "part=1" / "g.parquet").write_bytes(b"x")
    bad = check_storage(str(tmp_path / "data"))
    assert not bad.ok and bad.problem == "corrupt_file" and "g.parquet" in bad.message


def test_check_no_bucket_in_url() -> None:
    r = check_storage("s3://")
    assert not r.ok and r.problem == "bad_url"
    with pytest.raises(ConfigError, match="bad_url"):
        r.raise_if_failed()


def test_gcs_and_azure_need_their_packages() -> None:
    import importlib.util

    st = load_settings(overrides={"storage.gcs_anon": True, "storage.azure_account_name": "acct",
                                  "storage.azure_anon": True})  # fmt: skip
    for url, pkg in (("gs://bucket/x", "gcsfs"), ("az://container/x", "adlfs")):
        if importlib.util.find_spec(pkg) is not None:
            assert open_fs(url, st)[1].endswith("x")  # installed: the filesystem builds
            continue
        with pytest.raises(ConfigError, match=pkg):
            open_fs(url, st)
        r = check_storage(url, st)
        assert not r.ok and r.problem == "missing_package" and pkg in r.message


def test_gcs_options_from_settings(tmp_path: Path) -> None:
    opts = gcs_options(load_settings(overrides={"storage.gcs_endpoint_url": "http://127.0.0.1:9023/",
                                                "storage.gcs_anon": True, "storage.gcs_project": "p1"}))  # fmt: skip
    assert opts["endpoint_url"] == "http://127.0.0.1:9023" and opts["token"] == "anon" and opts["project"] == "p1"
    # no key file and not anonymous: Google's default chain, which fails plainly instead of going anonymous
    assert gcs_options(None)["token"] == "google_default" and "endpoint_url" not in gcs_options(None)


def _service_account_file(folder: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = folder / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "from-file", "private_key_id": "k1", "private_key": pem.decode(),
        "client_email": "trainer@from-file.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))  # fmt: skip
    return path


def test_gcs_key_file_gives_credentials_and_project(tmp_path: Path) -> None:
    from google.oauth2 import service_account

    path = _service_account_file(tmp_path)
    opts = gcs_options(load_settings(overrides={"storage.gcs_credentials_file": str(path)}))
    assert isinstance(opts["token"], service_account.Credentials)
    assert opts["token"].service_account_email == "trainer@from-file.iam.gserviceaccount.com"
    assert opts["project"] == "from-file"
    # the settings' project beats the file's
    opts = gcs_options(load_settings(overrides={"storage.gcs_credentials_file": str(path), "storage.gcs_project": "p2"}))
    assert opts["project"] == "p2"
    # one client per key file version: fsspec's instance cache sees the same credentials object again
    need_module("gcsfs")
    st = load_settings(overrides={"storage.gcs_credentials_file": str(path)})
    assert open_fs("gs://bucket/a", st)[0] is open_fs("gs://bucket/b", st)[0]


@pytest.mark.parametrize("content,reason", [
    (None, "readable"), ("{nope", "not JSON"), ('{"type": "api_key"}', "not 'api_key'"),
    ('{"type": "service_account", "client_email": "x"}', "valid service_account"),
])  # fmt: skip
def test_unusable_gcs_key_file_is_named(tmp_path: Path, content: str | None, reason: str) -> None:
    path = tmp_path / "key.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="storage.gcs_credentials_file") as info:
        gcs_options(load_settings(overrides={"storage.gcs_credentials_file": str(path)}))
    assert reason in str(info.value)


def test_azure_options_from_settings(tmp_path: Path) -> None:
    base = {"storage.azure_account_name": "acct"}
    # the public cloud: account and key as they are
    opts = azure_options(load_settings(overrides={**base, "storage.azure_account_key": "a2V5"}))
    assert opts["account_name"] == "acct" and opts["account_key"] == "a2V5" and "connection_string" not in opts
    # Azurite or another endpoint over http: a connection string with that BlobEndpoint
    key_file = tmp_path / "key"
    key_file.write_text("a2V5\n")
    opts = azure_options(load_settings(overrides={**base, "storage.azure_endpoint_url": "http://127.0.0.1:10000/acct/",
                                                  "storage.azure_account_key_file": str(key_file)}))  # fmt: skip
    assert opts["connection_string"] == "BlobEndpoint=http://127.0.0.1:10000/acct;AccountName=acct;AccountKey=a2V5;"
    sas = azure_options(load_settings(overrides={**base, "storage.azure_endpoint_url": "http://h:1/acct",
                                                 "storage.azure_sas_token": "?sv=1&sig=x"}))  # fmt: skip
    assert "SharedAccessSignature=sv=1&sig=x" in sas["connection_string"]
    # token credentials (DefaultAzureCredential) against a private https endpoint
    opts = azure_options(load_settings(overrides={**base, "storage.azure_endpoint_url": "https://acct.privatelink.example"}))
    assert opts["account_host"] == "acct.privatelink.example" and "account_key" not in opts
    with pytest.raises(ConfigError, match="storage.azure_endpoint_url"):
        azure_options(load_settings(overrides={**base, "storage.azure_endpoint_url": "http://127.0.0.1:10000/acct"}))
    # a connection string (here from a secret file) wins over everything else
    conn_file = tmp_path / "conn"
    conn_file.write_text("AccountName=other;AccountKey=eA==;EndpointSuffix=core.windows.net\n")
    opts = azure_options(load_settings(overrides={**base, "storage.azure_account_key": "a2V5",
                                                  "storage.azure_connection_string_file": str(conn_file)}))  # fmt: skip
    assert opts["connection_string"].startswith("AccountName=other;") and "account_key" not in opts
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="storage.azure_account_key_file.*empty"):
        azure_options(load_settings(overrides={**base, "storage.azure_account_key_file": str(empty)}))


def test_azure_secret_and_its_file_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match="azure_account_key or storage.azure_account_key_file"):
        load_settings(overrides={"storage.azure_account_key": "a2V5", "storage.azure_account_key_file": str(tmp_path)})


def test_cloud_secrets_are_masked_when_shown(tmp_path: Path) -> None:
    st = load_settings(overrides={"storage.azure_account_key": "a2V5", "storage.azure_sas_token": "sv=1&sig=x",
                                  "storage.azure_connection_string": "AccountName=a;AccountKey=a2V5",
                                  "storage.gcs_credentials_file": str(tmp_path / "sa.json")})  # fmt: skip
    shown = settings_dict(st)["storage"]
    assert shown["azure_account_key"] == shown["azure_sas_token"] == shown["azure_connection_string"] == "********"
    assert shown["gcs_credentials_file"] == str(tmp_path / "sa.json")  # a path, not a secret
    assert "a2V5" not in json.dumps(st.model_dump(mode="json"))
