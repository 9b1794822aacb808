"""The protocol-level fast lane at the HTTP edge: pipelining, Expect: 100-continue,
connection close, the inline lane's one-connection rule, and the same answers with the
fast lane off."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests.support import start_server

pytestmark = pytest.mark.slow

BODY = orjson.dumps(
    {"model": "tactical", "observation": np.random.default_rng(9).standard_normal((60, 7)).tolist()}
)


def post(body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (
        b"POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), f"connection closed mid-response: {self.buf!r}"
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(self.buf) < length:
            assert self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def closed(self) -> bool:
        return not self.buf and not self._fill()


@pytest.fixture(scope="module")
def server(artifacts_dir: Path):
    with start_server(artifacts_dir, workers=2, args=["--max-body-bytes", "20000"]) as handle:
        yield handle


def connect(server) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock, Reader(sock)


def test_pipelined_requests_are_answered_in_order(server) -> None:
    sock, reader = connect(server)
    with sock:
        sock.sendall(post() + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n" + post(b"{bad") + post())
        answers = [reader.response() for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 400, 200]
    assert orjson.loads(answers[1][2]) == {"status": "alive"}
    first, last = orjson.loads(answers[0][2]), orjson.loads(answers[3][2])
    assert last["cached"] is True and first["value"] == last["value"]


def test_expect_100_continue(server) -> None:
    sock, reader = connect(server)
    with sock:
        head, body = post(extra=b"expect: 100-continue\r\n").split(b"\r\n\r\n", 1)
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        status, headers, payload = reader.response()
    assert status == 200 and headers["content-type"] == "application/json"
    assert "date" in headers and orjson.loads(payload)["model"] == "tactical"


def test_too_large_with_expect_is_refused_before_the_body(server) -> None:
    sock, reader = connect(server)
    with sock:
        big = b"{" + b" " * 30_000 + b"}"
        head = post(big, extra=b"expect: 100-continue\r\n").split(b"\r\n\r\n", 1)[0]
        sock.sendall(head + b"\r\n\r\n")
        status, headers, payload = reader.response()
        assert status == 413 and headers["connection"] == "close"
        assert orjson.loads(payload)["error"]["code"] == "body_too_large"
        assert reader.closed()


def test_too_large_without_expect_and_keep_alive_goes_on(server) -> None:
    sock, reader = connect(server)
    with sock:
        sock.sendall(post(b"{" + b" " * 30_000 + b"}") + post())
        assert reader.response()[0] == 413
        assert reader.response()[0] == 200


def test_connection_close_and_http10(server) -> None:
    for request in (post(extra=b"connection: close\r\n"), post().replace(b"HTTP/1.1", b"HTTP/1.0")):
        sock, reader = connect(server)
        with sock:
            sock.sendall(request)
            status, headers, _ = reader.response()
            assert status == 200 and headers.get("connection") == "close"
            assert reader.closed()


def worker_rows(server) -> int:
    return sum(w["served"] for w in httpx.get(f"{server.url}/stats").json()["workers"])


def test_inline_lane_takes_one_connection_and_leaves_two_to_the_workers(server) -> None:
    rng = np.random.default_rng(21)
    bodies = [
        orjson.dumps({"model": "tactical", "observation": rng.standard_normal((60, 7)).tolist()})
        for _ in range(40)
    ]  # distinct, so that none is a cache hit
    (one, one_reader), (two, two_reader) = connect(server), connect(server)
    with one, two:
        before = worker_rows(server)
        for i in range(10):  # taking turns, each request comes on another connection
            for k, (sock, reader) in enumerate(((one, one_reader), (two, two_reader))):
                sock.sendall(post(bodies[2 * i + k]))
                assert reader.response()[0] == 200
        alternating = worker_rows(server) - before

        one.sendall(post(bodies[20]))
        assert one_reader.response()[0] == 200
        time.sleep(0.005)  # past the 1 ms during which a newly alone connection waits
        before = worker_rows(server)
        for body in bodies[21:]:
            time.sleep(0.0005)  # the front sits idle in between, as a lone client lets it
            one.sendall(post(body))
            assert one_reader.response()[0] == 200
        alone = worker_rows(server) - before
    assert alternating == 20, "requests taking turns on two connections must go to workers"
    assert alone == 0, "a lone connection's requests must run inline in the front"


def test_same_answers_with_the_fast_lane_off(artifacts_dir: Path, server) -> None:
    fast = httpx.post(
        f"{server.url}/infer", content=BODY, headers={"content-type": "application/json"}
    )
    with start_server(artifacts_dir, workers=1, args=["--no-fast-lane"]) as plain:
        slow = httpx.post(
            f"{plain.url}/infer", content=BODY, headers={"content-type": "application/json"}
        )
        bad = httpx.post(
            f"{plain.url}/infer", content=b"{", headers={"content-type": "application/json"}
        )
    a, b = fast.json(), slow.json()
    a.pop("cached"), b.pop("cached")
    assert a == b
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"


def test_keep_alive_timeout_counts_from_the_last_fast_lane_answer(server) -> None:
    """uvicorn closes a connection idle for its keep-alive timeout (5 s); the fast lane keeps
    one timer per connection instead of one per answer, so the timeout must still count from
    the last answer: a client that asks every 2 s keeps its connection, an idle one loses it."""
    sock, reader = connect(server)
    for _ in range(4):  # 6 s of traffic, past the first timer's 5 s
        sock.sendall(post())
        assert reader.response()[0] == 200
        time.sleep(2)
    sock.sendall(post())
    assert reader.response()[0] == 200
    sock.settimeout(8)
    started = time.monotonic()
    assert reader.closed()  # blocks until the server closes the idle connection
    assert 4.5 < time.monotonic() - started < 7.5
    sock.close()
