"""The artifacts one generation of workers serves, copied where only this server writes.

A worker loads its models when it starts, and a replacement starts whenever one dies. Read
from the artifacts directory, a replacement would load whatever is there by then: a set
the optimizer has just written (served without a reload, while ``/models`` still names the
old one), or a file corrupted since (every replacement failing, where a refused reload
promises the old set keeps serving). Each generation (start-up, each reload) copies the
manifest and the files it serves, checking each sha256 as it copies, and its workers and
the front's own copy load from that copy alone.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from optimize.loader import copy_served
from optimize.manifest import Manifest


class ServedCopy:
    def __init__(self, path: Path, manifest: Manifest | None) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def take(cls, artifacts_dir: Path) -> ServedCopy:
        """A new private directory holding what ``artifacts_dir``'s manifest serves;
        raises ``ManifestError`` (or ``ArtifactIntegrityError``) as loading it would."""
        path = Path(tempfile.mkdtemp(prefix="pis-served-"))
        try:
            manifest = copy_served(artifacts_dir, path)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, manifest)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
