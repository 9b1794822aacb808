"""Building the Ray Serve application, for ``python -m server.ray`` and ``serve run``."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from server.ray.deployment import PolicyServer
from server.ray.options import APP_NAME, RayDeployOptions, parse_autoscaling


def policy_app(options: RayDeployOptions) -> Application:
    deployment = serve.deployment(PolicyServer).options(**options.deployment_options())
    return deployment.bind(list(options.replica_args()))


def strategy_app(
    policy_app_name: str = APP_NAME,
    model: str = "tactical",
    ray_actor_options: dict[str, Any] | None = None,
) -> Application:
    """A ``Strategy`` deployment calling the policy application through a handle."""
    from server.ray.strategy import Strategy

    deployment = (
        Strategy
        if ray_actor_options is None
        else Strategy.options(ray_actor_options=ray_actor_options)
    )
    return deployment.bind(policy_app_name, model)


def build_app(args: dict[str, Any]) -> Application:
    """``serve run server.ray.app:build_app`` or the ``import_path`` of a Serve config file
    (``deploy/ray/serve_config.yaml``); ``args`` are the config's ``args`` mapping."""
    options = RayDeployOptions(
        server_args=tuple(str(a) for a in args.get("server_args", ())),
        replicas=int(args.get("replicas", 2)),
        autoscaling=parse_autoscaling(args.get("autoscale")),
        max_ongoing_requests=int(args.get("max_ongoing_requests", 64)),
        max_queued_requests=int(args.get("max_queued_requests", 1024)),
        max_replicas_per_node=args.get("max_replicas_per_node"),
        num_cpus=float(args.get("num_cpus", 1.0)),
    )
    return policy_app(options)
