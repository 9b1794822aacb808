"""Calling the policy from a desk's own Ray code through a ``DeploymentHandle``.

A replica that dies with a call in flight (its node lost) raises in the caller. Inference
is idempotent, so the call is sent once more (the router has by then marked the replica
dead and picks another); if that fails too the caller gets what an HTTP client would: 503
with ``Retry-After``, never a hang (``timeout_s``) or an exception from Ray's internals.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from server.ray.asgi_call import PolicyResponse

log = logging.getLogger("server.ray")

RETRY_AFTER_S = 1
# Ray's own exceptions for a replica that died, is gone or cannot take more calls.
_UNAVAILABLE = (RayActorError, DeploymentUnavailableError, BackPressureError)


def unavailable(message: str) -> PolicyResponse:
    body = orjson.dumps({"error": {"code": "unavailable", "message": message}})
    return PolicyResponse(503, body, {"retry-after": str(RETRY_AFTER_S)})


class PolicyClient:
    def __init__(
        self, handle: DeploymentHandle, *, attempts: int = 2, timeout_s: float = 10.0
    ) -> None:
        self._handle = handle
        self._attempts = attempts
        self._timeout_s = timeout_s

    async def infer(self, request: bytes | str | dict) -> PolicyResponse:
        last: BaseException | None = None
        for _ in range(self._attempts):
            try:
                return await asyncio.wait_for(
                    self._handle.infer.remote(request), timeout=self._timeout_s
                )
            except _UNAVAILABLE as exc:
                last = exc
            except TimeoutError:
                return unavailable(f"no answer within {self._timeout_s} s; retry")
        log.warning("policy unavailable after %d attempts: %s", self._attempts, last)
        return unavailable(f"no policy replica could answer ({type(last).__name__}); retry")
