"""The images' HEALTHCHECK: GET http://127.0.0.1:$HEALTHCHECK_PORT$HEALTHCHECK_PATH, exit 0 on a 2xx answer.

Every greekfire server answers ``GET /health`` (``serve trading`` 8010, ``serve pricing`` 8000, ``serve
wheel`` 8020, ``gpu serve`` 9400 by default); each image target sets the port of its service. Standard
library only, so the check needs nothing the image does not already hold (no curl).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    """Probe the health endpoint once; 0 when it answers 2xx within ``HEALTHCHECK_TIMEOUT_S`` seconds."""
    port = os.environ.get("HEALTHCHECK_PORT", "8010")
    path = os.environ.get("HEALTHCHECK_PATH", "/health")
    timeout_s = float(os.environ.get("HEALTHCHECK_TIMEOUT_S", "4"))
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            status = answer.status
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if not 200 <= status < 300:
        print(f"healthcheck: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
