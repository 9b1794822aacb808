"""The /metrics families, rendered from a Monitor (see ``monitoring.prom`` for the format)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from monitoring.config import PROTOCOLS, STAGES, WorkerSnapshot
from monitoring.prom import TextBuilder
from monitoring.series import Aggregate, ModelSeries

if TYPE_CHECKING:
    from monitoring.monitor import Monitor


def render(monitor: Monitor, out: TextBuilder) -> bytes:
    now = monitor.now()
    # one series per (model, protocol): each request is in exactly one of them
    series_totals = monitor.series_totals(now)
    per_protocol = _per_protocol(series_totals)
    totals = list(monitor.model_totals(now, series_totals).items())

    name = out.family(
        "requests_total", "counter", "Requests answered, by model, protocol and HTTP status."
    )
    for labels, agg in per_protocol:
        for status, n in sorted(agg.status.items()):
            out.sample(name, {**labels, "status": str(status)}, n)

    name = out.family(
        "request_duration_seconds",
        "histogram",
        "Time spent in the server per request, by model, protocol and stage "
        "(parse, cache, queue, inference, total).",
    )
    for labels, agg in per_protocol:
        if agg.requests == 0:
            continue
        for stage in STAGES:
            out.latency_histogram(name, {**labels, "stage": stage}, agg.segment(stage))

    hits = out.family("cache_hits_total", "counter", "Requests answered from the cache.")
    for model, agg in totals:
        out.sample(hits, {"model": model}, agg.cached)
    misses = out.family(
        "cache_misses_total", "counter", "Successful requests that were not in the cache."
    )
    for model, agg in totals:
        out.sample(misses, {"model": model}, max(agg.status.get(200, 0) - agg.cached, 0))

    name = out.family("batch_size", "histogram", "Observations per batch sent to a worker.")
    for model, agg in totals:
        if agg.batches:
            out.count_histogram(name, {"model": model}, agg.batches)

    name = out.family("queue_depth", "gauge", "Requests waiting for a worker, by model.")
    for model, depth in sorted(monitor.queue_depth.items()):
        out.sample(name, {"model": model}, depth)

    _workers(monitor, out)
    _alerts(monitor, out)
    name = out.family("monitor_uptime_seconds", "gauge", "Seconds since the monitor started.")
    out.sample(name, {}, round(monitor.uptime_s(), 3))
    return out.render()


def _per_protocol(
    series_totals: list[tuple[ModelSeries, Aggregate]],
) -> list[tuple[dict[str, str], Aggregate]]:
    """Labels and totals per (model, protocol): other processes' series of the same pair
    (several fronts) are added up, so each pair is one sample."""
    grouped: dict[tuple[str, int], Aggregate] = {}
    for series, total in series_totals:
        key = (series.name, series.protocol)
        if key in grouped:
            grouped[key] = _sum(grouped[key], total)
        else:
            grouped[key] = total
    return [
        ({"model": name, "protocol": PROTOCOLS[protocol]}, total)
        for (name, protocol), total in grouped.items()
    ]


def _sum(a: Aggregate, b: Aggregate) -> Aggregate:
    out = Aggregate()
    out.add(a)
    out.add(b)
    return out


def _alerts(monitor: Monitor, out: TextBuilder) -> None:
    states = sorted(monitor.alert_states().items())
    for shown, help_text in (
        ("firing", "1 while the built-in alert is firing, else 0."),
        ("pending", "1 while the built-in alert's condition holds, not yet for long."),
    ):
        name = out.family(f"alert_{shown}", "gauge", help_text)
        for alert, state in states:
            out.sample(name, {"alert": alert}, int(state == shown))


def _workers(monitor: Monitor, out: TextBuilder) -> None:
    # One sample per slot: while a reload drains, a slot's old worker is listed after its
    # new one, and two samples with the same labels would be an invalid exposition.
    by_slot: dict[int, WorkerSnapshot] = {}
    for worker in monitor.workers:
        by_slot.setdefault(worker.index, worker)
    workers = sorted(by_slot.values(), key=lambda w: w.index)
    per_worker: tuple[tuple[str, str, str, Callable[[WorkerSnapshot], int]], ...] = (
        ("worker_up", "gauge", "1 if the inference worker is ready, else 0.",
         lambda w: int(w.state == "ready")),
        ("worker_in_flight", "gauge", "Requests in flight on the worker.",
         lambda w: w.in_flight),
        ("worker_served_total", "counter", "Requests served by the worker slot, across restarts.",
         lambda w: monitor.served_total(w.index)),
        ("worker_restarts_total", "counter", "Restarts of the worker slot.",
         lambda w: w.restarts),
    )  # fmt: skip
    for family, kind, help_text, value in per_worker:
        name = out.family(family, kind, help_text)
        for worker in workers:
            out.sample(name, {"worker": str(worker.index)}, value(worker))
    events = out.family(
        "worker_events_total", "counter", "Worker process events (started, died, restarted)."
    )
    for event in ("started", "died", "restarted"):
        out.sample(events, {"event": event}, monitor.worker_events.get(event, 0))
    histograms = monitor.worker_inference_histograms()
    name = out.family(
        "worker_batch_inference_seconds",
        "histogram",
        "Inference time per batch as measured by the worker, by worker slot.",
    )
    for index, histogram in sorted(histograms.items()):
        out.latency_histogram(
            name, {"worker": str(index)}, histogram.counts(), sum_us=histogram.sum_us
        )
