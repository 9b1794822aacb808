"""Log-linear latency histogram: bounded memory, <=0.4% relative error, mergeable.

Each power-of-two range of microseconds is split into ``SUB_BUCKETS`` equal sub-buckets, so a
bucket is at most 1/128 of its lower edge wide and a value reported as its bucket's midpoint is
within 0.4% of the true one. The covered range is 0.25 us to 2**27 us (134 s); values outside it
land in the first or last bucket. Counts are plain integers indexed by ``bucket_index``, so
histograms recorded in different processes merge exactly by adding counts — the only correct way
to get a p99 over several processes (averaging their p99s is not).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from math import frexp
from typing import Any

import numpy as np

SUB_BUCKETS = 128
#: frexp exponent of the lowest covered range, [2**-2, 2**-1) us.
MIN_EXPONENT = -1
MAX_EXPONENT = 27
N_BUCKETS = (MAX_EXPONENT - MIN_EXPONENT + 1) * SUB_BUCKETS
LAST_BUCKET = N_BUCKETS - 1

QUANTILES: dict[str, float] = {"p50": 0.50, "p95": 0.95, "p99": 0.99, "p99_9": 0.999}
#: Names the bucket layout in serialised histograms; ``from_dict`` refuses any other.
SCHEME = f"loglinear-{SUB_BUCKETS}-{MIN_EXPONENT}-{MAX_EXPONENT}"


def bucket_index(value_us: float) -> int:
    """Index of the bucket holding ``value_us`` (the hot path inlines this same arithmetic)."""
    mantissa, exponent = frexp(value_us)
    index = (exponent - MIN_EXPONENT - 1) * SUB_BUCKETS + int(mantissa * (2 * SUB_BUCKETS))
    if index < 0:
        return 0
    if index > LAST_BUCKET:
        return LAST_BUCKET
    return index


def _edges() -> np.ndarray:
    octave, sub = np.divmod(np.arange(N_BUCKETS + 1), SUB_BUCKETS)
    return np.ldexp(1.0 + sub / SUB_BUCKETS, octave + MIN_EXPONENT - 1)


#: BUCKET_EDGES[i] and BUCKET_EDGES[i + 1] are bucket i's lower and upper edge, in us.
BUCKET_EDGES: np.ndarray = _edges()
BUCKET_MIDPOINTS: np.ndarray = (BUCKET_EDGES[:-1] + BUCKET_EDGES[1:]) / 2.0
BUCKET_MIDPOINTS[0] = 0.0  # bucket 0 also holds every value below the range, including zero


def bucket_indices(values_us: np.ndarray) -> np.ndarray:
    """Vectorised ``bucket_index``."""
    mantissa, exponent = np.frexp(np.asarray(values_us, dtype=np.float64))
    index = (exponent.astype(np.int64) - MIN_EXPONENT - 1) * SUB_BUCKETS + (
        mantissa * (2 * SUB_BUCKETS)
    ).astype(np.int64)
    return np.clip(index, 0, LAST_BUCKET)


def bin_counts(values_us: np.ndarray) -> np.ndarray:
    """The count vector (``N_BUCKETS`` int64) of a batch of values."""
    return np.bincount(bucket_indices(values_us), minlength=N_BUCKETS)


def quantile_from_counts(counts: np.ndarray, q: float) -> float | None:
    """Value at quantile ``q`` (0..1) of a count vector, as its bucket's midpoint; None if empty.

    The rank is the nearest-rank definition, ceil(q * n), clamped to [1, n].
    """
    return quantiles_from_counts(counts, (q,))[0]


def quantiles_from_counts(counts: np.ndarray, qs: Iterable[float]) -> list[float | None]:
    """``quantile_from_counts`` for several quantiles with one cumulative sum."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1]) if cumulative.size else 0
    if total == 0:
        return [None for _ in qs]
    ranks = [min(max(math.ceil(q * total), 1), total) for q in qs]
    return [float(BUCKET_MIDPOINTS[i]) for i in np.searchsorted(cumulative, ranks)]


class Histogram:
    """A mergeable latency histogram in microseconds, with exact count, sum, min and max."""

    __slots__ = ("_counts", "count", "max_us", "min_us", "sum_us")

    def __init__(self) -> None:
        self._counts = [0] * N_BUCKETS
        self.count = 0
        self.sum_us = 0.0
        self.min_us = math.inf
        self.max_us = 0.0

    def record(self, value_us: float) -> int:
        """Count one value; returns its bucket index (the monitor counts batch-1 times in the
        same bucket of its own series without computing it again)."""
        mantissa, exponent = frexp(value_us)
        index = (exponent - MIN_EXPONENT - 1) * SUB_BUCKETS + int(mantissa * (2 * SUB_BUCKETS))
        if index < 0:
            index = 0
        elif index > LAST_BUCKET:
            index = LAST_BUCKET
        self._counts[index] += 1
        self.count += 1
        self.sum_us += value_us
        if value_us > self.max_us:
            self.max_us = value_us
        if value_us < self.min_us:
            self.min_us = value_us
        return index

    def record_many(self, values_us: Iterable[float] | np.ndarray) -> None:
        values = np.asarray(values_us, dtype=np.float64).ravel()
        if values.size == 0:
            return
        self._counts = (self.counts() + bin_counts(values)).tolist()
        self.count += int(values.size)
        self.sum_us += float(values.sum())
        self.max_us = max(self.max_us, float(values.max()))
        self.min_us = min(self.min_us, float(values.min()))

    def counts(self) -> np.ndarray:
        return np.asarray(self._counts, dtype=np.int64)

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s observations into this histogram (in place); returns self."""
        self._counts = (self.counts() + other.counts()).tolist()
        self.count += other.count
        self.sum_us += other.sum_us
        self.max_us = max(self.max_us, other.max_us)
        self.min_us = min(self.min_us, other.min_us)
        return self

    @classmethod
    def merged(cls, histograms: Iterable[Histogram]) -> Histogram:
        result = cls()
        for histogram in histograms:
            result.merge(histogram)
        return result

    def quantile(self, q: float) -> float | None:
        """Value at quantile q; the exact max for q == 1, else the bucket midpoint (<=0.4%)."""
        if self.count == 0:
            return None
        if q >= 1.0:
            return self.max_us
        value = quantile_from_counts(self.counts(), q)
        return None if value is None else min(max(value, self.min_us), self.max_us)

    def summary(self) -> dict[str, float | int | None]:
        """count, mean, p50, p95, p99, p99_9 and max, in microseconds."""
        out: dict[str, float | int | None] = {"count": self.count}
        out["mean"] = self.sum_us / self.count if self.count else None
        for name, q in QUANTILES.items():
            out[name] = self.quantile(q)
        out["max"] = self.max_us if self.count else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """Sparse JSON-able form: {"index": [...], "count": [...], ...}; see ``from_dict``."""
        counts = self.counts()
        nonzero = np.flatnonzero(counts)
        return {
            "scheme": SCHEME,
            "index": nonzero.tolist(),
            "count": counts[nonzero].tolist(),
            "total": self.count,
            "sum_us": self.sum_us,
            "min_us": self.min_us if self.count else None,
            "max_us": self.max_us if self.count else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        if data.get("scheme") != SCHEME:
            raise ValueError(f"histogram scheme {data.get('scheme')!r} is not {SCHEME!r}")
        histogram = cls()
        counts = np.zeros(N_BUCKETS, dtype=np.int64)
        counts[np.asarray(data["index"], dtype=np.int64)] = data["count"]
        histogram._counts = counts.tolist()
        histogram.count = int(data["total"])
        histogram.sum_us = float(data["sum_us"])
        histogram.min_us = math.inf if data.get("min_us") is None else float(data["min_us"])
        histogram.max_us = float(data.get("max_us") or 0.0)
        return histogram


def sparse(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, counts) of the non-zero entries of a count vector."""
    nonzero = np.flatnonzero(counts)
    return nonzero.astype(np.int32), counts[nonzero]


def coarse(counts: np.ndarray, factor: int = 8) -> dict[str, list[float]]:
    """Buckets merged ``factor`` at a time, as {"lower_us": [...], "upper_us": [...],
    "count": [...]}, non-empty only; small enough for /stats and history lines."""
    grouped = np.asarray(counts, dtype=np.int64).reshape(-1, factor).sum(axis=1)
    nonzero = np.flatnonzero(grouped)
    return {
        "lower_us": [round(float(BUCKET_EDGES[i * factor]), 4) for i in nonzero],
        "upper_us": [round(float(BUCKET_EDGES[(i + 1) * factor]), 4) for i in nonzero],
        "count": grouped[nonzero].tolist(),
    }
