"""The result file: where it goes, what machine and software produced it."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

import orjson

from benchmarks.procs import REPO_ROOT
from optimize.host import cpu_model, package_version

RESULTS_DIR = REPO_ROOT / "bench-results"
LIBRARIES = (
    "torch",
    "onnxruntime",
    "numpy",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "uvloop",
    "httptools",
    "orjson",
)


def machine_info() -> dict:
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def busy_machine_warning(threshold: float = 0.5) -> str | None:
    """Other work on a 2-core machine moves every figure; say so before measuring."""
    load = os.getloadavg()[0]
    if load <= threshold:
        return None
    return (
        f"warning: load average {load:.2f} before the run: other processes are using the "
        "CPU, figures will be noisy (see cpu.other_s per run)"
    )


def wrk_version(exe: str | None) -> str | None:
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else None


def versions(wrk: str | None = None) -> dict:
    found = {"python": platform.python_version()}
    found.update({name: package_version(name) for name in LIBRARIES})
    found["wrk"] = wrk_version(wrk)
    return found


def git_commit(root: Path = REPO_ROOT) -> str:
    """The checkout's HEAD commit, ``-dirty`` when tracked files differ from it."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=5,
    )
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def new_document(wrk: str | None = None) -> dict:
    """The envelope monitoring.regress and monitoring.report read; callers fill ``runs``
    (one per target, mode and concurrency), ``pairs`` (interleaved runs, each with its
    ``pair`` number), ``inprocess`` and ``ratios``."""
    return {
        "kind": "benchmark",
        "machine": machine_info(),
        "versions": versions(wrk),
        "git_commit": git_commit(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runs": [],
        "pairs": [],
        "inprocess": [],
        "ratios": {},
    }


def write_document(document: dict, out: Path | None, command: str) -> Path:
    if out is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = RESULTS_DIR / f"{command}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return out
