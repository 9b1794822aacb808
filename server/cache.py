"""The response cache: TTL + LRU over per-row results, plus in-flight de-duplication.

Keys are (response prefix, digest of the observation's float32 bytes). The prefix names
the model and the served version, so a reload never serves an old version's entry, and
``0.1`` and ``0.10`` (the same float32) share one entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache

CacheKey = tuple[bytes, bytes]


def observation_digest(row: bytes) -> bytes:
    return hashlib.blake2b(row, digest_size=16).digest()


class ResponseCache:
    def __init__(
        self, maxsize: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = maxsize > 0 and ttl_s > 0
        self._store: TTLCache | None = (
            TTLCache(maxsize=maxsize, ttl=ttl_s, timer=clock) if self.enabled else None
        )
        self._in_flight: dict[CacheKey, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    def get(self, key: CacheKey) -> Any | None:
        store = self._store
        if store is None:
            return None
        value = store.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: CacheKey, value: Any) -> None:
        if self._store is not None:
            self._store[key] = value

    def joining(self, key: CacheKey) -> asyncio.Future | None:
        """The future of an identical request already being computed, if any."""
        fut = self._in_flight.get(key)
        if fut is not None:
            self.coalesced += 1
        return fut

    def track(self, key: CacheKey, fut: asyncio.Future) -> None:
        """Registers ``fut`` as the computation for ``key``; its result is cached under the
        version that actually computed it."""
        if self._store is None:
            return
        self._in_flight[key] = fut
        digest = key[1]

        def done(f: asyncio.Future) -> None:
            self._in_flight.pop(key, None)
            if not f.cancelled() and f.exception() is None:
                result = f.result()
                self._store[(result[1], digest)] = result  # type: ignore[index]

        fut.add_done_callback(done)

    def __len__(self) -> int:
        return 0 if self._store is None else len(self._store)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
