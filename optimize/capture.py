"""Keeps exporters and deprecated APIs from printing pages of noise, and records what they said.

Warnings are caught through ``warnings``; anything written to stdout/stderr (including C++
logging and logging handlers bound to the original streams) is redirected at the file
descriptor level into a temporary file. The optimizer's own progress is printed between
captures, never inside one.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

MAX_LINES = 5
MAX_LINE_CHARS = 200
# glog-style prefix of torch's C++ and internal logging: "W1124 06:39:35.132000 9820 file:107] "
_LOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+\] ")


@dataclass
class Captured:
    warnings: list[str] = field(default_factory=list)
    output_lines: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Distinct warnings then output lines, truncated: enough to see what happened."""
        lines = [*self.warnings, *(f"output: {line}" for line in self.output_lines)]
        distinct = list(dict.fromkeys(line[:MAX_LINE_CHARS] for line in lines))
        if len(distinct) > MAX_LINES:
            more = len(distinct) - MAX_LINES
            distinct = [*distinct[:MAX_LINES], f"... and {more} more lines"]
        return distinct


@contextlib.contextmanager
def _fd_redirect(sink: int) -> Iterator[None]:
    saved: list[tuple[int, int]] = []
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(sink, fd)
            except OSError:
                continue  # no such descriptor (e.g. a daemon): nothing to redirect
        yield
    finally:
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    captured = Captured()
    python_streams = io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    with (
        tempfile.TemporaryFile() as sink,
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        try:
            with (
                _fd_redirect(sink.fileno()),
                contextlib.redirect_stdout(python_streams),
                contextlib.redirect_stderr(python_streams),
            ):
                yield captured
        finally:
            sink.seek(0)
            text = python_streams.getvalue() + sink.read().decode("utf-8", errors="replace")
            captured.output_lines = [
                _LOG_PREFIX.sub("", line.strip()) for line in text.splitlines() if line.strip()
            ]
            captured.warnings = [
                f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}"
                for w in caught
                if str(w.message).strip()
            ]
