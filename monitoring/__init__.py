"""Latency histograms, statistics, alerts, Prometheus metrics and reports for the server.

The server builds one ``Monitor(MonitorConfig(...))`` at start-up, calls ``record_request`` and
``record_batch`` on the hot path, ``tick`` once a second, and serves ``stats``, ``alerts`` and
``prometheus_text``. Nothing here imports ``server``; matplotlib is imported only by
``monitoring.report``.
"""

from monitoring.config import (
    PROTOCOL_INDEX,
    PROTOCOLS,
    STAGES,
    AlertRule,
    MonitorConfig,
    RegressionConfig,
    WorkerSnapshot,
    default_rules,
)
from monitoring.histogram import Histogram
from monitoring.monitor import UNKNOWN_MODEL, Monitor, dumps
from monitoring.prom import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "PROTOCOLS",
    "PROTOCOL_INDEX",
    "STAGES",
    "UNKNOWN_MODEL",
    "AlertRule",
    "Histogram",
    "Monitor",
    "MonitorConfig",
    "RegressionConfig",
    "WorkerSnapshot",
    "default_rules",
    "dumps",
]
