"""The soak benchmark's tool, in seconds instead of a million requests (the full soak is
``python -m benchmarks.soak``, and ``-m benchmark`` runs it as a test)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.loadgen import wrk_path
from benchmarks.soak import soak

pytestmark = pytest.mark.slow


def _need_wrk() -> None:
    if wrk_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but wrk is not on PATH; .ci/run installs it")
        pytest.skip("wrk is not on PATH (apt-get install wrk)")


def test_soak_sends_every_stream_and_records_memory(artifacts_dir: Path, tmp_path: Path) -> None:
    _need_wrk()
    result = soak(artifacts_dir, requests=3000, round_s=1.0, log=tmp_path / "server.log")
    first = result["rounds"][1]
    assert set(first["sent"]) == {"cold", "warm", "batch", "oip", "invalid"}
    assert all(count > 0 for count in first["sent"].values()), first["sent"]
    assert result["requests"] >= 3000
    # the invalid stream is refused; on a busy machine admission may refuse some others (503)
    assert {"200", "422"} <= set(result["status"]) <= {"200", "422", "503"}, result["status"]
    assert first["cache_entries"] > 0 and first["processes"] == 3
    assert 0 < result["start_pss_mib"] <= result["end_pss_mib"] * 2


@pytest.mark.benchmark
def test_full_soak_of_a_million_requests_keeps_memory_flat(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    _need_wrk()
    result = soak(artifacts_dir, requests=1_000_000, round_s=10.0, log=tmp_path / "server.log")
    assert result["steady_pss_mib"] is not None, "the cache or the stats window never filled"
    first, last = result["steady_pss_mib"]
    print(result)
    assert last <= first * 1.05, "memory grew once the cache and the stats window were full"
