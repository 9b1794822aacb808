"""The report generated from a short real run (--url), and the monitoring endpoints of the real
server against the contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.history import read_history
from tests.support import ROOT, start_server, wait_until

pytestmark = pytest.mark.slow

PERCENTILES = ("p50", "p95", "p99", "p99_9", "max")
STAGES = ("parse", "cache", "queue", "inference", "total")


def send(url: str, count: int) -> list[int]:
    rng = np.random.default_rng(1)
    statuses = []
    with httpx.Client(base_url=url, timeout=5.0) as client:
        for i in range(count):
            obs = rng.standard_normal((60, 7)).round(3).tolist()
            body = {"model": "tactical", "observation": obs}
            statuses.append(client.post("/infer", json=body).status_code)
            if i % 10 == 0:  # a repeat: served from the cache
                statuses.append(client.post("/infer", json=body).status_code)
        statuses.append(
            client.post(
                "/infer", content=b"not json", headers={"content-type": "application/json"}
            ).status_code
        )
    return statuses


def test_report_from_a_short_real_run(artifacts_dir: Path, tmp_path: Path) -> None:
    history = tmp_path / "history"
    out = tmp_path / "report"
    args = ["--history-dir", str(history)]
    with start_server(artifacts_dir, workers=2, args=args) as server:
        statuses = send(server.url, 300)
        # the 1 s ticker has rotated a slice holding this traffic: the timeline has a point
        wait_until(
            lambda: any(p["requests"] for p in httpx.get(f"{server.url}/stats").json()["timeline"]),
            timeout_s=10,
        )
        stats = httpx.get(f"{server.url}/stats", timeout=5).json()
        alerts = httpx.get(f"{server.url}/alerts", timeout=5).json()
        metrics = httpx.get(f"{server.url}/metrics", timeout=5)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "monitoring.report",
                "--url",
                server.url,
                "--manifest",
                str(artifacts_dir / "manifest.json"),
                "--out",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    assert "No data:" not in page
    for png in (
        "latency_percentiles",
        "latency_histogram",
        "requests_per_second",
        "error_and_cache_hit_rates",
        "alert_timeline",
        "variant_comparison",
    ):
        assert (out / f"{png}.png").stat().st_size > 5000

    # /stats against the contract
    tactical = stats["models"]["tactical"]
    for span in ("window", "since_start"):
        for stage in STAGES:
            assert set(PERCENTILES) <= set(tactical[span]["latency_us"][stage])
    assert tactical["since_start"]["requests"] == statuses.count(200)
    assert tactical["since_start"]["cache_hits"] >= 25
    assert stats["models"]["unknown"]["since_start"]["status"] == {"400": 1}
    assert len(stats["workers"]) == 2
    for worker in stats["workers"]:
        assert {"pid", "state", "in_flight", "served"} <= set(worker)
    assert set(alerts) == {"firing", "pending", "resolved"}

    # /metrics
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(metrics.text)}
    assert {"pis_requests", "pis_request_duration_seconds", "pis_worker_up"} <= names
    promtool = shutil.which("promtool")
    if promtool:
        check = subprocess.run(
            [promtool, "check", "metrics"], input=metrics.content, capture_output=True, timeout=60
        )
        assert check.returncode == 0, check.stdout + check.stderr
    # the snapshots (every 10 s and one at shutdown) count each request once, in intervals
    snapshots = list(read_history(history))
    assert snapshots
    answered = sum(r["models"].get("tactical", {}).get("requests", 0) for r in snapshots)
    assert answered == statuses.count(200)
