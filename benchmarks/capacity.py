"""``python -m benchmarks capacity --rps R --p99-ms T``: how many replicas a target load
needs, from measured runs of our server (result files of ``compare`` or ``http``).

A replica is one server as benchmarked: the benchmark host's cores, one front process and
its workers. Its capacity at a p99 target is the highest throughput among the client
counts whose median p99 met the target; the spread is over every run at that count (runs
from several files pool). Replicas = ceil(R / (headroom x per-replica rps)), given both for
the median and for the slowest run, and never fewer than ``--min-replicas`` (one may fail).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks.results import RESULTS_DIR

TARGET = "ours"
# A run during which other processes took more than this share of the host is noisy.
NOISY_SHARE = 0.10


@dataclass(frozen=True, slots=True)
class Point:
    """One measured run: clients, throughput, p99 and the server's CPU (cores busy)."""

    source: str
    concurrency: int
    rps: float
    p99_us: float
    server_cores: float
    host_cores: int
    other_share: float = 0.0  # of the host's CPU, used by other processes during the run


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, unit: str = "", digits: int = 0) -> str:
        return (
            f"{self.median:,.{digits}f}{unit} (min {self.low:,.{digits}f}, "
            f"max {self.high:,.{digits}f}, {self.n} run{'s' * (self.n != 1)})"
        )


@dataclass(frozen=True, slots=True)
class Plan:
    rps: float
    p99_ms: float
    concurrency: int
    per_replica_rps: Spread
    per_core_rps: Spread
    p99_us: Spread
    server_cores: Spread
    host_cores: int
    replicas: int
    replicas_worst: int
    headroom: float
    noisy_runs: int = 0


def points_from(documents: Iterable[tuple[str, dict]]) -> list[Point]:
    out = []
    for source, doc in documents:
        cores = int(doc.get("machine", {}).get("cores") or 1)
        for run in [*doc.get("runs", []), *doc.get("pairs", [])]:
            if run.get("target") != TARGET or run.get("mode") != "cold":
                continue
            if sum(run.get("errors", {}).values()) or not run.get("duration_s"):
                continue
            busy = run["cpu"]["server_s"] / run["duration_s"]
            other = (run["cpu"].get("other_s") or 0.0) / (run["duration_s"] * cores)
            out.append(
                Point(source, int(run["concurrency"]), float(run["rps"]),
                      float(run["latency_us"]["p99"]), busy, cores, other)
            )  # fmt: skip
    return out


def plan(
    points: Sequence[Point],
    rps: float,
    p99_ms: float,
    *,
    headroom: float = 0.7,
    min_replicas: int = 2,
) -> Plan | str:
    """The plan, or a sentence saying why no replica count meets the target."""
    if not points:
        return "no cold runs of our server in the given results"
    by_clients: dict[int, list[Point]] = {}
    for p in points:
        by_clients.setdefault(p.concurrency, []).append(p)
    meeting = {
        n: runs
        for n, runs in by_clients.items()
        if statistics.median(p.p99_us for p in runs) <= p99_ms * 1000
    }
    if not meeting:
        best = min(statistics.median(p.p99_us for p in runs) for runs in by_clients.values())
        return (
            f"no measured load met p99 <= {p99_ms:g} ms (the lowest median p99 was "
            f"{best / 1000:.2f} ms): more replicas do not make one request faster"
        )
    concurrency, runs = max(
        meeting.items(), key=lambda item: statistics.median(p.rps for p in item[1])
    )
    per_replica = Spread.of([p.rps for p in runs])
    return Plan(
        rps=rps,
        p99_ms=p99_ms,
        concurrency=concurrency,
        per_replica_rps=per_replica,
        per_core_rps=Spread.of([p.rps / p.server_cores for p in runs if p.server_cores > 0]),
        p99_us=Spread.of([p.p99_us for p in runs]),
        server_cores=Spread.of([p.server_cores for p in runs]),
        host_cores=runs[0].host_cores,
        replicas=max(min_replicas, math.ceil(rps / (headroom * per_replica.median))),
        replicas_worst=max(min_replicas, math.ceil(rps / (headroom * per_replica.low))),
        headroom=headroom,
        noisy_runs=sum(p.other_share > NOISY_SHARE for p in runs),
    )


def plan_text(result: Plan | str) -> str:
    if isinstance(result, str):
        return result
    r = result
    return "\n".join(
        [
            f"target: {r.rps:,.0f} requests/s at p99 <= {r.p99_ms:g} ms",
            f"replica: one server on {r.host_cores} cores (front + workers), as benchmarked",
            f"  throughput at {r.concurrency} clients (the highest load that met the p99): "
            + r.per_replica_rps.text(" req/s"),
            f"  p99 there: {r.p99_us.text(' us')}",
            f"  server CPU: {r.server_cores.text(' cores', 2)}",
            f"  per busy core: {r.per_core_rps.text(' req/s')}",
            f"needs {r.replicas} replicas of {r.host_cores} cores at {r.headroom:.0%} "
            f"utilisation ({r.replicas_worst} at the slowest run's throughput)",
        ]
        + (
            [
                f"warning: in {r.noisy_runs} of {r.per_replica_rps.n} runs other processes took "
                f"over {NOISY_SHARE:.0%} of the host's CPU: these figures understate a replica"
            ]
            if r.noisy_runs
            else []
        )
    )


def add_capacity_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rps", type=float, required=True, help="target requests per second")
    parser.add_argument("--p99-ms", type=float, required=True, help="p99 latency target, ms")
    parser.add_argument(
        "--from",
        dest="sources",
        type=Path,
        nargs="*",
        default=None,
        help=f"result files (default: every compare/http result in {RESULTS_DIR.name}/)",
    )
    parser.add_argument(
        "--headroom", type=float, default=0.7, help="share of a replica's capacity to plan on"
    )
    parser.add_argument("--min-replicas", type=int, default=2)


def _default_sources() -> list[Path]:
    return sorted([*RESULTS_DIR.glob("compare-*.json"), *RESULTS_DIR.glob("http-*.json")])


def cmd_capacity(args: argparse.Namespace) -> int:
    if not 0 < args.headroom <= 1:
        raise ValueError(f"--headroom {args.headroom}: write a share from 0 to 1, e.g. 0.7")
    sources = args.sources or _default_sources()
    if not sources:
        raise ValueError(
            f"no results in {RESULTS_DIR}: run python -m benchmarks http --target ours "
            "--concurrency 1,16,64 first, or pass --from FILE"
        )
    documents = [(str(p), orjson.loads(p.read_bytes())) for p in sources]
    print(f"from {len(documents)} result file(s): " + ", ".join(Path(s).name for s, _ in documents))
    result = plan(
        points_from(documents),
        args.rps,
        args.p99_ms,
        headroom=args.headroom,
        min_replicas=args.min_replicas,
    )
    print(plan_text(result))
    return 0 if isinstance(result, Plan) else 1
