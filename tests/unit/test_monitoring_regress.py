"""Regression detection: fires on a shifted distribution, quiet on an unchanged one (seeded),
and the CI command on benchmark result files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from monitoring import Monitor, MonitorConfig, RegressionConfig, WorkerSnapshot
from monitoring.histogram import bin_counts
from monitoring.regress import (
    compare_histograms,
    compare_percentiles,
    compare_samples,
    compare_to_quantiles,
    false_alarm_rate,
    main,
)
from tests.fakes import FakeClock


def lognormal(rng: np.random.Generator, median: float, n: int) -> np.ndarray:
    return rng.lognormal(math.log(median), 0.5, n)


def test_samples_shifted_by_30_percent_are_a_regression() -> None:
    rng = np.random.default_rng(7)
    verdict = compare_samples(lognormal(rng, 300, 2000), lognormal(rng, 390, 2000))
    assert verdict.regression
    assert verdict.ratio_p50 == pytest.approx(1.3, rel=0.05)
    assert "median" in verdict.reason


def test_unchanged_samples_are_not_a_regression() -> None:
    rng = np.random.default_rng(8)
    verdict = compare_samples(lognormal(rng, 300, 2000), lognormal(rng, 300, 2000))
    assert not verdict.regression
    assert verdict.p_center is not None and verdict.p_center > 0.005


def test_faster_is_never_a_regression() -> None:
    rng = np.random.default_rng(9)
    assert not compare_samples(lognormal(rng, 300, 2000), lognormal(rng, 150, 2000)).regression


def test_tail_only_regression_is_caught() -> None:
    rng = np.random.default_rng(10)
    base = lognormal(rng, 300, 5000)
    new = lognormal(rng, 300, 5000)
    slow = rng.random(new.size) < 0.05
    new[slow] *= 5.0  # 5% of requests 5x slower: the median barely moves, p99 does
    verdict = compare_samples(base, new)
    assert verdict.regression and "tail" in verdict.reason
    assert verdict.ratio_p50 is not None and verdict.ratio_p50 < 1.1


def test_too_few_samples_never_fire() -> None:
    rng = np.random.default_rng(11)
    verdict = compare_samples(lognormal(rng, 300, 50), lognormal(rng, 3000, 50))
    assert not verdict.regression and "too few" in verdict.reason


def test_histogram_test_agrees_with_the_sample_test() -> None:
    rng = np.random.default_rng(12)
    base, same, slower = (lognormal(rng, m, 3000) for m in (300, 300, 400))
    assert not compare_histograms(bin_counts(base), bin_counts(same)).regression
    assert compare_histograms(bin_counts(base), bin_counts(slower)).regression
    # the binned Mann-Whitney p-value is close to scipy's on the raw samples (the same ones)
    new = lognormal(rng, 310, 3000)
    binned = compare_histograms(bin_counts(base), bin_counts(new))
    raw = compare_samples(base, new)
    assert binned.p_center is not None and raw.p_center is not None
    assert binned.p_center == pytest.approx(raw.p_center, rel=0.05)


def test_false_alarm_rate_on_unchanged_traffic_is_below_alpha() -> None:
    for binned in (False, True):
        rate = false_alarm_rate(trials=200, samples=500, seed=3, binned=binned)
        assert rate <= 0.01


def test_quantile_baseline_from_the_optimizer() -> None:
    rng = np.random.default_rng(13)
    live = lognormal(rng, 100, 2000)
    baseline = {"p50": 100.0, "p99": float(np.quantile(lognormal(rng, 100, 100_000), 0.99))}
    assert not compare_to_quantiles(baseline, bin_counts(live)).regression
    assert compare_to_quantiles(baseline, bin_counts(live * 1.5)).regression


def test_percentile_ratio_without_samples() -> None:
    base = {"p50": 100.0, "p99": 200.0}
    assert not compare_percentiles(base, {"p50": 120.0, "p99": 280.0}).regression
    assert compare_percentiles(base, {"p50": 130.0, "p99": 200.0}).regression
    assert compare_percentiles(base, {"p50": 100.0, "p99": 320.0}).regression


def _document(runs: list[dict]) -> dict:
    return {
        "kind": "benchmark",
        "machine": {},
        "versions": {},
        "git_commit": "abc",
        "created": "2024-01-01T00:00:00+00:00",
        "runs": runs,
        "inprocess": [],
    }


def _run(target: str, latency: dict, samples: list[float] | None = None) -> dict:
    run = {
        "target": target,
        "mode": "warm",
        "concurrency": 16,
        "duration_s": 10,
        "generator": "python",
        "requests": 1000,
        "rps": 1000.0,
        "latency_us": latency,
        "errors": {},
        "cpu": {},
    }
    if samples is not None:
        run["samples_us"] = samples
    return run


def _write(path: Path, runs: list[dict]) -> Path:
    path.write_bytes(orjson.dumps(_document(runs)))
    return path


def test_cli_exit_codes_with_samples(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    stats = {"p50": 300.0, "p99": 900.0, "p99_9": 1200.0, "max": 2000.0}
    base = _write(tmp_path / "base.json", [_run("ours", stats, lognormal(rng, 300, 2000).tolist())])
    same = _write(tmp_path / "same.json", [_run("ours", stats, lognormal(rng, 300, 2000).tolist())])
    slow = _write(tmp_path / "slow.json", [_run("ours", stats, lognormal(rng, 420, 2000).tolist())])
    assert main([str(base), str(same)]) == 0
    assert main([str(base), str(slow)]) == 1


def test_cli_gates_only_on_our_target_by_default(tmp_path: Path) -> None:
    base = _write(
        tmp_path / "base.json",
        [_run("ours", {"p50": 100, "p99": 200}), _run("plain_fastapi", {"p50": 900, "p99": 2000})],
    )
    new = _write(
        tmp_path / "new.json",
        [_run("ours", {"p50": 105, "p99": 210}), _run("plain_fastapi", {"p50": 1900, "p99": 4000})],
    )
    assert main([str(base), str(new)]) == 0
    assert main([str(base), str(new), "--target", "all"]) == 1


def test_cli_rejects_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"kind": "manifest"}')
    good = _write(tmp_path / "good.json", [_run("ours", {"p50": 1, "p99": 2})])
    assert main([str(bad), str(good)]) == 2
    assert "not a benchmark result" in capsys.readouterr().err
    other = _write(tmp_path / "other.json", [{**_run("ours", {}), "concurrency": 64}])
    assert main([str(good), str(other)]) == 2


def test_live_detector_raises_latency_regression_against_its_reference_window() -> None:
    clock = FakeClock(0.0)
    settings = RegressionConfig(warmup_s=5.0, check_interval_s=5.0, min_samples=200)
    monitor = Monitor(
        MonitorConfig(window_s=20.0, regression=settings), clock=clock, wall_clock=clock
    )
    ready = [WorkerSnapshot(0, 1, "ready", 0, 0, 0)]
    rng = np.random.default_rng(15)

    def run(seconds: int, median: float) -> None:
        for _ in range(seconds):
            for v in lognormal(rng, median, 100):
                monitor.record_request("tactical", 200, float(v), 5, 1, 10, 50, False)
            clock.advance(1.0)
            monitor.tick(ready, {})

    run(40, 100.0)  # the reference window is frozen after warm-up; then unchanged traffic
    assert monitor.stats()["regression"]["tactical:reference"]["regression"] is False
    assert "latency_regression" not in {a["alert"] for a in monitor.alerts()["pending"]}
    run(120, 150.0)
    assert monitor.stats()["regression"]["tactical:reference"]["regression"] is True
    assert [a["alert"] for a in monitor.alerts()["firing"]] == ["latency_regression"]


@pytest.mark.parametrize("alerting", [False, True])
def test_optimizer_baseline_is_reported_and_alerts_only_when_asked(alerting: bool) -> None:
    clock = FakeClock(0.0)
    settings = RegressionConfig(
        warmup_s=1000.0, check_interval_s=5.0, alert_on_optimizer_baseline=alerting
    )
    config = MonitorConfig(
        regression=settings, baseline_latency_us={"tactical": {"p50": 20.0, "p99": 40.0}}
    )
    monitor = Monitor(config, clock=clock, wall_clock=clock)
    ready = [WorkerSnapshot(0, 1, "ready", 0, 0, 0)]
    for _ in range(80):
        for _ in range(20):
            monitor.record_batch("tactical", 1, 100.0, 1)  # 5x the optimizer's p50
        clock.advance(1.0)
        monitor.tick(ready, {})
    entry = monitor.stats()["regression"]["tactical:optimizer"]
    assert entry["regression"] is True and entry["alerting"] is alerting
    firing = [a["alert"] for a in monitor.alerts()["firing"]]
    assert firing == (["latency_regression"] if alerting else [])
