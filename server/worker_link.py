"""How the pool reaches one worker: its process and its socket behind one small interface
(``WorkerLink``), so that the pool's failure logic is tested with fakes and the process
management lives here, apart from the bookkeeping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from server import protocol

_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)

OnFrame = Callable[[bytes], None]
OnLost = Callable[[], None]


class WorkerLink(Protocol):
    pid: int

    def send(self, frame: bytes) -> None:
        """One frame to the worker; ``BlockingIOError`` when its buffer is full, another
        ``OSError`` when it is gone."""

    def close(self) -> None:
        """Stops reading; closing the channel is the worker's signal to exit."""

    def kill(self) -> None: ...

    def exited(self) -> bool: ...

    def exit_status(self) -> int | None:
        """None while the process runs; its exit code, or minus the signal that ended it."""


# launch(on_frame, on_lost): a new worker, each of its frames handed to on_frame, its end
# (EOF, a broken socket) to on_lost once
Launch = Callable[[OnFrame, OnLost], WorkerLink]


class ProcessLink:
    """A ``python -m server.worker`` process on one end of a SEQPACKET socket pair, read by
    the event loop (``add_reader``): a reply costs one ``recv`` and no thread hop."""

    __slots__ = ("_closed", "_loop", "_on_frame", "_on_lost", "_sock", "pid", "process")

    def __init__(self, on_frame: OnFrame, on_lost: OnLost) -> None:
        front, child = protocol.socket_pair()
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT_ROOT, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.worker", "--fd", str(child.fileno())],
            pass_fds=(child.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child.close()
        front.setblocking(False)
        self.pid = self.process.pid
        self._sock = front
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(front.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        while not self._closed:
            try:
                frame = sock.recv(protocol.MAX_FRAME_BYTES)
            except BlockingIOError:
                return
            except OSError:
                frame = b""
            if not frame:
                self.close()
                self._on_lost()
                return
            self._on_frame(frame)

    def send(self, frame: bytes) -> None:
        self._sock.send(frame)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self._sock.fileno())
        with contextlib.suppress(OSError):
            self._sock.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)

    def exited(self) -> bool:
        return self.process.poll() is not None

    def exit_status(self) -> int | None:
        return self.process.poll()
