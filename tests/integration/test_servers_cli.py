"""Both HTTP servers, started as a user starts them (``greekfire gpu serve``, ``greekfire serve pricing``):
each prints the URL it listens on with its paths once the socket listens, and that URL's /docs answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from conftest import command_env, free_port, poll_until, pricing_checkpoint

CLI = [sys.executable, "-c", "from greekfire.cli import app; app()"]


def _env(tmp_path: Path) -> dict[str, str]:
    out = command_env()
    out["GREEKFIRE_HOME"] = str(tmp_path / "home")
    out["GREEKFIRE_GPU__DMI_ROOT"] = str(tmp_path)  # no cloud lookup from the test machine
    return out


def _says_where_and_docs_answer(args: list[str], env: dict[str, str], name: str, paths: str, listed: set[str]) -> None:
    port = free_port()
    proc = subprocess.Popen(CLI + args + ["--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # printed once the socket listens
        url = f"http://127.0.0.1:{port}"
        assert line.strip() == f"{name}: listening on {url} ({paths})"
        assert poll_until(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, 20, 0.1,
                          ignore=(httpx.HTTPError,))
        docs = httpx.get(f"{url}/docs", timeout=5)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        schema = httpx.get(f"{url}/openapi.json", timeout=5).json()
        assert listed <= set(schema["paths"])
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_gpu_serve_says_where_it_listens_and_docs_answer(tmp_path: Path) -> None:
    _says_where_and_docs_answer(["gpu", "serve"], _env(tmp_path), "greekfire gpu serve",
                                "/health, /placement, /metrics, /docs", {"/health", "/placement"})


def test_serve_pricing_says_where_it_listens_and_docs_answer(tmp_path: Path) -> None:
    ckpt = pricing_checkpoint(tmp_path, "smoke", ["data.n_samples=300"])
    _says_where_and_docs_answer(["serve", "pricing", "--model", str(ckpt), "--device", "cpu"], _env(tmp_path),
                                "greekfire serve pricing", "/v1/price, /health, /metrics, /docs",
                                {"/v1/price", "/health"})
