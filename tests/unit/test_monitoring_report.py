"""The HTML report from history, with and without data."""

from __future__ import annotations

from pathlib import Path

import orjson

from monitoring import AlertRule, Monitor, MonitorConfig, WorkerSnapshot
from monitoring.report import main
from tests.fakes import FakeClock

PNGS = (
    "latency_percentiles.png",
    "latency_histogram.png",
    "requests_per_second.png",
    "error_and_cache_hit_rates.png",
    "alert_timeline.png",
    "variant_comparison.png",
)


def _manifest(path: Path) -> Path:
    variants = [
        {
            "name": name,
            "size_bytes": size,
            "status": "ok",
            "latency_us": {"p50": p50, "p99": p50 * 2, "p99_9": p50 * 3},
        }
        for name, size, p50 in (
            ("eager_fp32", 120_000, 90.0),
            ("torchscript_fp32", 125_000, 60.0),
            ("torchscript_int8", 40_000, 70.0),
            ("onnx_fp32", 118_000, 25.0),
        )
    ]
    path.write_bytes(
        orjson.dumps({"models": {"tactical": {"variants": variants, "selected": "onnx_fp32"}}})
    )
    return path


def _history(directory: Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    rule = AlertRule(
        name="slow",
        kind="latency_quantile_above",
        threshold=400.0,
        window_s=5.0,
        for_s=2.0,
        min_requests=5,
    )
    config = MonitorConfig(history_dir=directory, history_interval_s=5.0, alert_rules=(rule,))
    monitor = Monitor(config, clock=clock, wall_clock=clock)
    workers = [WorkerSnapshot(0, 5, "ready", 0, 0, 0)]
    for second in range(120):
        slow = 40 <= second < 70
        for i in range(30):
            total = 600.0 + i if slow else 100.0 + i
            status = 503 if i == 0 and second % 3 == 0 else 200
            monitor.record_request("tactical", status, total, 5, 1, 10, 50, i % 2 == 0)
        clock.advance(1.0)
        monitor.tick(workers, {})


def test_report_from_history_with_data(tmp_path: Path) -> None:
    history = tmp_path / "history"
    _history(history)
    out = tmp_path / "report"
    assert (
        main(
            [
                "--history",
                str(history),
                "--manifest",
                str(_manifest(tmp_path / "m.json")),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    page = (out / "report.html").read_text()
    for png in PNGS:
        assert (out / png).stat().st_size > 5000, png
    assert page.count("data:image/png;base64,") == len(PNGS)
    assert "No data:" not in page
    assert "No data for this chart." not in page  # every chart drew its series
    assert "http://" not in page.replace("http://www.w3.org", "") and "<script" not in page


def test_report_without_data_says_so(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["--history", str(tmp_path / "empty"), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "No data:" in page
    assert "No history snapshots found" in page
    assert page.count("No data for this chart.") == len(PNGS)
    for png in PNGS:
        assert (out / png).exists(), png


def test_report_from_an_unreachable_server_fails_cleanly(tmp_path: Path) -> None:
    assert main(["--url", "http://127.0.0.1:9", "--out", str(tmp_path)]) == 2
