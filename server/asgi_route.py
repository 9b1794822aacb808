"""The inference routes through ASGI: for requests the fast lane leaves to uvicorn (e.g.
pipelined ones) and for any other ASGI server. Same codecs, same core."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.codecs.base import Endpoint, Headers
from server.errors import ApiError, InternalError, MethodNotAllowed
from server.head import RequestHead

log = logging.getLogger("server")


async def send_answer(
    send: Any, status: int, content_type: bytes, body: bytes, headers: Headers = ()
) -> None:
    out = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


async def asgi_post(endpoint: Endpoint, scope: dict, receive: Any, send: Any) -> None:
    path = scope.get("raw_path") or scope["path"].encode()
    head = RequestHead(scope["headers"], scope.get("client"), path)
    answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def respond(status: int, content_type: bytes, data: bytes, headers: Headers) -> None:
        if not answer.done():
            answer.set_result((status, content_type, data, headers))

    try:
        if scope["method"] != "POST":
            raise MethodNotAllowed(f"use POST {scope['path']} with a JSON body")
        endpoint.check_head(head)
        body = await _read_body(endpoint, receive)
    except ApiError as error:
        endpoint.refuse(error, respond)
    else:
        try:
            endpoint.handle(head, body, respond)
        except Exception:  # a bug, never the client's doing: answer, do not drop it
            log.exception("handling POST %s failed", scope["path"])
            endpoint.refuse(InternalError("the server failed on this request"), respond)
    await send_answer(send, *await answer)


async def _read_body(endpoint: Any, receive: Any) -> bytes:
    core = endpoint.core
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > core.max_body:
            raise core.too_large()
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
