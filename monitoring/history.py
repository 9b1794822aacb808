"""Statistics snapshots on disk: one JSON line per snapshot, one file per UTC hour, the newest
``max_files`` files kept. Files survive restarts; ``monitoring.report --history`` reads them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("monitoring.history")

FILE_PREFIX = "stats-"
FILE_SUFFIX = ".jsonl"


def file_name(wall_s: float) -> str:
    hour = datetime.fromtimestamp(wall_s, tz=UTC).strftime("%Y%m%dT%H")
    return f"{FILE_PREFIX}{hour}{FILE_SUFFIX}"


def history_files(directory: Path) -> list[Path]:
    """The snapshot files in ``directory``, oldest first (names sort by time)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))


class HistoryWriter:
    def __init__(
        self, directory: Path, *, max_files: int, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.directory = Path(directory)
        self.max_files = max_files
        self._wall_clock = wall_clock
        self._current: str | None = None
        self.errors = 0

    def append(self, record: dict[str, Any]) -> None:
        """Append one snapshot (its "t" field, wall seconds, picks the file). Never raises:
        a full disk must not take monitoring down; the failure is logged and counted."""
        wall = float(record.setdefault("t", self._wall_clock()))
        name = file_name(wall)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with (self.directory / name).open("ab") as out:
                out.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            if name != self._current:
                self._current = name
                self._rotate()
        except OSError as error:
            self.errors += 1
            log.warning("history snapshot not written to %s: %s", self.directory, error)

    def _rotate(self) -> None:
        files = history_files(self.directory)
        for old in files[: max(len(files) - self.max_files, 0)]:
            old.unlink(missing_ok=True)


def read_history(directory: Path) -> Iterator[dict[str, Any]]:
    """Every snapshot in ``directory``, oldest first; unreadable lines are skipped (a crash can
    leave a half-written last line)."""
    for path in history_files(Path(directory)):
        with path.open("rb") as lines:
            for line in lines:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "t" in record:
                    yield record
