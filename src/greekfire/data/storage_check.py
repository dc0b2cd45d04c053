"""Checking a storage URL before a job relies on it: :func:`check_storage` says plainly what is wrong (a named
problem of :data:`greekfire.data.storage.PROBLEMS` and what to do), :func:`storage_error` turns an exception
met while reading or writing into the same one-line :class:`~greekfire.core.errors.UnavailableError`. The
filesystems themselves come from :func:`greekfire.data.storage.open_fs`.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlparse

from greekfire.core.errors import ConfigError, UnavailableError
from greekfire.core.metrics import counter
from greekfire.core.settings import StorageSettings
from greekfire.data.storage import (
    _AZURE,
    _CREDENTIAL_FIELDS,
    _GCS,
    _S3,
    StorageLike,
    _connection_string_parts,
    _protocol,
    _secret,
    _secret_file,
    open_fs,
    storage_settings,
)

CHECKS = counter("greekfire_data_storage_checks", "storage checks run, by outcome", ["problem"])


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


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (clients wrap the server's answer in their own exceptions)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 8:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _classify_s3_error(exc: Exception) -> tuple[str, str]:
    """(problem, detail) for a botocore exception, or one s3fs made of it (its cause is kept)."""
    # botocore is imported only by S3 checks: it costs about 0.15 s that local storage never needs
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    for e in _chain(exc):
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return "bad_credentials", "no usable credentials were found"
        if isinstance(e, EndpointConnectionError | ConnectTimeoutError):
            return "endpoint_unreachable", str(e)
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            msg = str(err.get("Message", "")) or code
            if code in _BAD_CREDENTIALS:
                return "bad_credentials", f"{code}: {msg}"
            if code in _MISSING_BUCKET or code == "404":
                return "missing_bucket", f"{code}: {msg}"
            if code in _NO_PERMISSION:
                return "no_permission", f"{code}: {msg}"
            return "error", f"{code}: {msg}"
    if isinstance(exc, PermissionError):
        return "no_permission", str(exc)
    if isinstance(exc, FileNotFoundError):
        return "missing_path", f"not found: {exc}"
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
_GCS_HINTS = {
    "endpoint_unreachable": "Check storage.gcs_endpoint_url (GREEKFIRE_STORAGE__GCS_ENDPOINT_URL; an emulator "
    "needs http://host:port), that the server runs, and the network between here and there.",
    "bad_credentials": "Check storage.gcs_credentials_file (a service-account or authorized-user JSON key) or "
    "Google's chain (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, the metadata "
    "server); set storage.gcs_anon for public buckets and emulators.",
    "missing_bucket": "Create the bucket (gcloud storage buckets create gs://NAME) or fix its name in the URL.",
    "no_permission": "The credentials are valid but lack a role on this bucket; grant roles/storage.objectViewer "
    "(reading) or roles/storage.objectUser (writing).",
}
_AZURE_HINTS = {
    "endpoint_unreachable": "Check storage.azure_endpoint_url (Azurite: http://127.0.0.1:10000/<account>) or the "
    "account name, that the server runs, and the network between here and there.",
    "bad_credentials": "Check storage.azure_account_key / azure_connection_string / azure_sas_token (or their "
    "_file keys, GREEKFIRE_STORAGE__AZURE_*) or Azure's chain (AZURE_STORAGE_* variables, then "
    "DefaultAzureCredential: AZURE_CLIENT_ID..., workload or managed identity, `az login`).",
    "missing_bucket": "Create the container (az storage container create -n NAME) or fix its name in the URL.",
    "no_permission": "The credentials are valid but do not allow this: give the SAS token the r/l (reading) or "
    "w/c/d (writing) permissions, or the identity the Storage Blob Data Reader / Contributor role.",
}


def _hint(proto: str, problem: str) -> str:
    """What to do about ``problem`` on storage of protocol ``proto``."""
    special = _GCS_HINTS if proto in _GCS else _AZURE_HINTS if proto in _AZURE else {}
    return special.get(problem) or _HINTS.get(problem, "")


_GCS_BUCKET_REQUEST = re.compile(r"(^|/)b/[^/]+/o/?$")
_AZURE_BAD_CREDENTIALS = {"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"}
_AZURE_NO_PERMISSION = {
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationSourceIPMismatch",
    "AuthorizationProtocolMismatch",
    "InsufficientAccountPermissions",
}


def _classify_cloud_error(proto: str, exc: Exception) -> tuple[str, str]:
    """(problem, detail) for an exception from gcsfs, adlfs or their SDKs (and plain OS errors)."""
    for e in _chain(exc):
        name = type(e).__name__
        if isinstance(e, ConfigError):
            return ("bad_credentials" if e.field in _CREDENTIAL_FIELDS else "bad_url"), str(e)
        code = getattr(e, "error_code", None) or ""  # azure.core HttpResponseError: a str or StorageErrorCode
        code = str(getattr(code, "value", code))
        if code:
            detail = f"{code}: {str(e).splitlines()[0] if str(e) else name}"
            # Azure answers a wrong key with 403 AuthenticationFailed; Azurite with AuthorizationFailure and
            # "Server failed to authenticate the request"
            if code in _AZURE_BAD_CREDENTIALS or (code == "AuthorizationFailure" and "authenticate" in str(e)):
                return "bad_credentials", detail
            if code in _AZURE_NO_PERMISSION:
                return "no_permission", detail
            if code == "ContainerNotFound":
                return "missing_bucket", detail
            if code == "BlobNotFound":
                return "missing_path", detail
            return "error", detail
        if name in {"ClientAuthenticationError", "CredentialUnavailableError", "DefaultCredentialsError", "RefreshError"}:
            return "bad_credentials", f"{name}: {e}"
        status = getattr(e, "code", None) if name == "HttpError" else None  # gcsfs.retry.HttpError
        if status == 401:
            return "bad_credentials", f"HTTP 401: {e}"
        if status == 403 or (isinstance(e, OSError) and str(e).startswith("Forbidden")):
            return "no_permission", f"{name}: {e}"
        if name in {"ClientConnectorError", "ServerTimeoutError", "ServiceRequestError", "ConnectionTimeoutError"} or (
            isinstance(e, ConnectionError | TimeoutError)
        ):
            return "endpoint_unreachable", f"{name}: {e}"
        if isinstance(e, PermissionError):
            return "no_permission", str(e)
        if isinstance(e, FileNotFoundError):
            # gcsfs names the request that answered 404; ".../b/<bucket>/o" (an object listing or an upload,
            # no object name in it) can only be missing for want of the bucket
            if proto in _GCS and _GCS_BUCKET_REQUEST.search(str(e)):
                return "missing_bucket", f"not found: {e}"
            return "missing_path", f"not found: {e}"
    return "error", f"{type(exc).__name__}: {exc}"


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
    proto = _protocol(url)
    if proto in _S3:
        problem, detail = _classify_s3_error(exc)
    elif proto in _GCS | _AZURE:
        problem, detail = _classify_cloud_error(proto, exc)
    elif isinstance(exc, PermissionError):
        problem, detail = "no_permission", str(exc)
    else:
        problem, detail = "error", f"{type(exc).__name__}: {exc}"
    hint = _hint(proto, problem)
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


def _cloud_endpoint(proto: str, st: StorageSettings) -> str | None:
    """The endpoint a gs:// or az:// URL talks to (for the reachability probe); None where only the
    client's own chain knows it (an Azure connection string in the environment)."""
    if proto in _GCS:
        return st.gcs_endpoint_url or "https://storage.googleapis.com"
    conn = _secret(st.azure_connection_string)
    if conn is None and st.azure_connection_string_file is not None:
        try:
            conn = _secret_file(st.azure_connection_string_file, "azure_connection_string_file")
        except ConfigError:
            conn = None  # reported when the client is built
    if conn:
        parts = _connection_string_parts(conn)
        if parts.get("BlobEndpoint"):
            return parts["BlobEndpoint"]
        if parts.get("AccountName"):
            scheme = parts.get("DefaultEndpointsProtocol", "https")
            return f"{scheme}://{parts['AccountName']}.blob.{parts.get('EndpointSuffix', 'core.windows.net')}"
        return None
    if st.azure_endpoint_url:
        return st.azure_endpoint_url
    return f"https://{st.azure_account_name}.blob.core.windows.net" if st.azure_account_name else None


def _check_cloud(url: str, settings: StorageLike, write: bool) -> tuple[str, str, dict[str, Any]]:
    """check_storage for gs:// and az://: endpoint reachable, client built, then something listed under the
    prefix (read) or a probe object written and deleted (write); on a miss, the bucket (container) is
    listed to tell a missing bucket from a missing path."""
    proto = _protocol(url)
    kind = "container" if proto in _AZURE else "bucket"
    st = storage_settings(settings)
    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket:
        return "bad_url", f"{url!r} names no {kind} (expected {proto}://{kind}/prefix)", {}
    details: dict[str, Any] = {kind: bucket, "prefix": prefix}
    endpoint = _cloud_endpoint(proto, st)
    if endpoint:
        details["endpoint"] = endpoint
        ep = urlparse(endpoint)
        if not ep.hostname:
            return "bad_url", f"the endpoint {endpoint!r} is not a URL (http://host:port)", details
        why = _tcp_reachable(ep.hostname, ep.port or (443 if ep.scheme == "https" else 80), st.connect_timeout_s)
        if why:
            return "endpoint_unreachable", f"cannot reach the endpoint {endpoint}: {why}", details
    where = f"{proto}://{bucket}"
    try:
        fs, _ = open_fs(url, settings, fresh=True)
    except ConfigError as exc:
        if "needs the package" in str(exc):
            return "missing_package", str(exc), details
        problem, detail = _classify_cloud_error(proto, exc)
        return problem, detail, details
    except Exception as exc:
        problem, detail = _classify_cloud_error(proto, exc)
        return problem, f"connecting to {where} failed: {detail}", details
    path = f"{bucket}/{prefix}".rstrip("/")
    # only listing and object rights are needed: reading the bucket's own metadata needs more (a container
    # SAS token or GCS's objectViewer role cannot), so the bucket is looked at only when the prefix fails
    try:
        if write:
            probe = f"{path}/.greekfire-check-{uuid.uuid4().hex}"
            fs.pipe_file(probe, b"greekfire storage check")
            fs.rm_file(probe)
            details["write"] = "ok"
        else:
            seen = fs.ls(path, detail=False)
            details["objects_seen"] = len(seen)
            if prefix and not seen:
                raise FileNotFoundError(path)
    except Exception as exc:
        problem, detail = _classify_cloud_error(proto, exc)
        if problem == "missing_path":
            try:
                fs.ls(bucket, detail=False)
            except Exception as bucket_exc:
                bucket_problem, bucket_detail = _classify_cloud_error(proto, bucket_exc)
                if bucket_problem in {"missing_path", "missing_bucket"}:  # the bucket itself is not there
                    problem, detail = "missing_bucket", bucket_detail
        if problem == "missing_bucket":
            return problem, f"the {kind} {bucket!r} does not exist" + (f" at {endpoint}" if endpoint else ""), details
        if problem == "missing_path":
            return problem, f"the {kind} {bucket!r} exists but nothing is stored under {prefix!r}", details
        action = "writing a probe object under" if write else "listing"
        return problem, f"{action} {where}/{prefix} failed: {detail}", details
    return "", f"{kind} {bucket!r} reachable" + (f" at {endpoint}" if endpoint else "") + (
        ", read and write work" if write else ", listing works"), details


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
    elif proto in _GCS | _AZURE:
        try:
            problem, message, details = _check_cloud(url, settings, write)
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
        hint=_hint(proto, problem),
        seconds=round(time.perf_counter() - t0, 3),
        details=details,
    )
