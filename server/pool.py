"""The inference worker pool: health, dispatch, crash recovery, reload, shutdown.

Each worker is reached through a ``WorkerLink`` (``worker_link.py``: the real one is a
process on a SEQPACKET socket read by the front's event loop). A worker's death is seen at
once as the end of its link; its batches are retried once elsewhere, and a replacement is
started and warmed while the others serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import itertools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from models.spec import SPECS
from monitoring import WorkerSnapshot
from server import protocol
from server.balancer import Balancer, make_balancer
from server.cache import key_prefix
from server.config import ServerConfig
from server.errors import (
    ApiError,
    InferenceTimeout,
    NoHealthyWorker,
    NonFiniteOutput,
    Overloaded,
    ShuttingDown,
    WorkerFailed,
    WorkerLost,
)
from server.outputs import ROW_BYTES
from server.served_copy import ServedCopy
from server.worker_link import Launch, ProcessLink, WorkerLink

log = logging.getLogger("server.pool")

MODEL_NAMES: tuple[str, ...] = tuple(sorted(SPECS))
MODEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(MODEL_NAMES)}


class WorkerState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    DEAD = "dead"


class StartFailed(RuntimeError):
    pass


@dataclass(slots=True, eq=False)
class Pending:
    req_id: int
    model_idx: int
    rows: int
    frame: bytes
    futures: list[asyncio.Future]
    attempts: int = 0
    timer: asyncio.TimerHandle | None = None
    sent_ns: int = 0


@dataclass(slots=True, eq=False)
class WorkerHandle:
    slot: int
    link: WorkerLink
    state: WorkerState = WorkerState.STARTING
    in_flight: int = 0
    served: int = 0
    restarts: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    model_versions: tuple[str, ...] = ()  # by model index
    pending: dict[int, Pending] = field(default_factory=dict)
    ready: asyncio.Future | None = None

    @property
    def pid(self) -> int:
        return self.link.pid


# result of one row: (outputs, the version that computed them, inference ns)
RowResult = tuple[bytes, str, int]


def non_finite(model_idx: int) -> NonFiniteOutput:
    return NonFiniteOutput(
        f"{MODEL_NAMES[model_idx]} cannot compute finite outputs for this observation (the "
        "model overflows on values of this magnitude); send z-scored or otherwise "
        "normalised features"
    )


class WorkerPool:
    def __init__(
        self,
        config: ServerConfig,
        *,
        balancer: Balancer | None = None,
        on_batch: Callable[[str, int, float, int], None] | None = None,
        on_worker_event: Callable[[str, int], None] | None = None,
        launch: Launch = ProcessLink,
        load_models: Callable[[ServerConfig], list] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        take_copy: Callable[[Path], ServedCopy] = ServedCopy.take,
    ) -> None:
        """``launch`` starts a worker, ``load_models`` loads the front's own copy (default:
        ``server.worker.load_endpoints``), ``sleep`` waits between replacement attempts,
        ``take_copy`` copies what a new generation serves (``server.served_copy``)."""
        self.config = config
        self._launch = launch
        self._load_models = load_models
        self._sleep = sleep
        self._take_copy = take_copy
        # what the generation now serving loaded, and what its replacements load
        self.copy: ServedCopy | None = None
        self.balancer = balancer or make_balancer(config.balancer)
        self.active: list[WorkerHandle] = []
        self.draining: list[WorkerHandle] = []
        self.versions: dict[str, str] = {}
        # of the generation now serving, by model index: its versions and cache key prefixes
        self.model_versions: tuple[str, ...] = ()
        self.key_prefixes: tuple[bytes, ...] = ()
        self.inline: list | None = None
        self._pid = os.getpid()
        self._ids = itertools.count(1)
        self._closing = False
        self._reload_lock = asyncio.Lock()
        self._on_batch = on_batch or (lambda model, rows, ns, pid: None)
        self._on_worker_event = on_worker_event or (lambda event, pid: None)
        self._config_frame = b""  # the serving generation's, once started
        self._timeout_s = config.request_timeout_s
        self._inline_when_idle = config.inline_when_idle
        # per model: rows run on int8, rows its range and margin guards sent to float32
        self.int8_counts = [[0, 0, 0] for _ in MODEL_NAMES]
        # how long a batch took from dispatch to answer, recently (EWMA): waiting behind
        # others, the hop, CPU contention and the model; what a new batch should expect
        # while the workers have a queue
        self.sojourn_ns = 0.0
        self._limit = config.max_inflight_per_worker
        self._background: set[asyncio.Task] = set()
        self._starting: set[WorkerHandle] = set()  # replacements not ready yet
        self._slot_restarts: dict[int, int] = {}  # a counter: a reload does not reset it
        # No worker processes (``--workers`` below ``--fronts``): this front runs every row
        # on its own copy, and counts it as a worker of its own in the statistics.
        self.inline_only = config.front_workers == 0
        self._slot_base = config.worker_slot_base
        self._inline_served = 0

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        await self._start_generation()

    async def _start_generation(self) -> None:
        """Copies what the manifest serves now, starts workers on the copy and loads the
        front's own copy from it, then makes them the generation that serves; the one
        before keeps serving if any of that fails."""
        loop = asyncio.get_running_loop()
        copy = await loop.run_in_executor(None, self._take_copy, self.config.artifacts_dir)
        config = dataclasses.replace(self.config, artifacts_dir=copy.path)
        frame = protocol.REQUEST.pack(0, protocol.CONTROL_MODEL, 0) + orjson.dumps(
            config.to_json_dict()
        )
        fresh: list[WorkerHandle] = []
        try:
            fresh = await self._start_workers(frame)
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            await self._serve(fresh, config)
        except BaseException:
            for w in fresh:
                self._kill(w)
            copy.remove()
            raise
        # Replacements of the generation before, still loading from its copy: their workers
        # have left ``active``, so they would only be retired once ready.
        for w in list(self._starting):
            self._stop_starting(w, "its generation was replaced")
        if self.copy is not None:
            self.copy.remove()  # its workers loaded it when they started
        self.copy, self._config_frame = copy, frame

    async def _serve(self, fresh: list[WorkerHandle], config: ServerConfig) -> None:
        """Makes ``fresh`` the generation that serves, with the versions it loaded (with no
        workers, the versions the front's own copy loaded)."""
        inline = await self._load_inline(config, dict(fresh[0].versions) if fresh else None)
        if fresh:
            versions = dict(fresh[0].versions)
        elif inline is None:
            raise StartFailed("the front's own copy of the models did not load")
        else:
            versions = {ep.spec.name: ep.served.version for ep in inline}
        self.active = fresh
        self.versions = versions
        self.model_versions = tuple(versions[m] for m in MODEL_NAMES)
        self.key_prefixes = tuple(key_prefix(i, v) for i, v in enumerate(self.model_versions))
        self.inline = inline

    async def _load_inline(
        self, config: ServerConfig, versions: dict[str, str] | None
    ) -> list | None:
        """The front's own copy of the models: for a lone request while every worker is idle
        (at low load the hop to a worker, two wake-ups and cold caches, costs several times
        the model itself), and for every request while no worker is ready (a crash, until
        its replacement has warmed up)."""
        load = self._load_models
        if load is None:
            from server.worker import load_endpoints as load

        loop = asyncio.get_running_loop()
        endpoints = await loop.run_in_executor(None, load, config)
        loaded = {ep.spec.name: ep.served.version for ep in endpoints}
        if versions is not None and loaded != versions:
            log.warning("front loaded %s but workers serve %s; inline lane off", loaded, versions)
            return None
        return sorted(endpoints, key=lambda ep: MODEL_INDEX[ep.spec.name])

    async def _start_workers(self, frame: bytes) -> list[WorkerHandle]:
        base = self._slot_base
        workers = [self._spawn(base + i, frame) for i in range(self.config.front_workers)]
        results = await asyncio.gather(
            *(self._await_ready(w) for w in workers), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            for w in workers:
                self._kill(w)
            raise StartFailed(str(failures[0]))
        versions = {tuple(sorted(w.versions.items())) for w in workers}
        if len(versions) > 1:
            for w in workers:
                self._kill(w)
            raise StartFailed(f"workers loaded different artifacts: {versions}")
        return workers

    def _spawn(self, slot: int, frame: bytes, restarts: int = 0) -> WorkerHandle:
        """A worker on ``frame``'s configuration: a new generation's, or for a replacement
        the serving generation's, so that it loads what the one it replaces loaded."""
        handle: WorkerHandle | None = None

        def on_frame(frame: bytes) -> None:
            self._on_frame(handle, frame)  # type: ignore[arg-type]

        def on_lost() -> None:
            self._on_worker_lost(handle)  # type: ignore[arg-type]

        link = self._launch(on_frame, on_lost)
        handle = WorkerHandle(slot=slot, link=link, restarts=restarts)
        handle.ready = asyncio.get_running_loop().create_future()
        link.send(frame)
        self._on_worker_event("started", link.pid)
        return handle

    async def _await_ready(self, worker: WorkerHandle) -> None:
        assert worker.ready is not None
        try:
            await asyncio.wait_for(
                asyncio.shield(worker.ready), timeout=self.config.worker_start_timeout_s
            )
        except TimeoutError:
            self._kill(worker)
            raise StartFailed(
                f"worker pid {worker.pid} was not ready within "
                f"{self.config.worker_start_timeout_s} s (raise --worker-start-timeout-s)"
            ) from None

    async def close(self) -> None:
        """Stops dispatch, lets in-flight batches finish (bounded), then stops the workers."""
        self._closing = True
        deadline = asyncio.get_running_loop().time() + self.config.shutdown_grace_s
        workers = self.active + self.draining
        while any(w.pending for w in workers) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        starting = list(self._starting)
        for w in starting:  # a replacement still loading is stopped too
            self._stop_starting(w, "the server is shutting down")
        workers += starting
        for w in workers:
            self._retire(w)
        await asyncio.gather(*(self._reap(w) for w in workers))
        async with self._reload_lock:  # a reload under way ends (and cleans up) first
            if self.copy is not None:
                self.copy.remove()

    def _stop_starting(self, worker: WorkerHandle, why: str) -> None:
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(StartFailed(why))
        self._kill(worker)

    # ---------------------------------------------------------------- dispatch

    def submit(self, model_idx: int, rows: int, payload: bytes, futures: list) -> None:
        """Sends one batch; each future gets its row's ``RowResult`` or an ``ApiError``."""
        req_id = next(self._ids) & 0xFFFFFFFF
        frame = protocol.REQUEST.pack(req_id, model_idx, rows) + payload
        self._dispatch(Pending(req_id, model_idx, rows, frame, futures), exclude=None)

    def idle(self) -> bool:
        """Every worker ready and without work: the inline lane may take a lone row (with no
        workers: always)."""
        if self.inline is None:
            return False
        if self.inline_only:
            return True
        if not self._inline_when_idle:
            return False
        for w in self.active:  # noqa: SIM110 - no generator on the hot path
            if w.in_flight or w.state is not WorkerState.READY:
                return False
        return True

    def run_inline(self, model_idx: int, row: bytes) -> RowResult:
        """One row on the front's own runtime (caller checked ``idle()``)."""
        assert self.inline is not None
        start = time.perf_counter_ns()
        try:
            outputs, finite = self.inline[model_idx].infer_one(row)
        except Exception as exc:
            raise WorkerFailed(f"inference failed: {type(exc).__name__}: {exc}") from None
        elapsed = time.perf_counter_ns() - start
        self._inline_served += 1
        self._on_batch(MODEL_NAMES[model_idx], 1, elapsed / 1000.0, self._pid)
        if not finite:
            raise non_finite(model_idx)
        return outputs, self.model_versions[model_idx], elapsed

    def _eligible(self, rows: int, exclude: WorkerHandle | None) -> list[WorkerHandle]:
        limit = self._limit - rows
        return [
            w
            for w in self.active
            if w.state is WorkerState.READY and w.in_flight <= limit and w is not exclude
        ]

    def _dispatch(self, pending: Pending, exclude: WorkerHandle | None) -> None:
        if self._closing:
            return self._fail(pending, ShuttingDown("the server is shutting down; retry later"))
        eligible = self._eligible(pending.rows, exclude)
        while eligible:
            worker = self.balancer.choose(eligible)
            try:
                worker.link.send(pending.frame)
                break
            except BlockingIOError:  # its socket buffer is full: another worker may take it
                eligible.remove(worker)
            except OSError:  # it has just died: a broken pipe before its EOF was read
                eligible.remove(worker)
                self._on_worker_lost(worker)
        else:
            if self.inline is not None and (self.inline_only or not self.ready()):
                return self._run_in_front(pending)
            return self._fail(pending, self._unavailable_error())
        worker.pending[pending.req_id] = pending
        worker.in_flight += pending.rows
        pending.sent_ns = time.perf_counter_ns()
        pending.timer = asyncio.get_running_loop().call_later(
            self._timeout_s, self._expire, worker, pending
        )

    def _run_in_front(self, pending: Pending) -> None:
        """No worker is ready (they crashed, or are still warming up): the front answers from
        its own copy rather than refusing. Isolation comes back with the first ready worker."""
        assert self.inline is not None
        header = protocol.REQUEST.size
        endpoint = self.inline[pending.model_idx]
        start = time.perf_counter_ns()
        try:
            status, out = endpoint.infer(memoryview(pending.frame)[header:], pending.rows)
        except Exception as exc:
            return self._fail(pending, WorkerFailed(f"inference failed: {type(exc).__name__}"))
        elapsed = time.perf_counter_ns() - start
        self._inline_served += pending.rows
        self._count_int8(pending.model_idx, endpoint.take_counts())
        frame = bytes(protocol.REPLY.size) + status + out
        self._resolve(pending, frame, self.model_versions[pending.model_idx], elapsed)
        self._on_batch(MODEL_NAMES[pending.model_idx], pending.rows, elapsed / 1000.0, self._pid)

    def _count_int8(self, model_idx: int, counts: tuple[int, int, int]) -> None:
        totals = self.int8_counts[model_idx]
        for i, n in enumerate(counts):
            totals[i] += n

    def _unavailable_error(self) -> ApiError:
        if any(w.state is WorkerState.READY for w in self.active):
            return Overloaded(
                f"all workers have {self._limit} rows in flight; retry shortly or add workers"
            )
        return NoHealthyWorker("no inference worker is ready; one is being started")

    @staticmethod
    def _fail(pending: Pending, error: BaseException) -> None:
        for fut in pending.futures:
            if not fut.done():
                fut.set_exception(error)

    def _expire(self, worker: WorkerHandle, pending: Pending) -> None:
        if worker.pending.pop(pending.req_id, None) is None:
            return
        worker.in_flight -= pending.rows
        self._fail(
            pending,
            InferenceTimeout(
                f"inference did not finish within {self._timeout_s} s; the worker is restarted"
            ),
        )
        # 2 s for a sub-millisecond model means the worker is stuck, not busy.
        log.warning("worker pid %d missed the request timeout; killing it", worker.pid)
        self._kill(worker)

    # ---------------------------------------------------------------- replies

    def _on_frame(self, worker: WorkerHandle, frame: bytes) -> None:
        reply = protocol.REPLY.unpack_from(frame)
        req_id, kind, rows, elapsed_ns, int8_rows, by_range, by_margin = reply
        if kind == protocol.KIND_READY:
            return self._on_ready(worker, frame)
        pending = worker.pending.pop(req_id, None)
        if pending is None:
            if kind == protocol.KIND_ERROR and worker.ready and not worker.ready.done():
                message = frame[protocol.REPLY.size :].decode(errors="replace")
                worker.ready.set_exception(StartFailed(f"worker failed to load: {message}"))
            return  # a reply to a batch that already timed out
        if pending.timer is not None:
            pending.timer.cancel()
        worker.in_flight -= pending.rows
        if kind == protocol.KIND_ERROR:
            if pending.attempts == 0 and self._eligible(pending.rows, worker):
                pending.attempts = 1  # inference is idempotent: another worker may serve it
                self._dispatch(pending, exclude=worker)
            elif pending.attempts == 0 and self.inline is not None:
                pending.attempts = 1  # no other worker can take it now: the front's copy
                self._run_in_front(pending)
            else:
                message = frame[protocol.REPLY.size :].decode(errors="replace")
                self._fail(pending, WorkerFailed(f"inference failed: {message}; retry"))
        else:
            worker.served += pending.rows
            self._resolve(pending, frame, worker.model_versions[pending.model_idx], elapsed_ns)
            if int8_rows:
                self._count_int8(pending.model_idx, (int8_rows, by_range, by_margin))
            self._on_batch(MODEL_NAMES[pending.model_idx], rows, elapsed_ns / 1000.0, worker.pid)
            self.sojourn_ns += (time.perf_counter_ns() - pending.sent_ns - self.sojourn_ns) * 0.05
        if worker.state is WorkerState.DRAINING and not worker.pending:
            self._retire(worker)

    @staticmethod
    def _resolve(pending: Pending, frame: bytes, version: str, elapsed_ns: int) -> None:
        status = protocol.REPLY.size
        offset = status + pending.rows
        for fut in pending.futures:
            if not fut.done():
                if frame[status] == protocol.ROW_FINITE:
                    fut.set_result((frame[offset : offset + ROW_BYTES], version, elapsed_ns))
                else:
                    fut.set_exception(non_finite(pending.model_idx))
            status += 1
            offset += ROW_BYTES

    def _on_ready(self, worker: WorkerHandle, frame: bytes) -> None:
        info = orjson.loads(frame[protocol.REPLY.size :])
        worker.versions = info["versions"]
        worker.model_versions = tuple(worker.versions[m] for m in MODEL_NAMES)
        worker.state = WorkerState.READY
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_result(None)

    # ---------------------------------------------------------------- failures

    def _on_worker_lost(self, worker: WorkerHandle) -> None:
        if worker.state is WorkerState.DEAD and not worker.pending:
            return  # retired or already counted: its end is expected
        was = worker.state
        self._detach(worker)
        worker.state = WorkerState.DEAD
        if worker.ready is not None and not worker.ready.done():
            worker.ready.set_exception(StartFailed(f"worker pid {worker.pid} exited while loading"))
        orphans = list(worker.pending.values())
        worker.pending.clear()
        worker.in_flight = 0
        for pending in orphans:
            if pending.timer is not None:
                pending.timer.cancel()
        self._spawn_task(self._retry_orphans(orphans, worker))
        self._spawn_task(self._reap(worker))
        if self._closing or was is WorkerState.DRAINING or worker not in self.active:
            return
        log.warning("worker pid %d died; starting a replacement", worker.pid)
        self._on_worker_event("died", worker.pid)
        self._spawn_task(self._replace(worker))

    async def _retry_orphans(self, orphans: list[Pending], dead: WorkerHandle) -> None:
        """A dead worker's batches go to another worker, or to the front's copy when none is
        ready. A batch gets one retry; one whose worker was killed from outside (SIGKILL:
        the OOM killer, an operator; several workers often go at once) gets two, since it
        did not kill the worker itself. A worker that crashed (SIGSEGV, an abort) may have
        died of its batch: that batch is not given a third process to crash."""
        tries = 2 if await self._killed_from_outside(dead) else 1
        for pending in orphans:
            if pending.attempts < tries:
                pending.attempts += 1
                self._dispatch(pending, exclude=dead)
            else:
                self._fail(pending, WorkerLost("the worker serving this request died; retry"))

    async def _killed_from_outside(self, worker: WorkerHandle) -> bool:
        # Its socket closes a little before the process can be reaped: wait up to ~50 ms.
        for _ in range(25):
            status = worker.link.exit_status()
            if status is not None:
                return status == -signal.SIGKILL
            await self._sleep(0.002)
        return False

    async def _replace(self, dead: WorkerHandle) -> None:
        backoff_s = 0.1
        while not self._closing and dead in self.active:
            if self.copy is not None:
                self.copy.ensure()  # a cleaner of the temporary directory may have been by
            fresh = self._spawn(dead.slot, self._config_frame, restarts=dead.restarts + 1)
            self._starting.add(fresh)
            try:
                await self._await_ready(fresh)
            except StartFailed as exc:
                if self._closing or dead not in self.active:
                    return  # stopped by close() or a reload while it loaded
                log.error("replacement worker failed: %s", exc)
                self._kill(fresh)
                await self._sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            finally:
                self._starting.discard(fresh)
            if self._closing or dead not in self.active:
                self._retire(fresh)
                return
            self.active[self.active.index(dead)] = fresh
            self._slot_restarts[fresh.slot] = self._slot_restarts.get(fresh.slot, 0) + 1
            self._on_worker_event("restarted", fresh.pid)
            return

    def _detach(self, worker: WorkerHandle) -> None:
        worker.link.close()

    def _retire(self, worker: WorkerHandle) -> None:
        """Closing the socket is the worker's signal to exit."""
        if worker.state is not WorkerState.DEAD:
            worker.state = WorkerState.DEAD
            self._detach(worker)
            self._spawn_task(self._reap(worker))

    def _kill(self, worker: WorkerHandle) -> None:
        worker.link.kill()

    async def _reap(self, worker: WorkerHandle) -> None:
        deadline = asyncio.get_running_loop().time() + self.config.shutdown_grace_s
        while not worker.link.exited():
            if asyncio.get_running_loop().time() > deadline:
                self._kill(worker)
            await asyncio.sleep(0.02)
        if worker in self.draining:
            self.draining.remove(worker)

    def _spawn_task(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---------------------------------------------------------------- reload

    async def reload(self) -> dict[str, str]:
        """Starts a new generation of workers on the current manifest, switches over once
        all are warm, and drains the old ones. The old generation keeps serving if the new
        one fails to start."""
        async with self._reload_lock:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            old = self.active
            await self._start_generation()
            for w in old:
                if w.state is WorkerState.READY:
                    w.state = WorkerState.DRAINING
                    self.draining.append(w)
                    if not w.pending:
                        self._retire(w)
                elif w.state is WorkerState.STARTING:
                    self._kill(w)
            return self.versions

    # ---------------------------------------------------------------- introspection

    def ready(self) -> bool:
        if self.inline_only:
            return self.inline is not None
        return any(w.state is WorkerState.READY for w in self.active)

    def wait_ns(self) -> float:
        """How long a new batch would wait for its answer: nothing while some ready worker
        has no batch, else what batches took recently from dispatch to answer."""
        for w in self.active:
            if w.state is WorkerState.READY and not w.pending:
                return 0.0
        return self.sojourn_ns

    def snapshot(self) -> list[WorkerSnapshot]:
        if self.inline_only:
            state = WorkerState.READY if self.inline is not None else WorkerState.STARTING
            return [
                WorkerSnapshot(self._slot_base, self._pid, state.value, 0, self._inline_served, 0)
            ]
        return [
            WorkerSnapshot(
                index=w.slot,
                pid=w.pid,
                state=w.state.value,
                in_flight=w.in_flight,
                served=w.served,
                restarts=self._slot_restarts.get(w.slot, 0),
            )
            for w in self.active + self.draining
        ]
