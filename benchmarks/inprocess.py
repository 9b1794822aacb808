"""Every optimizer variant of both models, called in this process: batch 1 and 32, latency
percentiles, calls per second, cost per sample. Each variant is opened through
``optimize.loader.load_variant`` (the sha256-checked path the server uses), one thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from benchmarks.stats import latency_summary
from models import SPECS

BATCHES: tuple[int, ...] = (1, 32)
WARMUP_CALLS = 50


def time_calls(
    run: Callable[[np.ndarray], object],
    x: np.ndarray,
    max_calls: int,
    max_time_s: float,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[float]:
    """Latency of each call in microseconds; stops at ``max_calls`` or ``max_time_s``."""
    for _ in range(WARMUP_CALLS):
        run(x)
    out: list[float] = []
    deadline = clock() + int(max_time_s * 1e9)
    while len(out) < max_calls:
        start = clock()
        run(x)
        end = clock()
        out.append((end - start) / 1000.0)
        if end > deadline:
            break
    return out


def inprocess_record(
    model: str,
    variant: str,
    runtime: str,
    precision: str,
    batch: int,
    latencies_us: Sequence[float],
) -> dict:
    summary = latency_summary(latencies_us)
    total_s = sum(latencies_us) / 1e6
    calls_per_s = len(latencies_us) / total_s if total_s > 0 else 0.0
    return {
        "model": model,
        "variant": variant,
        "runtime": runtime,
        "precision": precision,
        "batch": batch,
        "calls": len(latencies_us),
        "calls_per_s": round(calls_per_s, 1),
        "latency_us": {k: round(v, 2) for k, v in summary.items()},
        "per_sample_us": round(summary["p50"] / batch, 3),
    }


def _observations(model: str, batch: int, seed: int = 0) -> np.ndarray:
    spec = SPECS[model]
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(
        rng.standard_normal((batch, spec.rows, spec.features)).astype(np.float32)
    )


def run_inprocess(
    artifacts: Path,
    max_calls: int = 5000,
    max_time_s: float = 1.0,
    models: Sequence[str] | None = None,
    log=print,
) -> list[dict]:
    """One record per (model, variant, batch) that the manifest holds as built."""
    from optimize.loader import load_manifest, load_variant

    manifest = load_manifest(artifacts)
    records = []
    for model in models or sorted(manifest.models):
        for variant in manifest.model(model).variants:
            if variant.sha256 is None or variant.latency_us is None:
                log(f"  {model}/{variant.name}: not built ({variant.status}), skipped")
                continue
            served = load_variant(artifacts, model, str(variant.name), threads=1, manifest=manifest)
            for batch in BATCHES:
                x = _observations(model, batch)
                latencies = time_calls(served.runner.run, x, max_calls, max_time_s)
                records.append(
                    inprocess_record(
                        model, served.variant, served.runtime, served.precision, batch, latencies
                    )
                )
    return records
