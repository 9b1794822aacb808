"""Test doubles shared by several test modules."""

from __future__ import annotations


class FakeClock:
    """A clock the test moves by hand: call it for the time, set ``now`` or ``advance`` it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
