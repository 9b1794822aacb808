"""The HTTP layer alone, in-process: ``python -m benchmarks.httplayer``.

Feeds one keep-alive ``POST /infer`` request at a time to the fast lane's protocol
(``server.fastlane``: uvicorn's httptools protocol with our hooks) whose endpoint answers a
constant at once, and to the least a keep-alive POST server does with httptools (parse,
collect the headers and body, write a response), both on a transport that only counts
writes. The difference is what uvicorn's protocol and our hooks cost per request beyond
httptools itself; interleaved rounds, median of the per-round means.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

import httptools
import uvloop
from uvicorn.config import Config
from uvicorn.server import ServerState

from server.config import ServerConfig
from server.fastlane import fast_lane_protocol
from server.head import RequestHead

_BODY = b'{"model":"tactical","observation":[[' + b",".join([b"0.123456789"] * 7) + b"]]}"
REQUEST = (
    b"POST /infer HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(_BODY)
) + _BODY
_ANSWER = b'{"model":"tactical","version":"v","action":"long","confidence":0.5}'
_PEER = ("127.0.0.1", 50000)


class _CountingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": _PEER, "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


class _ConstantEndpoint:
    def check_head(self, head: RequestHead) -> None:
        pass

    def handle(self, head: RequestHead, body: bytes, respond: Any) -> None:
        respond(200, b"application/json", _ANSWER, ())

    def refuse(self, error: Exception, respond: Any) -> None:
        raise error


class _Runtime:
    def __init__(self) -> None:
        endpoint = _ConstantEndpoint()
        self.routes = type("Routes", (), {"match": staticmethod(lambda url: endpoint)})()
        self.core = type("Core", (), {"max_body": 1 << 22})()
        self.config = ServerConfig()


class BareProtocol(asyncio.Protocol):
    """The least a keep-alive POST server does with httptools."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        RequestHead(self.headers, _PEER, self.url)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        self.transport.write(head % len(_ANSWER) + _ANSWER)


async def measure(calls: int, rounds: int) -> dict[str, float]:
    """Protocol name -> median us per request."""
    config = Config(app=None, http="httptools", log_level="warning")
    config.loaded_app = None  # the fast lane never reaches the ASGI app here
    fast = fast_lane_protocol(_Runtime())(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    protocols: dict[str, Any] = {"fast lane (uvicorn + hooks)": fast}
    protocols["bare httptools"] = BareProtocol()
    transports = {name: _CountingTransport() for name in protocols}
    for name, protocol in protocols.items():
        protocol.connection_made(transports[name])
    times: dict[str, list[float]] = {name: [] for name in protocols}
    for k in range(rounds):
        for name in list(protocols)[:: 1 if k % 2 == 0 else -1]:
            feed = protocols[name].data_received
            start = time.perf_counter_ns()
            for _ in range(calls):
                feed(REQUEST)
            times[name].append((time.perf_counter_ns() - start) / calls / 1000)
            await asyncio.sleep(0)  # let the keep-alive timers run as in a server
    for name, transport in transports.items():
        if transport.writes != calls * rounds:  # every request answered, once, at once
            raise RuntimeError(f"{name}: {transport.writes} answers to {calls * rounds} requests")
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.httplayer", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    for name, us in uvloop.run(measure(args.calls, args.rounds)).items():
        print(f"{name:<28}{us:6.2f} us per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
