"""The gRPC load generator: pre-serialized ``ModelInferRequest`` bytes sent through
``grpc.aio`` with no serializer either way (bytes in, bytes out), so the run measures the
server and grpc's transport, not protobuf in the client.

Each client is a channel of its own (``grpc.use_local_subchannel_pool``: its own TCP
connection, as separate processes would have) with one call in flight at a time, like a
keep-alive HTTP connection. One shared channel would multiplex every caller onto one
connection, which the server's inline rule (one connection busy: answer in the front) treats
as a single client. Latency is perf_counter_ns around the awaited call, for every answer; a
call that ends in a status other than OK counts under that status's name.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from benchmarks.loadgen import REQUEST_TIMEOUT_S, Bodies, Generator, LoadResult, Shared, summarize
from benchmarks.procs import LOOPBACK

CONNECT_TIMEOUT_S = 10.0
_CHANNEL_OPTIONS = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
)


async def _caller(channel: grpc.aio.Channel, method: str, shared: Shared) -> None:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    while (i := shared.take()) is not None:
        request = shared.bodies.body(i)
        start = time.perf_counter_ns()
        try:
            await call(request, timeout=REQUEST_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            shared.errors[error.code().name] += 1
        shared.latencies.append((time.perf_counter_ns() - start) / 1000.0)


async def _drive(
    port: int,
    method: str,
    bodies: Bodies,
    concurrency: int,
    duration_s: float,
    max_requests: int | None,
) -> tuple[Shared, float]:
    shared = Shared(bodies, 0.0, max_requests)  # the deadline is set once connected
    target = f"{LOOPBACK}:{port}"
    channels = [
        grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS) for _ in range(concurrency)
    ]
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await asyncio.gather(*(channel.channel_ready() for channel in channels))
        start = time.perf_counter()
        shared.deadline = start + duration_s
        await asyncio.gather(*(_caller(channel, method, shared) for channel in channels))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return shared, elapsed


def run_grpc(
    port: int,
    method: str,
    bodies: Bodies,
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
) -> LoadResult:
    """``concurrency`` channels, each calling ``method`` with its next request as soon as
    the previous answer is in, until ``duration_s`` passes or ``max_requests`` are sent."""
    cpu0 = time.process_time()
    try:
        shared, elapsed = asyncio.run(
            _drive(port, method, bodies, concurrency, duration_s, max_requests)
        )
    except TimeoutError:
        raise RuntimeError(
            f"gRPC: no connection to {LOOPBACK}:{port} within {CONNECT_TIMEOUT_S:.0f} s"
        ) from None
    return summarize(Generator.GRPC_AIO, shared.latencies, elapsed, shared.errors, cpu0)
