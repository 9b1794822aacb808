"""Circuit breaker, admission by latency budget, the fast lane's uvicorn check and the
HTTP layer's JSON refusals: pure, with fakes and a fake clock."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from models.spec import SPECS
from server import core as core_module
from server.batching import Batcher
from server.breaker import BreakerState, CircuitBreaker
from server.cache import ResponseCache, key_prefix
from server.codecs import native
from server.codecs.native import NativeEndpoint
from server.config import ServerConfig
from server.core import InferCore
from server.errors import InferenceTimeout, Overloaded, WorkerFailed, WorkerLost
from server.fastlane import http_protocol, missing_hooks
from server.head import RequestHead
from server.pool import MODEL_INDEX, MODEL_NAMES
from server.served_metrics import (
    breaker_alerts,
    breaker_metrics,
    circuits,
    closed,
    merge_circuits,
    merge_int8,
)
from server.validation import RequestParser
from tests.fakes import FakeClock

OUTPUTS = np.array([0.2, 0.3, 0.5] * 3 + [1.0, 0.5, 2], dtype=np.float32).tobytes()


def test_breaker_opens_after_consecutive_failures_then_probes_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, open_s=5.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    breaker.success()  # a success in between resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state is BreakerState.OPEN and breaker.opened == 1
    assert not breaker.allow() and breaker.retry_after_s == 5
    clock.advance(4.2)
    assert not breaker.allow() and breaker.retry_after_s == 1
    clock.advance(1.0)
    assert breaker.allow(), "the probe"
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(), "only one probe at a time"
    breaker.failure()  # the probe failed: open again, for another open_s
    assert breaker.state is BreakerState.OPEN and breaker.opened == 2
    clock.advance(5.0)
    assert breaker.allow()
    breaker.release()  # the probe said nothing about the model (overload): another may probe
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow() and breaker.failures == 0


def test_breaker_threshold_zero_never_opens() -> None:
    breaker = CircuitBreaker(0, open_s=1.0, clock=FakeClock())
    for _ in range(100):
        breaker.failure()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_breaker_state_in_metrics_and_alerts() -> None:
    clock = FakeClock()
    breakers = [CircuitBreaker(1, 2.0, clock=clock), CircuitBreaker(1, 2.0, clock=clock)]
    breakers[1].failure()
    view = circuits(MODEL_NAMES, breakers, {})
    text = breaker_metrics(view).decode()
    assert f'pis_circuit_state{{model="{MODEL_NAMES[1]}",state="open"}} 1' in text
    assert f'pis_circuit_state{{model="{MODEL_NAMES[0]}",state="closed"}} 1' in text
    assert f'pis_circuit_opened_total{{model="{MODEL_NAMES[1]}"}} 1' in text
    (alert,) = breaker_alerts(view)
    assert (alert["name"], alert["model"], alert["state"]) == (
        "circuit_open",
        MODEL_NAMES[1],
        "open",
    )


def test_circuits_of_several_fronts_add_up() -> None:
    """Each front has its own circuits: the worst state shows, openings are summed (an
    earlier life's included), and a silent front's state is not counted, its openings are."""
    clock = FakeClock()
    a = [CircuitBreaker(1, 2.0, clock=clock), CircuitBreaker(1, 2.0, clock=clock)]
    b = [CircuitBreaker(1, 4.0, clock=clock), CircuitBreaker(1, 2.0, clock=clock)]
    a[0].failure()
    clock.advance(2.0)
    assert a[0].allow()  # a's tactical circuit is half-open, probing
    b[0].failure()  # b's is open, for 4 s
    b[1].failure()
    b[1].success()  # opened once, closed again
    earlier = {MODEL_NAMES[1]: 3}
    merged = merge_circuits([circuits(MODEL_NAMES, a, earlier), circuits(MODEL_NAMES, b, {})])
    first, second = merged[MODEL_NAMES[0]], merged[MODEL_NAMES[1]]
    assert (first["state"], first["opened_total"], first["retry_after_s"]) == ("open", 2, 4)
    assert (second["state"], second["opened_total"]) == ("closed", 4)
    silent = merge_circuits([circuits(MODEL_NAMES, a, {}), closed(circuits(MODEL_NAMES, b, {}))])
    assert silent[MODEL_NAMES[0]]["state"] == "half_open"
    assert silent[MODEL_NAMES[0]]["opened_total"] == 2
    assert [a["name"] for a in breaker_alerts(silent)] == ["circuit_open"]
    assert merge_int8([[[1, 2, 3], [0, 0, 1]], [], [[10, 0, 0], [1, 1, 1]]]) == [
        [11, 2, 3],
        [1, 1, 2],
    ]


class FailingPool:
    """Workers whose every batch ends in ``error`` (or succeeds while ``error`` is None)."""

    model_versions = ("v",) * len(MODEL_NAMES)
    inline_only = False
    key_prefixes = tuple(key_prefix(i, "v") for i in range(len(MODEL_NAMES)))

    def __init__(self) -> None:
        self.error: Exception | None = WorkerFailed("inference failed: boom")
        self.batches = 0
        self.queued_ns = 0.0

    def submit(self, model_idx: int, rows: int, payload: bytes, futures: list) -> None:
        self.batches += 1
        for fut in futures:
            if self.error is None:
                fut.set_result((OUTPUTS, "v", 1000))
            else:
                fut.set_exception(self.error)

    def idle(self) -> bool:
        return False

    def wait_ns(self) -> float:
        return self.queued_ns


def _endpoint(pool, config: ServerConfig) -> tuple[NativeEndpoint, InferCore]:
    loop = asyncio.get_running_loop()
    batchers = [
        Batcher(i, pool.submit, max_batch_size=8, max_queue_delay_us=0, loop=loop)
        for i in range(len(MODEL_NAMES))
    ]
    monitor = SimpleNamespace(record_request=lambda *_: None)
    core = InferCore(config, pool, ResponseCache(0, 0), batchers, monitor)
    return NativeEndpoint(core, RequestParser(SPECS, MODEL_INDEX, max_batch=4)), core


def _body(value: float) -> bytes:
    return orjson.dumps({"model": "tactical", "observation": [[value] * 7] * 60})


async def _ask(endpoint: NativeEndpoint, body: bytes) -> tuple:
    answers: list[tuple] = []
    endpoint.handle(RequestHead([], None), body, lambda *a: answers.append(a))
    for _ in range(20):
        if answers:
            break
        await asyncio.sleep(0)
    (answer,) = answers
    return answer


def test_core_opens_the_circuit_on_failures_and_closes_it_on_a_probe(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(
        core_module, "CircuitBreaker", lambda n, s: CircuitBreaker(n, s, clock=clock)
    )
    config = ServerConfig(busy_poll_us=0, breaker_failures=2, breaker_open_s=3.0)

    async def scenario() -> None:
        pool = FailingPool()
        endpoint, core = _endpoint(pool, config)
        status, _, body, headers = await _ask(endpoint, _body(0.1))
        assert status == 503 and orjson.loads(body)["error"]["code"] == "inference_failed"
        assert headers == ((b"retry-after", b"1"),)
        pool.error = InferenceTimeout("inference did not finish")
        assert (await _ask(endpoint, _body(0.2)))[0] == 504
        status, _, body, headers = await _ask(endpoint, _body(0.3))
        assert status == 503 and orjson.loads(body)["error"]["code"] == "circuit_open"
        assert headers == ((b"retry-after", b"3"),)
        assert pool.batches == 2, "an open circuit sends nothing to the workers"
        pool.error = Overloaded("every worker is full")  # a refusal says nothing of the model
        clock.advance(3.0)
        assert (await _ask(endpoint, _body(0.4)))[0] == 503
        assert core.breakers[MODEL_INDEX["tactical"]].state is BreakerState.HALF_OPEN
        pool.error = None
        assert (await _ask(endpoint, _body(0.5)))[0] == 200, "the probe succeeds"
        assert core.breakers[MODEL_INDEX["tactical"]].state is BreakerState.CLOSED
        assert core.breakers[MODEL_INDEX["strategic"]].state is BreakerState.CLOSED
        # a batch whose worker died under it on both tries (the pool retries once): a model
        # whose calls kill its workers opens its circuit like one whose calls fail
        for value in (0.6, 0.7):  # two batches, two errors (one failed batch counts once)
            pool.error = WorkerLost("the worker serving this request died; retry")
            status, _, body, _ = await _ask(endpoint, _body(value))
            assert status == 503 and orjson.loads(body)["error"]["code"] == "worker_lost"
        assert core.breakers[MODEL_INDEX["tactical"]].state is BreakerState.OPEN

    asyncio.run(scenario())


def test_admission_refuses_what_cannot_start_within_the_budget(monkeypatch) -> None:
    """A request's wait: while the front is saturated (from two passes in a row over the
    budget until it goes idle), its time in this event-loop pass behind the requests
    handled before it, plus the previous pass if this one followed it without a pause;
    always the shortest worker queue. Past the budget it is a 503 at once, unparsed."""
    clock = FakeClock(start=10**12)  # nanoseconds
    for module in (core_module, native):
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter_ns=clock))
    config = ServerConfig(busy_poll_us=0, latency_budget_ms=1.0)

    async def one_pass(endpoint: NativeEndpoint, n: int, gap_ns: int) -> list[int]:
        answers: list[tuple] = []
        for i in range(n):  # all handled in one pass, gap_ns of front time each
            endpoint.handle(RequestHead([], None), _body(i), lambda *a: answers.append(a))
            clock.advance(gap_ns)
        for _ in range(5):
            await asyncio.sleep(0)
        refused = [a for a in answers if a[0] == 503]
        assert all(orjson.loads(a[2])["error"]["code"] == "overloaded" for a in refused)
        assert all(a[3] == ((b"retry-after", b"1"),) for a in refused)
        return sorted(a[0] for a in answers)

    async def scenario() -> None:
        pool = FailingPool()
        pool.error = None
        endpoint, _ = _endpoint(pool, config)
        # one long pass (a GC, a descheduled process) and the one after it shed nothing
        assert await one_pass(endpoint, 6, 300_000) == [200] * 6
        assert await one_pass(endpoint, 6, 300_000) == [200] * 6
        # saturated: the third pass's requests came while the 1.8 ms pass before it ran
        assert await one_pass(endpoint, 2, 100_000) == [503] * 2
        # still saturated although that pass was short (refusing is cheap): the wait is the
        # 0.2 ms pass before plus the time behind the requests handled before in this one
        assert await one_pass(endpoint, 12, 100_000) == [200] * 9 + [503] * 3
        clock.advance(1_000_000)  # the front sat idle: a new request waited for nothing
        assert await one_pass(endpoint, 1, 10_000) == [200]
        clock.advance(1_000_000)
        pool.queued_ns = 2e6  # the shortest worker queue alone is over the budget
        assert await one_pass(endpoint, 1, 10_000) == [503]

    asyncio.run(scenario())


def test_admission_off_at_zero_budget() -> None:
    async def scenario() -> None:
        pool = FailingPool()
        pool.error = None
        pool.queued_ns = 1e12
        endpoint, _ = _endpoint(pool, ServerConfig(busy_poll_us=0, latency_budget_ms=0))
        assert (await _ask(endpoint, _body(1)))[0] == 200

    asyncio.run(scenario())


class _OldProtocol:
    """A uvicorn protocol from before the fast lane's hooks."""

    def on_headers_complete(self) -> None:
        self.cycle = None


def test_fast_lane_checks_uvicorn_and_falls_back_with_one_warning(caplog) -> None:
    assert missing_hooks() == [], "the installed uvicorn has every hook"
    missing = missing_hooks(_OldProtocol)
    assert "on_body" in missing and "send_400_response" in missing and "transport" in missing
    with caplog.at_level("WARNING", logger="server"):
        assert http_protocol(SimpleNamespace(), base=_OldProtocol) == "httptools"
    assert len(caplog.records) == 1 and "fast lane off" in caplog.records[0].getMessage()
    runtime = SimpleNamespace(config=ServerConfig(client_read_timeout_s=3.0))
    assert http_protocol(runtime).read_timeout_s == 3.0
    assert http_protocol(runtime, fast_lane=False).read_timeout_s == 3.0


@pytest.mark.parametrize("budget", ["-1", "70000"])
def test_budget_flag_validated(budget: str) -> None:
    from server.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="latency_budget_ms"):
        load_config(["--latency-budget-ms", budget], {})


def test_a_failure_to_render_is_one_500_in_the_codecs_shape() -> None:
    async def scenario() -> None:
        pool = FailingPool()
        pool.error = None
        endpoint, _ = _endpoint(pool, ServerConfig(busy_poll_us=0))

        def broken(_outputs: list) -> list:
            raise RuntimeError("a rendering bug")

        endpoint.renderers[MODEL_INDEX["tactical"]] = SimpleNamespace(fragments=broken)
        answers: list[tuple] = []
        endpoint.handle(RequestHead([], None), _body(0.7), lambda *a: answers.append(a))
        for _ in range(5):
            await asyncio.sleep(0)
        ((status, _type, body, _headers),) = answers
        assert status == 500 and orjson.loads(body)["error"]["code"] == "internal_error"

    asyncio.run(scenario())
