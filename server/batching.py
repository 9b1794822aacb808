"""Dynamic batching: rows for one model that arrive close together go to a worker as one
call, up to ``max_batch_size`` rows or ``max_queue_delay_us`` of waiting.

With a delay of 0 nothing waits on a timer: rows parsed in the same event-loop pass are
flushed together on the next pass, which batches naturally under concurrency and costs a
lone client nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

Submit = Callable[[int, int, bytes, list], None]


class Batcher:
    __slots__ = (
        "_delay_s",
        "_futures",
        "_handle",
        "_loop",
        "_max",
        "_model_idx",
        "_rows",
        "_submit",
    )

    def __init__(
        self,
        model_idx: int,
        submit: Submit,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._model_idx = model_idx
        self._submit = submit
        self._max = max_batch_size
        self._delay_s = max_queue_delay_us / 1e6
        self._loop = loop
        self._rows: list[bytes] = []
        self._futures: list[asyncio.Future] = []
        self._handle: asyncio.Handle | None = None

    def submit(self, row: bytes) -> asyncio.Future:
        fut = self._loop.create_future()
        self._rows.append(row)
        self._futures.append(fut)
        if len(self._rows) >= self._max:
            self.flush()
        elif self._handle is None:
            if self._delay_s:
                self._handle = self._loop.call_later(self._delay_s, self.flush)
            else:
                self._handle = self._loop.call_soon(self.flush)
        return fut

    def flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._rows:
            return
        rows, futures = self._rows, self._futures
        self._rows, self._futures = [], []
        self._submit(self._model_idx, len(rows), b"".join(rows), futures)

    @property
    def queued(self) -> int:
        return len(self._rows)
