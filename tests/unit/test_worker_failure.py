"""A worker whose runtime raises: the batch is retried once on another worker, or in the
front's own copy when no other can take it (inference is idempotent), and only when that is
impossible or fails too is it a 503 ``inference_failed`` with Retry-After (the contract has
no 500). Fake worker sockets, no processes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server import protocol
from server.config import ServerConfig
from server.errors import WorkerFailed
from server.outputs import ROW_BYTES
from server.pool import WorkerHandle, WorkerPool, WorkerState


class FakeLink:
    """A ``WorkerLink`` that keeps what it is sent."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sent: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def close(self) -> None:
        pass

    def kill(self) -> None:
        pass

    def exited(self) -> bool:
        return False


def _worker(slot: int) -> WorkerHandle:
    worker = WorkerHandle(slot=slot, link=FakeLink(100 + slot))
    worker.state = WorkerState.READY
    worker.model_versions = ("v", "v")
    return worker


def _error_reply(req_id: int) -> bytes:
    return protocol.REPLY.pack(req_id, protocol.KIND_ERROR, 0, 0, 0, 0, 0) + b"RuntimeError: boom"


def _ok_reply(req_id: int) -> bytes:
    outputs = np.full(ROW_BYTES // 4, 0.25, np.float32).tobytes()
    return protocol.REPLY.pack(req_id, protocol.KIND_OK, 1, 1000, 0, 0, 0) + b"\0" + outputs


def _sent_to(worker: WorkerHandle) -> int:
    req_id, _, _ = protocol.REQUEST.unpack_from(worker.link.sent[-1])
    return req_id


@pytest.mark.parametrize("second_reply", ["ok", "error"])
def test_a_raising_worker_batch_is_retried_once_elsewhere(second_reply: str) -> None:
    async def scenario() -> None:
        pool = WorkerPool(ServerConfig(workers=2))
        first, second = pool.active = [_worker(0), _worker(1)]
        fut = asyncio.get_running_loop().create_future()
        pool.submit(0, 1, bytes(4 * 420), [fut])
        raising = first if first.link.sent else second
        other = second if raising is first else first
        pool._on_frame(raising, _error_reply(_sent_to(raising)))
        assert not fut.done() and other.link.sent, "retried on the other worker"
        assert raising.in_flight == 0 and other.in_flight == 1
        reply = _ok_reply if second_reply == "ok" else _error_reply
        pool._on_frame(other, reply(_sent_to(other)))
        if second_reply == "ok":
            outputs, version, _ = fut.result()
            assert version == "v" and len(outputs) == ROW_BYTES
        else:
            error = fut.exception()
            assert isinstance(error, WorkerFailed) and "boom" in error.message
            assert error.status == 503 and error.retry_after_s == 1

    asyncio.run(scenario())


class FakeInline:
    """The front's own copy of a model: four rows' worth of outputs, all finite."""

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, payload: memoryview, rows: int) -> tuple[bytes, bytes]:
        """(a status byte per row, the rows' outputs), as ``server.engine`` answers."""
        self.calls += 1
        status = bytes([protocol.ROW_FINITE]) * rows
        return status, np.full((rows, ROW_BYTES // 4), 0.25, np.float32).tobytes()

    def take_counts(self) -> tuple[int, int, int]:
        return 0, 0, 0  # float32 only: no int8 rows, no guard fallbacks


def test_with_no_other_worker_a_raising_batch_is_retried_in_the_front() -> None:
    async def scenario() -> None:
        pool = WorkerPool(ServerConfig(workers=1))
        (only,) = pool.active = [_worker(0)]
        pool.model_versions = ("v", "v")
        pool.inline = [FakeInline(), FakeInline()]
        fut = asyncio.get_running_loop().create_future()
        pool.submit(0, 1, bytes(4 * 420), [fut])
        pool._on_frame(only, _error_reply(_sent_to(only)))
        assert len(only.link.sent) == 1 and pool.inline[0].calls == 1
        outputs, version, _ = fut.result()
        assert version == "v" and len(outputs) == ROW_BYTES

    asyncio.run(scenario())


def test_with_no_other_worker_nor_front_copy_a_raising_batch_is_a_503() -> None:
    async def scenario() -> None:
        pool = WorkerPool(ServerConfig(workers=1))
        (only,) = pool.active = [_worker(0)]
        fut = asyncio.get_running_loop().create_future()
        pool.submit(0, 1, bytes(4 * 420), [fut])
        pool._on_frame(only, _error_reply(_sent_to(only)))
        assert len(only.link.sent) == 1, "not sent back to the worker that raised"
        assert isinstance(fut.exception(), WorkerFailed)
        assert fut.exception().status == 503

    asyncio.run(scenario())


def test_a_failed_batch_counts_once_against_the_circuit() -> None:
    """Every request of a batch that timed out (or raised) shares its error: one failure."""
    from server.breaker import BreakerState, CircuitBreaker
    from server.errors import InferenceTimeout

    breaker = CircuitBreaker(2, open_s=5.0)
    stuck_batch = InferenceTimeout("inference did not finish")
    for _ in range(16):
        breaker.failure(stuck_batch)
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 1
    breaker.failure(WorkerFailed("inference failed: boom"))
    assert breaker.state is BreakerState.OPEN
