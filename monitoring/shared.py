"""A monitor's counts as a document another process can add to its own: how several front
processes answer ``/stats`` and ``/metrics`` for all of them.

``export`` writes every series (since-start counts, and the per-second slices of the window,
sparse), the workers with their served totals, their inference histograms
(``Histogram.to_dict``) and the worker events. ``FrozenState`` turns such a document back
into series that a ``Monitor`` adds to its views (``Monitor.set_peers``, ``Monitor.inherit``):
counts add, so a p99 over several fronts comes from the merged counts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from monitoring.config import WorkerSnapshot
from monitoring.histogram import Histogram, sparse
from monitoring.series import SLOTS, ModelSeries, Slice

if TYPE_CHECKING:
    from monitoring.monitor import Monitor

FORMAT = 1


def _slice_doc(piece: Slice) -> dict[str, Any]:
    return {
        "start": piece.start,
        "end": piece.end,
        "index": piece.index.tolist(),
        "count": piece.count.tolist(),
        "max_us": piece.max_us,
        "status": {str(k): v for k, v in piece.status.items()},
        "batches": {str(k): v for k, v in piece.batches.items()},
    }


def _series_doc(series: ModelSeries, now: float) -> dict[str, Any]:
    total = series.total(now)
    index, count = sparse(total.counts)
    ring = [_slice_doc(piece) for piece in series.ring]
    current = series.current_counts()
    if current.any() or series.cur_batches:
        start = series.ring[-1].end if series.ring else series.started
        c_index, c_count = sparse(current)
        piece = Slice(
            start,
            now,
            c_index,
            c_count,
            list(series.cur_max),
            dict(series._status_since_rotation()),
            dict(series.cur_batches),
        )
        ring.append(_slice_doc(piece))
    return {
        "name": series.name,
        "protocol": series.protocol,
        "started": series.started,
        "index": index.tolist(),
        "count": count.tolist(),
        "max_us": total.max_us,
        "status": {str(k): v for k, v in total.status.items()},
        "batches": {str(k): v for k, v in total.batches.items()},
        "ring": ring,
    }


def export(monitor: Monitor, series: list[ModelSeries]) -> dict[str, Any]:
    """``series`` (the monitor's own and inherited ones) and the monitor's own workers."""
    now = monitor.now()
    rows, snapshots = monitor.own_workers()
    return {
        "format": FORMAT,
        "series": [_series_doc(s, now) for s in series],
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
    for piece in doc["ring"]:
        series.ring.append(_slice(piece))
    return series


class FrozenState:
    """Another process's exported monitor (a peer front, or this front's previous life)."""

    __slots__ = ("events", "histograms", "rows", "series", "served", "workers")

    def __init__(self, doc: dict[str, Any], max_slices: int) -> None:
        if doc.get("format") != FORMAT:
            raise ValueError(f"monitor state format {doc.get('format')!r}; expected {FORMAT}")
        # enough slices for the window, whatever the exporter's slice count
        self.series = [frozen_series(s, max_slices + 2) for s in doc["series"]]
        self.rows: list[dict[str, Any]] = doc["worker_rows"]
        self.workers = [WorkerSnapshot(**row) for row in doc["workers"]]
        self.served = _int_keys(doc["served"])
        self.histograms = {
            int(index): Histogram.from_dict(h) for index, h in doc["worker_histograms"].items()
        }
        self.events = Counter({k: int(v) for k, v in doc["worker_events"].items()})
