"""Measure what monitoring costs per request: ``python -m monitoring.overhead [--calls N]``.

Times ``Monitor.record_request`` (all five stages recorded; with the default protocol and with
``oip_rest`` passed), ``record_batch`` and the disabled
monitor's no-op, over N calls with realistic values, and prints nanoseconds per call.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from monitoring.config import MonitorConfig
from monitoring.monitor import Monitor


def measure(calls: int = 1_000_000, seed: int = 0) -> dict[str, float]:
    """Nanoseconds per call of record_request (on, off) and record_batch."""
    rng = np.random.default_rng(seed)
    totals = rng.lognormal(np.log(300.0), 0.5, size=4096).tolist()
    results: dict[str, float] = {}
    for label, enabled in (("record_request", True), ("record_request_disabled", False)):
        monitor = Monitor(MonitorConfig(enabled=enabled, models=("tactical", "strategic")))
        record = monitor.record_request
        start = time.perf_counter_ns()
        for i in range(calls):
            total = totals[i & 4095]
            record("tactical", 200, total, 12.0, 3.0, 40.0, total * 0.6, False)
        results[label] = (time.perf_counter_ns() - start) / calls
    monitor = Monitor(MonitorConfig(models=("tactical", "strategic")))
    record = monitor.record_request
    start = time.perf_counter_ns()
    for i in range(calls):  # the protocol passed explicitly, as the OIP front will
        total = totals[i & 4095]
        record("tactical", 200, total, 12.0, 3.0, 40.0, total * 0.6, False, 1)
    results["record_request_oip_rest"] = (time.perf_counter_ns() - start) / calls
    monitor = Monitor(MonitorConfig(models=("tactical",)))
    record_batch = monitor.record_batch
    batch_calls = max(calls // 10, 1)
    start = time.perf_counter_ns()
    for i in range(batch_calls):
        record_batch("tactical", 1 + (i & 7), totals[i & 4095], 4242)
    results["record_batch"] = (time.perf_counter_ns() - start) / batch_calls
    start = time.perf_counter_ns()
    for i in range(calls):
        _ = totals[i & 4095]
    results["loop_only"] = (time.perf_counter_ns() - start) / calls
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.overhead", description=__doc__)
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    results = measure(args.calls)
    loop = results.pop("loop_only")
    for name, ns in results.items():
        print(f"{name:26s} {ns:8.1f} ns/call ({ns - loop:8.1f} ns without the loop)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
