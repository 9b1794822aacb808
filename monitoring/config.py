"""Configuration of the monitor: one frozen object, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

STAGES: tuple[str, ...] = ("parse", "cache", "queue", "inference", "total")
#: The wire protocols a request can arrive by; ``Monitor.record_request`` takes an index into
#: this tuple (an int keeps the hot path to one list lookup). Append new ones at the end.
PROTOCOLS: tuple[str, ...] = ("native", "oip_rest", "oip_grpc")
#: name -> the index record_request takes, e.g. ``PROTOCOL_INDEX["oip_grpc"]`` (look it up once
#: at start-up, not per request)
PROTOCOL_INDEX: dict[str, int] = {name: index for index, name in enumerate(PROTOCOLS)}

AlertKind = Literal[
    "latency_quantile_above",  # a latency quantile of one stage over the window, in us
    "error_rate_above",  # fraction of answered requests with a 5xx status
    "healthy_workers_below",  # workers in state "ready" (the window is not used)
    "cache_hit_rate_below",  # fraction of 200 answers served from the cache
    "latency_regression",  # 1 when the regression detector finds a significant slow-down
]
Severity = Literal["warning", "critical"]
WorkerState = Literal["starting", "ready", "draining", "dead"]


@dataclass(frozen=True)
class AlertRule:
    """One alert: ``kind`` compared with ``threshold`` over the last ``window_s`` seconds.

    The condition must hold for ``for_s`` seconds (state "pending") before the alert fires; it
    resolves as soon as the condition stops holding. A window longer than the monitor's
    ``window_s`` is capped at it (the monitor keeps no older data). A window with fewer than
    ``min_requests`` requests counts as the condition not holding (as an empty result in
    Prometheus does).
    """

    name: str
    kind: AlertKind
    threshold: float
    window_s: float = 60.0
    for_s: float = 30.0
    min_requests: int = 20
    model: str | None = None  # None: all models together
    stage: str = "total"  # latency_quantile_above only
    quantile: float = 0.99  # latency_quantile_above only
    severity: Severity = "warning"
    enabled: bool = True
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum():
            raise ValueError(f"alert name {self.name!r}: use letters, digits and underscores")
        if self.stage not in STAGES:
            raise ValueError(f"alert {self.name}: stage {self.stage!r} is not one of {STAGES}")
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"alert {self.name}: quantile must be in (0, 1), e.g. 0.99")
        if self.window_s <= 0 or self.for_s < 0:
            raise ValueError(f"alert {self.name}: window_s must be > 0 and for_s >= 0")


def default_rules(cache_hit_rate_min: float = 0.5) -> tuple[AlertRule, ...]:
    """The built-in alerts; ``monitoring/prometheus/rules.yml`` has their Prometheus twins."""
    return (
        AlertRule(
            name="high_p99_latency",
            kind="latency_quantile_above",
            threshold=1000.0,
            summary="p99 of total server time above 1 ms",
            severity="warning",
        ),
        AlertRule(
            name="high_error_rate",
            kind="error_rate_above",
            threshold=0.01,
            summary="more than 1% of requests answered with a 5xx status",
            severity="critical",
        ),
        AlertRule(
            name="no_healthy_worker",
            kind="healthy_workers_below",
            threshold=1.0,
            for_s=10.0,
            min_requests=0,
            summary="no inference worker is ready",
            severity="critical",
        ),
        AlertRule(
            name="low_cache_hit_rate",
            kind="cache_hit_rate_below",
            threshold=cache_hit_rate_min,
            min_requests=100,
            enabled=False,
            summary=f"cache hit rate below {cache_hit_rate_min:.0%}",
        ),
        AlertRule(
            name="latency_regression",
            kind="latency_regression",
            threshold=0.5,
            for_s=60.0,
            min_requests=0,
            summary="latency significantly above the baseline",
        ),
    )


@dataclass(frozen=True)
class RegressionConfig:
    """The live regression detector (see ``monitoring.regress``)."""

    alpha: float = 0.01  # false-alarm probability per check, split between center and tail
    min_effect: float = 0.10  # median must be >= 10% slower to count
    min_effect_tail: float = 0.25  # p99 must be >= 25% slower to count
    min_samples: int = 200  # per side
    check_interval_s: float = 10.0
    warmup_s: float = 30.0  # the reference window is taken after this much uptime
    #: The optimizer times the bare model call in a quiet process; a worker's reported batch
    #: time also holds framing and conversion and shares 2 cores with the front (measured ~5x
    #: the optimizer's p50 here). So that comparison is reported in /stats but raises the
    #: alert only when this is True.
    alert_on_optimizer_baseline: bool = False


@dataclass(frozen=True)
class MonitorConfig:
    window_s: float = 60.0
    history_dir: Path | None = None  # snapshots on disk; None = off
    history_max_files: int = 1440  # one file per hour: 60 days
    history_interval_s: float = 10.0
    alert_rules: tuple[AlertRule, ...] = field(default_factory=default_rules)
    webhook_url: str | None = None
    webhook_timeout_s: float = 2.0
    webhook_retries: int = 3
    #: per model: the optimizer's p50/p99/p99_9 of the served variant, in us. Compared with
    #: the inference time of live batches of size 1 (the optimizer measures one observation).
    baseline_latency_us: dict[str, dict[str, float]] = field(default_factory=dict)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    #: the model names to keep series for; any other name (typos in 404s, "") counts as
    #: "unknown". Empty: the first ``max_models`` names seen, then "unknown".
    models: tuple[str, ...] = ()
    max_models: int = 16
    enabled: bool = True  # False: record_* are no-ops ("monitoring off" for benchmarks)
    metric_prefix: str = "pis"

    def __post_init__(self) -> None:
        if not 1.0 <= self.window_s <= 3600.0:
            raise ValueError("window_s must be between 1 and 3600 seconds, e.g. 60")
        if self.history_max_files < 1:
            raise ValueError("history_max_files must be >= 1")
        if self.history_interval_s < 1.0:
            raise ValueError("history_interval_s must be >= 1 second, e.g. 10")
        names = [rule.name for rule in self.alert_rules]
        if len(names) != len(set(names)):
            raise ValueError(f"alert rule names must be unique, got {names}")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(
                f"webhook_url {self.webhook_url!r} must start with http:// or https://"
            )
        if self.webhook_timeout_s <= 0:
            raise ValueError("webhook_timeout_s must be > 0, e.g. 2.0")


@dataclass(frozen=True)
class WorkerSnapshot:
    index: int
    pid: int
    state: WorkerState | str  # "starting" | "ready" | "draining" | "dead"
    in_flight: int
    served: int
    restarts: int
