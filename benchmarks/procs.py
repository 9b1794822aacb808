"""Processes under test: start on a free loopback port, poll until ready, account CPU of the
whole tree (our server has worker processes), stop only what we started."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields start after the last ")".
    return text[text.rindex(")") + 2 :].split()


def _processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields) of every process that still exists while /proc is read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                yield int(entry), fields


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for pid, fields in _processes():
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    return [pid for pid, fields in _processes() if fields[0] != "Z" and int(fields[2]) == pgid]


def process_tree(root: int) -> list[int]:
    children, tree, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and every live descendant, plus what they reaped."""
    total = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are fields 14..17 of proc(5), 12..15 here.
            total += sum(int(v) for v in fields[11:15])
    return total / _CLOCK_TICKS


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: everything but idle and
    iowait), to tell how much CPU other processes took during a run on a shared machine."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in fields[:8]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _CLOCK_TICKS


def http_get_status(port: int, path: str, timeout_s: float = 2.0) -> int | None:
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


class ServerProcess:
    """A target started in its own session, so that stopping it reaches its workers too.
    It runs from ``root`` (its working directory, first on its ``PYTHONPATH``): this
    checkout by default, or another source tree of the project."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        root: Path = REPO_ROOT,
    ) -> None:
        self.name, self.argv, self.port, self.log_path = name, list(argv), port, log_path
        self._env = env
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self._env is None else self._env)
        # The project need not be installed: run from the checkout, as `python -m` would.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.root), env.get("PYTHONPATH")]))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.root,
                start_new_session=True,
            )

    def wait_ready(
        self, timeout_s: float, path: str = "/readyz", clock: Callable[[], float] = time.monotonic
    ) -> None:
        deadline = clock() + timeout_s
        while clock() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready; "
                    f"log: {self.log_path}\n{self.log_tail()}"
                )
            if http_get_status(self.port, path, timeout_s=1.0) == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"{self.name} not ready on port {self.port} after {timeout_s:.0f} s; "
            f"log: {self.log_path}\n{self.log_tail()}"
        )

    def wait_listening(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        """For a server with no HTTP health route (the gRPC floor): until its port accepts."""
        deadline = clock() + timeout_s
        while clock() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it listened; "
                    f"log: {self.log_path}\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 1):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not listening on port {self.port} after {timeout_s:.0f} s")

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the session we created; SIGKILL to whatever of it outlives
        ``grace_s``; returns once no process of it is left."""
        if self.proc is None:
            return
        self._kill_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace_s)
        self._wait_group_gone(deadline)
        self._kill_group(signal.SIGKILL)
        self.proc.wait(timeout=grace_s)
        self._wait_group_gone(time.monotonic() + grace_s)

    def _wait_group_gone(self, deadline: float) -> None:
        while group_members(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _kill_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
