"""What every greekfire HTTP server shares: :class:`ListeningServer`, uvicorn's server saying where it
listens once it does."""

from __future__ import annotations

import socket
import sys

import uvicorn


class ListeningServer(uvicorn.Server):
    """uvicorn's server that, once its sockets listen, prints ``NAME: listening on http://HOST:PORT (PATHS)``
    on stderr, with the port actually bound. Any of greekfire's servers can run under it::

        ListeningServer(uvicorn.Config(app, host=host, port=port), name="greekfire serve pricing",
                        paths="/v1/price, /health, /metrics, /docs").run()
    """

    def __init__(self, config: uvicorn.Config, *, name: str, paths: str) -> None:
        super().__init__(config)
        self.name, self.paths = name, paths

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host = self.config.host
            bound = [s.getsockname()[1] for srv in self.servers for s in srv.sockets]
            where = f"[{host}]" if ":" in host else host  # an IPv6 address goes in brackets in a URL
            print(f"{self.name}: listening on http://{where}:{bound[0] if bound else self.config.port} ({self.paths})",
                  file=sys.stderr, flush=True)
