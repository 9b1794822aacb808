"""``python -m server --fronts N`` (N > 1): start N front processes on one port and keep
them running.

The supervisor holds the port (so that ``--port 0`` picks one port for every front), starts
each front as ``python -m server`` with the same flags and environment plus its slot, the
port and the shared statistics directory, starts again a front that exits (back-off from
0.1 s to 5 s), passes SIGHUP (reload) on to every front and, on SIGTERM or SIGINT, stops
them all (each drains its connections as a single server does). Each front starts and stops
its own inference workers, which die with it; the fronts die with the supervisor.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from server.config import ServerConfig
from server.fronts import reuseport_socket

log = logging.getLogger("server.supervisor")

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.05
_MAX_BACKOFF_S = 5.0


def _die_with_parent() -> None:
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Front:
    """One front process in its slot, started again when it exits."""

    def __init__(self, slot: int, argv: list[str]) -> None:
        self.slot = slot
        self.argv = argv
        self.process: subprocess.Popen | None = None
        self.backoff_s = 0.1
        self.next_start = 0.0
        self.started = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", *self.argv], preexec_fn=_die_with_parent
        )
        self.started = time.monotonic()
        log.info("front %d started (pid %d)", self.slot, self.process.pid)

    def check(self, now: float) -> None:
        """Starts the front again once its back-off has passed, if it exited."""
        if self.process is None:
            if now >= self.next_start:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            if now - self.started > 30:
                self.backoff_s = 0.1  # it ran a while: the next failure starts quickly
            return
        log.warning("front %d (pid %d) exited with %s; starting it again", self.slot,
                    self.process.pid, code)  # fmt: skip
        self.process = None
        self.next_start = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, _MAX_BACKOFF_S)

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def supervise(config: ServerConfig, argv: list[str]) -> int:
    # the gRPC port is held for the fronts as HTTP's is (``main`` checked both are free)
    ports = [config.port] if config.grpc_port is None else [config.port, config.grpc_port]
    holders = [reuseport_socket(config.host, p, listen=False) for p in ports]
    port = holders[0].getsockname()[1]
    state_dir = Path(tempfile.mkdtemp(prefix="pis-fronts-"))
    shared = ["--port", str(port), "--front-state-dir", str(state_dir)]
    if config.grpc_port is not None:
        shared += ["--grpc-port", str(holders[1].getsockname()[1])]
    fronts = [
        Front(slot, [*argv, *shared, "--front-slot", str(slot)]) for slot in range(config.fronts)
    ]
    stopping: list[int] = []

    def on_stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    def on_reload(_signum: int, _frame: object) -> None:
        for front in fronts:
            front.signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    log.info("serving on %s:%d with %d fronts", config.host, port, config.fronts)
    try:
        while not stopping:
            now = time.monotonic()
            for front in fronts:
                front.check(now)
            time.sleep(_POLL_S)
    finally:
        _stop(fronts, config.shutdown_grace_s + 5.0)
        for sock in holders:
            sock.close()
        shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def _stop(fronts: list[Front], grace_s: float) -> None:
    for front in fronts:
        front.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for front in fronts:
        if front.process is None:
            continue
        try:
            front.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            front.process.kill()
            front.process.wait()
