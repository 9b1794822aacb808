"""Prometheus text exposition (format 0.0.4), rendered from the monitor's own counts.

Every request is recorded in the front process, so one process holds every counter: no
multiprocess mode, no per-pid files, no counter reset when a worker restarts. Latency
histograms are derived at scrape time from the log-linear buckets: each Prometheus ``le`` bound
is mapped to the nearest log-linear bucket edge (within 0.4%), so recording costs nothing extra.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from monitoring.histogram import BUCKET_EDGES, BUCKET_MIDPOINTS, bucket_index

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency bucket bounds in microseconds: fine below 1 ms to tell 50 us from 500 us.
LATENCY_BOUNDS_US: tuple[float, ...] = (
    10, 25, 50, 75, 100, 150, 200, 300, 500, 750,
    1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
)  # fmt: skip
BATCH_SIZE_BOUNDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _cut(bound_us: float) -> int:
    """Number of leading log-linear buckets that count as <= ``bound_us``."""
    index = bucket_index(bound_us)
    lower, upper = BUCKET_EDGES[index], BUCKET_EDGES[index + 1]
    return index + 1 if bound_us - lower >= upper - bound_us else index


_LATENCY_CUTS = np.array([_cut(b) for b in LATENCY_BOUNDS_US])


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class TextBuilder:
    """Accumulates metric families; each family's HELP and TYPE precede its samples."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> str:
        full = f"{self.prefix}_{name}"
        self._lines.append(f"# HELP {full} {help_text}")
        self._lines.append(f"# TYPE {full} {kind}")
        return full

    def sample(self, name: str, labels: Mapping[str, str], value: float) -> None:
        if labels:
            text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
            self._lines.append(f"{name}{{{text}}} {_number(value)}")
        else:
            self._lines.append(f"{name} {_number(value)}")

    def latency_histogram(
        self, name: str, labels: Mapping[str, str], counts: np.ndarray, sum_us: float | None = None
    ) -> None:
        """Samples of one latency histogram (in seconds) from log-linear bucket counts."""
        cumulative = np.concatenate(([0], np.cumsum(counts)))
        for bound_us, cut in zip(LATENCY_BOUNDS_US, _LATENCY_CUTS, strict=True):
            le = _number(bound_us / 1e6)
            self.sample(f"{name}_bucket", {**labels, "le": le}, int(cumulative[cut]))
        total = int(cumulative[-1])
        self.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, total)
        if sum_us is None:
            sum_us = float(np.asarray(counts) @ BUCKET_MIDPOINTS)
        self.sample(f"{name}_sum", labels, sum_us / 1e6)
        self.sample(f"{name}_count", labels, total)

    def count_histogram(
        self,
        name: str,
        labels: Mapping[str, str],
        observations: Mapping[int, int],
        bounds: Sequence[int] = BATCH_SIZE_BOUNDS,
    ) -> None:
        """A histogram of small integers (batch sizes) from {value: count}."""
        for bound in bounds:
            below = sum(n for value, n in observations.items() if value <= bound)
            self.sample(f"{name}_bucket", {**labels, "le": _number(bound)}, below)
        total = sum(observations.values())
        self.sample(f"{name}_bucket", {**labels, "le": "+Inf"}, total)
        self.sample(f"{name}_sum", labels, sum(v * n for v, n in observations.items()))
        self.sample(f"{name}_count", labels, total)

    def render(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode()
