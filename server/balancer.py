"""Load-balancing policies: each picks one worker from those the pool says are eligible.

The pool does the bookkeeping (health, in-flight counts, admission); a policy only chooses.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from server.config import BalancerStrategy


class Loaded(Protocol):
    in_flight: int


W = TypeVar("W", bound=Loaded)


class Balancer(Protocol):
    def choose(self, eligible: Sequence[W]) -> W: ...


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def choose(self, eligible: Sequence[W]) -> W:
        self._next = (self._next + 1) % len(eligible)
        return eligible[self._next]


class LeastLoaded:
    def choose(self, eligible: Sequence[W]) -> W:
        return min(eligible, key=_in_flight)


class PowerOfTwo:
    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, eligible: Sequence[W]) -> W:
        if len(eligible) == 1:
            return eligible[0]
        a, b = self._rng.sample(eligible, 2)
        return a if a.in_flight <= b.in_flight else b


def _in_flight(worker: Loaded) -> int:
    return worker.in_flight


def make_balancer(strategy: BalancerStrategy, *, rng: random.Random | None = None) -> Balancer:
    if strategy is BalancerStrategy.ROUND_ROBIN:
        return RoundRobin()
    if strategy is BalancerStrategy.POWER_OF_TWO:
        return PowerOfTwo(rng=rng)
    return LeastLoaded()
