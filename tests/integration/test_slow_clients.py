"""Clients that never finish a request, or stop sending halfway, over raw sockets: each
gets a clear answer or a closed connection within the read timeout, never a socket held
for ever, and a client that half-closes after a whole request still gets its answer."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.contract import violations
from tests.support import start_server

pytestmark = pytest.mark.slow

TIMEOUT_S = 1.0
HEAD = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
BODY = orjson.dumps({"model": "tactical", "observation": [[0.25] * 7] * 60})
JSON = {"content-type": "application/json"}
WHOLE = HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S + 10)


def _read_to_close(sock: socket.socket) -> tuple[bytes, float]:
    """Everything until the server closes, and how long that took."""
    started = time.monotonic()
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def _status(answer: bytes) -> tuple[int, dict, bytes]:
    head, _, payload = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    return int(lines[0].split()[1]), headers, payload


def _assert_timed_out(answer: bytes, path: str = "/infer") -> None:
    status, headers, payload = _status(answer)
    assert status == 408, answer
    assert headers["connection"] == "close"
    assert orjson.loads(payload)["error"]["code"] == "request_read_timeout"
    assert not violations("POST", path, status, headers, payload)


@pytest.mark.parametrize("lane", ["--fast-lane", "--no-fast-lane"])
def test_requests_that_never_arrive_in_full_are_timed_out(artifacts_dir: Path, lane: str) -> None:
    args = [lane, "--client-read-timeout-s", str(TIMEOUT_S)]
    with start_server(artifacts_dir, workers=1, args=args) as server:
        port = server.port
        silent = _connect(port)
        partial_line = _connect(port)
        partial_line.sendall(b"POST /inf")
        short_body = _connect(port)
        short_body.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % (len(BODY) + 100) + BODY)
        partial_get = _connect(port)
        partial_get.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n")
        # a keep-alive connection that served a request first, then stalls in the next one
        # (its timer fired once while the connection was busy or idle, and must come back)
        served = _connect(port)
        served.sendall(WHOLE)
        assert served.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(TIMEOUT_S * 1.5)
        served.sendall(HEAD)

        answer, _ = _read_to_close(silent)
        assert answer == b"", "a connection that sent nothing is closed without an answer"
        _assert_timed_out(_read_to_close(partial_line)[0])
        _assert_timed_out(_read_to_close(short_body)[0])
        _assert_timed_out(_read_to_close(partial_get)[0], "/stats")
        answer, waited = _read_to_close(served)
        _assert_timed_out(answer)
        assert waited < TIMEOUT_S + 3
        for sock in (silent, partial_line, short_body, partial_get, served):
            sock.close()
        assert httpx.post(f"{server.url}/infer", content=BODY, headers=JSON).status_code == 200


def test_a_trickled_head_is_timed_out_from_its_first_byte(artifacts_dir: Path) -> None:
    """A byte every 0.1 s keeps the connection busy but never completes the head: the
    deadline runs from the request's first byte, not from the last byte seen."""
    args = ["--client-read-timeout-s", str(TIMEOUT_S)]
    with start_server(artifacts_dir, workers=1, args=args) as server, _connect(server.port) as sock:
        stop = threading.Event()

        def trickle() -> None:
            for byte in HEAD + b"X-Padding: " + b"a" * 200:
                if stop.is_set():
                    return
                with contextlib.suppress(OSError):
                    sock.send(bytes([byte]))
                time.sleep(0.1)

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        answer, waited = _read_to_close(sock)
        stop.set()
        sender.join(5)
        _assert_timed_out(answer)
        assert waited < TIMEOUT_S + 3


def test_many_stalled_connections_are_all_released(artifacts_dir: Path) -> None:
    """300 connections holding half a head each (slowloris): all closed after the timeout,
    and the server answers throughout."""
    args = ["--client-read-timeout-s", str(TIMEOUT_S)]
    with start_server(artifacts_dir, workers=1, args=args) as server:
        stalled = [_connect(server.port) for _ in range(300)]
        for sock in stalled:
            sock.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\n")
        assert httpx.post(f"{server.url}/infer", content=BODY, headers=JSON).status_code == 200
        for sock in stalled:
            answer, _ = _read_to_close(sock)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
            sock.close()
        assert httpx.post(f"{server.url}/infer", content=BODY, headers=JSON).status_code == 200


@pytest.mark.parametrize("lane", ["--fast-lane", "--no-fast-lane"])
def test_a_half_closed_connection(artifacts_dir: Path, lane: str) -> None:
    """The client shuts its sending side: a request cut short gets a 400 at once; a whole
    request sent before the shutdown is still answered."""
    with start_server(artifacts_dir, workers=1, args=[lane]) as server:
        with _connect(server.port) as sock:
            sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:100])
            sock.shutdown(socket.SHUT_WR)
            answer, waited = _read_to_close(sock)
        status, headers, payload = _status(answer)
        assert status == 400 and waited < 2, answer
        assert orjson.loads(payload)["error"]["code"] == "incomplete_request"
        assert not violations("POST", "/infer", status, headers, payload)
        for request in (WHOLE, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
            with _connect(server.port) as sock:
                sock.sendall(request)
                sock.shutdown(socket.SHUT_WR)
                answer, _ = _read_to_close(sock)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert _status(answer)[2].endswith(b"}")


def test_an_early_413_with_connection_close_is_read_not_reset(artifacts_dir: Path) -> None:
    """``Connection: close`` and a declared length over the limit: the 413 goes out at
    once, and the body the client goes on writing is read and dropped, so a client that
    writes everything before it reads still sees the 413 (closing at once reset it)."""
    with start_server(artifacts_dir, workers=1, args=["--max-body-bytes", "10000"]) as server:
        body = b" " * 4_000_000
        with _connect(server.port) as sock:
            sock.sendall(
                HEAD + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            answer, _ = _read_to_close(sock)
        status, headers, payload = _status(answer)
        assert status == 413, answer[:200]
        assert headers["connection"] == "close"
        assert orjson.loads(payload)["error"]["code"] == "body_too_large"
