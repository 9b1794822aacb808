"""A soak: ``python -m benchmarks.soak`` sends a million mixed requests to our server and
records its memory (PSS of the front and every worker) as the cache fills and after.

The mix, each a wrk process of its own running side by side in rounds:

- ``cold``: distinct tactical observations to ``POST /infer`` (each a cache miss: they fill
  the cache to ``--cache-size`` and then make it evict);
- ``warm``: a working set of 64 strategic observations, again and again (cache hits);
- ``batch``: 8 distinct tactical observations per request;
- ``oip``: distinct tactical observations as Open Inference Protocol JSON tensors;
- ``invalid``: a wrong shape (422 every time).

The server runs with its defaults (the cache holds 100,000 rows, /stats keeps a 60 s
window of per-second slices). The goal the dependability issue sets: under 180 MB at start,
and flat once the cache is full. Both the cache and the statistics window fill first, so
"steady" is from the first round with the cache full and the window (plus a round) behind.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson

from benchmarks.bodies import BodySet, Mode, make_bodies
from benchmarks.loadgen import run_wrk, wrk_path
from benchmarks.memory import tree_memory
from benchmarks.results import new_document, write_document
from benchmarks.targets import LaunchOptions, Target, server_process

MIB = 1024 * 1024
STATS_WINDOW_S = 60.0  # the server's default --stats-window-s


@dataclass(frozen=True)
class Stream:
    name: str
    path: str
    concurrency: int


STREAMS = (
    Stream("cold", "/infer", 4),
    Stream("warm", "/infer", 2),
    Stream("batch", "/infer", 2),
    Stream("oip", "/v2/models/tactical/infer", 2),
    Stream("invalid", "/infer", 1),
)


def _batch_bodies(seed: int, rows: int = 8, templates: int = 256) -> BodySet:
    """``observations`` of ``rows`` distinct observations; the sequence number stands in the
    first one's first value, as in ``make_bodies``."""
    single = make_bodies("tactical", Mode.COLD, seed, templates=templates)
    rng = np.random.default_rng(seed + 1)
    suffixes = []
    for suffix in single.suffixes:
        rest = rng.standard_normal((rows - 1, 60, 7)).round(4).tolist()
        tail = b"," + orjson.dumps(rest)[1:-1] if rest else b""
        suffixes.append(suffix[:-1] + tail + b"]}")
    prefix = b'{"model":"tactical","observations":[[['
    return BodySet("tactical", Mode.COLD, prefix, tuple(suffixes))


def _oip_bodies(seed: int) -> BodySet:
    single = make_bodies("tactical", Mode.COLD, seed, templates=512)
    prefix = b'{"inputs":[{"name":"observation","datatype":"FP32","shape":[1,60,7],"data":[['
    return BodySet("tactical", Mode.COLD, prefix, tuple(s[:-1] + b"}]}" for s in single.suffixes))


def _invalid_bodies() -> BodySet:
    short = make_bodies("tactical", Mode.WARM, 7, templates=8)
    # drop the last row: 59 x 7, a 422
    suffixes = tuple(s[: s.rindex(b"],[")] + b"]]}" for s in short.suffixes)
    return BodySet("tactical", Mode.WARM, short.prefix, suffixes)


def bodies_for(stream: Stream, round_index: int) -> BodySet:
    seed = 1000 + round_index
    if stream.name == "cold":
        return make_bodies("tactical", Mode.COLD, seed)
    if stream.name == "warm":
        return make_bodies("strategic", Mode.WARM, 3)
    if stream.name == "batch":
        return _batch_bodies(seed)
    if stream.name == "oip":
        return _oip_bodies(seed + 500)
    return _invalid_bodies()


def _memory(pid: int) -> dict[str, float]:
    rows = tree_memory(pid)
    front = sum(r.pss_bytes for r in rows if r.pid == pid)
    workers = sum(r.pss_bytes for r in rows if r.pid != pid)
    return {
        "front_pss_mib": round(front / MIB, 1),
        "workers_pss_mib": round(workers / MIB, 1),
        "total_pss_mib": round((front + workers) / MIB, 1),
        "processes": len(rows),
    }


def soak(artifacts: Path, requests: int, round_s: float, log: Path) -> dict:
    server = server_process(Target.OURS, LaunchOptions(artifacts=artifacts, workers=2), log)
    rounds: list[dict] = []
    with server:
        server.wait_ready(timeout_s=240.0)
        url = f"http://127.0.0.1:{server.port}"
        time.sleep(1.0)
        start = {"round": 0, "requests": 0, **_memory(server.pid)}
        rounds.append(start)
        print(f"start: {start}", flush=True)
        total = 0
        statuses: dict[str, int] = {}
        index = 0
        began = time.monotonic()
        with ThreadPoolExecutor(len(STREAMS)) as pool:
            while total < requests:
                index += 1
                jobs = [
                    pool.submit(
                        run_wrk, server.port, bodies_for(s, index), s.concurrency, round_s, s.path
                    )
                    for s in STREAMS
                ]
                results = [job.result() for job in jobs]
                sent = {s.name: r.requests for s, r in zip(STREAMS, results, strict=True)}
                total += sum(sent.values())
                for r in results:
                    for status, count in r.errors.items():
                        statuses[status] = statuses.get(status, 0) + count
                cache = httpx.get(f"{url}/stats", timeout=10).json()["cache"]
                row = {
                    "round": index,
                    "elapsed_s": round(time.monotonic() - began, 1),
                    "requests": total,
                    "sent": sent,
                    "cache_entries": cache["entries"],
                    "non_2xx": dict(statuses),
                    **_memory(server.pid),
                }
                rounds.append(row)
                print(
                    f"round {index}: {total:,} requests, cache {cache['entries']:,}, "
                    f"PSS {row['total_pss_mib']} MiB (front {row['front_pss_mib']})",
                    flush=True,
                )
        stats = httpx.get(f"{url}/stats", timeout=10).json()
    full = [r for r in rounds[1:] if r["cache_entries"] >= 100_000]
    steady = [r for r in full if r["elapsed_s"] >= STATS_WINDOW_S + round_s]
    return {
        "rounds": rounds,
        "requests": total,
        "status": stats["overall"]["since_start"]["status"],
        "start_pss_mib": rounds[0]["total_pss_mib"],
        "end_pss_mib": rounds[-1]["total_pss_mib"],
        "cache_full_pss_mib": _ends(full),
        "steady_pss_mib": _ends(steady),
    }


def _ends(rounds: list[dict]) -> list[float] | None:
    """Total PSS at the first and the last of ``rounds``."""
    return [rounds[0]["total_pss_mib"], rounds[-1]["total_pss_mib"]] if rounds else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--round-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if wrk_path() is None:
        print("the soak needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    log = Path(tempfile.mkstemp(prefix="soak-server-", suffix=".log")[1])
    result = soak(args.artifacts, args.requests, args.round_s, log)
    document = new_document()
    document["kind"] = "soak"
    document["soak"] = result
    out = write_document(document, args.out, "soak")
    print(
        f"{result['requests']:,} requests; PSS {result['start_pss_mib']} MiB at start, "
        f"{result['end_pss_mib']} MiB at the end; cache full from "
        f"{result['cache_full_pss_mib']} MiB; steady (cache and stats window full) "
        f"{result['steady_pss_mib']} MiB; statuses {result['status']}; {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
