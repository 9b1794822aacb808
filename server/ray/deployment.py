"""The Ray Serve deployment: each replica runs our whole server in-process.

Two ways in reach the same ASGI app: HTTP through Ray Serve's proxy (default or HAProxy
mode), handed over as ASGI by ``serve.ingress``; and ``DeploymentHandle`` calls to
``infer``/``request``, run through the app in memory (``asgi_call``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ray import serve

from server.config import load_config
from server.ray.asgi_call import PolicyResponse, call_asgi, request_body
from server.ray.replica import ReplicaApp

# A replica shares its process with Ray's own threads (gRPC, the router): the front's busy
# polling after each answer (python -m server's default) would hold the GIL they need.
# Flags given later win.
REPLICA_DEFAULTS = ("--busy-poll-us", "0")


@serve.ingress()
class PolicyServer:
    def __init__(self, server_args: Sequence[str] = ()) -> None:
        self._config = load_config([*REPLICA_DEFAULTS, *server_args])
        self._app: ReplicaApp | None = None

    def __serve_build_asgi_app__(self) -> ReplicaApp:
        import ray

        self._app = ReplicaApp(self._config, metrics_host=ray.util.get_node_ip_address())
        return self._app

    async def infer(self, request: bytes | str | dict) -> PolicyResponse:
        """``POST /infer`` with this body (JSON bytes, text or a dict), answered as over
        HTTP: the same status codes, error bodies and ``Retry-After``."""
        return await call_asgi(self._app, "POST", "/infer", request_body(request))

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> PolicyResponse:
        """Any other endpoint (``/readyz``, ``/stats``, ``/metrics``, ``/v2/...``)."""
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        return await call_asgi(self._app, method, path, body, encoded)

    async def replica_report(self) -> dict[str, object]:
        """Where this replica runs (Ray node, process) and how many requests it answered:
        which nodes served, for operators and the placement tests."""
        import ray

        stats = await call_asgi(self._app, "GET", "/stats")
        requests = stats.json()["overall"]["since_start"]["requests"] if stats.status == 200 else 0
        address = self._app.metrics.address
        return {
            "metrics_address": f"{address[0]}:{address[1]}" if address else None,
            "node_id": ray.get_runtime_context().get_node_id(),
            "replica_id": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "requests": requests,
        }

    def check_health(self) -> None:
        """Ray replaces a replica whose check raises. A worker restart inside the replica is
        our pool's business (``/readyz`` says 503 meanwhile); only a replica that lost its
        pool altogether is unhealthy."""
        if self._app is not None and self._app.server.runtime.pool is None:
            raise RuntimeError("the replica's worker pool is not running")
