"""What the server costs in memory: ``python -m benchmarks.memory [--pid PID | --artifacts DIR]``.

Sums the proportional set size (PSS, ``/proc/PID/smaps_rollup``) of a process and all its
descendants. PSS divides each shared page among the processes that map it, so unlike resident
size (RSS) the sum over the front and its workers counts the shared libraries and the forked
pages once: it is what the whole server takes from the machine.

With ``--pid`` it measures a running server; with ``--artifacts`` it starts one (``--workers``,
default 2) on a free loopback port, measures once it is ready (after ``--settle-s``) and stops
it. It also lists which of the heavy packages each process has mapped (the serving processes
should map none of scipy, matplotlib or torch).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import ServerProcess, free_port, process_tree

#: packages the serving processes should not load (issue 10); found by their mapped files
HEAVY_PACKAGES: tuple[str, ...] = ("scipy", "matplotlib", "torch")


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    command: str
    pss_bytes: int
    rss_bytes: int
    heavy_packages: tuple[str, ...]  # of HEAVY_PACKAGES, those with a file mapped


def _rollup(pid: int) -> dict[str, int] | None:
    """The ``smaps_rollup`` totals in bytes, or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    out: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) == 2 and fields[1] == "kB":
            out[key] = int(fields[0]) * 1024
    return out


def mapped_packages(pid: int, packages: Sequence[str] = HEAVY_PACKAGES) -> tuple[str, ...]:
    """Which of ``packages`` have a file (a shared library, mostly) mapped in ``pid``: an
    imported package with a compiled extension always does."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ()
    paths = {line.split(maxsplit=5)[-1] for line in maps.splitlines() if "/" in line}
    return tuple(
        name
        for name in packages
        if any(f"/site-packages/{name}/" in p or f"/site-packages/{name}.libs/" in p for p in paths)
    )


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def tree_memory(root: int) -> list[ProcessMemory]:
    """PSS and RSS of ``root`` and every live descendant (processes that exit meanwhile are
    left out)."""
    rows = []
    for pid in process_tree(root):
        rollup = _rollup(pid)
        if rollup is None or "Pss" not in rollup:
            continue
        rows.append(
            ProcessMemory(
                pid, _command(pid), rollup["Pss"], rollup.get("Rss", 0), mapped_packages(pid)
            )
        )
    return rows


def tree_pss_bytes(root: int) -> int:
    """The PSS of ``root`` and all its descendants, summed."""
    return sum(row.pss_bytes for row in tree_memory(root))


def report(rows: Sequence[ProcessMemory]) -> str:
    mib = 1024 * 1024
    lines = [f"{'pid':>8} {'PSS MiB':>8} {'RSS MiB':>8}  heavy packages  command"]
    for row in rows:
        heavy = ",".join(row.heavy_packages) or "-"
        lines.append(
            f"{row.pid:>8} {row.pss_bytes / mib:8.1f} {row.rss_bytes / mib:8.1f}  "
            f"{heavy:14s}  {row.command[:60]}"
        )
    total = sum(row.pss_bytes for row in rows)
    lines.append(f"{'total':>8} {total / mib:8.1f}  ({len(rows)} processes)")
    return "\n".join(lines)


def measure_started_server(
    artifacts: Path, workers: int, settle_s: float, extra_args: Sequence[str] = ()
) -> list[ProcessMemory]:
    """Starts the server as the tests do, waits until ready (and ``settle_s``), measures,
    stops it."""
    port = free_port()
    argv = [
        sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
        "--artifacts", str(artifacts), "--workers", str(workers),
        "--no-build-artifacts-if-missing", *extra_args,
    ]  # fmt: skip
    log_path = Path(tempfile.mkstemp(prefix="memory-server-", suffix=".log")[1])
    with ServerProcess("server", argv, port, log_path) as server:
        server.wait_ready(timeout_s=120.0)
        time.sleep(settle_s)  # a measurement, not a test: let start-up allocations settle
        return tree_memory(server.pid)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pid", type=int, help="measure this running server")
    source.add_argument("--artifacts", type=Path, help="start a server on these artifacts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--settle-s", type=float, default=2.0)
    args = parser.parse_args(argv)
    if args.pid is not None:
        rows = tree_memory(args.pid)
        if not rows:
            print(f"no process {args.pid}", file=sys.stderr)
            return 1
    else:
        rows = measure_started_server(args.artifacts, args.workers, args.settle_s)
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
