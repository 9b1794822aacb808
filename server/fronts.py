"""Several front processes on one port: the listening socket each binds, and the directory
through which they add up their statistics.

Each front binds its own socket with ``SO_REUSEPORT``, and the kernel spreads new
connections over them. Each front once a second (and when it stops) writes what its monitor
and cache have counted to ``front-<slot>.json`` in the directory the supervisor gave it, and
answers ``/stats`` and ``/metrics`` with its own live counts (written to its file first, so
that no counter goes down between two answers of different fronts) plus the other fronts'
latest files (at most a second behind). A front that starts again in a slot takes that slot's file
as its earlier life (``Monitor.inherit``), so a restart neither resets the counts nor counts
them twice; a front that died keeps counting through its file until it is back.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

import orjson

_DUMP = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def reuseport_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A TCP socket on ``host:port`` that other sockets of this user may bind too. Not
    listening, it only holds the port (the supervisor's, so that port 0 picks one for all)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
        sock.setblocking(False)
    return sock


def unbindable(host: str, ports: list[int | None]) -> str | None:
    """``cannot bind HOST:PORT: why`` for the first of ``ports`` that cannot be listened on
    now, else None (None and 0 skipped: no gRPC, any free port). Bound without
    SO_REUSEPORT, so that another server's fronts do not let us share their port; checked
    before start-up, which would otherwise fail only after the workers have loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in ports:
        if not port:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                return f"cannot bind {host}:{port}: {exc.strerror or exc}"
    return None


class FrontShare:
    """This front's file in the shared directory, and the other fronts' files."""

    def __init__(self, directory: Path, slot: int, fronts: int) -> None:
        self.directory = Path(directory)
        self.slot = slot
        self.fronts = fronts
        self._cache: dict[int, tuple[tuple[int, int], dict[str, Any]]] = {}

    def _path(self, slot: int) -> Path:
        return self.directory / f"front-{slot}.json"

    def earlier_life(self) -> dict[str, Any] | None:
        """What this slot's previous process last wrote, if any."""
        return self._read(self.slot)

    def publish(self, doc: dict[str, Any]) -> None:
        path = self._path(self.slot)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_bytes(orjson.dumps(doc, option=_DUMP))
        os.replace(partial, path)  # readers see the old file or the new one, never half

    def peers(self) -> list[dict[str, Any]]:
        """The other fronts' latest documents (a front not yet started has none)."""
        docs = []
        for slot in range(self.fronts):
            if slot != self.slot:
                doc = self._read(slot)
                if doc is not None:
                    docs.append(doc)
        return docs

    def _read(self, slot: int) -> dict[str, Any] | None:
        path = self._path(slot)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(slot)
        if cached is not None and cached[0] == key:
            return cached[1]
        with contextlib.suppress(FileNotFoundError, orjson.JSONDecodeError):
            doc = orjson.loads(path.read_bytes())
            self._cache[slot] = (key, doc)
            return doc
        return None
