"""The full comparison, run on demand: ``pytest -m benchmark``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.benchmark, pytest.mark.timeout(600)]


def test_compare_runs_every_target_within_five_minutes(artifacts_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    argv = [sys.executable, "-m", "benchmarks", "compare", "--artifacts", str(artifacts_dir),
            "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = orjson.loads(out.read_bytes())
    targets = {run["target"] for run in doc["runs"]}
    assert targets == {"ours", "plain_fastapi", "tuned_ort", "raw_floor"}
    pairs = sorted((run["pair"], run["target"]) for run in doc["pairs"])
    assert pairs == [(k, t) for k in range(3) for t in ("ours", "ours_no_monitoring")]
    assert len(doc["bars"]) == 5 and all(bar["met"] is not None for bar in doc["bars"])
    assert doc["inprocess"] and doc["ratios"]
    for run in doc["runs"] + doc["pairs"]:
        if run["target"] != "plain_fastapi":  # the naive baseline may time out at 64
            assert not run["errors"], run
