"""The facade the server calls: record_* on the hot path, tick once a second, and the bodies of
/stats, /alerts and /metrics.

Threading: every method is meant to be called from the front's event loop thread. The hot path
takes no lock; ``tick`` swaps the per-second count lists, which is safe because it runs on the
same thread. Only the webhook posts from its own daemon thread.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, Literal

import numpy as np
import orjson

from monitoring.alerts import AlertEvent, AlertManager
from monitoring.config import PROTOCOLS, STAGES, AlertRule, MonitorConfig, WorkerSnapshot
from monitoring.histogram import (
    BUCKET_MIDPOINTS,
    N_BUCKETS,
    QUANTILES,
    Histogram,
    coarse,
    quantiles_from_counts,
)
from monitoring.history import HistoryWriter
from monitoring.prom import TextBuilder
from monitoring.series import (
    CACHED_SLOT,
    MAX_PENDING_ROWS,
    MAX_TRACKED_BATCH,
    OFFSET,
    SEGMENTS,
    Aggregate,
    ModelSeries,
)
from monitoring.shared import FrozenState, export
from monitoring.webhook import WebhookSink

log = logging.getLogger("monitoring")

UNKNOWN_MODEL = "unknown"
SLICE_S = 1.0
#: a tick arriving a little early still rotates (a 1 Hz caller jitters)
_ROTATE_AFTER_S = 0.9 * SLICE_S
_OFF_TOTAL = OFFSET["total"]
_BATCH1 = SEGMENTS.index("batch1_inference")
_STATUS_ERROR_MIN = 500
_MAX_PENDING_VALUES = MAX_PENDING_ROWS * len(STAGES)
WorkerEvent = Literal["started", "died", "restarted"]


def _noop(*_args: object, **_kwargs: object) -> None:
    return None


class Monitor:
    def __init__(
        self,
        config: MonitorConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = config or MonitorConfig()
        self._clock = clock
        self._wall_clock = wall_clock
        now = clock()
        self._started = now
        self._started_wall = wall_clock()
        self._slice_start = now
        self._max_slices = math.ceil(config.window_s / _ROTATE_AFTER_S) + 2
        # One table of series per protocol, indexed like PROTOCOLS: the hot path finds its
        # series with one list index and one dict lookup.
        self._tables: list[dict[str, ModelSeries]] = [{} for _ in PROTOCOLS]
        #: every model name kept (the cap counts these), with when it was first seen: its
        #: series under each protocol start from then, so their spans agree
        self._first_seen: dict[str, float] = {UNKNOWN_MODEL: now}
        self._timeline: deque[dict[str, Any]] = deque(maxlen=self._max_slices)
        self._workers: list[WorkerSnapshot] = []
        self._queue_depth: dict[str, int] = {}
        self._worker_hist: dict[int, Histogram] = {}  # pid -> batch inference time
        self._worker_batches: dict[int, Counter[int]] = {}  # pid -> batch sizes
        self._retired_hist: dict[int, Histogram] = {}  # worker index -> folded dead pids
        self._pid_index: dict[int, int] = {}
        self._served_base: dict[int, int] = {}  # worker index -> served by earlier pids
        self._served_last: dict[int, tuple[int, int]] = {}  # worker index -> (pid, served)
        self._worker_events: Counter[str] = Counter()
        # other processes' counts added to the views: this front's earlier lives (kept and
        # exported again) and the other fronts (replaced at each set_peers)
        self._inherited: list[ModelSeries] = []
        self._peers: list[FrozenState] = []
        self._regression: dict[str, dict[str, Any]] = {}
        self._reference: dict[str, np.ndarray] = {}
        self._last_regression_check = now
        self._history = None
        if config.history_dir is not None:
            self._history = HistoryWriter(
                config.history_dir, max_files=config.history_max_files, wall_clock=wall_clock
            )
        self._last_history = now
        # ("model" | "protocol", name) -> its since-start counts at the previous record
        self._history_prev: dict[tuple[str, str], np.ndarray] = {}
        self._history_prev_status: dict[tuple[str, str], dict[int, int]] = {}
        self._webhook = None
        if config.webhook_url:
            self._webhook = WebhookSink(
                config.webhook_url,
                timeout_s=config.webhook_timeout_s,
                retries=config.webhook_retries,
            )
        self._alerts = AlertManager(config.alert_rules, clock=clock, wall_clock=wall_clock)
        if self._webhook is not None:
            self._alerts.add_listener(self._post_event)
        self._series_for(UNKNOWN_MODEL, 0)
        for name in config.models:
            self._series_for(name, 0)
        if not config.enabled:
            self.record_request = _noop  # type: ignore[method-assign]
            self.record_batch = _noop  # type: ignore[method-assign]

    # ------------------------------------------------------------------ hot path

    def record_request(
        self,
        model: str,
        status: int,
        total_us: float,
        parse_us: float,
        cache_us: float,
        queue_us: float,
        inference_us: float,
        cached: bool,
        protocol: int = 0,
    ) -> None:
        """One answered request. A stage time of 0 means the stage did not run (a cache hit has
        no queue or inference time; a 400 has no cache time) and is not recorded. ``protocol``
        is the index in ``PROTOCOLS`` of the protocol the request came by (0: native; see
        ``PROTOCOL_INDEX``); it is not checked here, an index out of range raises IndexError."""
        series = self._tables[protocol].get(model)
        if series is None:
            series = self._series_for(model, protocol)
        status_counts = series.status
        status_counts[status] = status_counts.get(status, 0) + 1
        if cached:
            series.cur_cached += 1
        pending = series.pending
        pending.append(parse_us)
        pending.append(cache_us)
        pending.append(queue_us)
        pending.append(inference_us)
        pending.append(total_us)
        if len(pending) > _MAX_PENDING_VALUES:
            series.flush()

    def record_batch(self, model: str, size: int, inference_us: float, worker_pid: int) -> None:
        """One batch call answered by a worker, with the inference time the worker measured.
        A batch may mix protocols: it is kept in the model's native series (the per-model views
        add up every protocol)."""
        series = self._tables[0].get(model)
        if series is None:
            series = self._series_for(model, 0)
        if size > MAX_TRACKED_BATCH:
            size = MAX_TRACKED_BATCH
        batches = series.cur_batches
        batches[size] = batches.get(size, 0) + 1
        histogram = self._worker_hist.get(worker_pid)
        if histogram is None:
            histogram = self._worker_hist[worker_pid] = Histogram()
            self._worker_batches[worker_pid] = Counter()
        index = histogram.record(inference_us)
        self._worker_batches[worker_pid][size] += 1
        if size == 1:
            series.cur_batch1[index] += 1
            if inference_us > series.cur_max[_BATCH1]:
                series.cur_max[_BATCH1] = inference_us

    def _series_for(self, model: str, protocol: int) -> ModelSeries:
        """The series of a name not seen before under this protocol (or of "unknown", without
        keeping the name, so a client sending random names cannot grow memory)."""
        if model not in self._first_seen:
            if self.config.models:
                allowed = model in self.config.models
            else:  # the unknown series does not count against the cap
                allowed = len(self._first_seen) <= self.config.max_models
            if model and allowed:
                self._first_seen[model] = self._clock()
            else:
                model = UNKNOWN_MODEL
        table = self._tables[protocol]
        series = table.get(model)
        if series is None:
            first_seen = self._first_seen[model]
            series = table[model] = ModelSeries(model, first_seen, self._max_slices, protocol)
        return series

    def series_totals(self, now: float) -> list[tuple[ModelSeries, Aggregate]]:
        """Every series with everything it recorded since start."""
        return [(series, series.total(now)) for series in self.series()]

    def model_totals(
        self, now: float, series_totals: list[tuple[ModelSeries, Aggregate]] | None = None
    ) -> dict[str, Aggregate]:
        """Per model name: everything since start, all protocols added up."""
        pairs = self.series_totals(now) if series_totals is None else series_totals
        return sum_by((series.name, total) for series, total in pairs)

    def worker_event(self, event: WorkerEvent, pid: int) -> None:
        self._worker_events[event] += 1
        if event != "started":
            log.info("worker %s: pid %d", event, pid)

    # ------------------------------------------------------------------ once a second

    def tick(self, workers: Sequence[WorkerSnapshot], queue_depth: dict[str, int]) -> None:
        """Rotate the per-second slices, evaluate alerts, maybe write a history snapshot."""
        for step in self.tick_steps(workers, queue_depth):
            step()

    def tick_steps(
        self, workers: Sequence[WorkerSnapshot], queue_depth: dict[str, int]
    ) -> Iterator[Callable[[], None]]:
        """``tick`` in steps, for a caller that lets the event loop answer requests between
        them: at 20,000 requests/s the rotation takes ~0.65 ms, the alerts ~0.3 and the
        regression check (every ``check_interval_s``) ~2 ms, and requests queued behind one
        ~3 ms block reached the 64-client p99.9."""
        now = self._clock()
        self._observe_workers(workers)
        self._queue_depth = dict(queue_depth)
        if now - self._slice_start >= _ROTATE_AFTER_S:
            yield functools.partial(self._rotate, now)
        if now - self._last_regression_check >= self.config.regression.check_interval_s:
            self._last_regression_check = now
            yield functools.partial(self._check_regression, now)
        yield lambda: self._alerts.evaluate(self._rule_values(now))
        if self._history is not None and now - self._last_history >= (
            self.config.history_interval_s
        ):
            history = self._history
            yield lambda: history.append(self._history_record(now))

    def _observe_workers(self, workers: Sequence[WorkerSnapshot]) -> None:
        self._workers = list(workers)
        live = {worker.pid for worker in workers}
        for worker in workers:
            self._pid_index[worker.pid] = worker.index
            last_pid, last_served = self._served_last.get(worker.index, (worker.pid, 0))
            if last_pid != worker.pid:  # a new process in this slot: keep the counter monotone
                self._served_base[worker.index] = self._served_base.get(worker.index, 0) + (
                    last_served
                )
            self._served_last[worker.index] = (worker.pid, worker.served)
        for pid in [pid for pid in self._worker_hist if pid not in live]:
            index = self._pid_index.pop(pid, None)
            histogram = self._worker_hist.pop(pid)
            self._worker_batches.pop(pid, None)
            if index is not None:
                self._retired_hist.setdefault(index, Histogram()).merge(histogram)
        for pid in [pid for pid in self._pid_index if pid not in live]:
            del self._pid_index[pid]  # dead pids that never reported a batch

    def _rotate(self, now: float) -> None:
        start, self._slice_start = self._slice_start, now
        oldest = now - self.config.window_s
        total = np.zeros(N_BUCKETS, dtype=np.int64)
        requests = errors = ok = cached = 0
        for series in self.series():
            piece = series.rotate(start, now)
            series.expire(oldest)
            in_total = (piece.index >= _OFF_TOTAL) & (piece.index < _OFF_TOTAL + N_BUCKETS)
            total[piece.index[in_total] - _OFF_TOTAL] += piece.count[in_total]
            cached += int(piece.count[piece.index == CACHED_SLOT].sum())
            for code, n in piece.status.items():
                requests += n
                errors += n if code >= _STATUS_ERROR_MIN else 0
                ok += n if code == 200 else 0
        point: dict[str, Any] = {
            "t": self._wall_clock(),
            "requests": requests,
            "rps": requests / max(now - start, 1e-9),
            "errors": errors,
            "ok": ok,
            "cached": cached,
        }
        values = quantiles_from_counts(total, QUANTILES.values())
        point.update({f"{name}_us": v for name, v in zip(QUANTILES, values, strict=True)})
        self._timeline.append(point)

    # ------------------------------------------------------------------ views

    def _window(self, now: float, window_s: float, model: str | None = None) -> Aggregate:
        """Rotated slices only: alerts are evaluated right after a rotation."""
        agg = Aggregate()
        for series in self.series():
            if model is None or series.name == model:
                agg.add(series.window(now - window_s, now, include_current=False))
        return agg

    def _rule_values(self, now: float) -> dict[str, float | None]:
        windows: dict[tuple[float, str | None], Aggregate] = {}  # rules sharing a window
        values: dict[str, float | None] = {}
        for rule in self._alerts.rules:
            values[rule.name] = self._rule_value(rule, now, windows)
        return values

    def _rule_value(
        self, rule: AlertRule, now: float, windows: dict[tuple[float, str | None], Aggregate]
    ) -> float | None:
        if rule.kind == "healthy_workers_below":
            return float(sum(worker.state == "ready" for worker in self._workers))
        if rule.kind == "latency_regression":
            gating = [v for v in self._regression.values() if v["alerting"]]
            if not gating:
                return None
            return float(any(v["regression"] for v in gating))
        key = (min(rule.window_s, self.config.window_s), rule.model)
        agg = windows.get(key)
        if agg is None:
            agg = windows[key] = self._window(now, *key)
        if agg.requests < max(rule.min_requests, 1):
            return None
        if rule.kind == "latency_quantile_above":
            return quantiles_from_counts(agg.segment(rule.stage), [rule.quantile])[0]
        if rule.kind == "error_rate_above":
            return _errors(agg.status) / agg.requests
        if rule.kind == "cache_hit_rate_below":
            answered = agg.status.get(200, 0)
            return agg.cached / answered if answered else None
        raise ValueError(f"alert {rule.name}: unknown kind {rule.kind!r}")

    def _check_regression(self, now: float) -> None:
        # imported here, not at module level, so that `python -m monitoring.regress` does not
        # find itself already imported through the package (it is cheap: numpy and math only)
        from monitoring.regress import compare_histograms, compare_to_quantiles

        settings = self.config.regression
        limits: dict[str, Any] = {  # the same thresholds for both comparisons
            "alpha": settings.alpha,
            "min_effect": settings.min_effect,
            "min_effect_tail": settings.min_effect_tail,
            "min_samples": settings.min_samples,
        }
        results: dict[str, dict[str, Any]] = {}
        windows = sum_by(
            (series.name, series.window(now - self.config.window_s, now, include_current=False))
            for series in self.series()
        )
        for name, window in windows.items():
            baseline = self.config.baseline_latency_us.get(name)
            if baseline:
                verdict = compare_to_quantiles(
                    baseline, window.segment("batch1_inference"), **limits
                )
                results[f"{name}:optimizer"] = _verdict_entry(
                    verdict, "batch1_inference", alerting=settings.alert_on_optimizer_baseline
                )
            total = window.segment("total")
            reference = self._reference.get(name)
            if reference is None:
                if now - self._started >= settings.warmup_s and total.sum() >= (
                    settings.min_samples
                ):
                    self._reference[name] = total.copy()
                continue
            verdict = compare_histograms(reference, total, **limits)
            results[f"{name}:reference"] = _verdict_entry(verdict, "total", alerting=True)
        self._regression = {
            key: value for key, value in results.items() if value["n_new"] >= settings.min_samples
        }

    # ------------------------------------------------------------------ endpoints

    def stats(self, workers: Sequence[WorkerSnapshot] | None = None) -> dict[str, Any]:
        """The /stats body (see the README's monitoring section for every field)."""
        now = self._clock()
        if workers is not None:
            self._observe_workers(workers)
        since = now - self.config.window_s
        # each series' window and total once: the models' and protocols' views add them up
        views = [(s, s.window(since, now), s.total(now)) for s in self.series()]
        windows = sum_by((s.name, window) for s, window, _ in views)
        totals = sum_by((s.name, total) for s, _, total in views)
        models: dict[str, Any] = {}
        overall_window, overall_total = Aggregate(), Aggregate()
        for name, total in totals.items():
            window = windows[name]
            if total.requests == 0 and not total.batches and name == UNKNOWN_MODEL:
                continue
            overall_window.add(window)
            overall_total.add(total)
            models[name] = {
                "window": _summary(window),
                "since_start": _summary(total),
                "queue_depth": self._queue_depth.get(name, 0),
            }
        by_protocol = [
            sum_by(((PROTOCOLS[s.protocol], agg[i]) for s, *agg in views), PROTOCOLS)
            for i in (0, 1)
        ]
        protocols = {
            protocol: {
                "window": _request_summary(by_protocol[0][protocol]),
                "since_start": _request_summary(by_protocol[1][protocol]),
            }
            for protocol in PROTOCOLS
        }
        return {
            "enabled": self.config.enabled,
            "window_s": self.config.window_s,
            "uptime_s": now - self._started,
            "started_at": self._started_wall,
            "generated_at": self._wall_clock(),
            "models": models,
            "overall": {"window": _summary(overall_window), "since_start": _summary(overall_total)},
            "protocols": protocols,
            "queue_depth": dict(self._queue_depth),
            "workers": self._worker_rows() + [row for peer in self._peers for row in peer.rows],
            "worker_events": self.worker_events,
            "histogram_us": coarse(overall_total.segment("total")),
            "timeline": list(self._timeline),
            "alerts": self._alerts.states(),
            "regression": self._regression,
        }

    def _worker_rows(self) -> list[dict[str, Any]]:
        rows = []
        for worker in self._workers:
            histogram = self._worker_hist.get(worker.pid)
            batches = self._worker_batches.get(worker.pid, Counter())
            rows.append(
                {
                    **asdict(worker),
                    "batches": sum(batches.values()),
                    "observations": sum(size * n for size, n in batches.items()),
                    "batch_inference_us": _rounded(histogram.summary()) if histogram else None,
                }
            )
        return rows

    def alerts(self) -> dict[str, Any]:
        """The /alerts body: {"firing": [...], "pending": [...], "resolved": [... recent]}."""
        return self._alerts.snapshot()

    def worker_inference_histograms(self) -> dict[int, Histogram]:
        """Per worker index: batch inference time since start (restarted processes merged),
        the peers' included."""
        merged = self.own_worker_histograms()
        for peer in self._peers:
            for index, histogram in peer.histograms.items():
                merged.setdefault(index, Histogram()).merge(histogram)
        return merged

    def prometheus_text(self, workers: Sequence[WorkerSnapshot] | None = None) -> bytes:
        """The /metrics body (Prometheus text format 0.0.4)."""
        if workers is not None:
            self._observe_workers(workers)
        from monitoring.exposition import render  # keeps this module about recording

        return render(self, TextBuilder(self.config.metric_prefix))

    # ------------------------------------------------------------------ sinks

    def _post_event(self, event: AlertEvent) -> None:
        if self._webhook is not None and event.transition in ("firing", "resolved"):
            self._webhook.send({"source": "policy-inference-server", **event.to_dict()})

    def _history_record(self, now: float) -> dict[str, Any]:
        """What happened since the previous snapshot (counts per interval, not cumulative)."""
        interval_s, self._last_history = now - self._last_history, now
        # this process's own counts: each process writes its own history
        series_totals = [(series, series.total(now)) for series in self._own_series()]
        models: dict[str, Any] = {}
        for name, total in self.model_totals(now, series_totals).items():
            interval = self._since_last_record(("model", name), total)
            if interval.requests == 0 and name == UNKNOWN_MODEL:
                continue
            entry = _summary(interval, with_rps=False)
            entry["histogram_us"] = coarse(interval.segment("total"))
            models[name] = entry
        by_protocol = sum_by(((PROTOCOLS[s.protocol], t) for s, t in series_totals), PROTOCOLS)
        protocols = {
            protocol: _request_summary(
                self._since_last_record(("protocol", protocol), total), with_rps=False
            )
            for protocol, total in by_protocol.items()
        }
        return {
            "t": self._wall_clock(),
            "uptime_s": now - self._started,
            "interval_s": interval_s,
            "models": models,
            "protocols": protocols,
            "queue_depth": dict(self._queue_depth),
            "workers": [asdict(worker) for worker in self._workers],
            "alerts": self._alerts.states(),
        }

    def _since_last_record(self, key: tuple[str, str], total: Aggregate) -> Aggregate:
        """``total`` (since start) less what the previous history record had counted of it."""
        previous = self._history_prev.get(key)
        counts = total.counts - previous if previous is not None else total.counts
        self._history_prev[key] = total.counts
        before = self._history_prev_status.get(key, {})
        self._history_prev_status[key] = dict(total.status)
        status = Counter({code: n - before.get(code, 0) for code, n in total.status.items()})
        return Aggregate(counts=counts, status=+status)  # +: drops the zero entries

    def close(self) -> None:
        """At shutdown: write a last history snapshot, flush the webhook queue (bounded wait)."""
        if self._history is not None:
            self._history.append(self._history_record(self._clock()))
        if self._webhook is not None:
            self._webhook.close()

    # ------------------------------------------------------------------ for the exposition

    def series(self) -> Iterable[ModelSeries]:
        """Every series: one per model name and protocol that recorded something, and those
        of the other processes added in (``inherit``, ``set_peers``)."""
        yield from self._own_series()
        yield from self._inherited
        for peer in self._peers:
            yield from peer.series

    def _own_series(self) -> Iterable[ModelSeries]:
        for table in self._tables:
            yield from table.values()

    # ------------------------------------------------------------------ several processes

    def export_state(self) -> dict[str, Any]:
        """This process's counts (and its inherited ones) as a JSON-able document, for
        another process's ``set_peers`` or this process's next life's ``inherit``."""
        return export(self, [*self._own_series(), *self._inherited])

    def inherit(self, doc: dict[str, Any]) -> None:
        """Counts of an earlier life of this process (a restarted front): kept in every view
        and exported again, so a restart neither resets nor double-counts them."""
        state = FrozenState(doc, self._max_slices)
        self._inherited.extend(state.series)
        # its workers died with it; new ones take the same slots and count on from there
        for index, served in state.served.items():
            self._served_base[index] = self._served_base.get(index, 0) + served
        for index, histogram in state.histograms.items():
            self._retired_hist.setdefault(index, Histogram()).merge(histogram)
        self._worker_events.update(state.events)

    def set_peers(self, docs: Iterable[dict[str, Any]]) -> None:
        """The other processes' latest exports, added to the views until the next call."""
        self._peers = [FrozenState(doc, self._max_slices) for doc in docs]

    def own_requests(self) -> int:
        """Requests answered by this process, its earlier lives included."""
        return sum(sum(s.status.values()) for s in (*self._own_series(), *self._inherited))

    def own_served(self) -> dict[int, int]:
        """Per worker slot of this process: served across its restarts."""
        slots = self._served_base.keys() | self._served_last.keys()
        return {index: self._own_served_total(index) for index in slots}

    def own_workers(self) -> tuple[list[dict[str, Any]], list[WorkerSnapshot]]:
        """This process's rows of /stats ``workers``, and its snapshots."""
        return self._worker_rows(), list(self._workers)

    def own_worker_histograms(self) -> dict[int, Histogram]:
        merged: dict[int, Histogram] = {}
        for index, histogram in self._retired_hist.items():
            merged[index] = Histogram().merge(histogram)
        for pid, histogram in self._worker_hist.items():
            index = self._pid_index.get(pid)
            if index is not None:
                merged.setdefault(index, Histogram()).merge(histogram)
        return merged

    def own_worker_events(self) -> dict[str, int]:
        return dict(self._worker_events)

    @property
    def workers(self) -> list[WorkerSnapshot]:
        """This process's workers, then the peers'."""
        return list(self._workers) + [w for peer in self._peers for w in peer.workers]

    @property
    def queue_depth(self) -> dict[str, int]:
        return dict(self._queue_depth)

    @property
    def worker_events(self) -> dict[str, int]:
        events = Counter(self._worker_events)
        for peer in self._peers:
            events.update(peer.events)
        return dict(events)

    def served_total(self, index: int) -> int:
        for peer in self._peers:
            if index in peer.served:
                return peer.served[index]
        return self._own_served_total(index)

    def _own_served_total(self, index: int) -> int:
        pid_served = self._served_last.get(index, (0, 0))[1]
        return self._served_base.get(index, 0) + pid_served

    def alert_states(self) -> dict[str, str]:
        return self._alerts.states()  # a fresh dict already

    def uptime_s(self) -> float:
        return self._clock() - self._started

    def now(self) -> float:
        return self._clock()


def sum_by(
    pairs: Iterable[tuple[str, Aggregate]], keys: Iterable[str] = ()
) -> dict[str, Aggregate]:
    """The aggregates added up per key (in order of first appearance; ``keys`` always present).
    The inputs are left as they are."""
    sums = {key: Aggregate() for key in keys}
    for key, agg in pairs:
        total = sums.get(key)
        if total is None:
            total = sums[key] = Aggregate()
        total.add(agg)
    return sums


def _errors(status: dict[int, int] | Counter[int]) -> int:
    return sum(n for code, n in status.items() if code >= _STATUS_ERROR_MIN)


def _rounded(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in summary.items()}


def _latency(agg: Aggregate, segment: str) -> dict[str, Any]:
    counts = agg.segment(segment)
    n = int(counts.sum())
    exact_max = agg.max_us[SEGMENTS.index(segment)]
    out: dict[str, Any] = {"count": n}
    values = quantiles_from_counts(counts, QUANTILES.values())
    for name, value in zip(QUANTILES, values, strict=True):
        out[name] = None if value is None else round(min(value, exact_max or value), 3)
    out["max"] = round(exact_max, 3) if n else None
    out["mean"] = round(float(counts @ BUCKET_MIDPOINTS) / n, 3) if n else None
    return out


def _request_summary(agg: Aggregate, with_rps: bool = True) -> dict[str, Any]:
    """Requests, errors, statuses and total latency: what every breakdown reports."""
    requests = agg.requests
    errors = _errors(agg.status)
    out: dict[str, Any] = {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else None,
        "status": {str(code): n for code, n in sorted(agg.status.items())},
        "latency_us": {"total": _latency(agg, "total")},
    }
    if with_rps:
        out["span_s"] = agg.span_s
        out["rps"] = requests / agg.span_s if agg.span_s > 0 else 0.0
    return out


def _summary(agg: Aggregate, with_rps: bool = True) -> dict[str, Any]:
    """A model's (or all models') summary: the request summary, every stage, cache, batches."""
    out = _request_summary(agg, with_rps)
    answered = agg.status.get(200, 0)
    batches = sum(agg.batches.values())
    observations = sum(size * n for size, n in agg.batches.items())
    out["cache_hits"] = agg.cached
    out["cache_hit_rate"] = agg.cached / answered if answered else None
    out["latency_us"] = {stage: _latency(agg, stage) for stage in STAGES}
    out["batch_size"] = {
        "batches": batches,
        "mean": observations / batches if batches else None,
        "max": max(agg.batches) if batches else None,
        "distribution": {str(size): n for size, n in sorted(agg.batches.items())},
    }
    out["batch1_inference_us"] = _latency(agg, "batch1_inference")
    return out


def _verdict_entry(verdict: Any, segment: str, *, alerting: bool) -> dict[str, Any]:
    return {"segment": segment, "alerting": alerting, **verdict.to_dict()}


def dumps(document: dict[str, Any]) -> bytes:
    """JSON for /stats and /alerts (orjson, numpy-aware)."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
