"""History snapshots on disk: written by tick, one file per hour, the newest N files kept."""

from __future__ import annotations

from pathlib import Path

from monitoring import Monitor, MonitorConfig, WorkerSnapshot
from monitoring.history import HistoryWriter, history_files, read_history
from tests.fakes import FakeClock

HOUR = 3600.0
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def test_rotation_keeps_the_newest_files(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path, max_files=3)
    for hour in range(6):
        for minute in range(3):
            writer.append({"t": T0 + hour * HOUR + minute * 60, "hour": hour})
    files = history_files(tmp_path)
    assert len(files) == 3
    records = list(read_history(tmp_path))
    assert [r["hour"] for r in records] == [3, 3, 3, 4, 4, 4, 5, 5, 5]


def test_half_written_lines_are_skipped(tmp_path: Path) -> None:
    writer = HistoryWriter(tmp_path, max_files=2)
    writer.append({"t": T0, "ok": 1})
    with history_files(tmp_path)[0].open("ab") as out:
        out.write(b'{"t": 17000')  # a crash mid-write
    assert [r["ok"] for r in read_history(tmp_path)] == [1]


def test_unwritable_directory_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    writer = HistoryWriter(blocker / "history", max_files=2)
    writer.append({"t": T0})
    assert writer.errors == 1


def test_monitor_writes_snapshots_that_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    workers = [WorkerSnapshot(0, 5, "ready", 0, 0, 0)]

    def run(seconds: int) -> None:
        config = MonitorConfig(history_dir=tmp_path, history_interval_s=10.0)
        monitor = Monitor(config, clock=clock, wall_clock=clock)
        for _ in range(seconds):
            for i in range(20):
                monitor.record_request("tactical", 200, 100.0 + i, 5, 1, 10, 50, i == 0)
            clock.advance(1.0)
            monitor.tick(workers, {"tactical": 1})

    run(30)
    run(30)  # a restarted server appends to the same history
    records = list(read_history(tmp_path))
    assert len(records) == 6
    entry = records[0]["models"]["tactical"]
    assert entry["requests"] == 200  # 10 s x 20 requests: per-interval, not cumulative
    assert entry["cache_hits"] == 10
    assert sum(entry["histogram_us"]["count"]) == 200
    assert entry["latency_us"]["total"]["p50"] is not None
    assert records[0]["alerts"]["high_p99_latency"] == "inactive"
