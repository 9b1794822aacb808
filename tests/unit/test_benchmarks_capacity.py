"""The capacity model on hand-made result documents: which load level it rests on, its
spread, the replica counts, and the cases it must refuse."""

from __future__ import annotations

import math

import orjson
import pytest

from benchmarks.__main__ import main
from benchmarks.capacity import Plan, plan, plan_text, points_from


def run(concurrency: int, rps: float, p99_us: float, cpu_s: float = 6.5, **extra) -> dict:
    return {
        "target": "ours",
        "mode": "cold",
        "concurrency": concurrency,
        "duration_s": 5.0,
        "rps": rps,
        "latency_us": {"p50": p99_us / 2, "p99": p99_us},
        "errors": {},
        "cpu": {"server_s": cpu_s},
        **extra,
    }


DOC = {
    "machine": {"cores": 2},
    "runs": [
        run(1, 10_000, 150, cpu_s=5.0),
        run(16, 21_000, 1_400),
        run(64, 26_000, 4_000),
        run(16, 20_000, 1_400, target="raw_floor"),
    ],
    "pairs": [run(16, 23_000, 1_500, pair=0), run(16, 22_000, 1_700, pair=1)],
}


def test_rests_on_the_busiest_load_that_met_the_p99() -> None:
    result = plan(points_from([("a", DOC)]), rps=100_000, p99_ms=2.0)
    assert isinstance(result, Plan)
    assert result.concurrency == 16
    assert (result.per_replica_rps.median, result.per_replica_rps.low) == (22_000, 21_000)
    assert result.per_replica_rps.n == 3  # the pairs pool with the runs; raw_floor does not
    assert result.replicas == math.ceil(100_000 / (0.7 * 22_000))
    assert result.replicas_worst == math.ceil(100_000 / (0.7 * 21_000))
    assert result.per_core_rps.median == pytest.approx(22_000 / 1.3)
    assert "needs 7 replicas of 2 cores" in plan_text(result)


def test_a_looser_target_uses_the_heavier_load_and_a_small_one_keeps_two() -> None:
    loose = plan(points_from([("a", DOC)]), rps=1_000, p99_ms=5.0)
    assert isinstance(loose, Plan) and loose.concurrency == 64
    assert loose.replicas == 2  # min_replicas: one replica may fail


def test_an_unreachable_p99_is_said_not_planned() -> None:
    result = plan(points_from([("a", DOC)]), rps=1_000, p99_ms=0.1)
    assert isinstance(result, str) and "lowest median p99 was 0.15 ms" in result


def test_runs_with_errors_are_left_out() -> None:
    doc = {"machine": {"cores": 2}, "runs": [run(16, 30_000, 900, errors={"503": 4})]}
    assert points_from([("a", doc)]) == []
    assert plan([], 1, 1) == "no cold runs of our server in the given results"


def test_command_reads_result_files(tmp_path, capsys) -> None:
    path = tmp_path / "compare-x.json"
    path.write_bytes(orjson.dumps(DOC))
    assert main(["capacity", "--rps", "50000", "--p99-ms", "2", "--from", str(path)]) == 0
    out = capsys.readouterr().out
    assert "22,000 req/s (min 21,000, max 23,000, 3 runs)" in out
    assert main(["capacity", "--rps", "1", "--p99-ms", "0.01", "--from", str(path)]) == 1


def test_noisy_runs_are_flagged() -> None:
    doc = {"machine": {"cores": 2}, "runs": [run(16, 5_000, 1_000, cpu={"server_s": 3.0})]}
    doc["runs"][0]["cpu"]["other_s"] = 6.0  # 60% of 2 cores over 5 s
    result = plan(points_from([("a", doc)]), rps=1_000, p99_ms=2.0)
    assert isinstance(result, Plan) and result.noisy_runs == 1
    assert "warning: in 1 of 1 runs other processes took over 10%" in plan_text(result)
