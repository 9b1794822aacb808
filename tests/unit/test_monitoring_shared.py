"""Several processes' monitors added up: a peer's export adds its counts once, an earlier
life's export is kept across a restart, and neither is counted twice."""

from __future__ import annotations

import orjson

from monitoring import Monitor, MonitorConfig, WorkerSnapshot
from tests.fakes import FakeClock


def make(clock: FakeClock) -> Monitor:
    return Monitor(MonitorConfig(models=("tactical",)), clock=clock, wall_clock=clock)


def serve(monitor: Monitor, n: int, total_us: float, status: int = 200) -> None:
    for _ in range(n):
        monitor.record_request("tactical", status, total_us, 5.0, 1.0, 2.0, 10.0, False)


def through_json(doc: dict) -> dict:
    return orjson.loads(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def total(stats: dict) -> dict:
    return stats["models"]["tactical"]["since_start"]


def window(stats: dict) -> dict:
    return stats["models"]["tactical"]["window"]


def test_a_peer_adds_its_counts_to_stats_and_metrics() -> None:
    clock = FakeClock()
    a, b = make(clock), make(clock)
    serve(a, 30, 100.0)
    serve(b, 10, 1000.0, status=503)
    clock.advance(1.0)
    a.tick([], {})
    b.tick([WorkerSnapshot(7, 99, "ready", 0, 4, 0)], {})
    serve(b, 5, 1000.0)  # in b's current slice: exported too
    a.set_peers([through_json(b.export_state())])
    stats = a.stats([])
    assert total(stats)["requests"] == 45
    assert total(stats)["status"] == {"200": 35, "503": 10}
    assert window(stats)["requests"] == 45
    assert (
        total(stats)["latency_us"]["total"]["p50"]
        < 200
        < total(stats)["latency_us"]["total"]["p99"]
    )
    assert [w["index"] for w in stats["workers"]] == [7]
    text = a.prometheus_text([]).decode()
    assert 'pis_requests_total{model="tactical",protocol="native",status="503"} 10' in text
    assert 'pis_worker_served_total{worker="7"} 4' in text
    # a's own export holds a's counts only, never its peers'
    c = make(clock)
    c.set_peers([through_json(a.export_state())])
    assert total(c.stats([]))["requests"] == 30


def test_a_restart_inherits_its_earlier_life_without_double_counting() -> None:
    clock = FakeClock()
    first = make(clock)
    serve(first, 20, 100.0)
    clock.advance(1.0)
    first.tick([WorkerSnapshot(0, 10, "ready", 0, 20, 0)], {})
    saved = through_json(first.export_state())

    second = make(clock)  # the same front, restarted: its workers start from 0
    second.inherit(saved)
    second.tick([WorkerSnapshot(0, 11, "ready", 0, 0, 0)], {})
    assert total(second.stats([]))["requests"] == 20
    serve(second, 3, 100.0)
    second.tick([WorkerSnapshot(0, 11, "ready", 0, 3, 0)], {})
    assert total(second.stats([]))["requests"] == 23
    assert second.served_total(0) == 23

    third = make(clock)  # and again, from the second life's export
    third.inherit(through_json(second.export_state()))
    assert total(third.stats([]))["requests"] == 23
    assert window(third.stats([]))["requests"] == 23


def test_a_peer_window_follows_its_slices_as_they_expire() -> None:
    clock = FakeClock()
    a, b = make(clock), make(clock)
    for second in range(70):
        serve(b, 1, 100.0, status=200 if second % 2 else 503)
        clock.advance(1.0)
        b.tick([], {})
        if second in (10, 65):  # exported repeatedly, as a front does every tick
            b.export_state()
    a.set_peers([through_json(b.export_state())])
    stats = a.stats([])
    assert total(stats)["requests"] == 70
    assert window(stats)["requests"] == b.stats([])["models"]["tactical"]["window"]["requests"]
    assert window(stats)["status"] == b.stats([])["models"]["tactical"]["window"]["status"]
    assert 55 <= window(stats)["requests"] <= 61
