"""The inference core: access checks, cache, inline lane or batcher, and the answer, for
every protocol alike. It carries float32 rows in and row outputs (``server.outputs``) out
and knows no wire format: a codec decodes a request into a ``Job`` and renders its
answer.

It is written with callbacks, not coroutines, so that the protocol-level fast lane
(``fastlane.py``) can answer a cache hit or an inline inference inside the very
``data_received`` call that brought the request: no task, no ASGI messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from monitoring import PROTOCOL_INDEX
from server.auth import ApiKeys
from server.batching import Batcher
from server.breaker import CircuitBreaker
from server.busypoll import BusyPoll
from server.cache import ResponseCache, cache_key
from server.config import ServerConfig
from server.errors import (
    ApiError,
    CircuitOpen,
    InferenceTimeout,
    InternalError,
    NoHealthyWorker,
    NonFiniteOutput,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    Unauthorized,
    WorkerFailed,
    WorkerLost,
)
from server.pool import MODEL_NAMES, WorkerPool
from server.ratelimit import RateLimiter

log = logging.getLogger("server")
_NS_PER_US = 1000.0
# A request may run inline in the front only when it is alone: the front sat idle at least
# _IDLE_GAP_NS before it, and its connection has sent every request for over _ONE_PEER_NS
# (counted from its first request after another connection's, so clients that take turns
# never run inline, however slowly). With several clients active the front is the scarce
# core, and a row run inline there made the others wait: 16 clients gave 19,500 requests/s
# with inline runs allowed on idle gaps alone, 24,400 with none (two A/B pairs).
_IDLE_GAP_NS = 10_000
_ONE_PEER_NS = 1_000_000
# a pass that starts this soon after the previous one ended: the front was never idle
_CONTINUOUS_NS = 50_000
_SATURATED_PASSES = 2


class Job:
    """One request inside the core. A codec subclasses it: ``answer`` and ``refuse`` render
    the result in the codec's wire format and send it, exactly once between them."""

    __slots__ = ("model_idx", "parsed_ns", "rows", "start_ns")
    protocol = PROTOCOL_INDEX["native"]  # for the monitor

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.parsed_ns = start_ns
        self.model_idx = -1
        self.rows: list[bytes] = []

    def answer(self, version: str, outputs: list[bytes], cached: list[bool]) -> None:
        """Every row's outputs, in order, computed by ``version``."""
        raise NotImplementedError

    def refuse(self, error: ApiError) -> int:
        """Sends ``error``; returns the status it was answered with, for the statistics."""
        raise NotImplementedError


class InferCore:
    def __init__(
        self,
        config: ServerConfig,
        pool: WorkerPool,
        cache: ResponseCache,
        batchers: list[Batcher],
        monitor: Any,
        *,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.pool = pool
        self.cache = cache
        self.batchers = batchers
        self.monitor = monitor
        self.rate_limiter = rate_limiter
        self.max_body = config.max_body_bytes
        self.api_keys = ApiKeys.from_config(config)
        self.accepting = True
        self.pending = 0
        self._last_done_ns = 0
        self._last_peer: object = None
        self._shared_until_ns = 0
        self._loop = asyncio.get_running_loop()
        # Poll only for a lone client: with several, the next request is rarely far off, and
        # a front that spins between them takes the core that another front or the clients
        # need (2 fronts on 2 cores at 16 clients: 118 us of CPU per request polling, against
        # 95 for one front that stopped polling while its workers were busy).
        self.busy_poll = BusyPoll(self._loop, config.busy_poll_us, self._not_alone)
        self._budget_ns = int(config.latency_budget_ms * 1e6)  # 0: admission off
        self._budget_text = f"{config.latency_budget_ms:g} ms"
        self._pass_start_ns = 0
        self._pass_length_ns = 0
        self._pass_end_ns = 0
        self._queued_ns = 0  # what the requests of this pass waited before it began
        self._long_passes = 0  # consecutive passes longer than the budget
        self._saturated = False
        self.breakers = [
            CircuitBreaker(config.breaker_failures, config.breaker_open_s) for _ in MODEL_NAMES
        ]

    # ------------------------------------------------------------------ checks

    def check_access(self, api_key: bytes | None, client: str) -> None:
        """The API key and the client's rate, whatever the protocol."""
        self.check_api_key(api_key)
        if self.rate_limiter is not None and not self.rate_limiter.allow(api_key or client):
            raise RateLimited("request rate over this client's limit; slow down and retry")

    def check_api_key(self, api_key: bytes | None) -> None:
        if not self.api_keys.allows(api_key):
            raise Unauthorized(
                "missing or wrong API key; send it as 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>' (gRPC: 'x-api-key' metadata)"
            )

    def check_admin_key(self, api_key: bytes | None) -> None:
        if not self.api_keys.admin_allows(api_key):
            raise Unauthorized(
                "missing or wrong admin API key; send it as 'X-API-Key: <key>' or "
                "'Authorization: Bearer <key>'"
            )

    def too_large(self, size: int | None = None) -> PayloadTooLarge:
        got = f"body of {size} bytes" if size is not None else "body"
        return PayloadTooLarge(
            f"{got} is over the {self.max_body}-byte limit; send fewer observations per request"
        )

    def arrival(self, peer: object, now_ns: int) -> bool:
        """Notes a request's connection; whether the request is alone (may run inline)."""
        if peer != self._last_peer:
            self._last_peer = peer
            self._shared_until_ns = now_ns + _ONE_PEER_NS
        return (
            now_ns > self._shared_until_ns
            and now_ns - self._last_done_ns > _IDLE_GAP_NS
            and self.pending == 0
        )

    def _not_alone(self) -> bool:
        """A worker holds a request of ours, or another connection sent one within the last
        millisecond: no polling."""
        return self.pending != 0 or time.perf_counter_ns() <= self._shared_until_ns

    def admit(self, now_ns: int) -> None:
        """Refuses (503 at once, before parsing) a request that cannot start within the
        latency budget: a fast no under overload instead of a slow yes. Its wait so far is
        how long it has been queued in this event-loop pass behind the requests handled
        before it, plus, when this pass followed the previous one without a pause (so the
        request arrived while the front was busy), that pass's length; to come, the
        shortest worker queue. The front's own waits count while it is saturated: from two
        passes in a row longer than the budget until it next goes idle (so a single long
        pass, a GC or the process descheduled on a shared machine, sheds nothing, and the
        short passes of a front busy refusing do not end the shedding)."""
        if not self._budget_ns:
            return
        if self._pass_start_ns == 0:
            self._pass_start_ns = now_ns
            self._loop.call_soon(self._end_pass)
            if now_ns - self._pass_end_ns < _CONTINUOUS_NS:
                self._queued_ns = self._pass_length_ns
            else:  # the front went idle: its queue had drained
                self._queued_ns = self._long_passes = 0
                self._saturated = False
        waited = now_ns - self._pass_start_ns + self._queued_ns if self._saturated else 0
        if waited + self.pool.wait_ns() > self._budget_ns:
            raise Overloaded(
                f"the server cannot start this request within its {self._budget_text} latency "
                "budget; retry after the Retry-After delay"
            )

    def _end_pass(self) -> None:
        now = time.perf_counter_ns()
        self._pass_length_ns = length = now - self._pass_start_ns
        self._pass_end_ns = now
        self._pass_start_ns = 0
        self._long_passes = self._long_passes + 1 if length > self._budget_ns else 0
        if self._long_passes >= _SATURATED_PASSES:
            self._saturated = True

    # ------------------------------------------------------------------ handling

    def reject(self, job: Job, error: ApiError) -> None:
        now = time.perf_counter_ns()
        self._last_done_ns = now
        self.busy_poll.arm()
        model = MODEL_NAMES[job.model_idx] if job.model_idx >= 0 else ""
        status = job.refuse(error)
        total_us = (time.perf_counter_ns() - job.start_ns) / _NS_PER_US
        self.monitor.record_request(model, status, total_us, 0, 0, 0, 0, False, job.protocol)

    def submit(self, job: Job, alone: bool = False) -> None:
        """Answers ``job`` exactly once, now or when its rows are computed. ``alone``: from
        ``arrival``; a single row may then run inline in the front."""
        if not self.accepting:
            return self.reject(job, NoHealthyWorker("the server is shutting down"))
        if len(job.rows) == 1:
            self._one(job, alone)
        else:
            self._many(job)

    def _one(self, job: Job, alone: bool) -> None:
        row = job.rows[0]
        idx = job.model_idx
        key = cache_key(self.pool.key_prefixes[idx], row)
        hit = self.cache.get(key)
        if hit is not None:
            looked_up = time.perf_counter_ns()
            if not self.deliver(job, self.pool.model_versions[idx], [hit], [True]):
                return
            self.record_ok(job, looked_up, looked_up, 0, True)
            return
        looked_up = time.perf_counter_ns()
        fut = self.cache.joining(key)
        breaker = self.breakers[idx]
        if fut is None:
            if not breaker.allow():
                return self.reject(job, _circuit_open(idx, breaker))
            if (alone or self.pool.inline_only) and self.pool.idle():
                try:
                    outputs, version, inference_ns = self.pool.run_inline(idx, row)
                except ApiError as error:
                    _count(breaker, error)
                    return self.reject(job, error)
                breaker.success()
                self.cache.put(key, outputs)
                done = time.perf_counter_ns()
                if not self.deliver(job, version, [outputs], [False]):
                    return
                self.record_ok(job, looked_up, done, inference_ns, False)
                return
            fut = self._queue(idx, key, row)
        self.pending += 1

        def done(f: asyncio.Future) -> None:
            self.pending -= 1
            error = f.exception()
            if error is not None:
                error = _as_api_error(error)
                _count(breaker, error)
                return self.reject(job, error)
            breaker.success()
            outputs, version, inference_ns = f.result()
            finished = time.perf_counter_ns()
            if not self.deliver(job, version, [outputs], [False]):
                return
            self.record_ok(job, looked_up, finished, inference_ns, False)

        fut.add_done_callback(done)

    def _queue(self, model_idx: int, key: bytes, row: bytes) -> asyncio.Future:
        """Hands ``row`` to its model's batcher; the cache learns the answer when it comes."""
        fut = self.batchers[model_idx].submit(row)
        self.cache.track(key, fut)
        return fut

    def _many(self, job: Job) -> None:
        idx = job.model_idx
        prefix = self.pool.key_prefixes[idx]
        cache = self.cache
        n = len(job.rows)
        outputs: list = [None] * n
        cached = [False] * n
        futures: list[tuple[int, asyncio.Future]] = []
        misses = []
        for i, row in enumerate(job.rows):
            key = cache_key(prefix, row)
            hit = cache.get(key)
            if hit is not None:
                outputs[i] = hit
                cached[i] = True
                continue
            fut = cache.joining(key)
            if fut is None:
                misses.append((i, key, row))
            else:
                futures.append((i, fut))
        if misses:
            breaker = self.breakers[idx]
            if not breaker.allow():
                return self.reject(job, _circuit_open(idx, breaker))
            futures.extend((i, self._queue(idx, key, row)) for i, key, row in misses)
        RowsAnswer(self, job, outputs, cached, time.perf_counter_ns()).wait(futures)

    def deliver(self, job: Job, version: str, outputs: list[bytes], cached: list[bool]) -> bool:
        """``job.answer``, or, should rendering fail (a bug, never the client's doing), a
        500 in the codec's shape instead of a request left unanswered."""
        try:
            job.answer(version, outputs, cached)
        except Exception:
            log.exception("answering a %s request failed", MODEL_NAMES[job.model_idx])
            self.reject(job, InternalError("the server failed to render this answer"))
            return False
        return True

    def record_ok(
        self, job: Job, looked_up: int, done: int, inference_ns: int, cached: bool
    ) -> None:
        """Records an answered request: ``looked_up`` when the cache was consulted, ``done``
        when its outputs were in."""
        end = time.perf_counter_ns()
        self._last_done_ns = end
        self.busy_poll.arm()
        start, parsed_at = job.start_ns, job.parsed_ns
        self.monitor.record_request(
            MODEL_NAMES[job.model_idx],
            200,
            (end - start) / _NS_PER_US,
            (parsed_at - start) / _NS_PER_US,
            (looked_up - parsed_at) / _NS_PER_US,
            max(0, done - looked_up - inference_ns) / _NS_PER_US,
            inference_ns / _NS_PER_US,
            cached,
            job.protocol,
        )


class RowsAnswer:
    """Collects a many-row request's rows; answers once all are in, with the first error if
    any (so ``pending`` counts the request until no row of it is left with a worker)."""

    __slots__ = ("cached", "core", "error", "inference_ns", "job", "looked_up", "outputs")
    __slots__ += ("remaining", "version")

    def __init__(
        self, core: InferCore, job: Job, outputs: list, cached: list[bool], looked_up: int
    ) -> None:
        self.core = core
        self.job = job
        self.outputs = outputs
        self.cached = cached
        self.looked_up = looked_up
        self.error: ApiError | None = None
        self.remaining = 0
        self.inference_ns = 0
        self.version = core.pool.model_versions[job.model_idx]

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
            outputs, self.version, inference_ns = fut.result()
            self.outputs[i] = outputs
            self.inference_ns = max(self.inference_ns, inference_ns)
        self.remaining -= 1
        if self.remaining == 0:
            self.core.pending -= 1
            self._answer()

    def _answer(self) -> None:
        breaker = self.core.breakers[self.job.model_idx]
        if self.error is not None:
            _count(breaker, self.error)
            return self.core.reject(self.job, self.error)
        if self.inference_ns:
            breaker.success()
        done = time.perf_counter_ns()
        if not self.core.deliver(self.job, self.version, self.outputs, self.cached):
            return
        all_cached = self.inference_ns == 0 and all(self.cached)
        self.core.record_ok(self.job, self.looked_up, done, self.inference_ns, all_cached)


def _count(breaker: CircuitBreaker, error: ApiError) -> None:
    """Failures of the model's calls count against its circuit, a batch whose worker died
    under it twice (the pool retries once) among them; a refusal does not (a 503 for
    overload or no ready worker says nothing about the model)."""
    if isinstance(error, WorkerFailed | InferenceTimeout | WorkerLost):
        breaker.failure(error)
    elif isinstance(error, NonFiniteOutput):  # the model answered, for this input
        breaker.success()
    else:
        breaker.release()


def _circuit_open(idx: int, breaker: CircuitBreaker) -> CircuitOpen:
    return CircuitOpen(
        f"{MODEL_NAMES[idx]}'s calls keep failing or timing out, so its circuit is open; "
        "retry after the Retry-After delay, when a probe call will test it again",
        breaker.retry_after_s,
    )


def _as_api_error(error: BaseException) -> ApiError:
    if isinstance(error, ApiError):
        return error
    return WorkerFailed(f"inference failed: {type(error).__name__}")
