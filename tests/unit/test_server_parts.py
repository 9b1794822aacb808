"""Balancer, batcher, cache, rate limiter, config and the inline lane's rule: pure, with
fakes and a fake clock."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from models.spec import SPECS
from server import core as core_module
from server.balancer import LeastLoaded, PowerOfTwo, RoundRobin, make_balancer
from server.batching import Batcher
from server.busypoll import BusyPoll
from server.cache import (
    ResponseCache,
    ShardedTtlLru,
    cache_key,
    key_prefix,
    observation_digest,
)
from server.codecs import native
from server.codecs.native import NativeEndpoint
from server.config import BalancerStrategy, ConfigError, ServerConfig, load_config
from server.core import InferCore
from server.errors import Overloaded, WorkerLost
from server.head import RequestHead
from server.pool import MODEL_INDEX, MODEL_NAMES
from server.ratelimit import RateLimiter
from server.validation import RequestParser
from tests.fakes import FakeClock


@dataclass(eq=False)
class FakeWorker:
    name: str
    in_flight: int = 0


def test_round_robin_cycles_over_eligible_workers() -> None:
    workers = [FakeWorker("a"), FakeWorker("b"), FakeWorker("c")]
    rr = RoundRobin()
    picks = [rr.choose(workers).name for _ in range(6)]
    assert sorted(picks[:3]) == ["a", "b", "c"]
    assert picks[:3] == picks[3:]


def test_least_loaded_picks_fewest_in_flight() -> None:
    workers = [FakeWorker("a", 5), FakeWorker("b", 1), FakeWorker("c", 3)]
    assert LeastLoaded().choose(workers).name == "b"


def test_power_of_two_picks_less_loaded_of_two_samples() -> None:
    workers = [FakeWorker("busy", 100), FakeWorker("idle", 0)]
    p2 = PowerOfTwo(rng=random.Random(7))
    assert {p2.choose(workers).name for _ in range(20)} == {"idle"}
    # with many workers, the most loaded is never chosen (it always loses its pair)
    many = [FakeWorker(str(i), i) for i in range(8)]
    assert all(p2.choose(many).name != "7" for _ in range(200))


def test_make_balancer_from_strategy() -> None:
    assert isinstance(make_balancer(BalancerStrategy.ROUND_ROBIN), RoundRobin)
    assert isinstance(make_balancer(BalancerStrategy.POWER_OF_TWO), PowerOfTwo)
    assert isinstance(make_balancer(BalancerStrategy.LEAST_LOADED), LeastLoaded)


class RecordingPool:
    inline_only = False

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bytes]] = []

    def submit(self, model_idx: int, rows: int, payload: bytes, futures: list) -> None:
        self.calls.append((model_idx, rows, payload))
        for i, fut in enumerate(futures):
            fut.set_result((payload[i : i + 1], "v", 0))


def test_batcher_gathers_same_tick_rows_and_returns_each_its_own() -> None:
    async def scenario() -> None:
        pool = RecordingPool()
        loop = asyncio.get_running_loop()
        batcher = Batcher(0, pool.submit, max_batch_size=4, max_queue_delay_us=0, loop=loop)
        futs = [batcher.submit(bytes([i])) for i in range(6)]
        # 4 rows filled a batch at once; the other 2 go on the next loop pass
        assert [c[1] for c in pool.calls] == [4]
        results = await asyncio.gather(*futs)
        assert [c[1] for c in pool.calls] == [4, 2]
        assert [r[0] for r in results] == [bytes([i]) for i in range(6)]
        assert batcher.queued == 0

    asyncio.run(scenario())


def test_batcher_waits_up_to_the_queue_delay() -> None:
    async def scenario() -> None:
        pool = RecordingPool()
        loop = asyncio.get_running_loop()
        batcher = Batcher(1, pool.submit, max_batch_size=64, max_queue_delay_us=20_000, loop=loop)
        first = batcher.submit(b"a")
        await asyncio.sleep(0)
        assert pool.calls == []  # still waiting for company
        second = batcher.submit(b"b")
        await asyncio.gather(first, second)
        assert [(c[0], c[1]) for c in pool.calls] == [(1, 2)]

    asyncio.run(scenario())


OUTPUTS = np.array([0.2, 0.3, 0.5] * 3 + [1.0, 0.5, 2], dtype=np.float32).tobytes()


class InlinePool(RecordingPool):
    """Workers that answer at once, plus the front's inline lane, counting where rows ran."""

    model_versions = ("v",) * len(MODEL_NAMES)
    key_prefixes = tuple(key_prefix(i, "v") for i in range(len(MODEL_NAMES)))

    def submit(self, model_idx: int, rows: int, payload: bytes, futures: list) -> None:
        self.calls.append((model_idx, rows, payload))
        for fut in futures:
            fut.set_result((OUTPUTS, "v", 0))

    def __init__(self) -> None:
        super().__init__()
        self.inline_rows = 0

    def idle(self) -> bool:
        return True

    def wait_ns(self) -> float:
        return 0.0

    def run_inline(self, model_idx: int, row: bytes) -> tuple[bytes, str, int]:
        self.inline_rows += 1
        return OUTPUTS, "v", 5


def test_inline_lane_only_for_one_connection_after_an_idle_gap(monkeypatch) -> None:
    """A row runs in the front only if its connection has sent every /infer since at least
    1 ms ago and the front sat idle 10 us before it; two alternating connections always go
    to the workers, however slowly they alternate."""
    us = 1_000
    clock = FakeClock(start=10**12)  # nanoseconds
    for module in (core_module, native):
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter_ns=clock))
    body = orjson.dumps({"model": "tactical", "observation": [[0.5] * 7] * 60})
    a, b = RequestHead([], ("127.0.0.1", 1001)), RequestHead([], ("127.0.0.1", 1002))

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        pool = InlinePool()
        batchers = [
            Batcher(i, pool.submit, max_batch_size=8, max_queue_delay_us=0, loop=loop)
            for i in range(len(MODEL_NAMES))
        ]
        monitor = SimpleNamespace(record_request=lambda *_: None)
        parser = RequestParser(SPECS, MODEL_INDEX, max_batch=4)
        core = InferCore(ServerConfig(busy_poll_us=0), pool, ResponseCache(0, 0), batchers, monitor)
        endpoint = NativeEndpoint(core, parser)
        routes, statuses = [], []
        for head, gap_us in [
            (a, 5_000), (a, 200),  # a new connection: to the workers for its first 1 ms
            (a, 900), (a, 200),  # the only one for 1.1 ms: inline
            (b, 200), (a, 200), (b, 2_000), (a, 2_000),  # alternating: never inline
            (a, 900), (a, 200),  # a alone again since 0.9 ms, then 1.1 ms
            (a, 5),  # 5 us after the last answer: the front was not idle
        ]:  # fmt: skip
            clock.advance(gap_us * us)
            inline_before, answered = pool.inline_rows, len(statuses)
            endpoint.handle(head, body, lambda status, *_: statuses.append(status))
            while len(statuses) == answered:
                await asyncio.sleep(0)
            assert statuses[answered:] == [200] and core.pending == 0
            routes.append("inline" if pool.inline_rows > inline_before else "worker")
        assert sum(c[1] for c in pool.calls) == routes.count("worker")
        return routes

    assert asyncio.run(scenario()) == [
        "worker", "worker", "inline", "inline",
        "worker", "worker", "worker", "worker",
        "worker", "inline", "worker",
    ]  # fmt: skip


def test_batch_answers_once_with_its_first_error_after_every_row_is_in() -> None:
    body = orjson.dumps({"model": "tactical", "observations": [[[0.5] * 7] * 60, [[1] * 7] * 60]})

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future] = []
        pool = SimpleNamespace(
            key_prefixes=InlinePool.key_prefixes,
            model_versions=InlinePool.model_versions,
            idle=lambda: False,
            wait_ns=lambda: 0.0,
        )
        batchers = [
            Batcher(i, lambda _m, _n, _p, f: futures.extend(f), max_batch_size=8,
                    max_queue_delay_us=0, loop=loop)
            for i in range(len(MODEL_NAMES))
        ]  # fmt: skip
        monitor = SimpleNamespace(record_request=lambda *_: None)
        parser = RequestParser(SPECS, MODEL_INDEX, max_batch=4)
        core = InferCore(ServerConfig(busy_poll_us=0), pool, ResponseCache(0, 0), batchers, monitor)
        endpoint = NativeEndpoint(core, parser)
        answers = []
        endpoint.handle(RequestHead([], None), body, lambda *answer: answers.append(answer))
        await asyncio.sleep(0)
        assert len(futures) == 2 and core.pending == 1
        futures[0].set_exception(WorkerLost("the worker serving this request died; retry"))
        await asyncio.sleep(0)
        assert answers == [] and core.pending == 1, "the other row is still with a worker"
        futures[1].set_exception(Overloaded("later"))
        await asyncio.sleep(0)
        assert core.pending == 0
        ((status, _type, payload, headers),) = answers
        assert (status, headers) == (503, ((b"retry-after", b"1"),))
        assert orjson.loads(payload)["error"]["code"] == "worker_lost"

    asyncio.run(scenario())


def test_busy_poll_keeps_the_loop_turning_until_its_window_ends() -> None:
    async def scenario() -> None:
        clock = FakeClock(start=0)
        poll = BusyPoll(asyncio.get_running_loop(), 200, lambda: False, clock=clock)
        poll.arm()
        for _ in range(5):
            await asyncio.sleep(0)
            assert poll.polling
        clock.advance(150_000)
        poll.arm()  # a second answer pushes the end of the window out again
        clock.advance(150_000)
        await asyncio.sleep(0)
        assert poll.polling
        clock.advance(60_000)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not poll.polling

    asyncio.run(scenario())


def test_busy_poll_stops_while_workers_have_work_and_is_off_at_zero() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        busy = [False]
        poll = BusyPoll(loop, 10_000_000, lambda: busy[0], clock=FakeClock(start=0))
        poll.arm()
        await asyncio.sleep(0)
        assert poll.polling
        busy[0] = True
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not poll.polling
        off = BusyPoll(loop, 0, lambda: False, clock=FakeClock(start=0))
        off.arm()
        assert not off.polling

    asyncio.run(scenario())


def test_cache_ttl_lru_and_version_isolation() -> None:
    clock = FakeClock()
    cache = ResponseCache(maxsize=2, ttl_s=10, clock=clock)
    row = np.full((60, 7), 0.1, dtype=np.float32).tobytes()
    key_v1, key_v2 = cache_key(b"v1", row), cache_key(b"v2", row)
    assert cache.get(key_v1) is None
    cache.put(key_v1, b"frag")
    assert cache.get(key_v1) == b"frag"
    assert cache.get(key_v2) is None, "a new version must not see the old entry"
    clock.now += 11
    assert cache.get(key_v1) is None, "expired after the TTL"
    keys = [cache_key(b"v1", bytes([i])) for i in range(3)]
    cache.put(keys[0], b"0")
    cache.put(keys[1], b"1")
    assert cache.get(keys[0]) == b"0"  # now the most recently used
    cache.put(keys[2], b"2")
    assert len(cache) == 2, "LRU bound"
    assert cache.get(keys[1]) is None, "the least recently used entry went first"
    assert cache.get(keys[0]) == b"0" and cache.get(keys[2]) == b"2"
    assert (cache.hits, cache.misses) == (4, 4)
    clock.now += 11
    assert cache.expire() == 2 and len(cache) == 0


def test_cache_holds_nothing_the_garbage_collector_tracks() -> None:
    # Tracked entries starved CPython's young collection once the cache was full (see
    # server/cache.py): a 100 ms pause after 20 s of load.
    import gc

    cache = ResponseCache(maxsize=1000, ttl_s=10)
    for i in range(2000):
        cache.put(cache_key(b"v", i.to_bytes(4, "little")), b"fragment")
    store = cache._store
    assert store is not None
    held = [
        obj
        for shard in store._shards
        for obj in (*shard._data.keys(), *shard._data.values(), *shard._expires.values())
    ]
    assert held and not any(gc.is_tracked(obj) for obj in held)


def test_a_large_cache_is_sharded_so_no_insert_rehashes_more_than_a_shard() -> None:
    # One 100,000-entry dict rehashed every entry on growing and, once full, every ~250,000
    # insertions: 9-18 ms with the event loop stopped (server/cache.py).
    clock = FakeClock()
    store = ShardedTtlLru(100_000, 10.0, clock)
    shards = store._shards
    assert len(shards) & (len(shards) - 1) == 0  # a power of two: the mask picks a shard
    assert sum(shard.maxsize for shard in shards) == 100_000
    assert max(shard.maxsize for shard in shards) <= 2048
    rng = random.Random(5)
    keys = [cache_key(b"v", rng.randbytes(64)) for _ in range(150_000)]
    for key in keys:
        store[key] = b"out"
    assert len(store) == 100_000  # the bound holds overall
    assert all(len(shard) == shard.maxsize for shard in shards)  # the keys spread evenly
    assert store.get(keys[-1]) == b"out" and store.get(keys[0]) is None
    clock.now += 11
    expired = sum(store.expire(budget=100_000) for _ in range(2))
    assert expired == 100_000 and len(store) == 0


def test_a_small_cache_is_one_exact_lru() -> None:
    store = ShardedTtlLru(1000, 10.0, FakeClock())
    assert len(store._shards) == 1


def test_cache_digest_is_of_float32_bytes() -> None:
    a = np.array([[0.1]], dtype=np.float64).astype(np.float32).tobytes()
    b = np.array([[0.10000000000000001]], dtype=np.float64).astype(np.float32).tobytes()
    assert observation_digest(a) == observation_digest(b)


def test_cache_coalesces_in_flight_and_stores_under_computing_version() -> None:
    async def scenario() -> None:
        cache = ResponseCache(maxsize=10, ttl_s=10)
        digest = b"d" * 16
        key = key_prefix(1, "v1") + digest
        fut = asyncio.get_running_loop().create_future()
        cache.track(key, fut)
        assert cache.joining(key) is fut
        fut.set_result((b"out", "v2", 5))  # computed by a newer version after a reload
        await asyncio.sleep(0)
        assert cache.joining(key) is None
        assert cache.get(key_prefix(1, "v2") + digest) == b"out"
        assert cache.get(key) is None

    asyncio.run(scenario())


def test_cache_turned_off() -> None:
    cache = ResponseCache(maxsize=0, ttl_s=10)
    cache.put(b"key", b"fragment")
    assert not cache.enabled and cache.get(b"key") is None


def test_rate_limiter_token_bucket_with_fake_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2, burst=3, clock=clock)
    assert [limiter.allow("c") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("other")
    clock.now += 0.5
    assert limiter.allow("c") and not limiter.allow("c")


def test_config_flags_override_environment() -> None:
    env = {"PIS_PORT": "9000", "PIS_CACHE_TTL_S": "5", "PIS_BALANCER": "power_of_two"}
    config = load_config(["--port", "9100"], env)
    assert config.port == 9100
    assert config.cache_ttl_s == 5.0
    assert config.balancer is BalancerStrategy.POWER_OF_TWO


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["--balancer", "fastest"], "round_robin, least_loaded, power_of_two"),
        (["--workers", "-1"], "write a count from 0"),
        (["--fronts", "0"], "write a count from 1 to 64"),
        (["--max-queue-delay-us", "-1"], "write 0"),
        (["--agent-weights", "tactical=1,1"], "tactical=1,1,1"),
        (["--monitoring", "--workers", "two"], "is not valid for workers"),
        (["--max-inflight-per-worker", "32", "--max-batch-size", "8"], "max_request_batch"),
        (["--busy-poll-us", "-5"], "write 0"),
        (["--port", "9000", "--grpc-port", "9000"], "give gRPC a port of its own"),
    ],
)
def test_config_errors_say_what_to_write(argv: list[str], hint: str) -> None:
    with pytest.raises(ConfigError, match=hint):
        load_config(argv, {})


def test_config_errors_name_the_environment_variable() -> None:
    with pytest.raises(ConfigError, match="PIS_MONITORING"):
        load_config([], {"PIS_MONITORING": "maybe"})


def test_config_round_trips_to_workers_without_the_api_key() -> None:
    from server.config import config_from_json_dict

    config = ServerConfig(
        api_key="secret",
        api_keys=("k2",),
        admin_api_key="adm",
        agent_weights=(("tactical", (1.0, 2.0, 1.0)),),
    )
    data = config.to_json_dict()
    assert data["api_key"] is None and data["admin_api_key"] is None
    assert data["api_keys"] == () and data["api_key_file"] is None
    back = config_from_json_dict(data)
    assert back.agent_weights == config.agent_weights
    assert back.weights_for("tactical") == (1.0, 2.0, 1.0)
