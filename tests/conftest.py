"""Shared fixtures: the artifacts are built once per test session by the real optimizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``PIS_TEST_ARTIFACTS`` reuses a directory built earlier (for quick local reruns)."""
    reuse = os.environ.get("PIS_TEST_ARTIFACTS")
    if reuse and (Path(reuse) / "manifest.json").exists():
        return Path(reuse)
    out = tmp_path_factory.mktemp("artifacts")
    subprocess.run(
        [sys.executable, "-m", "optimize", "--out", str(out), "--calls", "500", "--quiet"],
        cwd=ROOT,
        check=True,
    )
    return out
