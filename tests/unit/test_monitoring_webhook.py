"""The webhook sink retries against a real local HTTP server and never blocks the caller."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import orjson

from monitoring import AlertRule, Monitor, MonitorConfig, WorkerSnapshot
from monitoring.webhook import WebhookSink


class Receiver(http.server.ThreadingHTTPServer):
    """Answers 500 to the first ``failures`` POSTs, then 200; can stall every answer."""

    def __init__(self, failures: int = 0, stall_s: float = 0.0) -> None:
        self.failures = failures
        self.stall_s = stall_s
        self.attempts = 0
        self.received: list[dict] = []
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.attempts += 1
        if self.server.stall_s:
            self.server.release.wait(self.server.stall_s)
        if self.server.attempts <= self.server.failures:
            self.send_response(500)
        else:
            self.server.received.append(orjson.loads(body))
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def receiver(**kwargs: float) -> Iterator[Receiver]:
    server = Receiver(**kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_retries_until_delivered() -> None:
    with receiver(failures=2) as server:
        sink = WebhookSink(server.url, timeout_s=2.0, retries=3, backoff_s=0.01)
        assert sink.send({"alert": "x", "transition": "firing"})
        assert sink.join(10.0)
        assert server.attempts == 3
        assert server.received == [{"alert": "x", "transition": "firing"}]
        assert (sink.sent, sink.failed) == (1, 0)
        sink.close()


def test_gives_up_after_the_retries() -> None:
    with receiver(failures=100) as server:
        sink = WebhookSink(server.url, timeout_s=2.0, retries=2, backoff_s=0.01)
        sink.send({"alert": "x"})
        assert sink.join(10.0)
        assert (server.attempts, sink.sent, sink.failed) == (3, 0, 1)
        sink.close()


def test_a_stalled_receiver_never_blocks_record_or_tick() -> None:
    with receiver(stall_s=30.0) as server:
        clock = [1000.0]
        rule = AlertRule(
            name="errors", kind="error_rate_above", threshold=0.01, for_s=0.0, min_requests=1
        )
        config = MonitorConfig(alert_rules=(rule,), webhook_url=server.url, webhook_timeout_s=20.0)
        monitor = Monitor(config, clock=lambda: clock[0], wall_clock=lambda: clock[0])
        workers = [WorkerSnapshot(0, 1, "ready", 0, 0, 0)]
        started = time.perf_counter()
        for second in range(40):  # alternating errors/no errors: firing, resolved, ... events
            status = 503 if second % 2 == 0 else 200
            for _ in range(10):
                monitor.record_request("m", status, 100.0, 5, 1, 10, 50, False)
            clock[0] += 61.0
            monitor.tick(workers, {})
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0, f"record/tick took {elapsed:.2f} s with a stalled webhook"
        deadline = time.monotonic() + 5
        while server.attempts == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.attempts == 1  # the one in flight; the rest wait in the queue
        server.release.set()


def test_full_queue_drops_instead_of_blocking() -> None:
    with receiver(stall_s=30.0) as server:
        sink = WebhookSink(server.url, timeout_s=20.0, retries=0, max_queue=2)
        started = time.perf_counter()
        results = [sink.send({"n": i}) for i in range(50)]
        assert time.perf_counter() - started < 0.5
        assert results.count(False) >= 45 and sink.dropped == results.count(False)
        server.release.set()
