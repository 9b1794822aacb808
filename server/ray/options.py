"""How the policy server is deployed on Ray Serve: one frozen object, checked at start-up.

Pure Python (no Ray import), so the checks are unit-tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from server.config import ConfigError, ServerConfig, load_config

DEPLOYMENT_NAME = "PolicyServer"
APP_NAME = "policy"


@dataclass(frozen=True, slots=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float

    def to_ray(self) -> dict[str, Any]:
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }


@dataclass(frozen=True, slots=True)
class RayDeployOptions:
    """``server_args`` are the flags of ``python -m server`` each replica serves with (its
    worker count, artifacts directory, cache, batching...). Either ``replicas`` or
    ``autoscaling`` sets how many replicas run. The application is served at the route
    prefix ``/``: the server's routes are absolute (it does not read ``root_path``)."""

    server_args: tuple[str, ...] = ()
    replicas: int = 2
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: int = 64
    max_queued_requests: int = 1024
    max_replicas_per_node: int | None = None
    num_cpus: float = 1.0
    app_name: str = APP_NAME

    def __post_init__(self) -> None:
        _validate(self)

    def replica_args(self) -> tuple[str, ...]:
        """The server flags a replica runs with. Without ``--workers`` the server would
        start one worker per core of the node (``os.cpu_count``), not of the replica: a
        replica gets one front core and ``num_cpus - 1`` workers (at least one)."""
        if "--workers" in self.server_args:
            return self.server_args
        return ("--workers", str(max(1, round(self.num_cpus) - 1)), *self.server_args)

    def server_config(self) -> ServerConfig:
        # The replica's environment may set PIS_* too; flags win, as with python -m server.
        return load_config(list(self.replica_args()))

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``serve.deployment(...).options(...)``."""
        out: dict[str, Any] = {
            "name": DEPLOYMENT_NAME,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus},
            # A replica's worker processes start and warm in a few seconds; Ray's default
            # health-check timeout (30 s) stays, the period is shortened so a hung replica
            # is replaced sooner.
            "health_check_period_s": 2.0,
        }
        if self.autoscaling is not None:
            out["autoscaling_config"] = self.autoscaling.to_ray()
        else:
            out["num_replicas"] = self.replicas
        if self.max_replicas_per_node is not None:
            out["max_replicas_per_node"] = self.max_replicas_per_node
        return out


def _validate(o: RayDeployOptions) -> None:
    def check(condition: bool, message: str) -> None:
        if not condition:
            raise ConfigError(message)

    check(o.replicas >= 1, f"replicas={o.replicas}; write at least 1")
    if o.autoscaling is not None:
        a = o.autoscaling
        check(
            1 <= a.min_replicas <= a.max_replicas,
            f"autoscaling min={a.min_replicas} max={a.max_replicas}; write 1 <= min <= max",
        )
        check(
            0 < a.target_ongoing_requests <= o.max_ongoing_requests,
            f"target_ongoing_requests={a.target_ongoing_requests}; write a number above 0 "
            f"and at most max_ongoing_requests ({o.max_ongoing_requests})",
        )
    check(o.num_cpus > 0, f"num_cpus={o.num_cpus}; write the cores a replica reserves, e.g. 2")
    check(
        o.max_queued_requests == -1 or o.max_queued_requests >= 1,
        f"max_queued_requests={o.max_queued_requests}; write -1 (no limit) or at least 1",
    )
    batch = o.server_config().max_batch_size
    # Ray holds a replica's calls beyond max_ongoing_requests in its own queue; below the
    # batch size our batcher could never fill a batch, so throughput would be capped.
    check(
        o.max_ongoing_requests >= batch,
        f"max_ongoing_requests={o.max_ongoing_requests} is below the server's max_batch_size "
        f"({batch}); write at least {batch}, or lower --max-batch-size",
    )


def parse_autoscaling(text: str | None) -> Autoscaling | None:
    """``MIN:MAX:TARGET``, e.g. ``1:8:32``."""
    if not text:
        return None
    parts = text.split(":")
    try:
        low, high, target = int(parts[0]), int(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise ConfigError(
            f"--autoscale {text!r}: write MIN:MAX:TARGET_ONGOING_REQUESTS, e.g. 1:8:32"
        ) from None
    return Autoscaling(low, high, target)


def server_flags(args: Sequence[str]) -> tuple[str, ...]:
    """The server flags after a ``--`` separator, checked now rather than on every replica."""
    flags = tuple(args[1:] if args and args[0] == "--" else args)
    load_config(list(flags))
    return flags
