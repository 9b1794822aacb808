"""One HTTP request through an ASGI app in memory: no socket, no HTTP parser.

A Ray ``DeploymentHandle`` call arrives as a Python call, not as HTTP; answering it through
the very ASGI app the HTTP path uses keeps one core (parsing, limits, cache, batching,
monitoring) behind both ways in, without reaching into the server's internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class PolicyResponse:
    """What the server answered: the status, the headers (lower-case names) and the body."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def retry_after_s(self) -> int | None:
        value = self.headers.get("retry-after")
        return int(value) if value and value.isdigit() else None


def http_scope(
    method: str, path: str, body_length: int, headers: Iterable[tuple[bytes, bytes]]
) -> dict[str, Any]:
    raw_path, _, query = path.partition("?")
    all_headers = [(b"content-length", str(body_length).encode()), *headers]
    if not any(name == b"content-type" for name, _ in all_headers):
        all_headers.append((b"content-type", JSON))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path,
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": all_headers,
        # Rate limits key on the peer address; handle callers share this one.
        "client": ("127.0.0.1", 0),
        "server": ("in-memory", 0),
        "state": {},
    }


async def call_asgi(
    app: Any,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> PolicyResponse:
    """Runs one request through ``app`` and collects its whole answer."""
    scope = http_scope(method, path, len(body), headers)
    finished = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # Nothing more will come; a disconnect is only true once the answer is out.
        await finished.wait()
        return {"type": "http.disconnect"}

    status = 500
    response_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", ()):
                response_headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()

    try:
        await app(scope, receive, send)
    finally:
        finished.set()
    return PolicyResponse(status, b"".join(chunks), response_headers)


def request_body(request: bytes | str | dict) -> bytes:
    """A handle caller may pass the JSON body as bytes, text or an already-built dict."""
    if isinstance(request, bytes):
        return request
    if isinstance(request, str):
        return request.encode()
    return orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)
