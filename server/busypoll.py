"""Polling the event loop for a moment after an answer, instead of sleeping at once.

On a VM with few vCPUs a process that sleeps in epoll pays again when the next request
comes: its vCPU halts, and the client's write must wake it with an inter-processor
interrupt before any of our code runs. Measured at 1 client on the 2-core benchmark host:
p50 130 us sleeping, 90 us polling. So after each answer the front keeps its loop turning
(epoll with a zero timeout) for ``window_us``, and a client that sends its next request
at once finds the front already running.

It polls only while no worker holds a request of ours: at any load where the workers are
busy the front sleeps as before, so polling never takes a core from inference. The cost
is CPU while traffic is sparse, at most ``window_us`` per answer; ``--busy-poll-us 0``
turns it off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class BusyPoll:
    __slots__ = ("_armed", "_busy", "_clock", "_deadline", "_loop", "_window_ns")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        window_us: int,
        busy: Callable[[], bool],
        *,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self._loop = loop
        self._clock = clock
        self._window_ns = window_us * 1000
        self._busy = busy
        self._deadline = 0
        self._armed = False

    def arm(self) -> None:
        """Called after an answer is written: poll for the next ``window_us``."""
        if not self._window_ns:
            return
        self._deadline = self._clock() + self._window_ns
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self._turn)

    @property
    def polling(self) -> bool:
        return self._armed

    def _turn(self) -> None:
        # A ready callback makes the loop poll with a zero timeout instead of sleeping.
        if self._clock() < self._deadline and not self._busy():
            self._loop.call_soon(self._turn)
        else:
            self._armed = False
