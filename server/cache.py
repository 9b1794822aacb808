"""The output cache: TTL + LRU over per-row outputs, plus in-flight de-duplication.

A key is one ``bytes``: the model index, the served version, and a digest of the
observation's float32 bytes. So a reload never serves an old version's entry, ``0.1`` and
``0.10`` (the same float32) share one entry, and a row computed for one protocol is a hit
for every other: the cache holds outputs (``server.outputs``), never a wire format.

Everything the cache keeps is ``bytes`` or ``float``, objects the cyclic garbage collector
does not track. Two measured failures led here:

- ``cachetools.TTLCache`` keeps a linked-list node object per entry, and every full
  collection walked all of them: p99 138 ms instead of 1.4 ms at 16 clients, cache-cold.
- Entries as tuples (tracked until a collection looks at them) starve the collector once
  the cache is full: CPython counts a freed object against new allocations, so each
  eviction cancelled an insertion, no young collection ran, and 300,000 new tuples piled
  up in the young generation until one collection walked them all in 100 ms (p99.9 64 to
  80 ms at 16 clients after 20 s of load).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable

CacheKey = bytes
_blake2b = hashlib.blake2b
DIGEST_BYTES = 16


def observation_digest(row: bytes) -> bytes:
    # BLAKE2b, not SHA-256: SHA-256 (OpenSSL, the CPU's SHA extensions) took 1.25 us against
    # 2.1 in a tight loop but ~1 us more than BLAKE2b in the served process at 1 client
    return _blake2b(row, digest_size=DIGEST_BYTES).digest()


def key_prefix(model_idx: int, version: str) -> bytes:
    return bytes((model_idx,)) + version.encode() + b"\0"


def cache_key(prefix: bytes, row: bytes) -> CacheKey:
    """``prefix``: ``key_prefix`` of the model and the version now serving."""
    return prefix + observation_digest(row)


class TtlLru:
    """At most ``maxsize`` entries; an entry expires ``ttl_s`` after it was stored; when
    full, the least recently used entry goes first."""

    __slots__ = ("_clock", "_data", "_expires", "maxsize", "ttl_s")

    def __init__(self, maxsize: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self._clock = clock
        self._data: OrderedDict[bytes, bytes] = OrderedDict()  # in LRU order
        self._expires: dict[bytes, float] = {}

    def get(self, key: CacheKey) -> bytes | None:
        value = self._data.get(key)
        if value is None:
            return None
        if self._expires[key] <= self._clock():
            del self._data[key], self._expires[key]
            return None
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key: CacheKey, value: bytes) -> None:
        data = self._data
        data[key] = value
        data.move_to_end(key)
        self._expires[key] = self._clock() + self.ttl_s
        if len(data) > self.maxsize:
            del self._expires[data.popitem(last=False)[0]]

    def expire(self, budget: int = 1_000) -> int:
        """Drops expired entries from the least recently used end (a few per call, so a
        1 s ticker keeps memory tidy without a pause)."""
        now = self._clock()
        data, expires = self._data, self._expires
        dropped = 0
        for key in list(itertools.islice(data, budget)):
            if expires[key] <= now:
                del data[key], expires[key]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._data)


class ResponseCache:
    def __init__(
        self, maxsize: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = maxsize > 0 and ttl_s > 0
        self._store: TtlLru | None = TtlLru(maxsize, ttl_s, clock) if self.enabled else None
        self._in_flight: dict[CacheKey, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    def get(self, key: CacheKey) -> bytes | None:
        """The row's outputs, if cached."""
        store = self._store
        if store is None:
            return None
        value = store.get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: CacheKey, outputs: bytes) -> None:
        if self._store is not None:
            self._store[key] = outputs

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
        model_idx = key[0]
        digest = key[-DIGEST_BYTES:]

        def done(f: asyncio.Future) -> None:
            self._in_flight.pop(key, None)
            if not f.cancelled() and f.exception() is None:
                outputs, version, _ = f.result()
                self._store[key_prefix(model_idx, version) + digest] = outputs  # type: ignore[index]

        fut.add_done_callback(done)

    def __len__(self) -> int:
        return 0 if self._store is None else len(self._store)

    def expire(self) -> int:
        return 0 if self._store is None else self._store.expire()

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
