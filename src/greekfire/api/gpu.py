"""The GPU manager's HTTP server: ``GET /health`` (JSON), ``GET /placement``, ``GET /metrics``
(Prometheus) and the interactive API page ``GET /docs`` (FastAPI's).

``greekfire gpu serve`` runs :func:`build_app` under uvicorn (:func:`serve`); tests build the same app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from greekfire.api.server import ListeningServer
from greekfire.core.metrics import mount_metrics
from greekfire.core.settings import Settings, load_settings
from greekfire.gpu.cloud import CloudInfo
from greekfire.gpu.manager import GpuManager


def build_app(
    settings: Settings | None = None,
    *,
    nvml: Any | None = None,
    amdsmi: Any | None = None,
    cloud: CloudInfo | None = None,
) -> FastAPI:
    """The GPU manager app. Its :class:`GpuManager` (``app.state.gpu``) samples every
    ``gpu.sample_interval_s`` seconds and watches XID events while the app runs.

    ``GET /health`` answers ``{"status": "ok"|"degraded"|"unavailable", "devices": [...],
    "driver_version": ..., "memory": [...], ...}`` with HTTP 200 (the process is alive; the status says
    how the GPUs are). ``GET /metrics`` serves the process registry.
    """
    s = settings or load_settings()
    manager = GpuManager(s, nvml=nvml, amdsmi=amdsmi, cloud=cloud)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        manager.start()
        try:
            yield
        finally:
            manager.stop()

    app = FastAPI(title="greekfire GPU manager", version="1", lifespan=lifespan)
    app.state.gpu = manager

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Device health, memory headroom and driver versions."""
        out = manager.health()
        out["cloud"] = manager.inventory.cloud.as_dict()
        return out

    @app.get("/placement")
    def placement(need_mb: float = 0.0) -> dict[str, Any]:
        """Where a job needing ``need_mb`` MiB would go now."""
        return manager.place(need_mb=need_mb).as_dict()

    mount_metrics(app)
    return app


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Serve :func:`build_app` with uvicorn on ``host:port`` until stopped; once it listens, say where on
    stderr: ``greekfire gpu serve: listening on http://HOST:PORT (/health, /placement, /metrics, /docs)``."""
    config = uvicorn.Config(build_app(settings), host=host, port=port, log_level="warning")
    ListeningServer(config, name="greekfire gpu serve", paths="/health, /placement, /metrics, /docs").run()
