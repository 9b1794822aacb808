"""``python -m server.ray targets``: every replica's report, and the Prometheus targets.

Handle calls are routed by Ray, not addressed to a replica; asking often enough reaches
each one (the router spreads calls over replicas), so the reports are collected until as
many distinct replicas answered as Serve says are running.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from server.ray.metrics import file_sd
from server.ray.options import APP_NAME, DEPLOYMENT_NAME


def running_replicas(app_name: str) -> int:
    from ray import serve

    status = serve.status().applications[app_name].deployments[DEPLOYMENT_NAME]
    return int(status.replica_states.get("RUNNING", 0))


def collect_reports(
    handle: Any, want: int, timeout_s: float = 30.0, clock: Any = time.monotonic
) -> list[dict[str, Any]]:
    """``replica_report`` of ``want`` distinct replicas (TimeoutError past ``timeout_s``)."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = clock() + timeout_s
    while len(seen) < want:
        if clock() > deadline:
            raise TimeoutError(f"{len(seen)} of {want} replicas answered in {timeout_s:g} s")
        report = handle.replica_report.remote().result(timeout_s=10)
        seen[report["replica_id"]] = report
    return list(seen.values())


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.ray targets", description=__doc__)
    parser.add_argument("--address", default="auto")
    parser.add_argument("--app", default=APP_NAME)
    parser.add_argument("--out", type=Path, help="file_sd JSON to write (default: stdout)")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    ray.init(address=args.address, logging_level="warning")
    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, args.app)
    reports = collect_reports(handle, running_replicas(args.app))
    document = orjson.dumps(file_sd(reports, args.app), option=orjson.OPT_INDENT_2)
    if args.out is None:
        sys.stdout.write(document.decode() + "\n")
    else:
        partial = args.out.with_suffix(".partial")
        partial.write_bytes(document)
        partial.replace(args.out)  # Prometheus must never read half a file
    return 0
