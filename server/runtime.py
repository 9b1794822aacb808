"""Everything the server holds while it runs, started and stopped by the app's lifespan:
the manifest, the worker pool, the cache, the batchers, the monitor and the 1 s ticker."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from models.spec import SPECS
from monitoring import Monitor, MonitorConfig, WorkerSnapshot
from optimize.loader import load_manifest
from optimize.manifest import ManifestError
from server.batching import Batcher
from server.cache import ResponseCache
from server.codecs.native import NativeEndpoint
from server.codecs.oip_rest import OipRestEndpoint

if TYPE_CHECKING:
    from server.grpc_front import GrpcFront
from server.config import ServerConfig
from server.core import InferCore
from server.fronts import FrontShare
from server.pool import MODEL_INDEX, MODEL_NAMES, WorkerPool
from server.ratelimit import RateLimiter
from server.routes import Routes
from server.served_metrics import Circuits, circuits, closed, merge_circuits, merge_int8
from server.validation import RequestParser

_GC_YOUNG = 20_000


def _heap_trimmer() -> Any:
    """glibc's ``malloc_trim``, or a no-op where there is none. The front's request path
    allocates and frees buffers of many sizes (bodies, frames of 1 to 32 rows, answers),
    and glibc keeps the freed pages: with no Python object left behind (tracemalloc's
    difference between snapshots 48 s of load apart: under 100 KB), the front's anonymous
    memory grew ~0.7 MiB per 200,000 requests for as long as the load lasted (the soak:
    225.8 -> 229.9 MiB from its 7th to 14th round). A trim (0.5 ms, at most ~1 ms at 24,000
    requests/s) every 2 s (_TRIM_EVERY_TICKS) keeps it flat: the soak's rounds 4-14 within
    217.1-220.2 MiB, no trend. Once a second was as flat but its stalls of the event loop
    showed in the 64-client p99.9 (4.6-5.4 ms -> 5.8-7.6); every 10 s still crept (the
    window of one trim's cycle); every 2 s: throughput x0.977 at 16 clients, x0.997 at 64,
    p99.9 x1.11 at 64 (pairs 0.95-1.26), against 1e7035e in 4 interleaved pairs."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda _pad: 0


_trim_heap = functools.partial(_heap_trimmer(), 0)
_TRIM_EVERY_TICKS = 2

_STALE_S = 5.0  # a front that has not written its counts for this long is not serving

log = logging.getLogger("server")


class ReloadRefused(RuntimeError):
    pass


def monitor_config(config: ServerConfig, manifest: Any) -> MonitorConfig:
    baseline = {}
    for name in MODEL_NAMES:
        entry = manifest.models[name]
        latency = entry.selected_variant.latency_us
        if latency is not None:
            baseline[name] = latency.as_dict()
    return MonitorConfig(
        window_s=config.stats_window_s,
        history_dir=config.history_dir,
        webhook_url=config.alert_webhook_url,
        baseline_latency_us=baseline,
        enabled=config.monitoring,
        models=MODEL_NAMES,
    )


class Runtime:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.manifest: Any = None
        self.pool: WorkerPool | None = None
        self.core: InferCore | None = None
        self.routes: Routes | None = None
        self.grpc: GrpcFront | None = None
        self.monitor: Monitor | None = None
        self.cache = ResponseCache(config.cache_size, config.cache_ttl_s)
        self._ticker: asyncio.Task | None = None
        # one of several fronts: the directory where they add up their statistics
        self.share: FrontShare | None = None
        if config.front_state_dir is not None and config.front_slot is not None:
            self.share = FrontShare(config.front_state_dir, config.front_slot, config.fronts)
        self._cache_base = {"hits": 0, "misses": 0, "coalesced": 0}
        # what this slot's earlier lives counted: circuit openings per model, int8 rows
        self._opened_base: dict[str, int] = {}
        self._int8_base: list[list[int]] = []
        self._started_at = time.time()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # read for the monitor's configuration; the pool checks every file as it copies them,
        # and the manifest that serves is the copy's
        self.manifest = await loop.run_in_executor(None, load_manifest, self.config.artifacts_dir)
        self.monitor = Monitor(monitor_config(self.config, self.manifest))
        if self.share is not None:
            earlier = self.share.earlier_life()
            if earlier is not None:  # this slot's front before a restart: count on from it
                self.monitor.inherit(earlier["monitor"])
                self._cache_base = earlier["cache_counts"]
                if "served" in earlier:
                    served = earlier["served"]
                    self._opened_base = {
                        name: c["opened_total"] for name, c in served["circuits"].items()
                    }
                    self._int8_base = served["int8"]
        pool = WorkerPool(
            self.config,
            on_batch=self.monitor.record_batch,
            on_worker_event=self.monitor.worker_event,
        )
        await pool.start()
        self.pool = pool
        try:
            await self._serve(pool)
        except BaseException:  # stop what has started (workers, their copy of the artifacts)
            await self.stop()
            raise

    async def _serve(self, pool: WorkerPool) -> None:
        loop = asyncio.get_running_loop()
        assert pool.copy is not None
        self.manifest = pool.copy.manifest  # what it loaded, if the files changed meanwhile
        batchers = [
            Batcher(
                i,
                pool.submit,
                max_batch_size=self.config.max_batch_size,
                max_queue_delay_us=self.config.max_queue_delay_us,
                loop=loop,
            )
            for i in range(len(MODEL_NAMES))
        ]
        limiter = (
            RateLimiter(self.config.rate_limit_rps, self.config.rate_limit_burst)
            if self.config.rate_limit_rps > 0
            else None
        )
        self.core = core = InferCore(
            self.config, pool, self.cache, batchers, self.monitor, rate_limiter=limiter
        )
        parser = RequestParser(SPECS, MODEL_INDEX, self.config.max_request_batch)
        self.routes = Routes(
            NativeEndpoint(core, parser), OipRestEndpoint(core, self.config.max_request_batch)
        )
        if self.config.grpc_port is not None:
            # imported only when asked for: grpc costs the front memory it need not carry
            from server.grpc_front import GrpcFront

            grpc = GrpcFront(self.config, core, self)
            await grpc.start()
            self.grpc = grpc
        self._ticker = loop.create_task(self._tick_forever())
        # Everything loaded so far (runtimes, modules, models) lives as long as the server:
        # keep it out of the collector's full passes.
        gc.collect()
        gc.freeze()
        # The young generation's default threshold (700) ran ~250 collections a second at
        # 20,000 requests/s (85 us each, 2.4% of the front with the older generations they
        # trigger); a request's objects die by reference counting, so a collection found
        # almost nothing. 20,000 net allocations between collections: none in a 10 s run.
        gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
        log.info(
            "serving %s with %d workers (pids %s)",
            ", ".join(f"{m}@{v}" for m, v in pool.versions.items()),
            len(pool.active),
            ", ".join(str(w.pid) for w in pool.active),
        )

    async def stop(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        if self.core is not None:
            self.core.accepting = False
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.core is not None:
            for batcher in self.core.batchers:
                batcher.flush()
        if self.pool is not None:
            await self.pool.close()
        if self.monitor is not None:
            self.publish()
            self.monitor.close()

    async def reload(self) -> dict[str, str]:
        assert self.pool is not None
        try:
            versions = await self.pool.reload()
        except ManifestError as exc:
            raise ReloadRefused(f"new manifest refused, still serving the old one: {exc}") from exc
        except Exception as exc:
            raise ReloadRefused(f"new workers failed to start, still serving: {exc}") from exc
        self.manifest = self.pool.copy.manifest
        log.info("reloaded: %s", versions)
        return versions

    def workers(self) -> list[WorkerSnapshot]:
        return [] if self.pool is None else self.pool.snapshot()

    def queue_depth(self) -> dict[str, int]:
        if self.core is None:
            return {}
        return {name: b.queued for name, b in zip(MODEL_NAMES, self.core.batchers, strict=True)}

    async def _tick_forever(self) -> None:
        for tick in itertools.count(1):
            await asyncio.sleep(1.0)
            self.cache.expire()
            if tick % _TRIM_EVERY_TICKS == 0:
                await asyncio.sleep(0)
                _trim_heap()
            try:
                # a pass of the event loop after each step: requests wait behind one step
                # (at most ~2 ms), not behind the whole tick
                for step in self.monitor.tick_steps(self.workers(), self.queue_depth()):
                    await asyncio.sleep(0)
                    step()
            except Exception:  # a broken statistic must never stop the server
                log.exception("monitor tick failed")
            if self.share is not None:
                # a pass of the event loop between the two: requests waiting behind the tick
                # are answered before the export (~2 ms) runs, not after both
                await asyncio.sleep(0)
                try:
                    self.publish()
                except Exception:
                    log.exception("publishing this front's statistics failed")

    # ------------------------------------------------------------------ several fronts

    def cache_counts(self) -> dict[str, int]:
        """This front's cache counters since its slot first started."""
        cache, base = self.cache, self._cache_base
        return {
            "hits": base["hits"] + cache.hits,
            "misses": base["misses"] + cache.misses,
            "coalesced": base["coalesced"] + cache.coalesced,
        }

    def front_info(self) -> dict[str, Any]:
        return {
            "slot": self.config.front_slot or 0,
            "pid": os.getpid(),
            "started_at": self._started_at,
            "requests": self.monitor.own_requests() if self.monitor is not None else 0,
        }

    def publish(self) -> None:
        """This front's counts for the other fronts and for its own next life."""
        if self.share is None or self.monitor is None:
            return
        doc = {
            "front": self.front_info(),
            "published_at": time.time(),
            "monitor": self.monitor.export_state(),
            "cache_counts": self.cache_counts(),
            "cache_entries": len(self.cache),
        }
        if self.core is not None:
            doc["served"] = self.served_view()
        self.share.publish(doc)

    def peer_fronts(self) -> list[dict[str, Any]]:
        """The other fronts' latest documents, their counts added to the monitor's views.
        This front writes its own first: a later answer from another front then reads this
        front's counts at least as high as this answer shows them, so counters never go
        down from one scrape to the next, whichever front each reaches."""
        if self.share is None or self.monitor is None:
            return []
        self.publish()
        docs = self.share.peers()
        self.monitor.set_peers(doc["monitor"] for doc in docs)
        return docs

    def served_view(self) -> dict[str, Any]:
        """This front's circuits and int8 counters, its earlier lives' included."""
        assert self.core is not None
        own = circuits(MODEL_NAMES, self.core.breakers, self._opened_base)
        return {"circuits": own, "int8": merge_int8([self.core.pool.int8_counts, self._int8_base])}

    def served_totals(self, peers: list[dict[str, Any]]) -> tuple[Circuits, list[list[int]]]:
        """Every front's circuits (a front silent for over 5 s counted, its state not) and
        int8 counters, added up."""
        own = self.served_view()
        circuit_views, int8_views = [own["circuits"]], [own["int8"]]
        now = time.time()
        for doc in peers:
            if "served" in doc:
                view = doc["served"]
                fresh = now - doc["published_at"] <= _STALE_S
                circuit_views.append(view["circuits"] if fresh else closed(view["circuits"]))
                int8_views.append(view["int8"])
        return merge_circuits(circuit_views), merge_int8(int8_views)
