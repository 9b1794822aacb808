"""The ASGI app one Ray Serve replica runs: our server app, started by its own lifespan.

The server's lifespan installs a SIGHUP handler (reload), which only the main thread may
do; Ray runs a replica's code on another thread. So the replica drives the same
``Runtime.start``/``stop`` the server's lifespan calls (reload on Ray is a redeploy) and
hands every HTTP request to the server's app unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from server.app import ServerApp, create_app
from server.config import ServerConfig
from server.ray.metrics import MetricsEndpoint

log = logging.getLogger("server.ray")


class ReplicaApp:
    def __init__(self, config: ServerConfig, metrics_host: str | None = None) -> None:
        """``metrics_host``: also serve ``/metrics`` on that address (an ephemeral port)."""
        self.server: ServerApp = create_app(config)
        self.metrics = MetricsEndpoint(self.server)
        self._metrics_host = metrics_host

    @property
    def ready(self) -> bool:
        pool = self.server.runtime.pool
        return pool is not None and pool.ready()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.server(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.server.runtime.start()
                    if self._metrics_host is not None:
                        await self.metrics.start(self._metrics_host)
                except Exception as exc:
                    log.exception("replica start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.metrics.stop()
                await self.server.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
