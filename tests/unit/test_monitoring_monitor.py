"""The Monitor facade: recording, windows, /stats, worker bookkeeping, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring import STAGES, Monitor, MonitorConfig, WorkerSnapshot, dumps
from tests.fakes import FakeClock
from tests.support import resident_bytes

WORKERS = [
    WorkerSnapshot(index=0, pid=101, state="ready", in_flight=2, served=10, restarts=0),
    WorkerSnapshot(index=1, pid=102, state="ready", in_flight=0, served=7, restarts=1),
]


def make(**config: object) -> tuple[Monitor, FakeClock]:
    clock = FakeClock()
    return Monitor(MonitorConfig(**config), clock=clock, wall_clock=clock), clock  # type: ignore[arg-type]


def record(monitor: Monitor, model: str, total_us: float, status: int = 200, **kw: object) -> None:
    monitor.record_request(
        model,
        status,
        total_us,
        float(kw.get("parse", 10.0)),  # type: ignore[arg-type]
        float(kw.get("cache", 2.0)),  # type: ignore[arg-type]
        float(kw.get("queue", 30.0)),  # type: ignore[arg-type]
        float(kw.get("inference", total_us / 2)),  # type: ignore[arg-type]
        bool(kw.get("cached", False)),
    )


def test_stats_reports_every_field_of_the_contract() -> None:
    monitor, clock = make(models=("tactical",))
    rng = np.random.default_rng(3)
    values = rng.lognormal(np.log(300.0), 0.5, 3000)
    for i, v in enumerate(values):
        record(
            monitor, "tactical", float(v), status=503 if i % 100 == 0 else 200, cached=i % 4 == 0
        )
        if i % 100 == 99:
            monitor.record_batch("tactical", 8, 150.0, 101)
            clock.advance(0.1)
            monitor.tick(WORKERS, {"tactical": 3})
    stats = monitor.stats(WORKERS)
    entry = stats["models"]["tactical"]
    for span in ("window", "since_start"):
        latency = entry[span]["latency_us"]
        assert set(latency) == set(STAGES)
        for key in ("p50", "p95", "p99", "p99_9", "max", "count"):
            assert latency["total"][key] is not None
    window = entry["window"]
    assert window["requests"] == 3000
    assert window["error_rate"] == pytest.approx(0.01)
    assert window["cache_hit_rate"] == pytest.approx(750 / 2970)
    assert window["rps"] == pytest.approx(3000 / 3.0, rel=0.01)  # 30 ticks 0.1 s apart
    assert window["batch_size"]["distribution"] == {"8": 30}
    assert window["latency_us"]["total"]["p99"] == pytest.approx(
        np.quantile(values, 0.99), rel=0.01
    )
    assert window["latency_us"]["total"]["max"] == pytest.approx(values.max())
    assert entry["queue_depth"] == 3
    assert [w["pid"] for w in stats["workers"]] == [101, 102]
    assert {"pid", "state", "in_flight", "served", "restarts"} <= set(stats["workers"][0])
    assert stats["workers"][0]["batches"] == 30
    assert stats["timeline"], "one point per rotated second"
    assert sum(stats["histogram_us"]["count"]) == 3000
    dumps(stats)  # JSON-serialisable


def test_window_slides_and_since_start_keeps_everything() -> None:
    monitor, clock = make(window_s=10.0)
    for _ in range(100):
        record(monitor, "tactical", 5000.0)
    for _ in range(20):  # 20 s with nothing recorded
        clock.advance(1.0)
        monitor.tick(WORKERS, {})
    for _ in range(50):
        record(monitor, "tactical", 100.0)
    clock.advance(1.0)
    monitor.tick(WORKERS, {})
    entry = monitor.stats()["models"]["tactical"]
    assert entry["window"]["requests"] == 50
    assert entry["window"]["latency_us"]["total"]["max"] == 100.0
    assert entry["since_start"]["requests"] == 150
    assert entry["since_start"]["latency_us"]["total"]["max"] == 5000.0


def test_zero_stage_times_are_not_recorded() -> None:
    monitor, _ = make()
    record(monitor, "tactical", 40.0, queue=0.0, inference=0.0, cached=True)
    latency = monitor.stats()["models"]["tactical"]["window"]["latency_us"]
    assert latency["total"]["count"] == 1
    assert latency["queue"]["count"] == 0 and latency["inference"]["count"] == 0


def test_unknown_and_unlisted_models_share_one_series() -> None:
    monitor, _ = make(models=("tactical", "strategic"))
    record(monitor, "", 10.0, status=400)
    for i in range(1000):
        record(monitor, f"typo{i}", 10.0, status=404)
    stats = monitor.stats()
    assert set(stats["models"]) == {"tactical", "strategic", "unknown"}
    assert stats["models"]["tactical"]["since_start"]["requests"] == 0
    assert stats["models"]["unknown"]["since_start"]["status"] == {"400": 1, "404": 1000}


def test_model_names_are_capped_without_a_model_list() -> None:
    monitor, _ = make(max_models=3)
    for i in range(10):
        record(monitor, f"m{i}", 10.0)
    assert set(monitor.stats()["models"]) == {"m0", "m1", "m2", "unknown"}


def test_disabled_monitor_records_nothing() -> None:
    monitor, _ = make(enabled=False)
    record(monitor, "tactical", 10.0)
    monitor.record_batch("tactical", 1, 10.0, 1)
    stats = monitor.stats()
    assert stats["enabled"] is False
    assert stats["models"] == {}


def test_worker_served_counter_stays_monotone_across_restarts() -> None:
    monitor, clock = make()
    monitor.tick([WorkerSnapshot(0, 101, "ready", 0, 50, 0)], {})
    monitor.record_batch("tactical", 1, 100.0, 101)
    clock.advance(1.0)
    monitor.worker_event("died", 101)
    monitor.worker_event("restarted", 201)
    monitor.tick([WorkerSnapshot(0, 201, "ready", 0, 5, 1)], {})
    monitor.record_batch("tactical", 1, 300.0, 201)
    assert monitor.served_total(0) == 55
    merged = monitor.worker_inference_histograms()[0]
    assert merged.count == 2  # the dead pid's histogram was folded into its slot
    assert monitor.worker_events == {"died": 1, "restarted": 1}


def test_recording_a_million_requests_does_not_grow_memory() -> None:
    monitor, clock = make(models=("tactical",))
    values = np.random.default_rng(0).lognormal(np.log(300.0), 1.0, 4096).tolist()
    recorder = monitor.record_request
    # warm up through a dozen flushes of the pending rows (16,384 each), so that the
    # allocator has reached its steady state: 20,000 rows (one flush) left a fresh clone's
    # CI run 1.8 MB short of it once
    for i in range(200_000):
        recorder("tactical", 200, values[i & 4095], 10.0, 2.0, 30.0, 100.0, False)
    clock.advance(1.0)
    monitor.tick(WORKERS, {})
    series = next(s for s in monitor.series() if s.name == "tactical")
    before = resident_bytes()
    for i in range(1_000_000):
        recorder("tactical", 200, values[i & 4095], 10.0, 2.0, 30.0, 100.0, False)
    grown = resident_bytes() - before
    assert series.cur.shape == series.since_start.shape
    assert series.status == {200: 1_200_000}
    assert grown < 1024 * 1024, f"recording grew resident memory by {grown} bytes"
    # the flushes forced by the pending-row bound bucketed every row (none dropped)
    total = series.total(clock())
    assert total.requests == 1_200_000
    assert int(total.segment("parse").sum()) == 1_200_000


def test_batch1_inference_shares_the_worker_histogram_buckets() -> None:
    monitor, clock = make(models=("tactical",))
    monitor.tick(WORKERS, {})  # pid 101 is worker 0, pid 102 worker 1
    values = np.random.default_rng(2).lognormal(np.log(80.0), 1.0, 500)
    values[:2] = [0.0, 1e12]  # below and above the covered range: clamped to the end buckets
    for v in values:
        monitor.record_batch("tactical", 1, float(v), 101)
    monitor.record_batch("tactical", 8, 5000.0, 102)  # larger batches: not batch-1 times
    monitor.record_batch("tactical", 2, 7000.0, 102)
    series = next(s for s in monitor.series() if s.name == "tactical")
    batch1 = series.total(clock()).segment("batch1_inference")
    assert batch1.tolist() == monitor.worker_inference_histograms()[0].counts().tolist()
    window = monitor.stats()["models"]["tactical"]["window"]
    assert window["batch1_inference_us"]["count"] == 500
    assert window["batch1_inference_us"]["max"] == 1e12
    assert window["batch_size"]["distribution"] == {"1": 500, "2": 1, "8": 1}


def test_ring_of_slices_is_bounded_whatever_the_tick_rate() -> None:
    monitor, clock = make(window_s=5.0)
    for _ in range(1000):
        record(monitor, "tactical", 100.0)
        clock.advance(1.0)
        monitor.tick(WORKERS, {})
    series = next(s for s in monitor.series() if s.name == "tactical")
    assert len(series.ring) <= 7
    assert len(monitor.stats()["timeline"]) <= 8


def test_bulk_bucketing_counts_what_one_at_a_time_bucketing_would() -> None:
    from math import frexp

    from monitoring.histogram import LAST_BUCKET, N_BUCKETS
    from monitoring.series import CACHED_SLOT, SLOTS

    monitor, _ = make(models=("tactical",))
    rng = np.random.default_rng(5)
    rows = rng.lognormal(np.log(50.0), 2.0, (5000, 5))
    rows[rng.random((5000, 5)) < 0.3] = 0.0  # stages that did not run
    rows[:3, 4] = [0.0, 1e-9, 1e12]  # a total of 0 still counts; extremes clamp
    expected = [0] * SLOTS
    for k, (parse, cache, queue, inference, total) in enumerate(rows.tolist()):
        monitor.record_request("tactical", 200, total, parse, cache, queue, inference, k % 2 == 0)
        for stage, value in enumerate((parse, cache, queue, inference, total)):
            if value > 0.0 or stage == 4:
                mantissa, exponent = frexp(value)
                index = min(max(exponent * 128 + int(mantissa * 256), 0), LAST_BUCKET)
                expected[stage * N_BUCKETS + index] += 1
    series = next(s for s in monitor.series() if s.name == "tactical")
    series.flush()
    expected[CACHED_SLOT] = 2500
    assert series.current_counts().tolist() == expected
    assert series.cur_max[:5] == [float(rows[:, stage].max()) for stage in range(5)]
    assert len(series.pending) == 0
