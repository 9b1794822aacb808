"""Starting the real server on a free port, as clients meet it, and stopping it cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """Direct children from /proc, so a test can check none outlives the server."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class ServerHandle:
    process: subprocess.Popen
    port: int
    log_path: Path
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        return child_pids(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode} before ready:\n{log_path.read_text()}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"server not ready within {timeout_s} s:\n{log_path.read_text()}")


def server_command(
    artifacts_dir: Path, port: int, workers: int = 2, args: Sequence[str] = ()
) -> list[str]:
    """``python -m server`` on ``127.0.0.1:port``, serving ``artifacts_dir`` as built."""
    return [
        sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port),
        "--artifacts", str(artifacts_dir), "--workers", str(workers),
        "--no-build-artifacts-if-missing", *args,
    ]  # fmt: skip


def select_another_variant(artifacts_dir: Path, model: str) -> str:
    """Rewrites the manifest so that ``model`` is served by another of its built ONNX
    variants, as the optimizer writing a new set would; returns that variant's name."""
    path = artifacts_dir / "manifest.json"
    manifest = orjson.loads(path.read_bytes())
    entry = manifest["models"][model]
    entry["selected"] = next(
        v["name"] for v in entry["variants"]
        if v["name"] != entry["selected"] and v["runtime"] == "onnxruntime"
        and v.get("sha256") and v.get("latency_us")
    )  # fmt: skip
    path.write_bytes(orjson.dumps(manifest))
    return entry["selected"]


@contextlib.contextmanager
def start_server(
    artifacts_dir: Path,
    *,
    workers: int = 2,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 90.0,
) -> Iterator[ServerHandle]:
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="server-", suffix=".log")[1])
    process_env = {**os.environ, **(env or {})}
    command = server_command(artifacts_dir, port, workers, args)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=ROOT, env=process_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    handle = ServerHandle(process, port, log_path)
    try:
        wait_ready(handle.url, process, log_path, ready_timeout_s)
        yield handle
    finally:
        workers_before = handle.worker_pids() if process.poll() is None else []
        handle.stop()
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in workers_before) and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover = [p for p in workers_before if pid_alive(p)]
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leftover, f"worker processes outlived the server: {leftover}"


def wait_until(predicate: Callable[[], object], timeout_s: float = 30.0) -> None:
    """Polls ``predicate`` until it is true; fails the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached before the deadline")


def resident_bytes() -> int:
    """This process's resident set size now (not the peak), from /proc."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096
