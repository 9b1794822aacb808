"""``python -m benchmarks protocols``: our server measured through every protocol it speaks
(native ``/infer``, OIP REST with JSON tensors, OIP REST with binary tensors, OIP gRPC), one
observation and a batch per request, each at a few client counts, all cache-cold.

Requests are pre-built bytes (``benchmarks.wire``), so no client library's encoding is
measured: HTTP goes through wrk (or the Python generator), gRPC through ``grpc.aio`` with
bytes in and bytes out (``benchmarks.grpcload``). One server, started with ``--grpc-port``,
serves every run; each run (and its warm-up) sends rows no other run sent. On request the
gRPC runs are repeated against ``benchmarks.baselines.grpc_floor`` (constant answers, same
client): what Python gRPC costs before our server does anything.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

from benchmarks.bodies import Mode
from benchmarks.grpcload import run_grpc
from benchmarks.httpbench import (
    MAX_CONCURRENCY,
    MODEL,
    HttpSettings,
    RunPlan,
    measured,
    quietest,
    run_record,
    running,
)
from benchmarks.loadgen import Generator, LoadResult, run_python, run_wrk_stamped, wrk_seconds
from benchmarks.procs import ServerProcess, free_port
from benchmarks.targets import LaunchOptions, Target
from benchmarks.wire import Protocol, StampedRequests, build_requests

# The server's default --max-request-batch; a larger batch is refused (400/422).
MAX_BATCH = 256
DEFAULT_PROTOCOLS = tuple(Protocol)
DEFAULT_BATCHES = (1, 64)
DEFAULT_CONCURRENCY = (1, 16)


GRPC_FLOOR = "grpc_floor"  # benchmarks.baselines.grpc_floor


@dataclass(frozen=True, slots=True)
class ProtocolPlan:
    protocol: Protocol
    batch: int
    concurrency: int
    server: str = "ours"  # or GRPC_FLOOR

    @property
    def name(self) -> str:
        """The record's ``target``: one (target, mode, concurrency) key per server, protocol
        and batch, so ``monitoring.regress`` can compare two of these documents."""
        return f"{self.server}:{self.protocol}:b{self.batch}"


def protocol_plans(
    protocols: Sequence[Protocol], batches: Sequence[int], concurrencies: Sequence[int]
) -> list[ProtocolPlan]:
    for b in batches:
        if not 1 <= b <= MAX_BATCH:
            raise ValueError(f"batch {b}: write 1..{MAX_BATCH} (the server's request limit)")
    for c in concurrencies:
        if not 1 <= c <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency {c}: write 1..{MAX_CONCURRENCY}")
    return [ProtocolPlan(p, b, c) for p in protocols for b in batches for c in concurrencies]


def _load(
    requests: StampedRequests,
    generator: Generator,
    ports: tuple[int, int],
    concurrency: int,
    duration_s: float,
    wrk_threads: int = 1,
) -> LoadResult:
    http_port, grpc_port = ports
    if requests.protocol.is_grpc:
        return run_grpc(grpc_port, requests.path, requests, concurrency, duration_s)
    if generator is Generator.WRK:
        return run_wrk_stamped(http_port, requests, concurrency, duration_s, wrk_threads)
    path, headers = requests.path, requests.headers
    return run_python(http_port, requests, concurrency, duration_s, path=path, headers=headers)


def measure_protocol(
    server: ServerProcess,
    grpc_port: int,
    plan: ProtocolPlan,
    settings: HttpSettings,
    seed: int,
) -> dict:
    """One run: a warm-up with other rows (Python generator or grpc.aio), then the measured
    load; the record of ``run_record`` plus ``protocol``, ``server``, ``batch`` and
    ``rows_per_s``."""
    ports = (server.port, grpc_port)
    generator = Generator.GRPC_AIO if plan.protocol.is_grpc else settings.generator
    requests = build_requests(plan.protocol, MODEL, plan.batch, seed)
    warm = None
    if settings.warmup_s > 0:
        warm_requests = build_requests(plan.protocol, MODEL, plan.batch, seed + 7919)
        warm = partial(
            _load, warm_requests, Generator.PYTHON, ports, plan.concurrency, settings.warmup_s
        )
    load = partial(
        _load,
        requests,
        generator,
        ports,
        plan.concurrency,
        settings.duration_s,
        settings.wrk_threads,
    )
    result, server_cpu, other = measured(server, plan.name, warm, load)
    duration = (
        float(wrk_seconds(settings.duration_s))
        if generator is Generator.WRK
        else settings.duration_s
    )
    record = run_record(
        plan.name, RunPlan(Mode.COLD, plan.concurrency), duration, result, server_cpu, other
    )
    record["protocol"] = str(plan.protocol)
    record["server"] = plan.server
    record["batch"] = plan.batch
    record["rows_per_s"] = round(result.rps * plan.batch, 1)
    return record


def run_protocols(
    plans: Sequence[ProtocolPlan],
    settings: HttpSettings,
    launch: LaunchOptions,
    seed: int = 1,
    log: Callable[[str], None] = print,
    grpc_floor: bool = False,
) -> list[dict]:
    """Starts our server with a gRPC port, measures every plan in order, stops it; then,
    with ``grpc_floor``, the gRPC plans again against the gRPC floor."""
    grpc_port = free_port()
    launch = LaunchOptions(
        artifacts=launch.artifacts,
        workers=launch.workers,
        cache_size=launch.cache_size,
        server_args=(*launch.server_args, "--grpc-port", str(grpc_port)),
    )
    with running((Target.OURS,), settings, launch, log_suffix=".protocols") as servers:
        records = _measure_all(servers[Target.OURS], grpc_port, plans, settings, seed, log)
    floor_plans = [replace(p, server=GRPC_FLOOR) for p in plans if p.protocol.is_grpc]
    if grpc_floor and floor_plans:
        with _grpc_floor(settings) as floor:
            records += _measure_all(floor, floor.port, floor_plans, settings, seed + 1, log)
    return records


def _measure_all(
    server: ServerProcess,
    grpc_port: int,
    plans: Sequence[ProtocolPlan],
    settings: HttpSettings,
    seed: int,
    log: Callable[[str], None],
) -> list[dict]:
    records = []
    for k, plan in enumerate(plans):
        generator = "grpc.aio" if plan.protocol.is_grpc else settings.generator
        log(
            f"  {plan.server} {plan.protocol} batch {plan.batch} @{plan.concurrency} for "
            f"{settings.duration_s:g} s ({generator}) ..."
        )
        base = seed * 1000 + 10 * k

        def once(attempt: int, plan: ProtocolPlan = plan, base: int = base) -> dict:
            return measure_protocol(server, grpc_port, plan, settings, base + attempt)

        records.append(quietest(once, settings, log))
    return records


@contextlib.contextmanager
def _grpc_floor(settings: HttpSettings) -> Iterator[ServerProcess]:
    port = free_port()
    argv = [sys.executable, "-m", f"benchmarks.baselines.{GRPC_FLOOR}", "--port", str(port)]
    with ServerProcess(GRPC_FLOOR, argv, port, settings.logs_dir / f"{GRPC_FLOOR}.log") as floor:
        floor.wait_listening(60.0)
        yield floor
