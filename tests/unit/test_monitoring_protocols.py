"""The protocol dimension: per-protocol /stats breakdown and /metrics labels, every request
counted exactly once, the per-model views adding up all protocols."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring import PROTOCOL_INDEX, PROTOCOLS, Monitor, MonitorConfig, WorkerSnapshot, dumps
from tests.fakes import FakeClock

NATIVE, OIP_REST, OIP_GRPC = (PROTOCOL_INDEX[name] for name in ("native", "oip_rest", "oip_grpc"))
WORKERS = [WorkerSnapshot(index=0, pid=101, state="ready", in_flight=0, served=0, restarts=0)]


def make(**config: object) -> tuple[Monitor, FakeClock]:
    clock = FakeClock()
    return Monitor(MonitorConfig(**config), clock=clock, wall_clock=clock), clock  # type: ignore[arg-type]


def send(monitor: Monitor, model: str, total_us: float, protocol: int, status: int = 200) -> None:
    monitor.record_request(model, status, total_us, 5.0, 1.0, 10.0, total_us / 2, False, protocol)


def test_protocols_are_the_three_the_server_speaks() -> None:
    assert PROTOCOLS == ("native", "oip_rest", "oip_grpc")
    assert PROTOCOL_INDEX == {"native": 0, "oip_rest": 1, "oip_grpc": 2}


def test_default_protocol_is_native() -> None:
    monitor, _ = make(models=("tactical",))
    monitor.record_request("tactical", 200, 100.0, 5.0, 1.0, 10.0, 50.0, False)
    protocols = monitor.stats()["protocols"]
    assert protocols["native"]["since_start"]["requests"] == 1
    assert protocols["oip_rest"]["since_start"]["requests"] == 0
    assert protocols["oip_grpc"]["since_start"]["requests"] == 0


def test_stats_break_requests_down_by_protocol_and_add_them_up_per_model() -> None:
    monitor, clock = make(models=("tactical", "strategic"))
    rng = np.random.default_rng(7)
    native = rng.lognormal(np.log(200.0), 0.3, 600)
    rest = rng.lognormal(np.log(900.0), 0.3, 300)
    for i, v in enumerate(native):
        send(monitor, "tactical", float(v), NATIVE, status=503 if i % 100 == 0 else 200)
    for v in rest:
        send(monitor, "strategic" if v > 900.0 else "tactical", float(v), OIP_REST)
    for _ in range(20):
        send(monitor, "tactical", 50.0, OIP_GRPC, status=400)
    clock.advance(2.0)
    monitor.tick(WORKERS, {})
    stats = monitor.stats()
    protocols = stats["protocols"]
    assert list(protocols) == list(PROTOCOLS)

    rest_window = protocols["oip_rest"]["window"]
    assert rest_window["requests"] == 300
    assert rest_window["errors"] == 0 and rest_window["error_rate"] == 0.0
    assert rest_window["status"] == {"200": 300}
    assert rest_window["rps"] == pytest.approx(150.0)
    assert rest_window["latency_us"]["total"]["p50"] == pytest.approx(np.median(rest), rel=0.01)
    assert rest_window["latency_us"]["total"]["max"] == pytest.approx(rest.max())

    native_window = protocols["native"]["window"]
    assert native_window["status"] == {"200": 594, "503": 6}
    assert native_window["error_rate"] == pytest.approx(0.01)
    assert native_window["latency_us"]["total"]["p99"] == pytest.approx(
        np.quantile(native, 0.99), rel=0.01
    )
    assert protocols["oip_grpc"]["since_start"]["status"] == {"400": 20}

    # each request is counted once: protocols add up to the overall and to the models
    for span in ("window", "since_start"):
        by_protocol = sum(protocols[p][span]["requests"] for p in PROTOCOLS)
        by_model = sum(entry[span]["requests"] for entry in stats["models"].values())
        assert by_protocol == by_model == stats["overall"][span]["requests"] == 920
    tactical = stats["models"]["tactical"]["since_start"]
    assert tactical["requests"] == 600 + int((rest <= 900.0).sum()) + 20
    assert tactical["status"]["400"] == 20 and tactical["status"]["503"] == 6
    dumps(stats)


def test_protocol_window_slides_and_since_start_keeps_everything() -> None:
    monitor, clock = make(window_s=10.0)
    for _ in range(40):
        send(monitor, "tactical", 3000.0, OIP_GRPC)
    for _ in range(15):
        clock.advance(1.0)
        monitor.tick(WORKERS, {})
    for _ in range(10):
        send(monitor, "tactical", 100.0, OIP_GRPC)
    grpc = monitor.stats()["protocols"]["oip_grpc"]
    assert grpc["window"]["requests"] == 10
    assert grpc["window"]["latency_us"]["total"]["max"] == 100.0
    assert grpc["since_start"]["requests"] == 50
    assert grpc["since_start"]["latency_us"]["total"]["max"] == 3000.0
    assert grpc["since_start"]["rps"] == pytest.approx(50 / 15.0)


def test_unknown_names_share_one_series_whatever_the_protocol() -> None:
    monitor, _ = make(max_models=2)
    for protocol in range(len(PROTOCOLS)):
        for i in range(50):
            send(monitor, f"m{i}", 10.0, protocol, status=404)
    stats = monitor.stats()
    assert set(stats["models"]) == {"m0", "m1", "unknown"}
    assert stats["models"]["unknown"]["since_start"]["requests"] == 3 * 48
    names = {(series.name, series.protocol) for series in monitor.series()}
    assert len(names) == 3 * 3, "one series per kept name and protocol, no more"


def test_metrics_label_every_request_with_its_protocol_exactly_once() -> None:
    monitor, _ = make(models=("tactical",))
    sent = {("native", "200"): 7, ("oip_rest", "200"): 5, ("oip_rest", "400"): 2}
    for (protocol, status), n in sent.items():
        for _ in range(n):
            send(monitor, "tactical", 120.0, PROTOCOLS.index(protocol), status=int(status))
    monitor.record_batch("tactical", 4, 80.0, 101)
    text = monitor.prometheus_text(WORKERS).decode()
    found = {family.name: family for family in text_string_to_metric_families(text)}
    requests = {
        (s.labels["protocol"], s.labels["status"]): s.value
        for s in found["pis_requests"].samples
        if s.labels["model"] == "tactical"
    }
    assert requests == sent
    counts = {
        s.labels["protocol"]: s.value
        for s in found["pis_request_duration_seconds"].samples
        if s.name.endswith("_count") and s.labels["stage"] == "total"
    }
    assert counts == {"native": 7, "oip_rest": 7}
    # the per-model families stay one sample per model, all protocols together
    batch_counts = [s.value for s in found["pis_batch_size"].samples if s.name.endswith("_count")]
    assert batch_counts == [1]
    misses = {s.labels["model"]: s.value for s in found["pis_cache_misses"].samples}
    assert misses["tactical"] == 12


def test_alerts_and_history_see_every_protocol(tmp_path: Path) -> None:
    from monitoring.history import read_history

    monitor, clock = make(history_dir=tmp_path, history_interval_s=1.0)
    for i in range(100):
        send(monitor, "m", 100.0, OIP_REST, status=503 if i < 5 else 200)
    for second in range(40):
        if second == 20:
            for _ in range(7):
                send(monitor, "m", 100.0, OIP_GRPC)
        clock.advance(1.0)
        monitor.tick(WORKERS, {})
    assert "high_error_rate" in {a["alert"] for a in monitor.alerts()["firing"]}
    monitor.close()
    records = list(read_history(tmp_path))
    assert sum(record["models"].get("m", {}).get("requests", 0) for record in records) == 107

    def recorded(protocol: str, key: str = "requests") -> list:
        return [record["protocols"][protocol][key] for record in records]

    assert sum(recorded("oip_rest")) == 100 and sum(recorded("oip_grpc")) == 7
    assert sum(recorded("native")) == 0
    assert [s for s in recorded("oip_rest", "status") if s] == [{"200": 95, "503": 5}]
