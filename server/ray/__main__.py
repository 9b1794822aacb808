"""``python -m server.ray``: deploy the policy server on a running Ray cluster.

    python -m server.ray --address auto --replicas 4 -- --artifacts /shared/artifacts --workers 2
    python -m server.ray targets --out /etc/prometheus/policy-replicas.json

Flags after ``--`` are ``python -m server``'s, applied in every replica. ``targets`` writes
each replica's own /metrics address as Prometheus file_sd targets.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from server.config import ConfigError
from server.ray.options import APP_NAME, RayDeployOptions, parse_autoscaling, server_flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server.ray", description=__doc__.split("\n")[0])
    p.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    p.add_argument("--replicas", type=int, default=2, help="fixed replica count (default 2)")
    p.add_argument(
        "--autoscale",
        metavar="MIN:MAX:TARGET",
        help="autoscale between MIN and MAX replicas on TARGET ongoing requests per replica "
        "(replaces --replicas), e.g. 1:8:32",
    )
    p.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=64,
        help="calls one replica holds at once; at least the server's --max-batch-size (default 64)",
    )
    p.add_argument(
        "--max-queued-requests",
        type=int,
        default=1024,
        help="calls Ray queues per caller beyond that; more are answered 503 (default 1024, "
        "-1 no limit)",
    )
    p.add_argument("--max-replicas-per-node", type=int, default=None)
    p.add_argument("--num-cpus", type=float, default=1.0, help="cores a replica reserves")
    p.add_argument("--http-host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument(
        "--proxy-location",
        choices=("HeadOnly", "EveryNode", "Disabled"),
        default="EveryNode",
        help="where Ray Serve runs its HTTP proxy (HAProxy with RAY_SERVE_ENABLE_HA_PROXY=1)",
    )
    p.add_argument("--name", default=APP_NAME, help=f"application name (default {APP_NAME})")
    p.add_argument(
        "--with-strategy",
        action="store_true",
        help="also deploy the example Strategy application that calls the policy by handle",
    )
    p.add_argument(
        "--detach", action="store_true", help="return once deployed instead of serving until ^C"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["targets"]:
        from server.ray.targets import main as targets_main

        return targets_main(argv[1:])
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    try:
        options = RayDeployOptions(
            server_args=server_flags(argv[split:]),
            replicas=args.replicas,
            autoscaling=parse_autoscaling(args.autoscale),
            max_ongoing_requests=args.max_ongoing_requests,
            max_queued_requests=args.max_queued_requests,
            max_replicas_per_node=args.max_replicas_per_node,
            num_cpus=args.num_cpus,
            app_name=args.name,
        )
    except (ConfigError, SystemExit) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from server.ray.app import policy_app, strategy_app

    ray.init(address=args.address)
    serve.start(
        http_options={"host": args.http_host, "port": args.http_port},
        proxy_location=args.proxy_location,
    )
    serve.run(policy_app(options), name=options.app_name, route_prefix="/")
    if args.with_strategy:
        serve.run(strategy_app(options.app_name), name="strategy", route_prefix=None)
    print(f"serving {options.app_name} on http://{args.http_host}:{args.http_port}/")
    if args.detach:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(options.app_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
