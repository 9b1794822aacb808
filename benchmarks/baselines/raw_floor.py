"""The floor: a raw ASGI app (no framework) that parses the body with orjson and answers a
constant, contract-shaped JSON on uvicorn with uvloop and httptools, 2 worker processes (as
the issue that set the 0.75x throughput bar measured it: one per core of the benchmark host).
Whatever this costs per request is what Python HTTP on this machine costs before any
inference."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import uvicorn

from benchmarks.baselines._common import HOST, MODEL, SPEC, error_body, parse_args

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_CONSTANT = orjson.dumps(
    {
        "model": MODEL,
        "version": "raw-floor",
        "action": "neutral",
        "confidence": 0.34,
        "agents": {name: [0.33, 0.34, 0.33] for name in SPEC.agents},
        "value": 0.0,
        "cached": False,
    }
)
_OK = orjson.dumps({"status": "ok"})
_BAD_JSON = orjson.dumps(error_body("invalid_json", "body is not valid JSON"))
_NOT_FOUND = orjson.dumps(error_body("not_found", "POST /infer, GET /healthz or /readyz"))
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path, method = scope["path"], scope["method"]
    if method == "POST" and path == "/infer":
        try:
            orjson.loads(await _read_body(receive))
        except orjson.JSONDecodeError:
            await _answer(send, 400, _BAD_JSON)
            return
        await _answer(send, 200, _CONSTANT)
    elif method == "GET" and path in ("/healthz", "/readyz"):
        await _answer(send, 200, _OK)
    else:
        await _answer(send, 404, _NOT_FOUND)


WORKERS = 2


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("python -m benchmarks.baselines.raw_floor", argv)
    uvicorn.run(
        "benchmarks.baselines.raw_floor:app",
        host=HOST,
        port=args.port,
        workers=WORKERS,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
