"""The three local object-store servers the storage tests talk to, each started once per test session on a
free loopback port (the session fixtures in ``conftest.py`` call these):

- moto's S3 server (``moto_server``, from the ``dev`` extra) with IAM auth on,
- ``gcp-storage-emulator`` (PyPI, ``dev`` extra), a GCS JSON-API emulator, in memory,
- Azurite's Blob service (npm), installed by ``scripts/test-services.sh`` into ``.tools/azurite``.

Each start function yields a plain dict (endpoint, keys, ...) and stops its server on exit. A server that is
not installed skips the test with the reason, and fails it under ``CI=true`` (:func:`conftest.need`).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import ROOT, free_port, need, poll_until, port_open

S3_BUCKET = "greekfire-data"
# moto: the first requests (two IAM users, their keys and policies) pass unauthenticated, every later one is
# checked against moto's IAM, so bad keys, bad secrets and missing permissions are rejected as on AWS
MOTO_SETUP_REQUESTS = 6
AZURITE_ACCOUNT = "greekfire"
AZURITE_DIR = ROOT / ".tools" / "azurite"
# the variables each cloud's client reads on its own: a developer's real credentials must not leak into
# the tests (nor make them pass)
CLOUD_ENV_PREFIXES = ("AWS_", "GREEKFIRE_", "AZURE_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_", "STORAGE_EMULATOR_HOST")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any cloud credential variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLOUD_ENV_PREFIXES)}
    env.update(extra)
    return env


@contextmanager
def _server(argv: list[str], port: int, name: str, *, env: dict[str, str], workdir: Path,
            timeout_s: float = 30.0) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Start ``argv`` in ``workdir`` (its output in ``workdir/<name>.log``), wait until ``port`` accepts
    connections, stop it on exit. A server that exits or does not listen fails with its log's tail."""
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
        try:
            started = poll_until(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, timeout_s, 0.05)
            tail = log.read_text(errors="replace")[-2000:]
            assert proc.poll() is None, f"{name} exited at start (code {proc.returncode}): {tail}"
            assert started, f"{name} did not open port {port} in {timeout_s:g} s: {tail}"
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _policy(resources: list[str]) -> str:
    return json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resources}]}
    )


@contextmanager
def moto_s3(workdir: Path) -> Iterator[dict[str, Any]]:
    """moto's S3 server with IAM on: users ``admin`` (everything) and ``outsider`` (another bucket only),
    the bucket :data:`S3_BUCKET`. Yields endpoint, port, keys {user: (key id, secret)} and a boto3 client."""
    binary = Path(sys.executable).parent / "moto_server"
    need(binary.exists(), "moto_server is not installed (pip install 'moto[server]'; the dev extra has it)")
    port = free_port()
    env = clean_env(INITIAL_NO_AUTH_ACTION_COUNT=str(MOTO_SETUP_REQUESTS))
    with _server([str(binary), "-H", "127.0.0.1", "-p", str(port)], port, "moto_server", env=env, workdir=workdir):
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")  # fmt: skip
        keys = {}
        for user, resources in (
            ("admin", ["*"]),
            ("outsider", ["arn:aws:s3:::elsewhere", "arn:aws:s3:::elsewhere/*"]),
        ):
            iam.create_user(UserName=user)
            k = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=_policy(resources))
            keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=keys["admin"][0], aws_secret_access_key=keys["admin"][1])  # fmt: skip
        s3.create_bucket(Bucket=S3_BUCKET)
        yield {"endpoint": endpoint, "port": port, "keys": keys, "s3": s3}


def gcs_emulator_binary() -> str | None:
    local = Path(sys.executable).parent / "gcp-storage-emulator"
    return str(local) if local.exists() else shutil.which("gcp-storage-emulator")


@contextmanager
def gcs_emulator(workdir: Path) -> Iterator[dict[str, Any]]:
    """gcp-storage-emulator in memory. It serves the GCS JSON API without checking credentials (clients
    connect anonymously). Yields endpoint and port."""
    binary = gcs_emulator_binary()
    need(binary is not None, "gcp-storage-emulator is not installed (pip install gcp-storage-emulator; the dev "
         "extra has it)")  # fmt: skip
    assert binary is not None
    port = free_port()
    argv = [binary, "start", "-H", "127.0.0.1", "--port", str(port), "--in-memory"]
    with _server(argv, port, "gcp-storage-emulator", env=clean_env(), workdir=workdir):
        yield {"endpoint": f"http://127.0.0.1:{port}", "port": port}


def azurite_binary() -> str | None:
    local = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.exists() else shutil.which("azurite-blob")


@contextmanager
def azurite(workdir: Path) -> Iterator[dict[str, Any]]:
    """Azurite's Blob service in memory, with one account of a random key (``AZURITE_ACCOUNTS``): it checks
    Shared Key signatures and SAS tokens as Azure does. Yields endpoint (with the account path), port,
    account and key."""
    binary = azurite_binary()
    need(binary is not None and shutil.which("node") is not None,
         "Azurite is not installed (scripts/test-services.sh installs it with npm into .tools/azurite; needs node)")  # fmt: skip
    assert binary is not None
    port = free_port()
    key = base64.b64encode(secrets.token_bytes(64)).decode()
    argv = [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
            "--disableTelemetry", "--skipApiVersionCheck", "--disableProductStyleUrl", "--silent"]
    with _server(argv, port, "azurite", env=clean_env(AZURITE_ACCOUNTS=f"{AZURITE_ACCOUNT}:{key}"), workdir=workdir):
        yield {
            "endpoint": f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}",
            "port": port,
            "account": AZURITE_ACCOUNT,
            "key": key,
        }
