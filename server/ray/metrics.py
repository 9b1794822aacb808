"""Each replica's own ``/metrics`` on a port of its node, for Prometheus to scrape.

Through Ray's proxy ``GET /metrics`` reaches whichever replica the router picks; a scrape
must reach every replica. So each replica also answers ``GET /metrics`` (and nothing else)
on its node's address, and ``python -m server.ray targets`` lists those addresses as a
Prometheus ``file_sd`` document. The answer is the server's own exposition, taken through
the replica's ASGI app in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from server.ray.asgi_call import call_asgi

_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class MetricsEndpoint:
    def __init__(self, app: Any) -> None:
        self._app = app
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)
        self.address = self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One scrape per connection: read the head, answer, close."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            method, path = head.split(b" ", 2)[:2]
            if method != b"GET" or path.split(b"?")[0] != b"/metrics":
                writer.write(_NOT_FOUND)
            else:
                answer = await call_asgi(self._app, "GET", "/metrics")
                content_type = answer.headers.get("content-type", "text/plain")
                writer.write(
                    f"HTTP/1.1 {answer.status} OK\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(answer.body)}\r\nConnection: close\r\n\r\n".encode()
                    + answer.body
                )
            await writer.drain()
        writer.close()


def file_sd(reports: list[dict[str, Any]], app_name: str) -> list[dict[str, Any]]:
    """Prometheus ``file_sd_configs`` content: one target per replica, labelled."""
    return [
        {
            "targets": [r["metrics_address"]],
            "labels": {
                "ray_app": app_name,
                "ray_replica": str(r["replica_id"]),
                "ray_node": str(r["node_id"]),
            },
        }
        for r in sorted(reports, key=lambda r: r["replica_id"])
        if r.get("metrics_address")
    ]
