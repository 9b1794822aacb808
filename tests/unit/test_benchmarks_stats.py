"""The benchmark's arithmetic on fixed inputs: percentiles, ratios, bars, bodies, wrk's
report, tables."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import orjson
import pytest

from benchmarks.bodies import Mode, make_bodies
from benchmarks.httpbench import HttpSettings, RunPlan, run_record
from benchmarks.loadgen import Generator, LoadResult, parse_wrk_output, wrk_errors
from benchmarks.stats import (
    compute_ratios,
    evaluate_bars,
    latency_summary,
    percentile,
    ratio,
    sample,
)
from benchmarks.tables import RUN_COLUMNS, bodies_text, markdown_table, run_rows, text_table
from benchmarks.targets import LaunchOptions, Target, command


def run(
    target: str,
    mode: str,
    concurrency: int,
    rps: float,
    p50: float,
    p99: float,
    errors: dict[str, int] | None = None,
) -> dict:
    return {
        "target": target, "mode": mode, "concurrency": concurrency, "duration_s": 2,
        "generator": "python", "requests": int(rps * 2), "rps": rps,
        "latency_us": {"p50": p50, "p99": p99, "p99_9": p99 * 1.5, "max": p99 * 2},
        "errors": errors or {}, "cpu": {"server_s": 1.0, "loadgen_s": 0.5},
    }  # fmt: skip


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 1001))  # 1..1000
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile(values, 100) == 1000
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99.9) == 7.0


def test_percentile_of_nothing_is_nan_and_range_is_checked() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_latency_summary_sorts_and_reports_max() -> None:
    summary = latency_summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary == {"p50": 3.0, "p99": 5.0, "p99_9": 5.0, "max": 5.0}
    assert all(math.isnan(v) for v in latency_summary([]).values())


def test_sample_keeps_order_and_limit() -> None:
    values = [float(i) for i in range(10_000)]
    picked = sample(values, 100, seed=3)
    assert len(picked) == 100 and picked == sorted(picked)
    assert sample(values, 100, seed=3) == picked
    assert sample([1.0, 2.0], 100) == [1.0, 2.0]


def test_ratio_refuses_missing_or_non_positive_denominators() -> None:
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(None, 4.0) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(math.nan, 1.0) is None


BARS = 7


def meeting_runs() -> list[dict]:
    single = run("ours", "cold", 1, 6_000, 150, 220)
    single["server"] = {"stages_us": {"inference": {"p50": 12.0}}, "optimizer_p50_us": 10.0}
    return [
        run("raw_floor", "cold", 1, 12_000, 80, 150),
        run("raw_floor", "warm", 1, 12_000, 80, 150),
        run("raw_floor", "cold", 16, 12_000, 1_000, 2_000),
        run("plain_fastapi", "cold", 16, 800, 15_000, 40_000),
        run("tuned_ort", "cold", 16, 7_000, 2_000, 4_000),
        single,
        run("ours", "cold", 16, 9_000, 1_500, 3_000),
        run("ours", "cold", 64, 9_000, 4_000, 6_000),
        run("ours", "warm", 1, 10_000, 120, 200),
        run("ours_no_monitoring", "cold", 16, 9_200, 1_450, 2_900),
    ]


def test_every_bar_met() -> None:
    bars = evaluate_bars(meeting_runs())
    assert [b.met for b in bars] == [True] * BARS, [b.detail for b in bars]


def test_each_bar_fails_on_its_own_figure() -> None:
    runs = {(r["target"], r["mode"], r["concurrency"]): r for r in meeting_runs()}
    runs["ours", "cold", 1]["latency_us"]["p99"] = 226  # > 1.5 x raw_floor's 150
    runs["ours", "cold", 1]["server"]["stages_us"]["inference"]["p50"] = 13.1  # > 1.3 x 10
    runs["ours", "cold", 16]["rps"] = 7_900  # < 10 x plain_fastapi's 800, < 0.75 x floor
    runs["ours", "cold", 64]["errors"] = {"503": 1}
    runs["ours", "warm", 1]["latency_us"]["p50"] = 131  # > raw_floor 80 + 50
    runs["ours_no_monitoring", "cold", 16]["rps"] = 7_900 / 0.94  # on is 6% below off
    assert [b.met for b in evaluate_bars(list(runs.values()))] == [False] * BARS


@pytest.mark.parametrize(
    ("bar", "key", "field", "value"),
    [
        (0, ("ours", "cold", 1), ("latency_us", "p99"), 226),  # > 1.5 x raw_floor's 150
        (1, ("plain_fastapi", "cold", 16), ("rps",), 901),  # ours' 9,000 < 10 x 901
        (2, ("ours", "cold", 64), ("errors",), {"503": 1}),
        (2, ("ours", "cold", 64), ("latency_us", "p99_9"), 10_001),  # over 10 ms
        (2, ("ours", "cold", 64), ("rps",), 8_999),  # below 16 clients' 9,000
        (3, ("ours", "warm", 1), ("latency_us", "p50"), 131),  # > raw_floor 80 + 50
        (4, ("ours_no_monitoring", "cold", 16), ("rps",), 9_000 / 0.94),  # on 6% below off
        (5, ("raw_floor", "cold", 16), ("rps",), 12_001),  # ours' 9,000 < 0.75 x 12,001
        (6, ("ours", "cold", 1), ("server", "stages_us", "inference", "p50"), 13.1),
    ],
)
def test_each_bar_fails_alone_when_only_its_figure_is_off(
    bar: int, key: tuple[str, str, int], field: tuple[str, ...], value: object
) -> None:
    runs = {(r["target"], r["mode"], r["concurrency"]): r for r in meeting_runs()}
    parent = runs[key]
    for name in field[:-1]:
        parent = parent[name]
    parent[field[-1]] = value
    expected = [True] * BARS
    expected[bar] = False
    assert [b.met for b in evaluate_bars(list(runs.values()))] == expected


def _pairs(on_off: list[tuple[float, float]]) -> list[dict]:
    out = []
    for k, (on, off) in enumerate(on_off):
        out.append({**run("ours", "cold", 16, on, 1_500, 3_000), "pair": k})
        out.append({**run("ours_no_monitoring", "cold", 16, off, 1_500, 3_000), "pair": k})
    return out


def test_monitoring_bar_takes_the_median_pair_ratio_over_the_single_runs() -> None:
    runs = meeting_runs()  # its single runs alone meet the bar (-2.2%)
    # one drifted pair (-20%) does not decide; the median pair is 8% below
    bar = evaluate_bars(runs, _pairs([(9_200, 10_000), (8_000, 10_000), (9_600, 10_400)]))[4]
    assert bar.met is False
    assert "median of 3 interleaved pairs" in bar.detail and "-8.0%" in bar.detail
    bar = evaluate_bars(runs, _pairs([(9_900, 10_000), (8_000, 10_000), (10_300, 10_200)]))[4]
    assert bar.met is True and "-1.0%" in bar.detail


def test_monitoring_bar_uses_only_pairs_with_both_sides() -> None:
    runs = meeting_runs()
    pairs = _pairs([(9_200, 10_000), (8_000, 10_000)])
    del pairs[3]  # pair 1 lost its monitoring-off run: pair 0 (-8%) alone decides
    bar = evaluate_bars(runs, pairs)[4]
    assert bar.met is False and "median of 1 interleaved pairs" in bar.detail
    assert "-8.0%" in bar.detail
    only_on = [p for p in pairs if p["target"] == "ours"]
    bar = evaluate_bars(runs, only_on)[4]  # no complete pair: the single cold@16 runs decide
    assert bar.met is True and "interleaved" not in bar.detail and "-2.2%" in bar.detail


def test_single_client_bar_has_an_absolute_limit_too() -> None:
    runs = meeting_runs()
    for r in runs:
        if r["concurrency"] == 1 and r["mode"] == "cold":
            r["latency_us"]["p99"] = 600 if r["target"] == "ours" else 450
    assert evaluate_bars(runs)[0].met is False  # within 1.5x of the floor, but over 500 us


def test_bars_without_their_runs_are_not_applicable() -> None:
    only_baselines = [r for r in meeting_runs() if not r["target"].startswith("ours")]
    bars = evaluate_bars(only_baselines)
    assert [b.met for b in bars] == [None] * BARS
    assert all(b.verdict == "n/a" and "missing" in b.detail for b in bars)


def test_ratios_pair_ours_with_each_baseline_at_the_same_point() -> None:
    ratios = compute_ratios(meeting_runs())
    assert ratios["rps:cold@16:ours/plain_fastapi"] == pytest.approx(9_000 / 800, rel=1e-3)
    assert ratios["rps:cold@16:ours/tuned_ort"] == pytest.approx(9_000 / 7_000, rel=1e-3)
    assert ratios["p99:cold@1:ours/raw_floor"] == pytest.approx(220 / 150, rel=1e-3)
    assert ratios["p50:warm@1:ours/raw_floor"] == pytest.approx(120 / 80, rel=1e-3)
    assert not any("@64" in key for key in ratios)  # no baseline ran at 64 here
    assert not any("ours_no_monitoring" in key for key in ratios)


def test_cold_bodies_never_repeat_and_parse_to_the_model_shape() -> None:
    bodies = make_bodies("tactical", Mode.COLD, seed=1, templates=16)
    seen = set()
    for i in range(2_000):
        doc = orjson.loads(bodies.body(i))
        obs = np.asarray(doc["observation"], dtype=np.float32)
        assert doc["model"] == "tactical" and obs.shape == (60, 7)
        seen.add(obs.tobytes())
    assert len(seen) == 2_000  # distinct even as float32, as the server's cache sees them


def test_warm_bodies_cycle_a_fixed_working_set() -> None:
    bodies = make_bodies("strategic", Mode.WARM, seed=2)
    assert len({bodies.body(i) for i in range(1_000)}) == 64
    assert bodies.body(5) == bodies.body(5 + 64)
    obs = np.asarray(orjson.loads(bodies.body(0))["observation"])
    assert obs.shape == (48, 13)


def test_bodies_say_what_they_send() -> None:
    cold = make_bodies("tactical", Mode.COLD, seed=1, templates=16)
    described = cold.describe()
    assert described["distinct"] and described["working_set"] is None
    assert described["decimals"] == 9 and described["model"] == "tactical"
    fractions = re.findall(rb"\.(\d+)", cold.body(3))
    assert len(fractions) == 420 and {len(f) for f in fractions[1:]} == {9}  # [0]: the sequence
    assert 5_000 < described["bytes_mean"] < 6_000  # a 60x7 body with nine decimals
    warm = make_bodies("strategic", Mode.WARM, seed=2).describe()
    assert not warm["distinct"] and warm["working_set"] == 64
    runs = [{"mode": "cold", "bodies": described}, {"mode": "cold", "bodies": described}]
    assert bodies_text(runs) == (
        f"bodies (cold): tactical, distinct observations, values with 9 decimals, "
        f"~{round(described['bytes_mean'], -2):,} bytes each"
    )


def test_runs_of_different_seeds_share_no_body() -> None:
    a = make_bodies("tactical", Mode.COLD, seed=1, templates=8)
    b = make_bodies("tactical", Mode.COLD, seed=2, templates=8)
    assert not {a.body(i) for i in range(100)} & {b.body(i) for i in range(100)}


WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1234/infer
  1 threads and 2 connections
BENCH_JSON {"requests":1200,"duration_us":1002000,"p50":81.0,"p99":120.0,"p99_9":900.0,\
"max":1500.0,"statuses":{"200":1190,"503":10},"connect":0,"read":2,"write":0,"timeout":0}
Requests/sec:   1197.60
"""


def test_wrk_report_is_parsed_and_errors_are_counted_by_status() -> None:
    report = parse_wrk_output(WRK_OUTPUT)
    assert report["requests"] == 1200 and report["p99_9"] == 900.0
    assert wrk_errors(report) == {"503": 10, "socket_read": 2}
    with pytest.raises(ValueError, match="BENCH_JSON"):
        parse_wrk_output("Running 1s test\n")


def test_run_record_has_the_result_format_keys() -> None:
    result = LoadResult(
        generator=Generator.WRK, requests=100, elapsed_s=0.5,
        latency_us={"p50": 1.0, "p99": 2.0, "p99_9": 3.0, "max": 4.0},
        errors={"503": 1}, loadgen_cpu_s=0.1,
    )  # fmt: skip
    record = run_record(Target.RAW_FLOOR, RunPlan(Mode.WARM, 16), 1.0, result, 0.7, 0.05)
    assert set(record) == {
        "target", "mode", "concurrency", "duration_s", "generator", "requests", "rps",
        "latency_us", "errors", "cpu",
    }  # fmt: skip
    assert record["rps"] == 200.0 and record["target"] == "raw_floor"
    assert record["mode"] == "warm" and record["generator"] == "wrk"
    assert record["cpu"] == {"server_s": 0.7, "loadgen_s": 0.1, "other_s": 0.05}


def test_tables_render_every_run() -> None:
    rows = run_rows(meeting_runs())
    assert len(rows) == 10 and all(len(r) == len(RUN_COLUMNS) for r in rows)
    text = text_table(RUN_COLUMNS, rows)
    assert "ours_no_monitoring" in text and "9,000" in text
    md = markdown_table(RUN_COLUMNS, rows)
    assert md.count("\n") == 11 and md.startswith("| target |")


def test_show_prints_a_saved_result(tmp_path, capsys) -> None:
    from benchmarks.__main__ import main

    path = tmp_path / "result.json"
    path.write_bytes(orjson.dumps({"kind": "benchmark", "machine": {"cores": 2},
                                   "runs": meeting_runs(), "inprocess": []}))  # fmt: skip
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("[met    ]") == 7 and "tuned_ort" in out
    assert main(["show", "--markdown", str(path)]) == 0
    assert capsys.readouterr().out.count("- **met**") == 7


def test_show_decides_monitoring_on_the_saved_pairs(tmp_path, capsys) -> None:
    from benchmarks.__main__ import main

    path = tmp_path / "result.json"
    pairs = _pairs([(9_200, 10_000), (8_000, 10_000)])  # on 8% and 20% below off
    path.write_bytes(orjson.dumps({"kind": "benchmark", "machine": {"cores": 2},
                                   "runs": meeting_runs(), "pairs": pairs,
                                   "inprocess": []}))  # fmt: skip
    assert main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "interleaved pairs" in out and "ours_no_monitoring (pair 2)" in out
    assert out.count("[met    ]") == 6 and "[NOT MET] monitoring" in out
    assert main(["show", "--markdown", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("- **met**") == 6 and "- **NOT MET**: monitoring" in out
    assert "ours (pair 1)" in out


def test_only_ours_without_monitoring_is_started_with_no_monitoring(tmp_path) -> None:
    launch = LaunchOptions(artifacts=tmp_path, workers=2, cache_size=0)
    argv = {t: command(t, 8000, launch) for t in Target}
    assert [t for t, a in argv.items() if "--no-monitoring" in a] == [Target.OURS_NO_MONITORING]
    assert argv[Target.OURS_NO_MONITORING] == [*argv[Target.OURS], "--no-monitoring"]
    assert argv[Target.OURS][:3] == [sys.executable, "-m", "server"]
    assert argv[Target.RAW_FLOOR][:3] == [sys.executable, "-m", "benchmarks.baselines.raw_floor"]


def test_compare_goes_on_past_a_failed_target_and_decides_monitoring_on_pairs(
    monkeypatch, tmp_path
) -> None:
    from benchmarks import compare

    by_key = {(r["target"], r["mode"], r["concurrency"]): r for r in meeting_runs()}
    pairs = _pairs([(9_200, 10_000), (8_000, 10_000)])
    interleaved: list[tuple] = []

    def run_target(target, plans, settings, launch, log):
        if target is Target.PLAIN_FASTAPI:
            raise RuntimeError("plain_fastapi exited with 1 before it was ready\nlog tail")
        return [by_key[str(target), str(p.mode), p.concurrency] for p in plans]

    def run_interleaved(targets, plan, rounds, settings, launch, log):
        interleaved.append((targets, plan, rounds))
        return pairs

    monkeypatch.setattr(compare, "run_target", run_target)
    monkeypatch.setattr(compare, "run_interleaved", run_interleaved)
    monkeypatch.setattr(compare, "server_available", lambda: True)
    monkeypatch.setattr(compare, "ensure_artifacts", lambda artifacts, log: False)
    settings = HttpSettings(duration_s=1, generator=Generator.PYTHON, logs_dir=tmp_path)
    options = compare.CompareOptions(True, settings, LaunchOptions(artifacts=tmp_path))
    document: dict = {"runs": [], "pairs": [], "inprocess": [], "ratios": {}}
    logged: list[str] = []
    compare.run_compare(options, document, log=logged.append)

    assert document["failures"] == {
        "plain_fastapi": "plain_fastapi exited with 1 before it was ready"
    }
    assert {r["target"] for r in document["runs"]} == {"raw_floor", "tuned_ort", "ours"}
    assert interleaved == [(compare.MONITORING_PAIRS, compare.MONITORING_PLAN, 2)]
    assert document["pairs"] == pairs
    # 16 clients lacks plain_fastapi; the pairs (on 8% and 20% below off) fail monitoring
    assert [b["met"] for b in document["bars"]] == [True, None, True, True, False, True, True]
    assert "median of 2 interleaved pairs" in document["bars"][4]["detail"]
    assert document["ratios"] and not any("plain_fastapi" in key for key in document["ratios"])
    assert any("plain_fastapi FAILED" in line for line in logged)


def test_a_run_is_noisy_when_others_took_over_a_tenth_of_the_machine(tmp_path) -> None:
    from benchmarks.httpbench import is_noisy

    settings = HttpSettings(duration_s=5, generator=Generator.PYTHON, logs_dir=tmp_path)
    record = run("ours", "cold", 16, 9_000, 1_500, 3_000)
    record["duration_s"] = 5
    record["cpu"]["other_s"] = 0.9  # of 5 s x 2 cores: 9%
    assert not is_noisy(record, settings, cores=2)
    record["cpu"]["other_s"] = 1.1
    assert is_noisy(record, settings, cores=2)
    del record["cpu"]["other_s"]
    assert not is_noisy(record, settings, cores=2)
    with pytest.raises(ValueError, match="noisy retries"):
        HttpSettings(duration_s=1, generator=Generator.PYTHON, logs_dir=tmp_path, noisy_retries=9)
