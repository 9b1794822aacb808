"""Counters over HTTP: each request is counted once across 2 workers, and a worker's
restart neither resets nor double-counts anything."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import start_server

pytestmark = pytest.mark.slow


def samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests_total(url: str) -> dict[str, float]:
    by_status: dict[str, float] = {}
    for (name, labels), value in samples(url).items():
        if name == "pis_requests_total":
            status = dict(labels)["status"]
            by_status[status] = by_status.get(status, 0) + value
    return by_status


def post_many(url: str, start: int, count: int) -> list[int]:
    rng = np.random.default_rng(start)
    statuses = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(count):
            obs = rng.standard_normal((60, 7)).tolist()
            statuses.append(
                client.post("/infer", json={"model": "tactical", "observation": obs}).status_code
            )
    return statuses


def test_counters_match_requests_sent_across_workers_and_restart(artifacts_dir: Path) -> None:
    # no inline lane, so that every request is served by one of the two workers
    with start_server(artifacts_dir, workers=2, args=["--no-inline-when-idle"]) as server:
        first = post_many(server.url, 1, 150)
        bad = httpx.post(
            f"{server.url}/infer", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
        counts = requests_total(server.url)
        assert counts == {"200": 150, "400": 1}, counts

        stats = httpx.get(f"{server.url}/stats").json()
        assert sum(w["served"] for w in stats["workers"]) == 150
        victim = stats["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = httpx.get(f"{server.url}/stats").json()["workers"]
            if victim not in {w["pid"] for w in workers} and all(
                w["state"] == "ready" for w in workers
            ):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("worker was not replaced")

        second = post_many(server.url, 2, 100)
        assert first.count(200) + second.count(200) == 250
        counts = requests_total(server.url)
        assert counts == {"200": 250, "400": 1}, "a restart must not reset or double count"
        metric = samples(server.url)
        restarts = sum(v for (n, _), v in metric.items() if n == "pis_worker_restarts_total")
        assert restarts >= 1
        served = sum(v for (n, _), v in metric.items() if n == "pis_worker_served_total")
        assert served == 250
