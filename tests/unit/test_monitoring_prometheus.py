"""/metrics text: parses, holds the expected families, passes promtool; the shipped Prometheus
config, rules and Grafana dashboard are valid and refer to metrics that exist."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from monitoring import Monitor, MonitorConfig, WorkerSnapshot
from tests.fakes import FakeClock
from tests.tools import required_binary

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus"
WORKERS = [
    WorkerSnapshot(0, 101, "ready", 1, 40, 0),
    WorkerSnapshot(1, 102, "starting", 0, 0, 2),
]


def promtool() -> str:
    return required_binary("promtool", "CI must run the Prometheus checks")


def busy_monitor(clock: Callable[[], float] = time.monotonic) -> Monitor:
    monitor = Monitor(MonitorConfig(models=("tactical", "strategic")), clock=clock)
    for _ in range(100):
        monitor.record_request("tactical", 200, 50.0, 5.0, 1.0, 10.0, 30.0, False)
        monitor.record_request("tactical", 200, 500.0, 5.0, 1.0, 100.0, 300.0, False)
        monitor.record_request("strategic", 200, 80.0, 5.0, 1.0, 0.0, 0.0, True, 1)
    monitor.record_request("", 400, 20.0, 15.0, 0.0, 0.0, 0.0, False)
    monitor.record_request("tactical", 200, 70.0, 5.0, 1.0, 10.0, 30.0, False, 2)
    monitor.record_request("tactical", 503, 20.0, 5.0, 1.0, 0.0, 0.0, False)
    monitor.record_batch("tactical", 8, 250.0, 101)
    monitor.record_batch("tactical", 1, 90.0, 101)
    monitor.worker_event("restarted", 102)
    monitor.tick(WORKERS, {"tactical": 4, "strategic": 0})
    return monitor


def families(text: bytes) -> dict:
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def test_text_parses_and_holds_the_expected_families() -> None:
    found = families(busy_monitor().prometheus_text(WORKERS))
    expected = {
        "pis_requests": "counter",
        "pis_request_duration_seconds": "histogram",
        "pis_cache_hits": "counter",
        "pis_cache_misses": "counter",
        "pis_batch_size": "histogram",
        "pis_queue_depth": "gauge",
        "pis_worker_up": "gauge",
        "pis_worker_in_flight": "gauge",
        "pis_worker_served": "counter",
        "pis_worker_restarts": "counter",
        "pis_worker_batch_inference_seconds": "histogram",
        "pis_alert_firing": "gauge",
        "pis_alert_pending": "gauge",
    }
    for name, kind in expected.items():
        assert name in found, name
        assert found[name].type == kind, name
    requests = {
        (s.labels["model"], s.labels["protocol"], s.labels["status"]): s.value
        for s in found["pis_requests"].samples
    }
    assert requests == {
        ("tactical", "native", "200"): 200,
        ("tactical", "native", "503"): 1,
        ("tactical", "oip_grpc", "200"): 1,
        ("strategic", "oip_rest", "200"): 100,
        ("unknown", "native", "400"): 1,
    }
    hits = {s.labels["model"]: s.value for s in found["pis_cache_hits"].samples}
    assert hits["strategic"] == 100
    up = {s.labels["worker"]: s.value for s in found["pis_worker_up"].samples}
    assert up == {"0": 1.0, "1": 0.0}


def test_a_slot_draining_after_a_reload_is_one_sample_per_family() -> None:
    """While a reload drains, the pool lists a slot's new worker and then its old one: the
    exposition keeps the first, so no two samples share labels."""
    draining = [*WORKERS, WorkerSnapshot(0, 99, "draining", 3, 10, 4)]
    found = families(busy_monitor().prometheus_text(draining))
    for family in ("pis_worker_up", "pis_worker_in_flight", "pis_worker_restarts"):
        labels = [s.labels["worker"] for s in found[family].samples if "_created" not in s.name]
        assert sorted(labels) == ["0", "1"], (family, labels)
    up = {s.labels["worker"]: s.value for s in found["pis_worker_up"].samples}
    assert up == {"0": 1.0, "1": 0.0}


def test_latency_buckets_tell_50us_from_500us() -> None:
    found = families(busy_monitor().prometheus_text(WORKERS))
    buckets = {
        s.labels["le"]: s.value
        for s in found["pis_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
        and s.labels["model"] == "tactical"
        and s.labels["protocol"] == "native"
        and s.labels["stage"] == "total"
    }
    assert buckets["2.5e-05"] == 1  # the 20 us 503
    assert buckets["0.0001"] == 101
    assert buckets["0.00075"] == 201
    assert buckets["+Inf"] == 201
    values = [buckets[le] for le in buckets]
    assert values == sorted(values), "cumulative buckets must not decrease"


def test_counters_stay_monotone_across_ticks() -> None:
    clock = FakeClock()
    monitor = busy_monitor(clock)

    def total() -> float:
        found = families(monitor.prometheus_text(WORKERS))
        return sum(s.value for s in found["pis_requests"].samples)

    before = total()
    monitor.record_request("tactical", 200, 50.0, 5.0, 1.0, 10.0, 30.0, False)
    middle = total()  # counted before the next rotation already
    clock.advance(1.0)  # so the tick rotates the slice holding these requests
    monitor.tick(WORKERS, {})
    assert len(monitor.stats()["timeline"]) == 1, "the tick rotated"
    assert before + 1 == middle == total()


def test_promtool_check_metrics(tmp_path: Path) -> None:
    text = busy_monitor().prometheus_text(WORKERS)
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b"", result


def test_promtool_check_config_and_rules() -> None:
    tool = promtool()
    for args in (
        ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        ["check", "rules", str(PROMETHEUS_DIR / "rules.yml")],
        ["test", "rules", str(PROMETHEUS_DIR / "rules_test.yml")],
    ):
        result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"promtool {args}: {result.stdout}{result.stderr}"


def _metric_names(text: str) -> set[str]:
    names = set(re.findall(r"\b(pis_[a-z_]+)", text))
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}


def test_rules_and_dashboard_refer_to_exported_metrics() -> None:
    exported = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(busy_monitor().prometheus_text(WORKERS).decode())
    }
    dashboard = orjson.loads((PROMETHEUS_DIR / "grafana-dashboard.json").read_bytes())
    expressions = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    )
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for chart in ("latency percentiles", "histogram", "requests per second", "error", "alerts"):
        assert chart in titles
    rules = (PROMETHEUS_DIR / "rules.yml").read_text()
    used = _metric_names(expressions) | _metric_names(rules)
    assert used - exported == set(), f"not exported: {used - exported}"
