"""A local MLflow tracking server (``mlflow server`` as a child process) for tests, CI and a developer's machine.

The backend store is a database (PostgreSQL in the suite, any SQLAlchemy URL MLflow accepts) and artifacts go
to an object store (``s3://bucket/prefix`` on an S3-compatible server: the suite uses moto's). The server
proxies artifacts (``--serve-artifacts``), so clients need only its URL, never the object store's keys.

Example (what ``scripts/test-services.sh`` prints how to run)::

    python -m greekfire.training.mlflow_server \\
        --backend-store-uri postgresql+psycopg://postgres@127.0.0.1:5432/greekfire_mlflow \\
        --artifacts-destination s3://greekfire-mlflow/artifacts --s3-endpoint-url http://127.0.0.1:9000

    with mlflow_server(backend, "s3://bucket/mlflow", workdir=tmp, env=s3_env) as server:
        settings.training.mlflow_tracking_uri = server.url
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from greekfire.core.db import db_error_reason, masked_url
from greekfire.core.errors import UnavailableError
from greekfire.core.settings import env_snapshot

#: variables of this process the server must not inherit (a developer's real cloud credentials, our settings)
SCRUBBED_PREFIXES = ("AWS_", "MLFLOW_", "GREEKFIRE_")


@dataclass
class MlflowServer:
    """A running ``mlflow server``: its URL (``http://127.0.0.1:PORT``), the process and its log file."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def healthy(self) -> bool:
        """True when ``GET /health`` answers OK."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s`` seconds) and its workers."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout_s)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mlflow_binary() -> str | None:
    """The ``mlflow`` command beside this Python (a virtual environment), else on PATH."""
    local = Path(sys.executable).parent / "mlflow"
    return str(local) if local.exists() else shutil.which("mlflow")


def ensure_database(url: str) -> str:
    """Create the PostgreSQL database named in ``url`` when it is absent (connecting to ``postgres`` on the
    same server); returns ``url``. Other databases (SQLite) are left to MLflow. UnavailableError when the
    server cannot be reached."""
    u = make_url(url)
    if not u.drivername.startswith("postgresql") or not u.database:
        return url
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": u.database}).first()
            if found is None:
                conn.execute(text(f'CREATE DATABASE "{u.database}"'))
    except SQLAlchemyError as exc:
        raise UnavailableError(masked_url(url), f"cannot create the MLflow database: {db_error_reason(exc)}") from None
    finally:
        admin.dispose()
    return url


def drop_database(url: str) -> None:
    """Drop the PostgreSQL database named in ``url`` (closing its other connections first); nothing for
    other databases."""
    u = make_url(url)
    if not u.drivername.startswith("postgresql") or not u.database:
        return
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def start_mlflow_server(
    backend_store_uri: str,
    artifacts_destination: str,
    *,
    workdir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    timeout_s: float = 90.0,
) -> MlflowServer:
    """Start ``mlflow server`` on ``host:port`` (a free port when None) and wait until ``/health`` answers.

    ``env``: extra variables for the server (``MLFLOW_S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` for an S3-compatible artifact store); this process's ``AWS_*``, ``MLFLOW_*``
    and ``GREEKFIRE_*`` variables are not passed on. The log goes to ``workdir/mlflow-server.log``.
    Raises UnavailableError with the log's tail when mlflow is not installed, exits at start, or is not
    healthy within ``timeout_s`` seconds (the process is stopped then).
    """
    binary = mlflow_binary()
    if binary is None:
        raise UnavailableError("mlflow server", "the mlflow command is not installed (pip install mlflow)")
    port = port or free_port(host)
    workdir.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in env_snapshot().items() if not k.startswith(SCRUBBED_PREFIXES)}
    child_env.update(env or {})
    argv = [
        binary, "server", "--host", host, "--port", str(port), "--workers", str(workers),
        "--backend-store-uri", backend_store_uri, "--serve-artifacts",
        "--artifacts-destination", artifacts_destination,
    ]
    log_path = workdir / "mlflow-server.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=child_env, cwd=workdir,
                                start_new_session=True)
    server = MlflowServer(url=f"http://{host}:{port}", port=port, process=proc, log_path=log_path)
    deadline = time.monotonic() + timeout_s
    while not server.healthy():
        if proc.poll() is not None:
            raise UnavailableError(f"mlflow server on {masked_url(backend_store_uri)}",
                                   f"exited at start (code {proc.returncode}): {server.log_tail()}")
        if time.monotonic() > deadline:
            server.stop()
            raise UnavailableError(f"mlflow server on port {port}",
                                   f"not healthy after {timeout_s:g} s: {server.log_tail()}")
        time.sleep(0.25)
    return server


@contextmanager
def mlflow_server(backend_store_uri: str, artifacts_destination: str, *, workdir: Path,
                  **kwargs: object) -> Iterator[MlflowServer]:
    """:func:`start_mlflow_server` as a context manager: the server stops on exit."""
    server = start_mlflow_server(backend_store_uri, artifacts_destination, workdir=workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: create the database, start the server, print its URL and wait for Ctrl-C."""
    p = argparse.ArgumentParser(prog="python -m greekfire.training.mlflow_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend-store-uri", required=True, help="database URL (PostgreSQL database created if absent)")
    p.add_argument("--artifacts-destination", required=True, help="s3://bucket/prefix or a folder")
    p.add_argument("--s3-endpoint-url", default=None, help="S3-compatible endpoint (MinIO, moto)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workdir", type=Path, default=Path(".greekfire/mlflow-server"))
    args = p.parse_args(argv)
    env = {"MLFLOW_S3_ENDPOINT_URL": args.s3_endpoint_url} if args.s3_endpoint_url else {}
    # the object store's keys: the standard AWS variables of this process, passed on explicitly
    env.update({k: v for k, v in env_snapshot("AWS_").items()})
    try:
        server = start_mlflow_server(ensure_database(args.backend_store_uri), args.artifacts_destination,
                                     workdir=args.workdir, host=args.host, port=args.port, env=env)
    except UnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"mlflow server: {server.url} (log {server.log_path})", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
