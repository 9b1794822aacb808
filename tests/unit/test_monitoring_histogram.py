"""Log-linear histogram: accuracy against numpy, merging across processes, bounded memory."""

from __future__ import annotations

import multiprocessing
import sys

import numpy as np
import pytest

from monitoring.histogram import (
    BUCKET_EDGES,
    N_BUCKETS,
    Histogram,
    bucket_index,
    bucket_indices,
)
from tests.support import resident_bytes

QS = (0.5, 0.9, 0.95, 0.99, 0.999)


def _distributions() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(42)
    n = 200_000
    return {
        "lognormal": rng.lognormal(np.log(300.0), 0.6, n),
        "uniform": rng.uniform(50.0, 5_000.0, n),
        "bimodal": np.concatenate(
            [rng.normal(40.0, 4.0, n // 3), rng.lognormal(np.log(600.0), 0.3, n - n // 3)]
        ),
        # every decade from 1 us to 10 s
        "log_uniform_1us_10s": np.exp(rng.uniform(0.0, np.log(1e7), n)),
    }


@pytest.mark.parametrize("name", list(_distributions()))
def test_percentiles_within_one_percent_of_numpy(name: str) -> None:
    values = _distributions()[name]
    histogram = Histogram()
    histogram.record_many(values)
    for q in QS:
        ours = histogram.quantile(q)
        # the same rank definition (nearest rank) as ours: only the bucket width separates them
        exact = float(np.quantile(values, q, method="inverted_cdf"))
        assert ours == pytest.approx(exact, rel=0.005), (name, q)
        # numpy's default (linear interpolation) differs by the rank definition only
        assert ours == pytest.approx(float(np.quantile(values, q)), rel=0.01), (name, q)
    assert histogram.quantile(1.0) == values.max()
    assert histogram.count == values.size


def test_scalar_and_vector_bucket_index_agree_over_the_range() -> None:
    values = np.concatenate([np.exp(np.linspace(np.log(0.01), np.log(2e8), 5000)), [0.0, -3.0]])
    scalar = [bucket_index(float(v)) for v in values]
    assert scalar == bucket_indices(values).tolist()
    histogram = Histogram()  # record returns the index the monitor reuses for batch-1 times
    assert [histogram.record(float(v)) for v in values] == scalar
    for v, index in zip(values, scalar, strict=True):
        if 0.25 <= v < BUCKET_EDGES[-1]:
            assert BUCKET_EDGES[index] <= v < BUCKET_EDGES[index + 1]


def test_relative_bucket_width_is_below_one_percent_from_1us_to_10s() -> None:
    lo = bucket_index(1.0)
    hi = bucket_index(1e7)
    widths = (BUCKET_EDGES[lo + 1 : hi + 2] - BUCKET_EDGES[lo : hi + 1]) / BUCKET_EDGES[lo : hi + 1]
    assert widths.max() <= 1 / 128 + 1e-12


def _record_in_child(seed: int, queue: multiprocessing.Queue) -> None:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(np.log(200.0 * (1 + seed)), 0.5, 50_000)
    histogram = Histogram()
    for v in values[:1000]:
        histogram.record(float(v))  # the scalar path too
    histogram.record_many(values[1000:])
    queue.put((histogram.to_dict(), values))


def test_histograms_recorded_in_two_processes_merge_to_the_union() -> None:
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    queue = context.Queue()
    children = [context.Process(target=_record_in_child, args=(s, queue)) for s in (0, 1)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    merged = Histogram.merged(Histogram.from_dict(data) for data, _ in results)
    union = np.concatenate([values for _, values in results])
    assert merged.count == union.size
    for q in QS:
        exact = float(np.quantile(union, q, method="inverted_cdf"))
        assert merged.quantile(q) == pytest.approx(exact, rel=0.005)
    # averaging the two processes' p99s is not the p99 of the union
    p99s = [Histogram.from_dict(data).quantile(0.99) for data, _ in results]
    assert abs(np.mean(p99s) - float(np.quantile(union, 0.99))) > 0.05 * np.quantile(union, 0.99)


def test_recording_a_million_values_does_not_grow_memory() -> None:
    histogram = Histogram()
    rng = np.random.default_rng(1)
    values = rng.lognormal(np.log(300.0), 1.0, 1_000_000).tolist()
    for v in values[:10_000]:
        histogram.record(v)
    before = resident_bytes()
    for v in values:
        histogram.record(v)
    grown = resident_bytes() - before
    assert histogram.count == 1_010_000
    assert len(histogram.counts()) == N_BUCKETS
    assert grown < 1024 * 1024, f"resident memory grew by {grown} bytes"


def test_serialisation_round_trip_and_scheme_check() -> None:
    histogram = Histogram()
    histogram.record_many([1.0, 10.0, 100.0, 1000.0])
    again = Histogram.from_dict(histogram.to_dict())
    assert again.summary() == histogram.summary()
    with pytest.raises(ValueError, match="scheme"):
        Histogram.from_dict({**histogram.to_dict(), "scheme": "hdr"})


def test_empty_histogram_reports_none() -> None:
    summary = Histogram().summary()
    assert summary["count"] == 0
    assert summary["p99"] is None and summary["max"] is None
