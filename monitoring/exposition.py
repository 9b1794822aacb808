"""The /metrics families, rendered from a Monitor (see ``monitoring.prom`` for the format)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitoring.config import STAGES
from monitoring.prom import TextBuilder

if TYPE_CHECKING:
    from monitoring.monitor import Monitor


def render(monitor: Monitor, out: TextBuilder) -> bytes:
    now = monitor.now()
    totals = [(series.name, series.total(now)) for series in monitor.series()]

    name = out.family("requests_total", "counter", "Requests answered, by model and HTTP status.")
    for model, agg in totals:
        for status, n in sorted(agg.status.items()):
            out.sample(name, {"model": model, "status": str(status)}, n)

    name = out.family(
        "request_duration_seconds",
        "histogram",
        "Time spent in the server per request, by model and stage "
        "(parse, cache, queue, inference, total).",
    )
    for model, agg in totals:
        if agg.requests == 0:
            continue
        for stage in STAGES:
            out.latency_histogram(name, {"model": model, "stage": stage}, agg.segment(stage))

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


def _alerts(monitor: Monitor, out: TextBuilder) -> None:
    name = out.family("alert_firing", "gauge", "1 while the built-in alert is firing, else 0.")
    states = monitor.alert_states()
    for alert, state in sorted(states.items()):
        out.sample(name, {"alert": alert}, int(state == "firing"))
    name = out.family(
        "alert_pending", "gauge", "1 while the built-in alert's condition holds, not yet for long."
    )
    for alert, state in sorted(states.items()):
        out.sample(name, {"alert": alert}, int(state == "pending"))


def _workers(monitor: Monitor, out: TextBuilder) -> None:
    workers = sorted(monitor.workers, key=lambda w: w.index)
    up = out.family("worker_up", "gauge", "1 if the inference worker is ready, else 0.")
    for worker in workers:
        out.sample(up, {"worker": str(worker.index)}, int(worker.state == "ready"))
    in_flight = out.family("worker_in_flight", "gauge", "Requests in flight on the worker.")
    for worker in workers:
        out.sample(in_flight, {"worker": str(worker.index)}, worker.in_flight)
    served = out.family(
        "worker_served_total", "counter", "Requests served by the worker slot, across restarts."
    )
    for worker in workers:
        out.sample(served, {"worker": str(worker.index)}, monitor.served_total(worker.index))
    restarts = out.family("worker_restarts_total", "counter", "Restarts of the worker slot.")
    for worker in workers:
        out.sample(restarts, {"worker": str(worker.index)}, worker.restarts)
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
