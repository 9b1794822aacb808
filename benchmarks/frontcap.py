"""``python -m benchmarks front-cap``: how busy the one front process is when a replica is
pushed, for each worker count: the share of a core it uses, its CPU per request, and so
the throughput one front core caps a replica at (1 s / front CPU per request), whatever
the workers. CPU per request holds up better than wall-clock figures on a shared host."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.bodies import Mode, make_bodies
from benchmarks.loadgen import Generator, run_load
from benchmarks.procs import ServerProcess, free_port
from benchmarks.raypaths import front_cpu_s


def measure_front(
    artifacts: Path, workers: Sequence[int], clients: int, duration_s: float, generator: Generator
) -> list[dict]:
    rows = []
    for n in workers:
        port = free_port()
        argv = [sys.executable, "-m", "server", "--port", str(port), "--artifacts",
                str(artifacts), "--workers", str(n), "--no-build-artifacts-if-missing"]  # fmt: skip
        log = Path("bench-results") / "logs" / f"front-cap-{n}.log"
        with ServerProcess(f"workers={n}", argv, port, log) as server:
            server.wait_ready(60)
            run_load(generator, port, make_bodies("tactical", Mode.COLD, 99), clients, 1.0)
            front0, tree0 = front_cpu_s(server.pid), server.cpu_seconds()
            result = run_load(generator, port, make_bodies("tactical", Mode.COLD, n), clients,
                              duration_s)  # fmt: skip
            front = (front_cpu_s(server.pid) - front0) / result.elapsed_s
            tree = (server.cpu_seconds() - tree0) / result.elapsed_s
        rows.append(
            {
                "workers": n,
                "clients": clients,
                "rps": round(result.rps, 1),
                "p99_us": round(result.latency_us["p99"], 1),
                "front_cores": round(front, 3),
                "worker_cores": round(tree - front, 3),
                "front_us_per_request": round(1e6 * front / result.rps, 1),
                "front_cap_rps": round(result.rps / front, 0),
                "errors": result.errors,
            }
        )
        print(
            f"  workers={n}: {result.rps:,.0f} req/s, p99 {result.latency_us['p99']:,.0f} us, "
            f"front {front:.2f} cores ({1e6 * front / result.rps:.0f} us per request: one "
            f"front core caps at {result.rps / front:,.0f} req/s), workers {tree - front:.2f} cores"
        )
    return rows
