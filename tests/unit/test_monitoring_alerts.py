"""Alerts: pending -> firing -> resolved with a fake clock, through the Monitor and alone."""

from __future__ import annotations

import logging

import pytest

from monitoring import AlertRule, Monitor, MonitorConfig, WorkerSnapshot
from monitoring.alerts import AlertManager
from tests.fakes import FakeClock

READY = [WorkerSnapshot(0, 11, "ready", 0, 0, 0)]


def test_p99_alert_goes_pending_firing_resolved(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    monitor = Monitor(MonitorConfig(), clock=clock, wall_clock=clock)

    def second(total_us: float) -> None:
        for _ in range(50):
            monitor.record_request("tactical", 200, total_us, 5, 1, 10, total_us / 2, False)
        clock.advance(1.0)
        monitor.tick(READY, {})

    caplog.set_level(logging.INFO, logger="monitoring.alerts")
    second(200.0)
    assert monitor.alerts() == {"firing": [], "pending": [], "resolved": []}
    second(3000.0)  # p99 over the last 60 s jumps above 1 ms
    pending = monitor.alerts()["pending"]
    assert [a["alert"] for a in pending] == ["high_p99_latency"]
    for _ in range(29):
        second(3000.0)
    assert monitor.alerts()["pending"] and not monitor.alerts()["firing"]
    second(3000.0)  # 30 s after the condition started: for_s elapsed
    firing = monitor.alerts()["firing"]
    assert [a["alert"] for a in firing] == ["high_p99_latency"]
    assert firing[0]["value"] > 1000.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "firing" in warnings[0].getMessage()
    for _ in range(59):  # slow requests still inside the 60 s window
        second(200.0)
    assert monitor.alerts()["firing"]
    for _ in range(5):
        second(200.0)
    alerts = monitor.alerts()
    assert alerts["firing"] == [] and alerts["pending"] == []
    assert [a["alert"] for a in alerts["resolved"]] == ["high_p99_latency"]
    assert alerts["resolved"][0]["resolved_at"] > alerts["resolved"][0]["fired_at"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "resolved" in warnings[1].getMessage()
    assert b'pis_alert_firing{alert="high_p99_latency"} 0' in monitor.prometheus_text()


def test_no_healthy_worker_and_error_rate_alerts() -> None:
    clock = FakeClock()
    monitor = Monitor(MonitorConfig(), clock=clock, wall_clock=clock)
    starting = [WorkerSnapshot(0, 11, "starting", 0, 0, 0)]
    for _ in range(12):
        for i in range(100):
            monitor.record_request("m", 503 if i < 5 else 200, 100, 5, 1, 10, 50, False)
        clock.advance(1.0)
        monitor.tick(starting, {})
    firing = {a["alert"] for a in monitor.alerts()["firing"]}
    assert firing == {"no_healthy_worker"}
    assert {a["alert"] for a in monitor.alerts()["pending"]} == {"high_error_rate"}
    monitor.tick(READY, {})
    assert [a["alert"] for a in monitor.alerts()["resolved"]] == ["no_healthy_worker"]


def test_pending_alert_that_clears_is_cancelled_not_resolved() -> None:
    clock = FakeClock()
    rule = AlertRule(name="x", kind="error_rate_above", threshold=0.1, for_s=10.0)
    events = []
    manager = AlertManager([rule], clock=clock, wall_clock=clock, listeners=[events.append])
    manager.evaluate({"x": 0.5})
    clock.advance(5.0)
    manager.evaluate({"x": 0.0})
    assert [e.transition for e in events] == ["pending", "cancelled"]
    assert manager.snapshot()["resolved"] == []
    manager.evaluate({"x": 0.5})
    manager.evaluate({"x": None})  # too little data: the condition does not hold
    assert manager.state("x") == "inactive"


def test_cache_hit_rate_alert_is_off_by_default_and_configurable() -> None:
    clock = FakeClock()
    default = Monitor(MonitorConfig(), clock=clock, wall_clock=clock)
    assert "low_cache_hit_rate" not in default.alert_states()
    rule = AlertRule(
        name="low_hits", kind="cache_hit_rate_below", threshold=0.5, for_s=0.0, min_requests=10
    )
    monitor = Monitor(MonitorConfig(alert_rules=(rule,)), clock=clock, wall_clock=clock)
    for i in range(100):
        monitor.record_request("m", 200, 50, 5, 1, 0, 0, cached=i < 10)
    clock.advance(1.0)
    monitor.tick(READY, {})
    assert [a["alert"] for a in monitor.alerts()["firing"]] == ["low_hits"]


def test_a_rule_window_longer_than_the_monitor_window_is_capped() -> None:
    clock = FakeClock()
    rule = AlertRule(
        name="slow",
        kind="latency_quantile_above",
        threshold=500.0,
        window_s=600,
        for_s=0.0,
        min_requests=1,
    )
    monitor = Monitor(MonitorConfig(window_s=5, alert_rules=(rule,)), clock=clock, wall_clock=clock)
    monitor.record_request("m", 200, 900.0, 5, 1, 10, 50, False)
    clock.advance(1.0)
    monitor.tick(READY, {})
    assert [a["alert"] for a in monitor.alerts()["firing"]] == ["slow"]
    for _ in range(6):
        clock.advance(1.0)
        monitor.tick(READY, {})
    assert [a["alert"] for a in monitor.alerts()["resolved"]] == ["slow"]
