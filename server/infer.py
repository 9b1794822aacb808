"""The inference request core: checks, parse, cache, inline lane or batcher, answer.

It is written with callbacks, not coroutines, so that the protocol-level fast lane
(``fastlane.py``) can answer a cache hit or an inline inference inside the very
``data_received`` call that brought the request: no task, no ASGI messages. The ASGI
route (``asgi_infer``) wraps the same core for requests the fast lane does not take.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from server.auth import ApiKeys
from server.batching import Batcher
from server.busypoll import BusyPoll
from server.cache import ResponseCache, cache_key
from server.config import ServerConfig
from server.errors import (
    ApiError,
    MethodNotAllowed,
    NoHealthyWorker,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    UnsupportedMediaType,
    WorkerFailed,
)
from server.pool import WorkerPool
from server.ratelimit import RateLimiter
from server.validation import ParsedRequest, RequestParser

# respond(status, body, retry_after_s or None)
Respond = Callable[[int, bytes, "int | None"], None]

_CACHED = b',"cached":true}'
_FRESH = b',"cached":false}'
_NS_PER_US = 1000.0
# A request may run inline in the front only when it is alone: the front sat idle at least
# _IDLE_GAP_NS before it, and its connection has sent every request for over _ONE_PEER_NS
# (counted from its first request after another connection's, so clients that take turns
# never run inline, however slowly). With several clients active the front is the scarce
# core, and a row run inline there made the others wait: 16 clients gave 19,500 requests/s
# with inline runs allowed on idle gaps alone, 24,400 with none (two A/B pairs).
_IDLE_GAP_NS = 10_000
_ONE_PEER_NS = 1_000_000


class RequestHead:
    """What the core needs from the HTTP layer, gathered in one pass over the headers."""

    __slots__ = ("api_key", "client", "content_length", "content_type", "peer")

    def __init__(self, headers: list, peer: tuple | None) -> None:
        """``peer``: the connection's (address, port), as the server reports it."""
        self.content_type = b""
        self.content_length = -1
        self.api_key: bytes | None = None
        self.peer = peer
        self.client = peer[0] if peer else "?"
        for name, value in headers:
            if name == b"content-type":
                self.content_type = value
            elif name == b"content-length":
                self.content_length = int(value) if value.isdigit() else -1
            elif name == b"x-api-key":
                self.api_key = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                self.api_key = value[7:]


class InferCore:
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
        self.api_keys = ApiKeys.from_config(config)
        self.accepting = True
        self.pending = 0
        self._last_done_ns = 0
        self._last_peer: tuple | None = None
        self._shared_until_ns = 0
        self.busy_poll = BusyPoll(
            asyncio.get_running_loop(), config.busy_poll_us, lambda: self.pending != 0
        )

    # ------------------------------------------------------------------ checks

    def check_admin_key(self, head: RequestHead) -> None:
        if not self.api_keys.admin_allows(head.api_key):
            raise Unauthorized(
                "missing or wrong admin API key; send it as 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>'"
            )

    def check_api_key(self, head: RequestHead) -> None:
        if not self.api_keys.allows(head.api_key):
            raise Unauthorized(
                "missing or wrong API key; send it as 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>'"
            )

    def check_head(self, head: RequestHead) -> None:
        """Everything decidable before the body arrives (so a 413 needs no body)."""
        self.check_api_key(head)
        if self.rate_limiter is not None:
            client = head.api_key or head.client
            if not self.rate_limiter.allow(client):
                raise RateLimited("request rate over this client's limit; slow down and retry")
        if head.content_type.split(b";", 1)[0].strip().lower() != b"application/json":
            raise UnsupportedMediaType(
                "send the body as JSON with 'Content-Type: application/json'"
            )
        if head.content_length > self.max_body:
            raise self.too_large(head.content_length)

    def too_large(self, size: int | None = None) -> PayloadTooLarge:
        got = f"body of {size} bytes" if size is not None else "body"
        return PayloadTooLarge(
            f"{got} is over the {self.max_body}-byte limit; send fewer observations per request"
        )

    # ------------------------------------------------------------------ handling

    def fail(self, error: ApiError, start: int, model: str, respond: Respond) -> None:
        now = time.perf_counter_ns()
        self._last_done_ns = now
        self.busy_poll.arm()
        self.monitor.record_request(
            model, error.status, (now - start) / _NS_PER_US, 0, 0, 0, 0, False
        )
        respond(error.status, error.body(), error.retry_after_s)

    def handle(self, head: RequestHead, body: bytes, respond: Respond) -> None:
        """Answers through ``respond`` exactly once, now or when the inference is done.
        The caller ran ``check_head`` before reading the body."""
        start = time.perf_counter_ns()
        if head.peer != self._last_peer:
            self._last_peer = head.peer
            self._shared_until_ns = start + _ONE_PEER_NS
        alone = (
            start > self._shared_until_ns
            and start - self._last_done_ns > _IDLE_GAP_NS
            and self.pending == 0
        )
        model = ""
        try:
            parsed = self.parser.parse(body)
            model = parsed.model
            if not self.accepting:
                raise NoHealthyWorker("the server is shutting down")
            if parsed.batch:
                self._batch(parsed, start, respond)
            else:
                self._single(parsed, start, alone, respond)
        except ApiError as error:
            self.fail(error, start, model, respond)

    def _single(self, parsed: ParsedRequest, start: int, alone: bool, respond: Respond) -> None:
        parsed_at = time.perf_counter_ns()
        row = parsed.rows[0]
        prefix = self.pool.prefixes[parsed.model_idx]
        key = cache_key(prefix, row)
        hit = self.cache.get(key)
        if hit is not None:
            self._finish(parsed.model, (hit, prefix, 0), True, start, parsed_at, parsed_at, respond)
            return
        looked_up = time.perf_counter_ns()
        fut = self.cache.joining(key)
        if fut is None:
            if alone and self.pool.idle():
                result = self.pool.run_inline(parsed.model_idx, row)
                self.cache.put(key, result[0])
                self._finish(parsed.model, result, False, start, parsed_at, looked_up, respond)
                return
            fut = self._queue(parsed.model_idx, key, row)
        self.pending += 1

        def done(f: asyncio.Future) -> None:
            self.pending -= 1
            error = f.exception()
            if error is not None:
                self.fail(_as_api_error(error), start, parsed.model, respond)
                return
            self._finish(parsed.model, f.result(), False, start, parsed_at, looked_up, respond)

        fut.add_done_callback(done)

    def _queue(self, model_idx: int, key: bytes, row: bytes) -> asyncio.Future:
        """Hands ``row`` to its model's batcher; the cache learns the answer when it comes."""
        fut = self.batchers[model_idx].submit(row)
        self.cache.track(key, fut)
        return fut

    def _finish(
        self,
        model: str,
        result: tuple,
        cached: bool,
        start: int,
        parsed_at: int,
        looked_up: int,
        respond: Respond,
    ) -> None:
        done = time.perf_counter_ns()
        respond(200, result[1] + result[0] + (_CACHED if cached else _FRESH), None)
        self.record_ok(
            model, (start, parsed_at, looked_up, done), 0 if cached else result[2], cached
        )

    def record_ok(self, model: str, marks: tuple, inference_ns: int, cached: bool) -> None:
        """``marks``: when the request started, was parsed, was looked up, was computed."""
        start, parsed_at, looked_up, done = marks
        end = time.perf_counter_ns()
        self._last_done_ns = end
        self.busy_poll.arm()
        self.monitor.record_request(
            model,
            200,
            (end - start) / _NS_PER_US,
            (parsed_at - start) / _NS_PER_US,
            (looked_up - parsed_at) / _NS_PER_US,
            max(0, done - looked_up - inference_ns) / _NS_PER_US,
            inference_ns / _NS_PER_US,
            cached,
        )

    def _batch(self, parsed: ParsedRequest, start: int, respond: Respond) -> None:
        parsed_at = time.perf_counter_ns()
        prefix = self.pool.prefixes[parsed.model_idx]
        cache = self.cache
        n = len(parsed.rows)
        results: list = [None] * n
        cached = [False] * n
        futures: list[tuple[int, asyncio.Future]] = []
        for i, row in enumerate(parsed.rows):
            key = cache_key(prefix, row)
            hit = cache.get(key)
            if hit is not None:
                results[i] = (hit, prefix, 0)
                cached[i] = True
                continue
            fut = cache.joining(key) or self._queue(parsed.model_idx, key, row)
            futures.append((i, fut))
        marks = (start, parsed_at, time.perf_counter_ns())
        BatchAnswer(self, parsed.model, results, cached, marks, respond).wait(futures)


class BatchAnswer:
    """Collects a batch request's rows; answers once all are in, with the first error if any
    (so ``pending`` counts the request until no row of it is left with a worker)."""

    __slots__ = ("cached", "core", "error", "marks", "model", "remaining", "respond", "results")

    def __init__(
        self,
        core: InferCore,
        model: str,
        results: list,
        cached: list[bool],
        marks: tuple[int, int, int],
        respond: Respond,
    ) -> None:
        """``marks``: when the request started, was parsed, had its rows looked up."""
        self.core = core
        self.model = model
        self.results = results
        self.cached = cached
        self.marks = marks
        self.respond = respond
        self.error: ApiError | None = None
        self.remaining = 0

    def wait(self, futures: list[tuple[int, asyncio.Future]]) -> None:
        self.remaining = len(futures)
        if not futures:
            return self._answer()
        self.core.pending += 1
        for i, fut in futures:
            fut.add_done_callback(lambda f, i=i: self._row_done(i, f))

    def _row_done(self, i: int, fut: asyncio.Future) -> None:
        error = fut.exception()
        if error is not None:
            self.error = self.error or _as_api_error(error)
        else:
            self.results[i] = fut.result()
        self.remaining -= 1
        if self.remaining == 0:
            self.core.pending -= 1
            self._answer()

    def _answer(self) -> None:
        if self.error is not None:
            return self.core.fail(self.error, self.marks[0], self.model, self.respond)
        parts = [
            b"{" + r[0] + (_CACHED if c else _FRESH)
            for r, c in zip(self.results, self.cached, strict=True)
        ]
        body = self.results[0][1] + b'"results":[' + b",".join(parts) + b"]}"
        done = time.perf_counter_ns()
        inference_ns = max(
            (r[2] for r, c in zip(self.results, self.cached, strict=True) if not c), default=0
        )
        self.respond(200, body, None)
        self.core.record_ok(self.model, (*self.marks, done), inference_ns, all(self.cached))


def _as_api_error(error: BaseException) -> ApiError:
    if isinstance(error, ApiError):
        return error
    return WorkerFailed(f"inference failed: {type(error).__name__}")


# ---------------------------------------------------------------------- ASGI route

_JSON = (b"content-type", b"application/json")


async def send_json(send: Any, status: int, body: bytes, retry_after: int | None = None) -> None:
    headers = [_JSON, (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, error: ApiError) -> None:
    await send_json(send, error.status, error.body(), error.retry_after_s)


async def asgi_infer(core: InferCore, scope: dict, receive: Any, send: Any) -> None:
    """``POST /infer`` through ASGI: for requests the fast lane leaves to uvicorn (e.g.
    pipelined ones) and for any other ASGI server."""
    start = time.perf_counter_ns()
    head = RequestHead(scope["headers"], scope.get("client"))
    answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def respond(status: int, data: bytes, retry_after: int | None) -> None:
        answer.set_result((status, data, retry_after))

    try:
        if scope["method"] != "POST":
            raise MethodNotAllowed("use POST /infer with a JSON body")
        core.check_head(head)
        body = await _read_body(core, receive)
    except ApiError as error:
        core.fail(error, start, "", respond)
    else:
        core.handle(head, body, respond)
    await send_json(send, *await answer)


async def _read_body(core: InferCore, receive: Any) -> bytes:
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
