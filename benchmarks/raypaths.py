"""``python -m benchmarks ray-paths``: what each way into the policy costs, in one run.

The same server (one replica of ``--workers 1``, cache-cold bodies) measured four ways:
``direct`` (``python -m server``, no Ray), ``ray_http`` (Ray Serve's default Python proxy),
``ray_haproxy`` (``RAY_SERVE_ENABLE_HA_PROXY=1``) and ``ray_handle`` (a ``DeploymentHandle``
from the driver, answered through the replica's ASGI app in memory). HTTP load comes from
the Python keep-alive generator for all three HTTP paths, so they compare like for like.
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.bodies import BodySet, Mode, make_bodies
from benchmarks.httpbench import RunPlan, run_record
from benchmarks.loadgen import Generator, LoadResult, run_python
from benchmarks.procs import ServerProcess, free_port, process_tree, tree_cpu_seconds
from benchmarks.stats import latency_summary, sample

MODEL = "tactical"
SERVER_ARGS = ("--workers", "1", "--no-build-artifacts-if-missing")
PATHS = ("direct", "ray_http", "ray_haproxy", "ray_handle")


def _descendants_cpu_s() -> float:
    """CPU of every process below this one (the local Ray cluster), not this one's."""
    me = os.getpid()
    return sum(tree_cpu_seconds(pid) for pid in process_tree(me) if pid != me)


def front_cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid`` alone (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive_handle(handle: Any, bodies: BodySet, clients: int, duration_s: float) -> tuple:
    latencies, errors = array("d"), Counter()
    counter = iter(range(10**9))
    deadline = time.perf_counter() + duration_s

    async def client() -> None:
        while time.perf_counter() < deadline:
            body = bodies.body(next(counter))
            start = time.perf_counter_ns()
            answer = await handle.infer.remote(body)
            latencies.append((time.perf_counter_ns() - start) / 1000.0)
            if answer.status != 200:
                errors[str(answer.status)] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - started


def run_handle(handle: Any, bodies: BodySet, clients: int, duration_s: float) -> LoadResult:
    cpu0 = time.process_time()
    latencies, errors, elapsed = asyncio.run(_drive_handle(handle, bodies, clients, duration_s))
    values = latencies.tolist()
    return LoadResult(
        generator=Generator.PYTHON,
        requests=len(values),
        elapsed_s=elapsed,
        latency_us=latency_summary(values),
        errors=dict(errors),
        loadgen_cpu_s=time.process_time() - cpu0,
        samples_us=sample(values, 2000),
    )


def _measure(
    path: str, load, clients: Sequence[int], duration_s: float, cpu, front_cpu=None
) -> list[dict]:
    """``load(bodies, clients, seconds)`` for each client count, after a 1 s warm-up with
    other bodies; ``cpu()`` reads the serving side's CPU seconds, ``front_cpu()`` (direct
    only) the front process's own: what one front core caps (README, Capacity)."""
    records = []
    for seed, n in enumerate(clients):
        load(make_bodies(MODEL, Mode.COLD, 1000 + seed), n, 1.0)
        before, front_before = cpu(), front_cpu() if front_cpu else 0.0
        result = load(make_bodies(MODEL, Mode.COLD, seed), n, duration_s)
        record = run_record(path, RunPlan(Mode.COLD, n), duration_s, result, cpu() - before)
        if front_cpu is not None:
            record["cpu"]["front_s"] = round(front_cpu() - front_before, 3)
        records.append(record)
        print(f"  {path} @{n}: {result.requests} requests, p50 {result.latency_us['p50']:.0f} us")
    return records


def measure_direct(artifacts: Path, clients: Sequence[int], duration_s: float) -> list[dict]:
    import sys

    port = free_port()
    argv = [sys.executable, "-m", "server", "--port", str(port), "--artifacts", str(artifacts)]
    logs = Path("bench-results") / "logs" / "ray-paths-direct.log"
    with ServerProcess("direct", [*argv, *SERVER_ARGS], port, logs) as server:
        server.wait_ready(60)
        return _measure(
            "direct",
            lambda b, c, s: run_python(port, b, c, s),
            clients,
            duration_s,
            server.cpu_seconds,
            front_cpu=lambda: front_cpu_s(server.pid),
        )


def measure_ray(
    artifacts: Path, clients: Sequence[int], duration_s: float, *, haproxy: bool
) -> list[dict]:
    import httpx
    from ray import serve

    from server.ray.app import policy_app
    from server.ray.local import local_cluster
    from server.ray.options import DEPLOYMENT_NAME, RayDeployOptions

    options = RayDeployOptions(
        server_args=("--artifacts", str(artifacts), *SERVER_ARGS), replicas=1, num_cpus=1
    )
    port = free_port()
    with local_cluster(nodes=1, haproxy=haproxy):
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        serve.run(policy_app(options), name="policy", route_prefix="/")
        deadline = time.monotonic() + 60
        while httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the Ray deployment did not become ready in 60 s")
            time.sleep(0.2)
        name = "ray_haproxy" if haproxy else "ray_http"
        records = _measure(
            name, lambda b, c, s: run_python(port, b, c, s), clients, duration_s, _descendants_cpu_s
        )
        if not haproxy:
            handle = serve.get_deployment_handle(DEPLOYMENT_NAME, "policy")
            records += _measure(
                "ray_handle",
                lambda b, c, s: run_handle(handle, b, c, s),
                clients,
                duration_s,
                _descendants_cpu_s,
            )
        return records


def run_paths(artifacts: Path, clients: Sequence[int], duration_s: float) -> list[dict]:
    print("direct (python -m server --workers 1)")
    records = measure_direct(artifacts, clients, duration_s)
    print("Ray Serve, default proxy, and a DeploymentHandle")
    records += measure_ray(artifacts, clients, duration_s, haproxy=False)
    print("Ray Serve, HAProxy mode")
    records += measure_ray(artifacts, clients, duration_s, haproxy=True)
    return records
