"""The hot path: ``POST /infer`` as a raw ASGI handler.

It parses, looks up the cache, hands rows to the batcher, awaits, and answers with bytes
assembled from the worker's ready-made JSON fragments. Everything it needs (parsers,
batchers, prebuilt headers) is made once at start-up.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from server.batching import Batcher
from server.cache import ResponseCache, observation_digest
from server.config import ServerConfig
from server.errors import (
    ApiError,
    MethodNotAllowed,
    NoHealthyWorker,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
)
from server.pool import WorkerPool
from server.ratelimit import RateLimiter
from server.validation import RequestParser

_JSON = (b"content-type", b"application/json")
_CACHED = b',"cached":true}'
_FRESH = b',"cached":false}'
_NS_PER_US = 1000.0


async def send_json(send: Any, status: int, body: bytes, extra: list | None = None) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, error: ApiError) -> None:
    extra = None
    if error.retry_after_s is not None:
        extra = [(b"retry-after", str(error.retry_after_s).encode())]
    await send_json(send, error.status, error.body(), extra)


class InferHandler:
    def __init__(
        self,
        config: ServerConfig,
        pool: WorkerPool,
        cache: ResponseCache,
        parser: RequestParser,
        batchers: list[Batcher],
        monitor: Any,
        *,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.pool = pool
        self.cache = cache
        self.parser = parser
        self.batchers = batchers
        self.monitor = monitor
        self.rate_limiter = rate_limiter
        self.max_body = config.max_body_bytes
        self.api_key = config.api_key.encode() if config.api_key else None
        self.accepting = True
        self.in_progress = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        start = time.perf_counter_ns()
        model = ""
        self.in_progress += 1
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("use POST /infer with a JSON body")
            body = await self._read_checked(scope, receive)
            parsed = self.parser.parse(body)
            model = parsed.model
            await self._answer(parsed, start, send)
        except ApiError as error:
            self.monitor.record_request(
                model,
                error.status,
                (time.perf_counter_ns() - start) / _NS_PER_US,
                0,
                0,
                0,
                0,
                False,
            )
            await send_error(send, error)
        finally:
            self.in_progress -= 1

    async def _read_checked(self, scope: dict, receive: Any) -> bytes:
        content_type, length, key = _scan_headers(scope["headers"])
        if self.api_key is not None and key != self.api_key:
            raise Unauthorized(
                "missing or wrong API key; send it as 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>'"
            )
        if self.rate_limiter is not None:
            client = key or (scope.get("client") or ("?",))[0]
            if not self.rate_limiter.allow(client):
                raise RateLimited("request rate over this client's limit; slow down and retry")
        if not content_type[:16].lower() == b"application/json":
            raise UnsupportedMediaType(
                "send the body as JSON with 'Content-Type: application/json'"
            )
        if length > self.max_body:
            raise PayloadTooLarge(
                f"body of {length} bytes is over the {self.max_body}-byte limit; send smaller "
                "batches"
            )
        message = await receive()
        body = message.get("body", b"")
        if not message.get("more_body"):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body"):
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(
                    f"body is over the {self.max_body}-byte limit; send smaller batches"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _answer(self, parsed: Any, start: int, send: Any) -> None:
        if not self.accepting:
            raise NoHealthyWorker("the server is shutting down")
        parsed_at = time.perf_counter_ns()
        if parsed.batch:
            body, inference_ns, all_cached = await self._answer_batch(parsed)
            looked_up = parsed_at
        else:
            row = parsed.rows[0]
            key = (self.pool.prefixes[parsed.model_idx], observation_digest(row))
            result = self.cache.get(key)
            all_cached = result is not None
            looked_up = time.perf_counter_ns()
            if result is None:
                result = await self._compute(parsed.model_idx, key, row)
            inference_ns = 0 if all_cached else result[2]
            body = result[1] + result[0] + (_CACHED if all_cached else _FRESH)
        done = time.perf_counter_ns()
        await send_json(send, 200, body)
        end = time.perf_counter_ns()
        self.monitor.record_request(
            parsed.model,
            200,
            (end - start) / _NS_PER_US,
            (parsed_at - start) / _NS_PER_US,
            (looked_up - parsed_at) / _NS_PER_US,
            max(0, done - looked_up - inference_ns) / _NS_PER_US,
            inference_ns / _NS_PER_US,
            all_cached,
        )

    async def _compute(self, model_idx: int, key: tuple, row: bytes) -> tuple:
        fut = self.cache.joining(key)
        if fut is not None:
            return await fut
        if self.in_progress == 1 and self.pool.idle():
            result = self.pool.run_inline(model_idx, row)
            self.cache.put((result[1], key[1]), result)
            return result
        fut = self.batchers[model_idx].submit(row)
        self.cache.track(key, fut)
        return await fut

    async def _answer_batch(self, parsed: Any) -> tuple[bytes, int, bool]:
        idx = parsed.model_idx
        prefix = self.pool.prefixes[idx]
        cache = self.cache
        batcher = self.batchers[idx]
        waits: list = []
        cached: list[bool] = []
        for row in parsed.rows:
            key = (prefix, observation_digest(row))
            hit = cache.get(key)
            cached.append(hit is not None)
            if hit is not None:
                waits.append(hit)
                continue
            fut = cache.joining(key)
            if fut is None:
                fut = batcher.submit(row)
                cache.track(key, fut)
            waits.append(fut)
        results, error = await _gather(waits)
        if error is not None:
            raise error
        parts = [
            b"{" + r[0] + (_CACHED if c else _FRESH) for r, c in zip(results, cached, strict=True)
        ]
        body = results[0][1] + b'"results":[' + b",".join(parts) + b"]}"
        inference_ns = max((r[2] for r, c in zip(results, cached, strict=True) if not c), default=0)
        return body, inference_ns, all(cached)


def _scan_headers(headers: list) -> tuple[bytes, int, bytes | None]:
    """Content type, content length (-1 if absent) and the API key, in one pass."""
    content_type = b""
    length = -1
    key = None
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            length = int(value) if value.isdigit() else -1
        elif name == b"x-api-key":
            key = value
        elif name == b"authorization" and value[:7].lower() == b"bearer ":
            key = value[7:]
    return content_type, length, key


async def _gather(waits: list) -> tuple[list, ApiError | None]:
    """Awaits every row (cached rows are already tuples), so no exception goes unretrieved."""
    results = []
    error: ApiError | None = None
    for item in waits:
        if type(item) is tuple:
            results.append(item)
            continue
        try:
            results.append(await item)
        except ApiError as exc:
            error = error or exc
        except asyncio.CancelledError:
            raise
    return results, error
