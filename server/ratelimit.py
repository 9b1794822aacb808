"""Per-client token buckets (client = API key if given, else peer address)."""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import LRUCache


class RateLimiter:
    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        # bounded: a flood of distinct clients cannot grow memory without limit
        self._buckets: LRUCache = LRUCache(maxsize=max_clients)

    def allow(self, client: object) -> bool:
        now = self._clock()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1.0, now)
        return True
