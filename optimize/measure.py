"""Latency of runners on this host, one thread, one call at a time.

All runners of a model are timed in interleaved rounds (the order rotating each round), so a
slow drift of the host, another process waking up, or a frequency change affects every
variant alike instead of whichever happened to be measured at the time. The garbage
collector is paused while a round is timed: a collection triggered by the harness's own
allocations would otherwise be charged to whichever variant was running.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from optimize.manifest import LatencyUs
from optimize.runners import Runner

Clock = Callable[[], int]
REWARM_CALLS = 20  # untimed calls before each round: caches were just used by another runner


@dataclass(frozen=True)
class Measurement:
    latency_us: LatencyUs
    calls_per_s: float  # one thread, back to back: 1e6 / mean batch-1 latency in us
    per_sample_us: dict[str, float]  # batch size -> median call / batch size

    @property
    def per_sample_us_batch32(self) -> float | None:
        return self.per_sample_us.get("32")


Inputs = np.ndarray | Sequence[np.ndarray]


def _as_list(x: Inputs) -> list[np.ndarray]:
    return [x] if isinstance(x, np.ndarray) else list(x)


def _time_calls(runner: Runner, inputs: list[np.ndarray], calls: int, clock: Clock) -> np.ndarray:
    """Calls cycle through ``inputs``: a guarded int8 runner's cost depends on the rows (how
    many fall back), so one fixed observation would time one branch only."""
    samples = np.empty(calls, dtype=np.int64)
    run = runner.run
    n = len(inputs)
    for i in range(calls):
        x = inputs[i % n]
        start = clock()
        run(x)
        samples[i] = clock() - start
    return samples


def time_interleaved(
    runners: Mapping[str, Runner],
    x: Inputs,
    *,
    calls: int,
    warmup_calls: int,
    rounds: int,
    clock: Clock = time.perf_counter_ns,
) -> dict[str, np.ndarray]:
    """Per-call durations in ns for each runner, ``calls`` each, over ``rounds`` rounds."""
    names = list(runners)
    if not names:  # every variant failed to build: nothing to time
        return {}
    inputs = _as_list(x)
    for name in names:
        for i in range(warmup_calls):
            runners[name].run(inputs[i % len(inputs)])
    per_round = [calls // rounds + (1 if r < calls % rounds else 0) for r in range(rounds)]
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    gc.collect()
    for r, n in enumerate(per_round):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for i in range(REWARM_CALLS):
                runners[name].run(inputs[i % len(inputs)])
            gc.disable()
            try:
                chunks[name].append(_time_calls(runners[name], inputs, n, clock))
            finally:
                gc.enable()
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def latency_percentiles(samples_ns: np.ndarray) -> LatencyUs:
    p50, p99, p99_9 = np.percentile(samples_ns, [50.0, 99.0, 99.9]) / 1000.0
    return LatencyUs(
        p50=round(float(p50), 3), p99=round(float(p99), 3), p99_9=round(float(p99_9), 3)
    )


def batch_calls(calls_batch32: int, batch: int, minimum: int) -> int:
    """About as many rows at every batch size as at batch 32."""
    return max(minimum, calls_batch32 * 32 // batch)


def measure(
    runners: Mapping[str, Runner],
    batch1: Inputs,
    batches: Mapping[int, Inputs],
    *,
    calls: int,
    calls_batch32: int,
    warmup_calls: int,
    rounds: int,
    clock: Clock = time.perf_counter_ns,
) -> dict[str, Measurement]:
    """Batch-1 latency, and the cost per sample (median call / rows) at each of ``batches``."""
    single = time_interleaved(
        runners, batch1, calls=calls, warmup_calls=warmup_calls, rounds=rounds, clock=clock
    )
    per_sample: dict[str, dict[str, float]] = {name: {} for name in runners}
    for size, x in batches.items():
        n = batch_calls(calls_batch32, size, rounds * 5)
        timed = time_interleaved(
            runners, x, calls=n, warmup_calls=min(warmup_calls, n), rounds=rounds, clock=clock
        )
        for name, samples in timed.items():
            per_sample[name][str(size)] = round(float(np.median(samples)) / 1000.0 / size, 4)
    results = {}
    for name in runners:
        mean_us = float(np.mean(single[name])) / 1000.0
        results[name] = Measurement(
            latency_us=latency_percentiles(single[name]),
            calls_per_s=round(1e6 / mean_us, 1),
            per_sample_us=per_sample[name],
        )
    return results
