"""A strategy deployment calling the policy through a handle, as a desk's own Ray code
would: it looks up the policy application's deployment and asks for a decision per
observation. It is its own Serve application, so the desk deploys and scales it apart."""

from __future__ import annotations

from typing import Any

from ray import serve

from server.ray.asgi_call import PolicyResponse
from server.ray.client import PolicyClient
from server.ray.options import APP_NAME, DEPLOYMENT_NAME


@serve.deployment(max_ongoing_requests=256)
class Strategy:
    def __init__(self, policy_app: str = APP_NAME, model: str = "tactical") -> None:
        self._policy = PolicyClient(serve.get_deployment_handle(DEPLOYMENT_NAME, policy_app))
        self._model = model

    async def decide(self, observation: Any) -> PolicyResponse:
        """The policy's answer to one observation (a rows x features list or array)."""
        return await self._policy.infer({"model": self._model, "observation": observation})
