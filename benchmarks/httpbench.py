"""One target on loopback: start it on a free port, wait for /readyz, then for each planned
(mode, concurrency) warm it up and measure it with a keep-alive load generator."""

from __future__ import annotations

import contextlib
import http.client
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import orjson

from benchmarks.bodies import Mode, make_bodies
from benchmarks.loadgen import Generator, LoadResult, run_load, run_python, wrk_seconds
from benchmarks.procs import LOOPBACK, ServerProcess, system_busy_seconds
from benchmarks.targets import LaunchOptions, Target, server_process

MODEL = "tactical"  # the baselines serve this one; ours serves both
MAX_DURATION_S = 600.0
MAX_CONCURRENCY = 1024


@dataclass(frozen=True, slots=True)
class RunPlan:
    mode: Mode
    concurrency: int


@dataclass(frozen=True, slots=True)
class HttpSettings:
    duration_s: float
    generator: Generator
    logs_dir: Path
    warmup_s: float = 1.0
    wrk_threads: int = 1
    # A run during which other processes took more than this share of the machine is
    # measured again (at most ``noisy_retries`` times) and the quietest attempt kept.
    noisy_share: float = 0.10
    noisy_retries: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(
                f"duration {self.duration_s} s: write 0 < seconds <= {MAX_DURATION_S:.0f}"
            )
        if not 0 <= self.noisy_retries <= 5:
            raise ValueError(f"noisy retries {self.noisy_retries}: write 0 to 5")
        if not 0 <= self.warmup_s <= MAX_DURATION_S:
            raise ValueError(
                f"warm-up {self.warmup_s} s: write 0 <= seconds <= {MAX_DURATION_S:.0f}"
            )


def plans(modes: Sequence[Mode], concurrencies: Sequence[int]) -> list[RunPlan]:
    for c in concurrencies:
        if not 1 <= c <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency {c}: write 1..{MAX_CONCURRENCY}")
    return [RunPlan(m, c) for m in modes for c in concurrencies]


def run_record(
    target: str,
    plan: RunPlan,
    duration_s: float,
    result: LoadResult,
    server_cpu_s: float,
    other_cpu_s: float | None = None,
) -> dict:
    """One entry of the result file's ``runs`` (the format monitoring.regress reads)."""
    record: dict = {
        "target": str(target),
        "mode": str(plan.mode),
        "concurrency": plan.concurrency,
        "duration_s": duration_s,
        "generator": str(result.generator),
        "requests": result.requests,
        "rps": round(result.rps, 1),
        "latency_us": {k: round(v, 1) for k, v in result.latency_us.items()},
        "errors": dict(sorted(result.errors.items())),
        "cpu": {"server_s": round(server_cpu_s, 3), "loadgen_s": round(result.loadgen_cpu_s, 3)},
    }
    if other_cpu_s is not None:
        # CPU that neither side used: other processes on a shared machine (noise).
        record["cpu"]["other_s"] = round(max(0.0, other_cpu_s), 3)
    if result.samples_us is not None:
        record["samples_us"] = result.samples_us
    return record


def _effective_duration(settings: HttpSettings) -> float:
    if settings.generator is Generator.WRK:
        return float(wrk_seconds(settings.duration_s))
    return settings.duration_s


def measured(
    server: ServerProcess,
    name: str,
    warm: Callable[[], LoadResult] | None,
    load: Callable[[], LoadResult],
) -> tuple[LoadResult, float, float]:
    """``warm()`` (it must get some successful answer), then ``load()``; returns the load's
    result, the server's CPU seconds during it and the CPU seconds other processes took."""
    if warm is not None:
        result = warm()
        if result.requests == 0 or sum(result.errors.values()) == result.requests:
            raise RuntimeError(
                f"{name}: warm-up got no successful answer "
                f"(errors {result.errors}); log {server.log_path}\n"
                f"{server.log_tail()}"
            )
    cpu_before, busy_before = server.cpu_seconds(), system_busy_seconds()
    result = load()
    server_cpu = server.cpu_seconds() - cpu_before
    other = system_busy_seconds() - busy_before - server_cpu - result.loadgen_cpu_s
    return result, server_cpu, other


def measure(
    server: ServerProcess, target: str, plan: RunPlan, settings: HttpSettings, seed: int
) -> dict:
    bodies = make_bodies(MODEL, plan.mode, seed)
    # Cold: warm the code paths with other observations, so the measured ones stay unseen.
    # Warm: the warm-up is what fills the cache with the working set.
    warm_bodies = bodies if plan.mode is Mode.WARM else make_bodies(MODEL, Mode.COLD, seed + 7919)
    warm = None
    if settings.warmup_s > 0:
        warm = partial(run_python, server.port, warm_bodies, plan.concurrency, settings.warmup_s)
    load = partial(
        run_load,
        settings.generator,
        server.port,
        bodies,
        plan.concurrency,
        settings.duration_s,
        wrk_threads=settings.wrk_threads,
    )
    result, server_cpu, other = measured(server, target, warm, load)
    record = run_record(target, plan, _effective_duration(settings), result, server_cpu, other)
    record["bodies"] = bodies.describe()
    if target in _OURS:
        with contextlib.suppress(OSError, ValueError, KeyError):
            record["server"] = server_view(server.port)
    return record


_OURS = {t.value for t in Target if t.is_ours}
STAGES = ("parse", "cache", "queue", "inference", "total")


def server_view(port: int) -> dict:
    """What our server says of the tactical requests of its /stats window (60 s: on a fresh
    server, the run just measured and its warm-up): p50, p99 and mean per stage, "respond"
    as the mean left after the others (rendering, writing, recording), and the optimizer's
    batch-1 p50 for the served artifact (/models)."""
    window = _get_json(port, "/stats")["models"][MODEL]["window"]["latency_us"]
    stages = {
        stage: {k: window[stage][k] for k in ("count", "p50", "p99", "mean")} for stage in STAGES
    }
    means = [stages[stage]["mean"] or 0.0 for stage in STAGES[:-1]]
    total_mean = stages["total"]["mean"]
    respond = None if total_mean is None else round(total_mean - sum(means), 3)
    models = _get_json(port, "/models")
    return {
        "stages_us": stages,
        "respond_mean_us": respond,
        "optimizer_p50_us": models[MODEL]["latency_us"]["p50"],
    }


def _get_json(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        connection.request("GET", path)
        return orjson.loads(connection.getresponse().read())
    finally:
        connection.close()


def is_noisy(record: dict, settings: HttpSettings, cores: int) -> bool:
    other = record["cpu"].get("other_s")
    return other is not None and other > settings.noisy_share * record["duration_s"] * cores


def quietest(
    measure_once: Callable[[int], dict], settings: HttpSettings, log: Callable[[str], None] = print
) -> dict:
    """``measure_once(attempt)``, repeated while other processes disturb it (bounded by
    ``noisy_retries``); returns the attempt they disturbed least."""
    cores = os.cpu_count() or 1
    attempts = [measure_once(0)]
    while is_noisy(attempts[-1], settings, cores) and len(attempts) <= settings.noisy_retries:
        log(f"    other processes took {attempts[-1]['cpu']['other_s']:.2f} CPU-s; measuring again")
        attempts.append(measure_once(len(attempts)))
    return min(attempts, key=lambda r: r["cpu"].get("other_s") or 0.0)


def measure_quietly(
    server: ServerProcess,
    target: str,
    plan: RunPlan,
    settings: HttpSettings,
    seed: int,
    log: Callable[[str], None] = print,
) -> dict:
    """``measure`` with fresh bodies on each noisy retry (see ``quietest``)."""
    return quietest(
        lambda attempt: measure(server, target, plan, settings, seed + 500 * attempt),
        settings,
        log,
    )


@contextlib.contextmanager
def running(
    targets: Sequence[Target], settings: HttpSettings, launch: LaunchOptions, log_suffix: str = ""
) -> Iterator[dict[Target, ServerProcess]]:
    """Every target started before any is waited for (their start-ups overlap), each ready on
    return, all stopped on exit; each logs to ``<logs_dir>/<target><log_suffix>.log``."""
    with contextlib.ExitStack() as stack:
        servers = {
            target: stack.enter_context(
                server_process(target, launch, settings.logs_dir / f"{target}{log_suffix}.log")
            )
            for target in targets
        }
        for target, server in servers.items():
            server.wait_ready(target.ready_timeout_s)
        yield servers


def run_target(
    target: Target,
    run_plans: Sequence[RunPlan],
    settings: HttpSettings,
    launch: LaunchOptions,
    seed: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Starts ``target``, measures every plan in order, stops it; returns the run records."""
    records = []
    with running((target,), settings, launch) as servers:
        for k, plan in enumerate(run_plans):
            log(
                f"  {target} {plan.mode}@{plan.concurrency} for {settings.duration_s:g} s "
                f"({settings.generator}) ..."
            )
            records.append(
                measure_quietly(servers[target], target, plan, settings, seed * 1000 + k, log)
            )
    return records


def run_interleaved(
    targets: Sequence[Target],
    plan: RunPlan,
    rounds: int,
    settings: HttpSettings,
    launch: LaunchOptions,
    seed: int = 7,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Every target up at once, then ``interleave``d."""
    with running(targets, settings, launch, log_suffix=".pairs") as servers:
        named = {str(target): servers[target] for target in targets}
        return interleave(named, plan, rounds, settings, seed, log)


def interleave(
    servers: Mapping[str, ServerProcess],
    plan: RunPlan,
    rounds: int,
    settings: HttpSettings,
    seed: int = 7,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """``plan`` measured on each running server in turn, ``rounds`` times, the order
    reversed every other round (A B, B A, A B): drift on a shared machine then falls on both
    sides alike. Round k sends the same bodies (seed + k) to every server. Each record
    carries its ``pair`` (round) number."""
    records = []
    names = list(servers)
    for k in range(rounds):
        order = names if k % 2 == 0 else names[::-1]
        for name in order:
            log(f"  pair {k + 1}/{rounds}: {name} {plan.mode}@{plan.concurrency} ...")
            record = measure_quietly(servers[name], name, plan, settings, seed + k, log)
            record["pair"] = k
            records.append(record)
    return records
