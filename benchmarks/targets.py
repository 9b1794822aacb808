"""The servers a benchmark can drive, and the command that starts each one."""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import LOOPBACK, REPO_ROOT, ServerProcess, free_port


class Target(enum.StrEnum):
    OURS = "ours"
    # Our server started with --no-monitoring, for the monitoring-overhead bar.
    OURS_NO_MONITORING = "ours_no_monitoring"
    PLAIN_FASTAPI = "plain_fastapi"
    TUNED_ORT = "tuned_ort"
    RAW_FLOOR = "raw_floor"

    @property
    def is_ours(self) -> bool:
        return self in (Target.OURS, Target.OURS_NO_MONITORING)

    @property
    def ready_timeout_s(self) -> float:
        """Our server may build missing artifacts before it reports ready."""
        return 240.0 if self.is_ours else 90.0


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    artifacts: Path
    workers: int | None = None  # None: the server's own default
    cache_size: int | None = None  # None: the server's own default; 0 turns the cache off
    fronts: int | None = None  # None: the server's own default (1)
    server_args: tuple[str, ...] = ()  # more flags for our server (e.g. --grpc-port P)


def server_available() -> bool:
    return (REPO_ROOT / "server" / "__main__.py").is_file()


def command(target: Target, port: int, options: LaunchOptions) -> list[str]:
    if not target.is_ours:
        return [
            sys.executable,
            "-m",
            f"benchmarks.baselines.{target.value}",
            "--port",
            str(port),
            "--artifacts",
            str(options.artifacts),
        ]
    argv = server_command(port, options)
    if target is Target.OURS_NO_MONITORING:
        argv.append("--no-monitoring")
    return argv


def server_command(port: int, options: LaunchOptions) -> list[str]:
    """``python -m server`` on ``port``: whichever tree's ``server`` the process imports."""
    argv = [
        sys.executable,
        "-m",
        "server",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--artifacts",
        str(options.artifacts),
    ]
    if options.workers is not None:
        argv += ["--workers", str(options.workers)]
    if options.fronts is not None:
        argv += ["--fronts", str(options.fronts)]
    if options.cache_size is not None:
        argv += ["--cache-size", str(options.cache_size)]
    return argv + list(options.server_args)


def server_process(target: Target, options: LaunchOptions, log_path: Path) -> ServerProcess:
    """``target`` on a free loopback port, not yet started (enter it to start it)."""
    port = free_port()
    return ServerProcess(str(target), command(target, port, options), port, log_path)
