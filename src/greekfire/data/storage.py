"""Storage through fsspec: local paths, ``s3://`` (AWS, MinIO, any S3-compatible), ``gs://`` (Google Cloud
Storage, emulators), ``az://`` (Azure Blob Storage, Azurite).

Endpoints, regions and credentials come from the storage settings the caller passes (``settings`` or
``settings.storage``, loaded from YAML or ``GREEKFIRE_STORAGE__*`` variables by the caller); where they leave
credentials empty, each cloud's standard chain applies: AWS (``AWS_ACCESS_KEY_ID``..., ``~/.aws``, web
identity, instance role), Google (``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's default credentials file, the
metadata server), Azure (``AZURE_STORAGE_*`` variables, then ``DefaultAzureCredential``: environment,
workload identity, managed identity, Azure CLI). Passing none means the defaults of
:class:`~greekfire.core.settings.StorageSettings`: this module never loads the process's settings behind the
caller's back. Nothing here hard-codes an endpoint or a key.

:func:`greekfire.data.storage_check.check_storage` tests a URL before a job relies on it and says plainly
what is wrong.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec
from fsspec.implementations.local import LocalFileSystem

from greekfire.core.errors import ConfigError, UnavailableError
from greekfire.core.settings import Settings, StorageSettings

StorageLike = Settings | StorageSettings | None

_S3 = {"s3", "s3a"}
_GCS = {"gs", "gcs"}
_AZURE = {"az", "abfs", "abfss"}
_LOCAL = {"", "file", "local"}
_PACKAGE_FOR = {**{p: "s3fs" for p in _S3}, **{p: "gcsfs" for p in _GCS}, **{p: "adlfs" for p in _AZURE}}


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


# settings whose ConfigError means "these credentials cannot be used" rather than "this URL is wrong"
_CREDENTIAL_FIELDS = {
    "storage.gcs_credentials_file",
    "storage.azure_account_key_file",
    "storage.azure_connection_string_file",
    "storage.azure_endpoint_url",
    "storage.azure_account_name",
}
GCS_SCOPE = "https://www.googleapis.com/auth/devstorage.full_control"


def _secret_file(path: Path, key: str) -> str:
    """The secret held in ``path`` (a mounted Kubernetes secret, say), stripped of surrounding whitespace."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"storage.{key}", str(path), f"a readable file holding the secret ({exc.strerror or exc})") from exc
    if not text:
        raise ConfigError(f"storage.{key}", str(path), "a file holding the secret; this one is empty")
    return text


def _azure_secret(st: StorageSettings, key: str) -> str | None:
    value = _secret(getattr(st, key))
    path = getattr(st, f"{key}_file")
    return value if value or path is None else _secret_file(path, f"{key}_file")


def _gcs_credentials(path: Path) -> tuple[Any, str | None]:
    """(google.auth credentials, their project) from a service-account, authorized-user or external-account
    (workload identity federation) JSON file; a ConfigError naming the file when it cannot be used."""
    field_name = "storage.gcs_credentials_file"
    try:
        info = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(field_name, str(path), f"a readable JSON key file ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ConfigError(field_name, str(path), f"a JSON key file; this is not JSON ({exc})") from exc
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            from google.oauth2 import service_account

            creds: Any = service_account.Credentials.from_service_account_info(info, scopes=[GCS_SCOPE])
            return creds, info.get("project_id")
        if kind == "authorized_user":
            from google.oauth2.credentials import Credentials

            return Credentials.from_authorized_user_info(info, scopes=[GCS_SCOPE]), info.get("quota_project_id")
        if kind == "external_account":
            from google.auth import aws, identity_pool

            source = info.get("credential_source") or {}
            module: Any = aws if "environment_id" in source else identity_pool
            return module.Credentials.from_info(info, scopes=[GCS_SCOPE]), info.get("quota_project_id")
    except (ValueError, KeyError, TypeError) as exc:  # google.auth's MalformedError is a ValueError
        raise ConfigError(field_name, str(path), f"a valid {kind} key file: {type(exc).__name__}: {exc}") from exc
    raise ConfigError(
        field_name, str(path), f"a JSON key file of type service_account, authorized_user or external_account, not {kind!r}"
    )


def _file_stamp(path: Path) -> tuple[str, int, int]:
    try:
        stat = Path(path).stat()
    except OSError:
        return str(path), 0, 0
    return str(path), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _gcs_credentials_cached(path: str, mtime_ns: int, size: int) -> tuple[Any, str | None]:
    """One credentials object per version of a key file: fsspec's instance cache keys on the arguments, so
    a fresh object per call would build a new client (and fetch a new token) every time."""
    return _gcs_credentials(Path(path))


def gcs_options(settings: StorageLike) -> dict[str, Any]:
    """Keyword arguments for ``gcsfs.GCSFileSystem`` from the storage settings.

    Credentials: ``gcs_anon`` (none), else ``gcs_credentials_file``, else Google's default chain
    (``token="google_default"``: ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's file, the metadata server), which
    fails plainly where it finds nothing instead of falling back to anonymous access. Reads the key file.
    """
    st = storage_settings(settings)
    opts: dict[str, Any] = {"requests_timeout": max(30.0, st.connect_timeout_s)}
    if st.gcs_endpoint_url:
        opts["endpoint_url"] = st.gcs_endpoint_url.rstrip("/")
    project = st.gcs_project
    if st.gcs_anon:
        opts["token"] = "anon"
    elif st.gcs_credentials_file is not None:
        opts["token"], file_project = _gcs_credentials_cached(*_file_stamp(st.gcs_credentials_file))
        project = project or file_project
    else:
        opts["token"] = "google_default"
    if project:
        opts["project"] = project
    return opts


def _connection_string_parts(conn: str) -> dict[str, str]:
    return {k.strip(): v for k, _, v in (p.partition("=") for p in conn.split(";") if "=" in p)}


def azure_options(settings: StorageLike) -> dict[str, Any]:
    """Keyword arguments for ``adlfs.AzureBlobFileSystem`` from the storage settings.

    A connection string (``azure_connection_string`` or its ``_file``) wins. Otherwise the account name with,
    in order, its key, a SAS token, anonymous access or (none of them) ``DefaultAzureCredential``. An
    ``azure_endpoint_url`` (Azurite, a private endpoint) with a key or SAS becomes a connection string with
    that ``BlobEndpoint``; with token credentials it must be https. Reads secret files.
    """
    st = storage_settings(settings)
    timeout = max(1, math.ceil(st.connect_timeout_s))
    opts: dict[str, Any] = {"connection_timeout": timeout, "read_timeout": max(30, timeout)}
    conn = _azure_secret(st, "azure_connection_string")
    if conn:
        opts["connection_string"] = conn
        return opts
    key = _azure_secret(st, "azure_account_key")
    sas = _secret(st.azure_sas_token)
    account = st.azure_account_name
    endpoint = st.azure_endpoint_url.rstrip("/") if st.azure_endpoint_url else None
    if endpoint and (key or sas or st.azure_anon):
        parts = [f"BlobEndpoint={endpoint}"]
        if account:
            parts.append(f"AccountName={account}")
        if key:
            parts.append(f"AccountKey={key}")
        elif sas:
            parts.append(f"SharedAccessSignature={sas.lstrip('?')}")
        opts["connection_string"] = ";".join(parts) + ";"
        return opts
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme != "https" or not parsed.netloc:
            raise ConfigError(
                "storage.azure_endpoint_url", endpoint,
                "an https:// endpoint for token credentials; over http (Azurite) give an account key or SAS token",
            )
        opts["account_host"] = parsed.netloc + parsed.path
    if account:
        opts["account_name"] = account
    if key:
        opts["account_key"] = key
    elif sas:
        opts["sas_token"] = sas
    elif st.azure_anon:
        opts["anon"] = True
    return opts


def _construction_error(proto: str, exc: Exception) -> Exception:
    """A ConfigError naming the settings to fix when a cloud client cannot be built for want of
    credentials; any other exception unchanged."""
    if isinstance(exc, ConfigError):
        return exc
    if proto in _GCS and type(exc).__name__ == "DefaultCredentialsError":
        return ConfigError(
            "storage.gcs_credentials_file", None,
            "credentials: Google's default chain found none (GOOGLE_APPLICATION_CREDENTIALS, gcloud's file, the "
            "metadata server); set storage.gcs_credentials_file, or storage.gcs_anon for public buckets and "
            f"emulators ({exc})",
        )
    if proto in _AZURE and "account_name" in str(exc):
        return ConfigError(
            "storage.azure_account_name", None,
            "an account name or a connection string (storage.azure_account_name / azure_connection_string, or "
            f"AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_CONNECTION_STRING) ({exc})",
        )
    return exc


def is_object_store(fs: Any) -> bool:
    """True for an S3, GCS or Azure filesystem (each read a request: worth opening files without read-ahead)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(p in _S3 | _GCS | _AZURE for p in protocols)


def arrow_filesystem(fs: Any) -> Any:
    """The ``pyarrow.fs.FileSystem`` for ``pyarrow.dataset`` over the fsspec filesystem ``fs``.

    A local one is Arrow's own ``LocalFileSystem``, so Arrow's I/O threads never call Python: through
    fsspec (``PyFileSystem(FSSpecHandler(fs))``) they open, read and close every file in Python, and one
    still at it when the interpreter shuts down aborts the process after the work is done ("terminate called
    without an active exception", exit 134). Object stores and ``memory://`` stay on fsspec, which carries
    their credentials and retries (:func:`open_fs`)."""
    from pyarrow import fs as pafs

    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def open_fs(url: str, settings: StorageLike = None, *, fresh: bool = False) -> tuple[Any, str]:
    """An fsspec filesystem for ``url`` and the path inside it, configured from the storage settings.

    ``url``: a local path, ``file://``, ``memory://``, ``s3://bucket/prefix``, ``gs://...`` or
    ``az://...``. ``fresh`` skips fsspec's instance cache (use it in forked DataLoader workers). Raises
    :class:`ConfigError` (field ``storage.url``) for an unknown scheme or a missing optional package, and
    (field of the setting) for a credentials file or secret file that cannot be used.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("storage.url", url, "a path or URL such as s3://bucket/prefix")
    proto = _protocol(url)
    if proto in _LOCAL:
        fs = LocalFileSystem(auto_mkdir=True)
        return fs, fs._strip_protocol(url)
    try:
        cls: Any = fsspec.get_filesystem_class("s3" if proto in _S3 else proto)
    except ImportError as exc:
        pkg = _PACKAGE_FOR.get(proto, proto)
        raise ConfigError(
            "storage.url", url, f"the {proto}:// scheme needs the package {pkg!r} (pip install {pkg}, or the greekfire[cloud] extra)"
        ) from exc
    except ValueError as exc:
        raise ConfigError("storage.url", url, f"unknown storage scheme {proto!r}: {exc}") from exc
    kwargs: dict[str, Any] = {}
    retries = None
    if proto in _S3:
        kwargs = s3_options(settings)
        retries = storage_settings(settings).max_attempts
    elif proto in _GCS:
        kwargs = gcs_options(settings)
        if "endpoint_url" in kwargs:
            # gcsfs's default class asks the gRPC Storage Control API for each bucket's layout, which
            # emulators and private endpoints do not serve (a 60 s wait per bucket); its core class does not
            from gcsfs.core import GCSFileSystem

            cls = GCSFileSystem
    elif proto in _AZURE:
        kwargs = azure_options(settings)
    if fresh:
        kwargs["skip_instance_cache"] = True
    try:
        fs = cls(**kwargs)
    except Exception as exc:
        raise _construction_error(proto, exc) from exc
    if retries is not None:
        fs.retries = retries  # s3fs retries on its own as well as botocore; both follow the one setting
    return fs, fs._strip_protocol(url)


def publish_folder(local: str | Path, url: str, settings: StorageLike = None) -> list[str]:
    """Copy the folder ``local`` (a finished run: config, checkpoints, summary, logs) to ``url`` (a folder or
    ``s3://``/``gs://``/``az://`` prefix), file by file; returns the paths written, relative to ``url``.

    :class:`ConfigError` names ``local`` when it is not a folder; a storage failure is raised as
    :class:`UnavailableError` naming the URL (the local folder is left as it is, so nothing is lost)."""
    src = Path(local)
    if not src.is_dir():
        raise ConfigError("local", str(local), "an existing folder to publish")
    fs, root = open_fs(url, settings)
    root = root.rstrip("/")
    written: list[str] = []
    try:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = path.relative_to(src).as_posix()
            fs.put_file(str(path), f"{root}/{rel}")
            written.append(rel)
    except (OSError, ValueError) as exc:
        raise UnavailableError(url, f"could not copy {src} there after {len(written)} files: {exc}") from exc
    return written
