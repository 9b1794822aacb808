"""A circuit breaker per model: when its calls keep failing or timing out, requests fail
fast with 503 until a probe succeeds, instead of each waiting for its own failure."""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls are refused until open_s has passed
    HALF_OPEN = "half_open"  # one probe call goes through; its outcome decides


class CircuitBreaker:
    __slots__ = ("_clock", "_open_until", "_probing", "failures", "open_s", "opened", "state")
    __slots__ += ("_last_cause", "threshold")

    def __init__(
        self, threshold: int, open_s: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``threshold`` consecutive failures open the circuit (0: never)."""
        self.threshold = threshold
        self.open_s = open_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive
        self.opened = 0  # times the circuit opened
        self._open_until = 0.0
        self._probing = False
        self._last_cause: object = None

    def allow(self) -> bool:
        """Whether a call may go through now (in half-open, only the one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() < self._open_until:
                return False
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def success(self) -> None:
        self.failures = 0
        self.state = BreakerState.CLOSED
        self._probing = False

    def release(self) -> None:
        """A call that ended saying nothing about the model (overload, no ready worker): a
        half-open circuit lets the next call probe instead."""
        self._probing = False

    def failure(self, cause: object = None) -> None:
        """One failed call. ``cause``: its error, which every request of a failed batch
        shares: a batch of 16 rows that timed out is one failure, not 16 (which would open
        the circuit for everyone on a single stuck call)."""
        if cause is not None:
            if cause is self._last_cause:
                return
            self._last_cause = cause
        self.failures += 1
        half_open = self.state is BreakerState.HALF_OPEN
        if half_open or (self.threshold and self.failures >= self.threshold):
            if self.state is not BreakerState.OPEN:
                self.opened += 1
            self.state = BreakerState.OPEN
            self._open_until = self._clock() + self.open_s
            self._probing = False

    @property
    def retry_after_s(self) -> int:
        """Whole seconds until a probe may go through (at least 1)."""
        if self.state is not BreakerState.OPEN:
            return 1
        return max(1, math.ceil(self._open_until - self._clock()))

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "consecutive_failures": self.failures,
            "opened_total": self.opened,
            "retry_after_s": self.retry_after_s if self.state is BreakerState.OPEN else 0,
        }
