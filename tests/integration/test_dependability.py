"""Dependability against the real server: the circuit breaker end to end, the front
answering while every worker is dead, and the HTTP layer's refusals in JSON."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.support import start_server, wait_until

pytestmark = pytest.mark.slow

OBS = np.random.default_rng(5).standard_normal((400, 60, 7)).astype(np.float32)


def body(i: int) -> dict:
    return {"model": "tactical", "observation": OBS[i].tolist()}


def test_stuck_model_opens_its_circuit_then_a_probe_closes_it(artifacts_dir: Path) -> None:
    # one row per call: the two requests are two failed calls (a batch fails once)
    args = ["--request-timeout-s", "0.3", "--breaker-failures", "2", "--breaker-open-s", "1",
            "--no-inline-when-idle", "--max-batch-size", "1"]  # fmt: skip
    with start_server(artifacts_dir, workers=1, args=args) as server:
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        try:

            async def two() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                    return await asyncio.gather(
                        *(client.post("/infer", json=body(i)) for i in (0, 1))
                    )

            assert [r.status_code for r in asyncio.run(two())] == [504, 504]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        refused = httpx.post(f"{server.url}/infer", json=body(2))
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "circuit_open"
        assert int(refused.headers["retry-after"]) >= 1
        stats = httpx.get(f"{server.url}/stats").json()
        assert stats["circuit_breakers"]["tactical"]["state"] == "open"
        assert stats["circuit_breakers"]["strategic"]["state"] == "closed"
        alerts = httpx.get(f"{server.url}/alerts").json()["firing"]
        assert any(a["name"] == "circuit_open" and a["model"] == "tactical" for a in alerts)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'pis_circuit_state{model="tactical",state="open"} 1' in metrics
        cached_ok = httpx.post(
            f"{server.url}/infer", json={"model": "strategic", "observation": [[0.5] * 13] * 48}
        )
        assert cached_ok.status_code == 200, "another model's circuit is its own"

        def probe_passes() -> bool:
            return httpx.post(f"{server.url}/infer", json=body(3)).status_code == 200

        wait_until(probe_passes, timeout_s=30)
        stats = httpx.get(f"{server.url}/stats").json()
        assert stats["circuit_breakers"]["tactical"]["state"] == "closed"
        assert stats["circuit_breakers"]["tactical"]["opened_total"] == 1


def test_front_answers_while_every_worker_is_dead(artifacts_dir: Path) -> None:
    with start_server(artifacts_dir, workers=2, args=["--no-inline-when-idle"]) as server:
        pids = server.worker_pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                return await asyncio.gather(
                    *(client.post("/infer", json=body(10 + i)) for i in range(50))
                )

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 50
        wait_until(
            lambda: len(server.worker_pids()) == 2 and set(server.worker_pids()) != set(pids)
        )
        wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200)


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("lane", ["--fast-lane", "--no-fast-lane"])
def test_http_layer_refusals_are_json(artifacts_dir: Path, lane: str) -> None:
    with start_server(artifacts_dir, workers=1, args=[lane]) as server:
        for request in (
            b"GARBAGE\x01 / HTTP/1.1\r\n\r\n",
            b"POST /infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        ):
            response = _raw(server.port, request)
            head, _, payload = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), response
            assert b"content-type: application/json" in head.lower()
            assert orjson.loads(payload)["error"]["code"] == "bad_http_request"
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_declared_length_over_the_limit_is_refused_before_the_body(artifacts_dir: Path) -> None:
    """No Expect header: the 413 still comes as soon as the head is read, not after the
    client has sent every declared byte; the rest is read and dropped, and a connection
    whose body has not ended a couple of seconds later is closed (one whose body ends goes
    on: tests/integration/test_fast_lane.py)."""
    with start_server(artifacts_dir, workers=1, args=["--max-body-bytes", "10000"]) as server:
        for declared, sent in ((50_000_000, 2_000), (20_000, 15_000)):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(
                    b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % declared + b" " * sent
                )
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    chunk = sock.recv(65536)
                    assert chunk, f"closed before an answer: {answer!r}"
                    answer += chunk
                head, _, payload = answer.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 413"), answer
                assert orjson.loads(payload)["error"]["code"] == "body_too_large"
                started = time.monotonic()
                with contextlib.suppress(ConnectionResetError):
                    while sock.recv(65536):
                        pass
                assert time.monotonic() - started < 4.5, "the connection stayed open"
        assert httpx.get(f"{server.url}/healthz").status_code == 200
