"""The pool's failure logic with fake workers that implement ``WorkerLink``: retry once,
timeout kill, draining on reload, replacement back-off, broken pipes, the front's own copy
while no worker is ready, and the artifacts each generation loads. Teardown checks that no
batch is left, no link open and no copy of the artifacts kept."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from models.spec import SPECS
from server import protocol
from server.config import ServerConfig
from server.errors import InferenceTimeout, NonFiniteOutput, ShuttingDown, WorkerLost
from server.outputs import FLOATS
from server.pool import MODEL_NAMES, WorkerPool, WorkerState
from server.served_copy import ServedCopy

VERSIONS = {name: "v1" for name in MODEL_NAMES}
_pids = itertools.count(1000)


class FakeLink:
    """A worker that is ready when told (or at once) and answers when the test says so."""

    def __init__(
        self, on_frame: Callable, on_lost: Callable, *, starts: bool = True, held: bool = False
    ) -> None:
        self.pid = next(_pids)
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.starts = starts  # False: it fails to load its models
        self.held: int | None = -1 if held else None  # loading until release()
        self.requests: list[bytes] = []
        self.closed = self.killed = self.dead = self.broken = False
        self.signal = 0  # what ended it, when it died of a signal
        self.artifacts = ""  # the directory its configuration told it to load

    # WorkerLink
    def send(self, frame: bytes) -> None:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        req_id, model, _rows = protocol.REQUEST.unpack_from(frame)
        if model == protocol.CONTROL_MODEL:
            self.artifacts = orjson.loads(frame[protocol.REQUEST.size :])["artifacts_dir"]
            if self.held is None:
                asyncio.get_running_loop().call_soon(self._started, req_id)
            else:
                self.held = req_id
        else:
            self.requests.append(frame)

    def close(self) -> None:
        self.closed = True

    def kill(self) -> None:
        self.killed = True
        asyncio.get_running_loop().call_soon(self.die)  # its socket ends, as a real one's

    def exited(self) -> bool:
        return self.killed or self.closed or self.dead

    def exit_status(self) -> int | None:
        if self.killed:
            return -signal.SIGKILL
        return -self.signal if self.dead else None

    # what the test drives
    def release(self) -> None:
        """A held worker has loaded its models."""
        assert self.held is not None and self.held >= 0
        self._started(self.held)

    def _started(self, req_id: int) -> None:
        if self.dead or self.closed:
            return
        if self.starts:
            ready = orjson.dumps({"pid": self.pid, "versions": VERSIONS})
            self.on_frame(protocol.REPLY.pack(req_id, protocol.KIND_READY, 0, 0, 0, 0, 0) + ready)
        else:
            self.on_frame(
                protocol.REPLY.pack(req_id, protocol.KIND_ERROR, 0, 0, 0, 0, 0) + b"no model"
            )

    def answer(self, finite: bool = True, int8: tuple[int, int, int] = (0, 0, 0)) -> None:
        """Answers the oldest request it holds (``int8``: rows on int8, range and margin
        fallbacks, as a guarded worker reports them)."""
        frame = self.requests.pop(0)
        req_id, _model, rows = protocol.REQUEST.unpack_from(frame)
        status = bytes([protocol.ROW_FINITE if finite else protocol.ROW_NOT_FINITE]) * rows
        out = np.full((rows, FLOATS), 0.5, np.float32).tobytes()
        head = protocol.REPLY.pack(req_id, protocol.KIND_OK, rows, 1000, *int8)
        self.on_frame(head + status + out)

    def die(self, by: int = signal.SIGSEGV) -> None:
        if not self.dead and not self.closed:
            self.dead = True
            self.signal = by
            self.on_lost()


class Launcher:
    def __init__(self) -> None:
        self.links: list[FakeLink] = []
        self.failing = 0  # the next this many workers fail to start
        self.holding = 0  # the next this many workers load until released
        self.copies: Copies | None = None  # what the pool took as its generations' copies

    def __call__(self, on_frame: Callable, on_lost: Callable) -> FakeLink:
        link = FakeLink(on_frame, on_lost, starts=self.failing <= 0, held=self.holding > 0)
        self.failing -= 1
        self.holding -= 1
        self.links.append(link)
        return link


class Copies:
    """``ServedCopy.take`` without artifacts: each generation's copy an empty directory."""

    def __init__(self) -> None:
        self.taken: list[ServedCopy] = []

    def __call__(self, _artifacts_dir: Path) -> ServedCopy:
        path = Path(tempfile.mkdtemp(prefix="test-served-"))
        self.taken.append(ServedCopy(path, None, {"manifest.json": b"{}"}))
        return self.taken[-1]


def front_models(config: ServerConfig) -> list:
    def infer(payload: memoryview, rows: int) -> tuple[bytes, bytes]:
        status = bytes([protocol.ROW_FINITE]) * rows
        return status, np.full((rows, FLOATS), 0.25, np.float32).tobytes()

    def infer_one(row: bytes) -> tuple[bytes, bool]:
        return infer(row, 1)[1], True

    return [
        SimpleNamespace(
            spec=SPECS[name],
            served=SimpleNamespace(version="v1"),
            infer=infer,
            infer_one=infer_one,
            take_counts=lambda: (0, 0, 0),
        )
        for name in MODEL_NAMES
    ]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(scenario: Callable, **config: object) -> None:
    async def main() -> None:
        launcher = Launcher()
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            await asyncio.sleep(0)

        copies = Copies()
        pool = WorkerPool(
            ServerConfig(workers=2, **config),  # type: ignore[arg-type]
            launch=launcher,
            load_models=front_models,
            sleep=sleep,
            take_copy=copies,
        )
        launcher.copies = copies
        await pool.start()
        await scenario(pool, launcher, sleeps)
        await settle()
        await pool.close()
        assert all(not w.pending for w in pool.active + pool.draining), "a batch was left"
        assert all(link.exited() for link in launcher.links), "a worker was left running"
        assert not any(c.path.exists() for c in copies.taken), "a copy of the artifacts was left"

    asyncio.run(main())


def submit(pool: WorkerPool, rows: int = 1) -> list[asyncio.Future]:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(rows)]
    payload = np.zeros((rows, 60, 7), np.float32).tobytes()
    pool.submit(MODEL_NAMES.index("tactical"), rows, payload, futures)
    return futures


async def answered_by_the_front(futures: list[asyncio.Future]) -> None:
    for fut in futures:
        outputs, version, _ns = await fut
        assert version == "v1"
        assert np.frombuffer(outputs, np.float32).tolist() == [0.25] * FLOATS  # front_models


def holder(launcher: Launcher) -> FakeLink:
    (link,) = [link for link in launcher.links if link.requests]
    return link


def test_a_dead_workers_batch_is_retried_once_then_answered_503() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        first, second = launcher.links
        futures = submit(pool, rows=2)
        original = holder(launcher)
        original.die()  # a crash (SIGSEGV): the batch may be what killed it
        other = second if original is first else first
        await settle()
        assert other.requests, "retried on the other worker"
        other.die()
        for fut in futures:
            with pytest.raises(WorkerLost):
                await fut
        await settle()
        assert len(launcher.links) == 4, "both dead workers are being replaced"
        assert {w.state for w in pool.active} == {WorkerState.READY}

    run(scenario)


def test_workers_killed_from_outside_leave_the_batch_to_the_front() -> None:
    """Both workers SIGKILLed one after the other (an operator, the OOM killer): the batch
    did not kill them, so after the second death it is not refused as lost twice but
    answered by the front's own copy (no worker is left)."""

    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        launcher.failing = 10**6  # replacements never come up
        first, second = launcher.links
        futures = submit(pool, rows=2)
        original = holder(launcher)
        original.die(signal.SIGKILL)
        await settle()
        other = second if original is first else first
        assert other.requests, "retried on the other worker"
        other.die(signal.SIGKILL)
        await answered_by_the_front(futures)
        launcher.failing = 0

    run(scenario)


def test_a_batch_past_the_timeout_is_a_504_and_its_worker_is_killed() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        (fut,) = submit(pool)
        stuck = holder(launcher)
        with pytest.raises(InferenceTimeout):
            await asyncio.wait_for(fut, 5)
        assert stuck.killed
        await settle()
        assert len(launcher.links) == 3 and stuck not in [w.link for w in pool.active]

    run(scenario, request_timeout_s=0.05)


def test_answers_reach_their_futures_and_a_non_finite_row_is_refused() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        futures = submit(pool, rows=3)
        link = holder(launcher)
        link.answer()
        outputs, version, ns = await futures[0]
        assert version == "v1" and ns == 1000
        assert np.frombuffer(outputs, np.float32).tolist() == [0.5] * FLOATS
        (bad,) = submit(pool)
        holder(launcher).answer(finite=False)
        with pytest.raises(NonFiniteOutput, match="cannot compute finite outputs"):
            await bad
        assert sum(w.served for w in pool.active) == 4
        int8 = submit(pool, rows=40)
        holder(launcher).answer(int8=(40, 3, 1))
        await asyncio.gather(*int8)
        assert pool.int8_counts[MODEL_NAMES.index("tactical")] == [40, 3, 1]
        assert pool.int8_counts[MODEL_NAMES.index("strategic")] == [0, 0, 0]

    run(scenario)


def test_reload_drains_the_old_workers_after_their_last_batch() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        old = list(launcher.links)
        (fut,) = submit(pool)
        busy = holder(launcher)
        idle = old[1] if busy is old[0] else old[0]
        await pool.reload()
        assert [w.link for w in pool.active] == launcher.links[2:]
        assert idle.closed, "an idle old worker retires at once"
        assert not busy.closed and pool.draining, "a busy one drains first"
        busy.answer()
        await fut
        assert busy.closed

    run(scenario)


def test_a_replacement_that_fails_to_start_is_retried_with_growing_back_off() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, sleeps: list) -> None:
        launcher.failing = 3
        launcher.links[0].die()
        for _ in range(50):
            await asyncio.sleep(0)
        assert sleeps == [0.1, 0.2, 0.4]
        assert len(launcher.links) == 2 + 4
        assert all(w.state is WorkerState.READY for w in pool.active)
        assert pool.active[0].restarts == 1

    run(scenario)


def test_a_broken_pipe_sends_the_batch_to_another_worker() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        first, second = launcher.links
        first.broken = True  # dead, its EOF not read yet; the balancer tries it first
        (fut,) = submit(pool)
        assert second.requests and not first.requests
        second.answer()
        await fut
        await settle()
        assert len(launcher.links) == 3, "the broken one is replaced"

    run(scenario)


def test_the_front_answers_while_no_worker_is_ready() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        launcher.failing = 10**6  # replacements never come up
        for link in list(launcher.links):
            link.die()
        assert not pool.ready()
        futures = submit(pool, rows=2)
        await answered_by_the_front(futures)
        launcher.failing = 0

    run(scenario)


def test_replacements_load_their_generations_copy_and_a_reload_takes_a_new_one() -> None:
    """What a worker loads is its generation's copy of the artifacts, taken when the
    generation started: a replacement loads the copy the worker it replaces loaded (not the
    artifacts directory, which may hold another set by then); a reload takes a new copy and
    removes the old one once it serves; a reload that fails removes its own."""

    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        first = pool.copy
        assert first is not None and first.path.exists()
        assert {link.artifacts for link in launcher.links} == {str(first.path)}
        shutil.rmtree(first.path)  # a cleaner of the temporary directory came by
        launcher.links[0].die()
        await settle()
        assert launcher.links[2].artifacts == str(first.path)
        assert (first.path / "manifest.json").read_bytes() == b"{}", "written again first"
        await pool.reload()
        second = pool.copy
        assert second is not None and second is not first
        assert not first.path.exists() and second.path.exists()
        assert {link.artifacts for link in launcher.links[3:]} == {str(second.path)}
        launcher.failing = 2
        with pytest.raises(Exception, match="no model"):
            await pool.reload()
        assert pool.copy is second and second.path.exists()
        assert {w.link.artifacts for w in pool.active} == {str(second.path)}
        # slot 0 was restarted once; its counter survives the reload's new workers
        assert {s.index: s.restarts for s in pool.snapshot() if s.state == "ready"} == {0: 1, 1: 0}

    run(scenario)


def test_a_reload_stops_the_replacements_still_loading_from_the_old_copy() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        first = pool.copy
        assert first is not None
        launcher.holding = 1
        launcher.links[0].die()
        await settle()
        loading = launcher.links[2]
        assert loading.artifacts == str(first.path) and not loading.exited()
        await pool.reload()
        assert loading.killed and not first.path.exists()
        await settle()
        assert len(launcher.links) == 5, "no replacement tried after the switch"
        assert [w.link for w in pool.active] == launcher.links[3:]
        assert all(w.state is WorkerState.READY for w in pool.active)

    run(scenario)


def test_closing_during_a_reload_leaves_no_worker_and_no_copy() -> None:
    async def scenario(pool: WorkerPool, launcher: Launcher, _sleeps: list) -> None:
        launcher.holding = 2
        reload = asyncio.create_task(pool.reload())
        while len(launcher.links) < 4:  # the copy is taken in a thread
            await asyncio.sleep(0.01)
        starting = launcher.links[2:]
        closing = asyncio.create_task(pool.close())
        await settle()
        for link in starting:
            link.release()
        with pytest.raises(ShuttingDown):
            await reload
        await closing
        assert all(link.exited() for link in launcher.links)
        assert launcher.copies is not None and len(launcher.copies.taken) == 2
        assert not any(c.path.exists() for c in launcher.copies.taken)
        with pytest.raises(ShuttingDown):
            await pool.reload()

    run(scenario)
