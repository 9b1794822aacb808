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

A large cache is split into up to 256 shards of 1,024 to 2,048 entries (``ShardedTtlLru``;
larger shards only past 524,288 entries), each an LRU of its own: a CPython dict rehashes
every entry when it grows, and, once full, again whenever evictions have used up its
table's free slots. One 100,000-entry LRU stalled the event loop 9-18 ms at its 87,381st
insertion, its 174,762nd and every ~250,000 after (at 20,000 requests/s, every ~12 s), the
64-client p99.9's outliers; a shard's rehash is ~0.3 ms. Keys end in digest bytes, so the
last byte spreads them evenly; least recently used is then per shard, which a cache this
size does not notice.
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


_SHARD_ENTRIES = 1024
_MAX_SHARDS = 256


class ShardedTtlLru:
    """``TtlLru``'s interface over a power-of-two number of ``TtlLru`` shards."""

    __slots__ = ("_mask", "_shards", "maxsize", "ttl_s")

    def __init__(self, maxsize: int, ttl_s: float, clock: Callable[[], float]) -> None:
        count = 1
        while count < _MAX_SHARDS and maxsize // (count * 2) >= _SHARD_ENTRIES:
            count *= 2
        self.maxsize = maxsize
        self.ttl_s = ttl_s
        self._mask = count - 1
        self._shards = [
            TtlLru(maxsize // count + (i < maxsize % count), ttl_s, clock) for i in range(count)
        ]

    def get(self, key: CacheKey) -> bytes | None:
        return self._shards[key[-1] & self._mask].get(key)

    def __setitem__(self, key: CacheKey, value: bytes) -> None:
        self._shards[key[-1] & self._mask][key] = value

    def expire(self, budget: int = 1_000) -> int:
        each = max(1, budget // len(self._shards))
        return sum(shard.expire(each) for shard in self._shards)

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)


class ResponseCache:
    def __init__(
        self, maxsize: int, ttl_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = maxsize > 0 and ttl_s > 0
        self._store = ShardedTtlLru(maxsize, ttl_s, clock) if self.enabled else None
        # the hot path picks the shard itself: a call less per lookup and per store
        self._shards = self._store._shards if self._store is not None else []
        self._mask = self._store._mask if self._store is not None else 0
        self._in_flight: dict[CacheKey, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0
        self.coalesced = 0

    def get(self, key: CacheKey) -> bytes | None:
        """The row's outputs, if cached."""
        if not self.enabled:
            return None
        value = self._shards[key[-1] & self._mask].get(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: CacheKey, outputs: bytes) -> None:
        if self.enabled:
            self._shards[key[-1] & self._mask][key] = outputs

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
                self.put(key_prefix(model_idx, version) + digest, outputs)

        fut.add_done_callback(done)

    def __len__(self) -> int:
        return 0 if self._store is None else len(self._store)

    def expire(self) -> int:
        return 0 if self._store is None else self._store.expire()

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
