"""Storage through fsspec: local paths, ``s3://`` (AWS, MinIO, any S3-compatible), ``gs://``, ``az://``.

Endpoints, region and credentials come from the storage settings the caller passes (``settings`` or
``settings.storage``, loaded from YAML or ``GREEKFIRE_STORAGE__*`` variables by the caller); where they
leave keys empty, the standard AWS chain (``AWS_ACCESS_KEY_ID``..., ``~/.aws``) applies. Passing none means
the defaults of :class:`~greekfire.core.settings.StorageSettings`: this module never loads the process's
settings behind the caller's back. Nothing here hard-codes an endpoint or a key.

:func:`check_storage` tests a URL before a job relies on it and says plainly what is wrong.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

import fsspec
from fsspec.implementations.local import LocalFileSystem

from greekfire.core.errors import ConfigError, UnavailableError
from greekfire.core.metrics import counter
from greekfire.core.settings import Settings, StorageSettings

StorageLike = Settings | StorageSettings | None

_S3 = {"s3", "s3a"}
_GCS = {"gs", "gcs"}
_AZURE = {"az", "abfs", "abfss"}
_LOCAL = {"", "file", "local"}
_PACKAGE_FOR = {**{p: "s3fs" for p in _S3}, **{p: "gcsfs" for p in _GCS}, **{p: "adlfs" for p in _AZURE}}

CHECKS = counter("greekfire_data_storage_checks", "storage checks run, by outcome", ["problem"])

# the problems check_storage can name (``""`` when the check passed)
PROBLEMS = (
    "bad_url",
    "missing_package",
    "endpoint_unreachable",
    "bad_credentials",
    "missing_bucket",
    "no_permission",
    "corrupt_file",
    "missing_path",
    "error",
)


def storage_settings(settings: StorageLike) -> StorageSettings:
    """The storage section of ``settings`` (whole settings or their ``storage``); None: the defaults."""
    if settings is None:
        return StorageSettings()
    if isinstance(settings, StorageSettings):
        return settings
    return settings.storage


def _protocol(url: str) -> str:
    if "://" not in url:
        return ""
    return url.split("://", 1)[0].lower()


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    raw = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return raw or None


def s3_options(settings: StorageLike) -> dict[str, Any]:
    """Keyword arguments for ``s3fs.S3FileSystem`` from the storage settings (no secrets logged)."""
    st = storage_settings(settings)
    opts: dict[str, Any] = {
        "anon": st.s3_anon,
        "config_kwargs": {
            "connect_timeout": st.connect_timeout_s,
            "read_timeout": max(30.0, st.connect_timeout_s),
            "retries": {"max_attempts": st.max_attempts, "mode": "standard"},
        },
    }
    key, secret = _secret(st.s3_access_key_id), _secret(st.s3_secret_access_key)
    if key:
        opts["key"] = key
    if secret:
        opts["secret"] = secret
    if st.s3_endpoint_url:
        opts["endpoint_url"] = st.s3_endpoint_url
    if st.s3_region:
        opts["client_kwargs"] = {"region_name": st.s3_region}
    return opts


def open_fs(url: str, settings: StorageLike = None, *, fresh: bool = False) -> tuple[Any, str]:
    """An fsspec filesystem for ``url`` and the path inside it, configured from the storage settings.

    ``url``: a local path, ``file://``, ``memory://``, ``s3://bucket/prefix``, ``gs://...`` or
    ``az://...``. ``fresh`` skips fsspec's instance cache (use it in forked DataLoader workers). Raises
    :class:`ConfigError` (field ``storage.url``) for an unknown scheme or a missing optional package.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("storage.url", url, "a path or URL such as s3://bucket/prefix")
    proto = _protocol(url)
    if proto in _LOCAL:
        fs = LocalFileSystem(auto_mkdir=True)
        return fs, fs._strip_protocol(url)
    kwargs: dict[str, Any] = {}
    retries = None
    if proto in _S3:
        kwargs = s3_options(settings)
        retries = storage_settings(settings).max_attempts
        proto = "s3"
    if fresh:
        kwargs["skip_instance_cache"] = True
    try:
        fs = fsspec.filesystem(proto, **kwargs)
    except ImportError as exc:
        pkg = _PACKAGE_FOR.get(proto, proto)
        raise ConfigError(
            "storage.url", url, f"the {proto}:// scheme needs the package {pkg!r} (pip install {pkg})"
        ) from exc
    except ValueError as exc:
        raise ConfigError("storage.url", url, f"unknown storage scheme {proto!r}: {exc}") from exc
    if retries is not None:
        fs.retries = retries  # s3fs retries on its own as well as botocore; both follow the one setting
    return fs, fs._strip_protocol(url)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of :func:`check_storage`: ``ok``, the ``problem`` code (see :data:`PROBLEMS`), a plain
    ``message`` and a ``hint`` saying what to fix; ``seconds`` the time the check took."""

    ok: bool
    url: str
    problem: str = ""
    message: str = ""
    hint: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for ``--json``)."""
        return asdict(self)

    def raise_if_failed(self) -> None:
        """Raise :class:`ConfigError` (field ``storage.url``) with the message and hint when not ok."""
        if not self.ok:
            raise ConfigError("storage.url", self.url, f"{self.problem}: {self.message} {self.hint}".strip())

    def __str__(self) -> str:
        if self.ok:
            return f"OK {self.url}: {self.message}"
        return f"FAILED {self.url} [{self.problem}]: {self.message} {self.hint}".strip()


def _tcp_reachable(host: str, port: int, timeout: float) -> str:
    """'' when a TCP connection opens, else a short reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ""
    except socket.gaierror as exc:
        return f"the host name {host!r} does not resolve ({exc.strerror or exc})"
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


_BAD_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
    "UnrecognizedClientException",
}
_NO_PERMISSION = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"}
_MISSING_BUCKET = {"NoSuchBucket"}


def _classify_s3_error(exc: Exception) -> tuple[str, str]:
    """(problem, detail) for a botocore exception."""
    # botocore is imported only by S3 checks: it costs about 0.15 s that local storage never needs
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "bad_credentials", "no usable credentials were found"
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return "endpoint_unreachable", str(exc)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        msg = str(err.get("Message", "")) or code
        if code in _BAD_CREDENTIALS:
            return "bad_credentials", f"{code}: {msg}"
        if code in _MISSING_BUCKET or code == "404":
            return "missing_bucket", f"{code}: {msg}"
        if code in _NO_PERMISSION:
            return "no_permission", f"{code}: {msg}"
        return "error", f"{code}: {msg}"
    return "error", f"{type(exc).__name__}: {exc}"


_HINTS = {
    "endpoint_unreachable": "Check storage.s3_endpoint_url (GREEKFIRE_STORAGE__S3_ENDPOINT_URL), that the server "
    "runs, and the network between here and there.",
    "bad_credentials": "Check storage.s3_access_key_id / s3_secret_access_key (GREEKFIRE_STORAGE__S3_ACCESS_KEY_ID, "
    "..._SECRET_ACCESS_KEY) or the AWS credential chain; the server does not know this key pair.",
    "missing_bucket": "Create the bucket or fix its name in the URL.",
    "no_permission": "The credentials are valid but their policy does not allow this bucket/prefix; grant "
    "s3:ListBucket (and s3:GetObject / s3:PutObject) on it.",
    "missing_path": "Nothing is stored under this path yet: write the data first or fix the path.",
    "corrupt_file": "Rewrite or remove that file: readers stop at it.",
}


def _check_footers(url: str, settings: StorageLike) -> tuple[str, str]:
    """('', '') when every Parquet file under ``url`` has a readable footer, else the problem and the first
    bad file: a partial write or a truncated copy must fail the check, not the first reader."""
    import pyarrow.parquet as pq  # pyarrow only when a check reads footers

    fs, path = open_fs(url, settings)
    files = sorted(f for f in fs.find(path) if f.endswith((".parquet", ".pq"))) if fs.isdir(path) else []
    for f in files:
        try:
            with fs.open(f, "rb") as fh:
                pq.ParquetFile(fh).metadata  # noqa: B018 - reading the footer is the check
        except Exception as exc:  # any reason a reader would fail: report the file, never crash the check
            return "corrupt_file", f"{f} is not a readable Parquet file: {type(exc).__name__}: {exc}"
    return "", ""


def storage_error(url: str, exc: Exception) -> UnavailableError:
    """The error for a failed read or write under ``url``: the cause in plain words and what to fix."""
    if _protocol(url) in _S3:
        problem, detail = _classify_s3_error(exc)
    elif isinstance(exc, PermissionError):
        problem, detail = "no_permission", str(exc)
    else:
        problem, detail = "error", f"{type(exc).__name__}: {exc}"
    hint = _HINTS.get(problem, "")
    return UnavailableError(url, f"{problem}: {detail}. {hint}".strip())


def _check_s3(url: str, settings: StorageLike, write: bool) -> tuple[str, str, dict[str, Any]]:
    # lazy for the same reason as in _classify_s3_error: only S3 checks pay for botocore
    import botocore.session
    from botocore.config import Config

    st = storage_settings(settings)
    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        return "bad_url", f"{url!r} names no bucket (expected s3://bucket/prefix)", {}
    endpoint = st.s3_endpoint_url or f"https://s3.{st.s3_region or 'us-east-1'}.amazonaws.com"
    ep = urlparse(endpoint)
    if not ep.hostname:
        return "bad_url", f"storage.s3_endpoint_url={endpoint!r} is not a URL (http://host:port)", {}
    port = ep.port or (443 if ep.scheme == "https" else 80)
    why = _tcp_reachable(ep.hostname, port, st.connect_timeout_s)
    details: dict[str, Any] = {"endpoint": endpoint, "bucket": bucket, "prefix": prefix}
    if why:
        return "endpoint_unreachable", f"cannot reach the endpoint {endpoint}: {why}", details
    session = botocore.session.get_session()
    client = session.create_client(
        "s3",
        region_name=st.s3_region or "us-east-1",
        endpoint_url=st.s3_endpoint_url,
        aws_access_key_id=_secret(st.s3_access_key_id),
        aws_secret_access_key=_secret(st.s3_secret_access_key),
        config=Config(
            connect_timeout=st.connect_timeout_s,
            read_timeout=max(10.0, st.connect_timeout_s),
            retries={"max_attempts": 1, "mode": "standard"},
            signature_version=botocore.UNSIGNED if st.s3_anon else None,
        ),
    )
    try:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as exc:  # classified below; anything unknown is reported, not raised
        problem, detail = _classify_s3_error(exc)
        return problem, f"listing s3://{bucket}/{prefix} failed: {detail}", details
    details["objects_seen"] = int(listing.get("KeyCount", 0))
    if write:
        probe = (
            f"{prefix.rstrip('/')}/.greekfire-check-{uuid.uuid4().hex}"
            if prefix
            else (f".greekfire-check-{uuid.uuid4().hex}")
        )
        try:
            client.put_object(Bucket=bucket, Key=probe, Body=b"greekfire storage check")
            client.delete_object(Bucket=bucket, Key=probe)
        except Exception as exc:
            problem, detail = _classify_s3_error(exc)
            return problem, f"writing a probe object under s3://{bucket}/{prefix} failed: {detail}", details
        details["write"] = "ok"
    elif prefix and not details["objects_seen"]:
        return "missing_path", f"the bucket {bucket!r} exists but nothing is stored under {prefix!r}", details
    return (
        "",
        f"bucket {bucket!r} reachable at {endpoint}"
        + (", read and write work" if write else ", listing works"),
        details,
    )


def _check_generic(url: str, settings: StorageLike, write: bool) -> tuple[str, str, dict[str, Any]]:
    try:
        fs, path = open_fs(url, settings, fresh=True)
    except ConfigError as exc:
        problem = "missing_package" if "needs the package" in str(exc) else "bad_url"
        return problem, str(exc), {}
    details: dict[str, Any] = {"protocol": _protocol(url) or "file", "path": path}
    try:
        if write:
            fs.makedirs(path, exist_ok=True)
            probe = f"{path.rstrip('/')}/.greekfire-check-{uuid.uuid4().hex}"
            with fs.open(probe, "wb") as fh:
                fh.write(b"greekfire storage check")
            fs.rm(probe)
            return "", f"{path} is readable and writable", details
        if not fs.exists(path):
            return "missing_path", f"nothing exists at {path}", details
        fs.ls(path) if fs.isdir(path) else fs.info(path)
        return "", f"{path} is readable", details
    except PermissionError as exc:
        return "no_permission", f"permission denied: {exc}", details
    except FileNotFoundError as exc:
        return "missing_path", f"not found: {exc}", details
    except Exception as exc:
        return "error", f"{type(exc).__name__}: {exc}", details


def check_storage(url: str, settings: StorageLike = None, *, write: bool = False) -> CheckResult:
    """Test that ``url`` can be reached with the storage settings and say plainly what is wrong.

    Without ``write`` it lists the location and requires something stored there (what a reader needs);
    with ``write`` it writes and deletes a small probe object (what a job writing checkpoints needs).
    Never raises for a storage problem: the result names it (``endpoint_unreachable``,
    ``bad_credentials``, ``missing_bucket``, ``no_permission``, ``missing_path``...). Call
    ``.raise_if_failed()`` to turn a failure into a :class:`ConfigError`.
    """
    t0 = time.perf_counter()
    proto = _protocol(url) if isinstance(url, str) else ""
    details: dict[str, Any]
    if not isinstance(url, str) or not url.strip():
        problem, message, details = "bad_url", f"{url!r} is not a path or URL", {}
    elif proto in _S3:
        try:
            problem, message, details = _check_s3(url, settings, write)
        except Exception as exc:  # a check must report, never crash the caller
            problem, message, details = "error", f"{type(exc).__name__}: {exc}", {}
    else:
        problem, message, details = _check_generic(url, settings, write)
    if not problem and not write:
        try:
            problem, footer_message = _check_footers(url, settings)
        except Exception as exc:  # a check must report, never crash the caller
            problem, footer_message = "error", f"{type(exc).__name__}: {exc}"
        message = footer_message or message
    CHECKS.labels(problem=problem or "ok").inc()
    return CheckResult(
        ok=not problem,
        url=str(url),
        problem=problem,
        message=message,
        hint=_HINTS.get(problem, ""),
        seconds=round(time.perf_counter() - t0, 3),
        details=details,
    )
