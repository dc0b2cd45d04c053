"""Storage layer without servers: fsspec filesystems from settings, local checks, plain failures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from greekfire.core.errors import ConfigError
from greekfire.core.settings import load_settings
from greekfire.data.storage import check_storage, open_fs, s3_options


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

    for url, pkg in (("gs://bucket/x", "gcsfs"), ("az://container/x", "adlfs")):
        if importlib.util.find_spec(pkg) is not None:
            assert open_fs(url)[1].endswith("x")  # installed: the filesystem builds
            continue
        with pytest.raises(ConfigError, match=pkg):
            open_fs(url)
        r = check_storage(url)
        assert not r.ok and r.problem == "missing_package" and pkg in r.message
