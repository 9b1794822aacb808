"""Per-model recording state: the counts of the second being recorded, rotated once a second
into a bounded ring of sparse per-second slices, plus since-start totals.

Layout of the flat count vector (``SLOTS`` integers): one block of ``N_BUCKETS`` histogram counts
per segment (the request stages, then the inference time of single-observation batches), then
one counter of requests answered from the cache.
"""

from __future__ import annotations

from array import array
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from monitoring.config import STAGES
from monitoring.histogram import N_BUCKETS, bin_counts, sparse

SEGMENTS: tuple[str, ...] = (*STAGES, "batch1_inference")
N_SEGMENTS = len(SEGMENTS)
OFFSET: dict[str, int] = {name: i * N_BUCKETS for i, name in enumerate(SEGMENTS)}
_BATCH1_OFFSET = OFFSET["batch1_inference"]
CACHED_SLOT = N_SEGMENTS * N_BUCKETS
SLOTS = CACHED_SLOT + 1
N_STAGES = len(STAGES)
# Stage times waiting to be bucketed: a flush at the latest every this many requests, so
# the buffer stays bounded (640 KiB) even if no tick comes.
MAX_PENDING_ROWS = 16_384
MAX_TRACKED_BATCH = 1024  # larger batch sizes count as this one (bounds the dict)
_NO_INDEX = np.zeros(0, dtype=np.int32)
_NO_COUNT = np.zeros(0, dtype=np.int64)


@dataclass(slots=True)
class Slice:
    """What one model recorded during one tick interval, stored sparsely."""

    start: float
    end: float
    index: np.ndarray  # int32 positions in the flat count vector
    count: np.ndarray  # int64 counts at those positions
    max_us: list[float]  # per segment
    status: dict[int, int]  # answers per HTTP status in this slice
    batches: dict[int, int]  # batches per size in this slice


@dataclass
class Aggregate:
    """A merged view of some slices (a window) or of everything since start."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(SLOTS, dtype=np.int64))
    max_us: list[float] = field(default_factory=lambda: [0.0] * N_SEGMENTS)
    status: Counter[int] = field(default_factory=Counter)
    batches: Counter[int] = field(default_factory=Counter)
    span_s: float = 0.0

    def segment(self, name: str) -> np.ndarray:
        start = OFFSET[name]
        return self.counts[start : start + N_BUCKETS]

    @property
    def requests(self) -> int:
        return int(self.segment("total").sum())

    @property
    def cached(self) -> int:
        return int(self.counts[CACHED_SLOT])

    def add(self, other: Aggregate) -> None:
        self.counts += other.counts
        self.max_us = [max(a, b) for a, b in zip(self.max_us, other.max_us, strict=True)]
        self.status.update(other.status)
        self.batches.update(other.batches)
        self.span_s = max(self.span_s, other.span_s)


class ModelSeries:
    """Everything recorded for one model name over one protocol (an index into ``PROTOCOLS``).
    Single-threaded: the front's event loop."""

    __slots__ = (
        "cur",
        "cur_batch1",
        "cur_batches",
        "cur_cached",
        "cur_max",
        "name",
        "pending",
        "protocol",
        "ring",
        "running_window",
        "since_start",
        "since_start_max",
        "started",
        "status",
        "status_at_rotation",
        "total_batches",
    )

    def __init__(self, name: str, now: float, max_slices: int, protocol: int = 0) -> None:
        self.name = name
        self.protocol = protocol
        self.started = now
        # The second being recorded. flush() adds the stage histograms, bucketed in bulk, into
        # the numpy vector ``cur``; the two counts the hot path bumps one at a time stay Python
        # objects (a numpy item increment costs twice a list's): batch-1 inference buckets in
        # a list, cache hits in an int. current_counts() puts the three together, so a
        # rotation converts 3,712 list items (~0.1 ms), not all 22,273 (~0.9 ms).
        self.cur = np.zeros(SLOTS, dtype=np.int64)
        self.cur_batch1: list[int] = [0] * N_BUCKETS
        self.cur_cached = 0
        self.cur_max: list[float] = [0.0] * N_SEGMENTS
        self.cur_batches: dict[int, int] = {}
        # One row of STAGES times per request, appended on the hot path (~0.2 us) and
        # bucketed in bulk with numpy by flush(): bucketing each request's five times in
        # Python cost ~1 us, 7.6% of the throughput at 16 clients.
        self.pending = array("d")
        self.status: dict[int, int] = {}  # cumulative answers per status (the hot path's)
        self.status_at_rotation: dict[int, int] = {}
        self.ring: deque[Slice] = deque(maxlen=max_slices)
        self.since_start = np.zeros(SLOTS, dtype=np.int64)
        self.since_start_max: list[float] = [0.0] * N_SEGMENTS
        self.total_batches: Counter[int] = Counter()
        self.running_window: object = None  # monitoring.shared's, for exports

    def flush(self) -> None:
        """Buckets the pending stage times into the current slice. A stage time of 0 means
        the stage did not run and is not counted; the total always is."""
        if not self.pending:
            return
        rows = np.frombuffer(self.pending, dtype=np.float64).reshape(-1, N_STAGES)
        cur, maxes = self.cur, self.cur_max
        for stage in range(N_STAGES):
            values = rows[:, stage]
            if SEGMENTS[stage] != "total":
                values = values[values > 0.0]
                if not values.size:
                    continue
            offset = stage * N_BUCKETS
            cur[offset : offset + N_BUCKETS] += bin_counts(values)
            maxes[stage] = max(maxes[stage], float(values.max()))
        self.pending = array("d")

    def current_counts(self) -> np.ndarray:
        """The second being recorded as one count vector (a new array)."""
        self.flush()
        counts = self.cur.copy()
        if 1 in self.cur_batches:  # else the batch-1 list is all zeros
            counts[_BATCH1_OFFSET : _BATCH1_OFFSET + N_BUCKETS] = self.cur_batch1
        counts[CACHED_SLOT] = self.cur_cached
        return counts

    def rotate(self, start: float, end: float) -> Slice:
        """Close the current slice: store it sparsely in the ring, fold it into the totals."""
        self.flush()
        if not self.cur_batches and self.status == self.status_at_rotation:
            idle = Slice(start, end, _NO_INDEX, _NO_COUNT, [0.0] * N_SEGMENTS, {}, {})
            self.ring.append(idle)  # nothing recorded: skip converting the count list
            return idle
        counts = self.current_counts()
        self.cur.fill(0)
        if 1 in self.cur_batches:
            self.cur_batch1 = [0] * N_BUCKETS
        self.cur_cached = 0
        maxes, self.cur_max = self.cur_max, [0.0] * N_SEGMENTS
        batches, self.cur_batches = self.cur_batches, {}
        status_delta = self.status_since_rotation()
        self.status_at_rotation = dict(self.status)
        index, count = sparse(counts)
        piece = Slice(start, end, index, count, maxes, status_delta, batches)
        self.ring.append(piece)
        self.since_start += counts
        self.since_start_max = [max(a, b) for a, b in zip(self.since_start_max, maxes, strict=True)]
        self.total_batches.update(batches)
        return piece

    def expire(self, oldest_end: float) -> None:
        while self.ring and self.ring[0].end <= oldest_end:
            self.ring.popleft()

    def window(self, since: float, now: float, include_current: bool = True) -> Aggregate:
        """Slices ending after ``since`` (and the slice being recorded), merged."""
        agg = Aggregate()
        first_start = now
        for piece in self.ring:
            if piece.end <= since:
                continue
            first_start = min(first_start, piece.start)
            agg.counts[piece.index] += piece.count
            agg.max_us = [max(a, b) for a, b in zip(agg.max_us, piece.max_us, strict=True)]
            agg.status.update(piece.status)
            agg.batches.update(piece.batches)
        if include_current:
            self._add_current(agg)
            first_start = min(first_start, self.ring[-1].end if self.ring else self.started)
        agg.span_s = max(now - max(first_start, since, self.started), 0.0)
        return agg

    def total(self, now: float) -> Aggregate:
        self.flush()
        batches = Counter(self.total_batches)
        batches.update(self.cur_batches)
        return Aggregate(
            counts=self.since_start + self.current_counts(),
            max_us=[max(a, b) for a, b in zip(self.since_start_max, self.cur_max, strict=True)],
            status=Counter(self.status),  # cumulative already: no per-slice delta to add
            batches=batches,
            span_s=max(now - self.started, 0.0),
        )

    def _add_current(self, agg: Aggregate) -> None:
        agg.counts += self.current_counts()
        agg.max_us = [max(a, b) for a, b in zip(agg.max_us, self.cur_max, strict=True)]
        agg.status.update(self.status_since_rotation())
        agg.batches.update(self.cur_batches)

    def status_since_rotation(self) -> dict[int, int]:
        """Answers per status in the slice being recorded (non-zero entries only)."""
        before = self.status_at_rotation
        return {
            code: n - before.get(code, 0)
            for code, n in self.status.items()
            if n != before.get(code, 0)
        }
