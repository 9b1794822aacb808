"""A real Prometheus scrapes the real server and answers a p99 through its HTTP API."""

from __future__ import annotations

import contextlib
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import ROOT, free_port, start_server
from tests.tools import required_binary

pytestmark = pytest.mark.slow

RULES = ROOT / "monitoring" / "prometheus" / "rules.yml"
P99_QUERY = (
    "histogram_quantile(0.99, sum by (le) "
    '(rate(pis_request_duration_seconds_bucket{stage="total"}[30s])))'
)


def prometheus_binary() -> str:
    return required_binary("prometheus", "CI must run the real scrape test")


@contextlib.contextmanager
def traffic(url: str, seconds: float) -> Iterator[list[int]]:
    """Posts single observations from a thread until the block ends (bounded by ``seconds``)."""
    stop = threading.Event()
    answered: list[int] = []

    def run() -> None:
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + seconds
        with httpx.Client(base_url=url, timeout=5.0) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                model, shape = (
                    ("tactical", (60, 7)) if rng.random() < 0.7 else ("strategic", (48, 13))
                )
                body = {"model": model, "observation": rng.standard_normal(shape).round(3).tolist()}
                answered.append(client.post("/infer", json=body).status_code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(10)


@contextlib.contextmanager
def prometheus(tmp_path: Path, target_port: int) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: pis\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise TimeoutError("prometheus not ready in 30 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def query(url: str, expr: str) -> float | None:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    if not result:
        return None
    value = float(result[0]["value"][1])
    return value if math.isfinite(value) else None


def eventually(url: str, expr: str, timeout_s: float = 20.0) -> float:
    """The query's value once it has one (recording rules lag one evaluation)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = query(url, expr)
        if value is not None:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{expr} had no value within {timeout_s} s")


def test_prometheus_scrapes_the_server_and_answers_p99(artifacts_dir: Path, tmp_path: Path) -> None:
    with (
        start_server(artifacts_dir, workers=2) as server,
        prometheus(tmp_path, server.port) as prom,
        traffic(server.url, seconds=60) as answered,
    ):
        p99_s = None
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            p99_s = query(prom, P99_QUERY)
            if p99_s is not None and len(answered) > 200:
                break
            time.sleep(0.5)
        assert p99_s is not None, "no p99 from Prometheus within 45 s"
        assert query(prom, 'up{job="pis"}') == 1.0
        assert query(prom, "sum(pis_worker_up)") == 2.0
        assert eventually(prom, "pis:requests:rate1m") > 0.0  # the shipped recording rule
        stats = httpx.get(f"{server.url}/stats", timeout=5).json()
    server_p99_us = stats["overall"]["since_start"]["latency_us"]["total"]["p99"]
    assert set(answered) == {200}
    # Prometheus interpolates inside coarse buckets (e.g. 500..750 us), over the last 30 s
    assert 1e-6 < p99_s < 10.0
    assert 0.2 < (p99_s * 1e6) / server_p99_us < 5.0, (p99_s, server_p99_us)
