"""HTTP servers (FastAPI). Each module builds one app with ``build_app(settings)``; all serve /health and
/metrics."""
