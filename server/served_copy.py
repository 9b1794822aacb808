"""The artifacts one generation of workers serves, copied where only this server writes.

A worker loads its models when it starts, and a replacement starts whenever one dies. Read
from the artifacts directory, a replacement would load whatever is there by then: a set
the optimizer has just written (served without a reload, while ``/models`` still names the
old one), or a file corrupted since (every replacement failing, where a refused reload
promises the old set keeps serving). Each generation (start-up, each reload) reads the
manifest and the files it serves once, each sha256 checked, and writes them to a private
directory; its workers, their replacements and the front's own copy load from there. The
front keeps the bytes (1-2 MB) and writes again what has gone from the directory before a
worker starts: a temporary-file cleaner may remove it from under a server that runs for
weeks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from optimize.loader import read_served
from optimize.manifest import Manifest

_PREFIX = "pis-served-"


class ServedCopy:
    def __init__(self, path: Path, manifest: Manifest | None, files: dict[str, bytes]) -> None:
        self.path = path
        self.manifest = manifest
        self._files = files  # relative path -> bytes

    @classmethod
    def take(cls, artifacts_dir: Path) -> ServedCopy:
        """What ``artifacts_dir``'s manifest serves, in a new private directory; raises
        ``ManifestError`` (or ``ArtifactIntegrityError``) as loading it would."""
        manifest, files = read_served(artifacts_dir)
        _remove_orphans()
        copy = cls(Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")), manifest, files)
        try:
            copy.ensure()
        except BaseException:
            copy.remove()
            raise
        return copy

    def ensure(self) -> None:
        """Writes again every file that is no longer there whole (before a worker starts)."""
        for relative, data in self._files.items():
            path = self.path / relative
            with contextlib.suppress(OSError):
                if path.stat().st_size == len(data):
                    continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _remove_orphans() -> None:
    """Removes the copies of processes that are gone: a front killed with SIGKILL (or by the
    OOM killer) could not remove its own, and a container's /tmp outlives its restarts."""
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: its copy is not ours either
        return True
    with contextlib.suppress(OSError):
        # a zombie (killed, not yet reaped) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True
