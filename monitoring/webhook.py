"""Webhook sink: alert events POSTed as JSON from a daemon thread, never blocking the caller.

``send`` only puts the payload on a bounded queue (dropping it, and counting the drop, when the
queue is full); one daemon thread posts with a timeout and retries with exponential back-off.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("monitoring.webhook")


class WebhookSink:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_queue: int = 100,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self.sent = 0
        self.failed = 0  # gave up after every retry
        self.dropped = 0  # queue full
        self.attempts = 0
        self._thread = threading.Thread(target=self._run, name="monitoring-webhook", daemon=True)
        self._thread.start()

    def send(self, payload: dict[str, Any]) -> bool:
        """Queue ``payload`` for posting; False if it was dropped because the queue is full."""
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Post what is queued (up to ``timeout_s``), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def join(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued payload was posted or given up; True if the queue drained."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            payload = self._queue.get()
            try:
                if payload is None:
                    return
                self._deliver(orjson.dumps(payload))
            finally:
                self._queue.task_done()

    def _deliver(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                self.sent += 1
                return
            except (urllib.error.URLError, OSError, ValueError) as error:
                if attempt == self.retries:
                    self.failed += 1
                    log.warning(
                        "webhook %s failed after %d attempts: %s", self.url, attempt + 1, error
                    )
                    return
                self._sleep(self.backoff_s * 2**attempt)
