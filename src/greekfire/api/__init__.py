"""HTTP servers (FastAPI). Each module builds one app with ``build_app(settings)``; all serve /health and
/metrics. They need the ``serve`` extra (FastAPI, uvicorn)."""

from greekfire.core.extras import require_extra

require_extra("serve", "greekfire.api (HTTP servers)")
