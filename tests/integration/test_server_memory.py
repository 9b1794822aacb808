"""The running server's memory, measured as benchmarks.memory does: the front and both
workers are found, and none of them has scipy, matplotlib or torch mapped (issue 10)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from benchmarks.memory import HEAVY_PACKAGES, mapped_packages, tree_memory, tree_pss_bytes
from tests.support import start_server

pytestmark = pytest.mark.slow


def test_server_tree_pss_and_no_heavy_package_mapped(artifacts_dir: Path) -> None:
    with start_server(artifacts_dir, workers=2) as server:
        body = {"model": "tactical", "observation": [[0.1] * 7] * 60}
        assert httpx.post(f"{server.url}/infer", json=body).status_code == 200
        rows = tree_memory(server.pid)
        assert {row.pid for row in rows} == {server.pid, *server.worker_pids()}
        assert len(rows) == 3
        for row in rows:
            assert row.pss_bytes > 0 and row.rss_bytes >= row.pss_bytes
            assert row.heavy_packages == (), f"pid {row.pid} maps {row.heavy_packages}"
        assert tree_pss_bytes(server.pid) == pytest.approx(
            sum(row.pss_bytes for row in rows), rel=0.05
        )


def test_mapped_packages_sees_a_loaded_extension() -> None:
    """The check above would see scipy if it were loaded: this process has numpy mapped."""
    import numpy  # noqa: F401

    assert mapped_packages(os.getpid(), ("numpy", *HEAVY_PACKAGES))[:1] == ("numpy",)
