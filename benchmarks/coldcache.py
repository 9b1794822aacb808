"""Why inference costs more in the front than in the optimizer: ``python -m benchmarks.coldcache``.

Times one tactical row through the served engine (``server.worker.load_endpoints``: the
fused ONNX graph on bound buffers, as the front's inline lane runs it) with, between two
calls, nothing; three 5.4 KB round trips over a socket pair (the syscalls of a request);
1 MB of memory traffic (what a request's parsing and rendering touch, roughly); both; or a
100 us sleep (the process idle, its vCPU halted or given to another). Every call gets a
different observation. p50 and p99 in us over ``--calls`` calls per case, cases
interleaved over rounds.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from server.config import ServerConfig
from server.worker import load_endpoints

_MIB = 1024 * 1024


def _between() -> dict[str, Callable[[], None]]:
    a, b = socket.socketpair()
    payload = bytes(5400)
    memory = np.zeros(_MIB // 8)

    def syscalls() -> None:
        for _ in range(3):
            a.send(payload)
            b.recv(65536)

    def traffic() -> None:
        np.multiply(memory, 1.0, out=memory)

    def both() -> None:
        syscalls()
        traffic()

    return {
        "back to back": lambda: None,
        "3 socket round trips": syscalls,
        "1 MB of memory traffic": traffic,
        "both": both,
        "100 us sleep": lambda: time.sleep(0.0001),
    }


def measure(artifacts: Path, calls: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Case -> (p50, p99) us of one inference."""
    (engine,) = [
        ep.engine for ep in load_endpoints(ServerConfig(artifacts_dir=artifacts))
        if ep.spec.name == "tactical"
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((60, 7)).astype(np.float32).tobytes() for _ in range(256)]
    cases = _between()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for k in range(rounds):
        for name in list(cases)[k % len(cases) :] + list(cases)[: k % len(cases)]:
            before = cases[name]
            for i in range(calls):
                before()
                start = time.perf_counter_ns()
                engine.infer_one(rows[i % len(rows)])
                samples[name].append((time.perf_counter_ns() - start) / 1000)
    return {
        name: (statistics.median(v), float(np.percentile(v, 99))) for name, v in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coldcache", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--calls", type=int, default=2000, help="calls per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print("one tactical row, us: p50 / p99")
    for name, (p50, p99) in measure(args.artifacts, args.calls, args.rounds).items():
        print(f"  {name:<24}{p50:7.1f} {p99:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
