"""A monitor's counts as a document another process can add to its own: how several front
processes answer ``/stats`` and ``/metrics`` for all of them.

``export`` writes every series (since-start counts and the window's counts, each added up
and sparse; a peer's window is the one of its last export, at most a tick behind), the
workers with their served totals, their inference histograms (``Histogram.to_dict``) and
the worker events. ``FrozenState`` turns such a document back
into series that a ``Monitor`` adds to its views (``Monitor.set_peers``, ``Monitor.inherit``):
counts add, so a p99 over several fronts comes from the merged counts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from monitoring.config import WorkerSnapshot
from monitoring.histogram import Histogram, sparse
from monitoring.series import SLOTS, ModelSeries, Slice

if TYPE_CHECKING:
    from monitoring.monitor import Monitor

FORMAT = 1


class _RunningWindow:
    """A series' rotated slices within the window, added up and kept up to date from one
    export to the next: a new slice is added and an expired one taken away (a few sparse
    adds a second, against re-adding the window's 60 slices, ~1 ms a series)."""

    __slots__ = ("batches", "counts", "max_us", "slices", "status")

    def __init__(self) -> None:
        self.counts = np.zeros(SLOTS, dtype=np.int64)
        self.status: Counter[int] = Counter()
        self.batches: Counter[int] = Counter()
        self.max_us: list[float] = []
        self.slices: list[Slice] = []

    def update(self, ring: Iterable[Slice], since: float) -> None:
        keep = [piece for piece in ring if piece.end > since]
        kept = {id(piece) for piece in keep}
        had = {id(piece) for piece in self.slices}
        if kept == had:
            return
        for piece in self.slices:
            if id(piece) not in kept:
                self.counts[piece.index] -= piece.count
                self.status.subtract(piece.status)
                self.batches.subtract(piece.batches)
        for piece in keep:
            if id(piece) not in had:
                self.counts[piece.index] += piece.count
                self.status.update(piece.status)
                self.batches.update(piece.batches)
        self.slices = keep
        self.max_us = [max(values) for values in zip(*(p.max_us for p in keep), strict=True)]


def _window_doc(series: ModelSeries, now: float, window_s: float) -> dict[str, Any]:
    since = now - window_s
    running = series.running_window
    if not isinstance(running, _RunningWindow):
        running = series.running_window = _RunningWindow()
    running.update(series.ring, since)
    counts = running.counts + series.current_counts()
    status = +(running.status + Counter(series.status_since_rotation()))  # + drops zeros
    batches = +(running.batches + Counter(series.cur_batches))
    max_us = list(series.cur_max)
    if running.max_us:
        max_us = [max(a, b) for a, b in zip(max_us, running.max_us, strict=True)]
    index, count = sparse(counts)
    return {
        "start": max(since, series.started),
        "end": now,
        "index": index,
        "count": count,
        "max_us": max_us,
        "status": {str(k): v for k, v in status.items()},
        "batches": {str(k): v for k, v in batches.items()},
    }


def _series_doc(series: ModelSeries, now: float, window_s: float) -> dict[str, Any]:
    """Since-start counts and the window's counts, each added up and sparse (numpy arrays:
    orjson writes them in C), with statuses, batch sizes and maxima."""
    total = series.total(now)
    index, count = sparse(total.counts)
    return {
        "name": series.name,
        "protocol": series.protocol,
        "started": series.started,
        "index": index,
        "count": count,
        "max_us": total.max_us,
        "status": {str(k): v for k, v in total.status.items()},
        "batches": {str(k): v for k, v in total.batches.items()},
        "window": _window_doc(series, now, window_s),
    }


def export(monitor: Monitor, series: list[ModelSeries]) -> dict[str, Any]:
    """``series`` (the monitor's own and inherited ones) and the monitor's own workers."""
    now = monitor.now()
    rows, snapshots = monitor.own_workers()
    return {
        "format": FORMAT,
        "series": [_series_doc(s, now, monitor.config.window_s) for s in series],
        "worker_rows": rows,
        "workers": [asdict(w) for w in snapshots],
        "served": {str(k): v for k, v in monitor.own_served().items()},
        "worker_histograms": {
            str(index): h.to_dict() for index, h in monitor.own_worker_histograms().items()
        },
        "worker_events": monitor.own_worker_events(),
    }


def _int_keys(mapping: dict[str, int]) -> dict[int, int]:
    return {int(k): int(v) for k, v in mapping.items()}


def _slice(doc: dict[str, Any]) -> Slice:
    return Slice(
        doc["start"],
        doc["end"],
        np.asarray(doc["index"], dtype=np.int32),
        np.asarray(doc["count"], dtype=np.int64),
        list(doc["max_us"]),
        _int_keys(doc["status"]),
        _int_keys(doc["batches"]),
    )


def frozen_series(doc: dict[str, Any], max_slices: int) -> ModelSeries:
    """A series that records nothing more: its totals and window are the document's."""
    series = ModelSeries(doc["name"], doc["started"], max_slices, doc["protocol"])
    counts = np.zeros(SLOTS, dtype=np.int64)
    counts[np.asarray(doc["index"], dtype=np.int64)] = doc["count"]
    series.since_start = counts
    series.since_start_max = list(doc["max_us"])
    series.status = _int_keys(doc["status"])
    series.status_at_rotation = dict(series.status)
    series.total_batches = Counter(_int_keys(doc["batches"]))
    series.ring.append(_slice(doc["window"]))
    return series


class FrozenState:
    """Another process's exported monitor (a peer front, or this front's previous life)."""

    __slots__ = ("events", "histograms", "rows", "series", "served", "workers")

    def __init__(self, doc: dict[str, Any], max_slices: int) -> None:
        if doc.get("format") != FORMAT:
            raise ValueError(f"monitor state format {doc.get('format')!r}; expected {FORMAT}")
        self.series = [frozen_series(s, max_slices) for s in doc["series"]]
        self.rows: list[dict[str, Any]] = doc["worker_rows"]
        self.workers = [WorkerSnapshot(**row) for row in doc["workers"]]
        self.served = _int_keys(doc["served"])
        self.histograms = {
            int(index): Histogram.from_dict(h) for index, h in doc["worker_histograms"].items()
        }
        self.events = Counter({k: int(v) for k, v in doc["worker_events"].items()})
