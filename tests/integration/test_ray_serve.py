"""The policy server on a 2-node Ray cluster (both nodes on 127.0.0.1): two replicas on
different nodes, reached over HTTP (Ray Serve in HAProxy mode) and through a
``DeploymentHandle`` (a strategy deployment), then one node killed under traffic."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import free_port, pid_alive, wait_until
from tests.tools import required_module

pytestmark = pytest.mark.slow

OBSERVATIONS = [
    [[random.Random(i * 1000 + r).gauss(0, 1) for _ in range(7)] for r in range(60)]
    for i in range(16)
]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (Ray's nodes, workers, replicas, our workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


@dataclass
class Outcome:
    at_s: float
    path: str
    status: int
    retry_after: str | None
    correct: bool
    latency_ms: float


@dataclass
class Traffic:
    """Sequential clients over both paths, each answer checked against the reference."""

    reference: dict[int, dict]
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    resent: int = 0

    def matches(self, index: int, body: dict) -> bool:
        ref = self.reference[index]
        return body["action"] == ref["action"] and all(
            np.allclose(body["agents"][a], ref["agents"][a], atol=1e-5) for a in ref["agents"]
        )

    def record(self, path: str, start: float, status: int, retry: str | None, ok: bool) -> None:
        now = time.monotonic()
        self.outcomes.append(Outcome(now, path, status, retry, ok, (now - start) * 1e3))

    def post(self, client: httpx.Client, url: str, body: dict) -> httpx.Response:
        """HAProxy reloads when a replica goes or comes and closes keep-alive connections
        that were idle at that moment; a request sent on one gets no answer at all. Like
        any HTTP client for an idempotent call, send it again once on a new connection."""
        try:
            return client.post(url, json=body)
        except httpx.RemoteProtocolError:
            self.resent += 1
            return client.post(url, json=body)

    def http_loop(self, url: str) -> None:
        with httpx.Client(timeout=10.0) as client:
            i = 0
            while not self.stop.is_set():
                index = i % len(OBSERVATIONS)
                start = time.monotonic()
                body = {"model": "tactical", "observation": OBSERVATIONS[index]}
                try:
                    r = self.post(client, url, body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"http: {exc!r}")
                    continue
                ok = r.status_code == 200 and self.matches(index, r.json())
                self.record("http", start, r.status_code, r.headers.get("retry-after"), ok)
                i += 1

    def handle_loop(self, strategy) -> None:
        i = 0
        while not self.stop.is_set():
            index = i % len(OBSERVATIONS)
            start = time.monotonic()
            try:
                answer = strategy.decide.remote(OBSERVATIONS[index]).result(timeout_s=15)
            except Exception as exc:
                self.failures.append(f"handle: {exc!r}")
                continue
            ok = answer.status == 200 and self.matches(index, answer.json())
            self.record("handle", start, answer.status, answer.headers.get("retry-after"), ok)
            i += 1


def replicas_by_node(policy, want: int, timeout_s: float = 30.0) -> dict[str, dict]:
    from server.ray.targets import collect_reports

    return {r["node_id"]: r for r in collect_reports(policy, want, timeout_s)}


def check_back_pressure(artifacts_dir: Path) -> None:
    """One replica holding one call and queueing one: a burst beyond that is refused by Ray
    at once, and the caller gets 503 with Retry-After, never a hang."""
    from ray import serve

    from server.ray.app import policy_app
    from server.ray.client import PolicyClient
    from server.ray.options import DEPLOYMENT_NAME, RayDeployOptions

    tiny = RayDeployOptions(
        server_args=("--artifacts", str(artifacts_dir), "--workers", "1",
                     "--max-batch-size", "1", "--no-build-artifacts-if-missing"),
        replicas=1, max_ongoing_requests=1, max_queued_requests=1, num_cpus=0.5,
    )  # fmt: skip
    serve.run(policy_app(tiny), name="tiny", route_prefix=None)
    body = {"model": "tactical", "observation": OBSERVATIONS[0]}

    async def burst() -> list:
        client = PolicyClient(serve.get_deployment_handle(DEPLOYMENT_NAME, "tiny"), attempts=1)
        return await asyncio.gather(*(client.infer(body) for _ in range(40)))

    answers = asyncio.run(burst())
    statuses = Counter(a.status for a in answers)
    print(f"  40 calls at once, max_ongoing_requests=1, max_queued_requests=1: {dict(statuses)}")
    assert set(statuses) == {200, 503}, statuses
    assert all(a.retry_after_s for a in answers if a.status == 503)


def test_two_nodes_http_and_handle_survive_a_lost_node(artifacts_dir: Path) -> None:
    required_module("ray", "pip install -c constraints.txt '.[ray]'")
    from ray import serve

    from server.ray.app import strategy_app
    from server.ray.local import local_cluster
    from server.ray.metrics import file_sd
    from server.ray.options import DEPLOYMENT_NAME

    port = free_port()
    # Deployed by the command an operator runs, against the running cluster.
    deploy = [
        sys.executable, "-m", "server.ray", "--replicas", "2", "--max-replicas-per-node", "1",
        "--num-cpus", "1", "--http-host", "127.0.0.1", "--http-port", str(port),
        "--proxy-location", "HeadOnly", "--detach",
        "--", "--artifacts", str(artifacts_dir), "--workers", "1",
        "--no-build-artifacts-if-missing",
    ]  # fmt: skip
    started: set[int] = set()
    with local_cluster(nodes=2, haproxy=True) as cluster:
        head_id = cluster.cluster.head_node.node_id
        worker = cluster.nodes[0]
        subprocess.run([*deploy[:3], "--address", cluster.address, *deploy[3:]], check=True)
        # The desk's strategy runs on the head node: the node killed below is the policy's.
        on_head = {"resources": {"node:__internal_head__": 0.001}}
        strategy = serve.run(
            strategy_app(ray_actor_options=on_head), name="strategy", route_prefix=None
        )
        policy = serve.get_deployment_handle(DEPLOYMENT_NAME, "policy")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 60)

        # Over HTTP: answers, errors and metrics are the server's own.
        with httpx.Client(timeout=10.0) as client:
            reference = {}
            for i, obs in enumerate(OBSERVATIONS * 3):
                r = client.post(f"{url}/infer", json={"model": "tactical", "observation": obs})
                assert r.status_code == 200, r.text
                reference.setdefault(i % len(OBSERVATIONS), r.json())
            bad = client.post(f"{url}/infer", json={"model": "tactical", "observation": [[1.0]]})
            assert bad.status_code == 422
            assert bad.json()["error"]["code"] == "invalid_observation"
            assert "pis_requests_total" in client.get(f"{url}/metrics").text

        nodes = replicas_by_node(policy, want=2)
        assert set(nodes) == {head_id, worker.node_id}, "the two replicas share a node"
        assert all(r["requests"] > 0 for r in nodes.values()), f"a node served nothing: {nodes}"
        # Each replica's own /metrics, as Prometheus scrapes it (python -m server.ray targets).
        targets = file_sd(list(nodes.values()), "policy")
        assert len(targets) == 2
        for target in targets:
            text = httpx.get(f"http://{target['targets'][0]}/metrics", timeout=5).text
            served = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("pis_requests_total{")
            )
            report = nodes[target["labels"]["ray_node"]]
            assert served == report["requests"] > 0, (served, report)

        # Through a handle, from the strategy deployment.
        traffic = Traffic(reference)
        for i, obs in enumerate(OBSERVATIONS):
            answer = strategy.decide.remote(obs).result(timeout_s=15)
            assert answer.status == 200 and traffic.matches(i, answer.json())

        # Kill the worker node (its raylet, the replica and our worker processes on it)
        # while both paths carry traffic.
        threads = [
            threading.Thread(target=traffic.http_loop, args=(f"{url}/infer",)),
            threading.Thread(target=traffic.handle_loop, args=(strategy,)),
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        cluster.kill_node(worker)
        wait_until(
            lambda: sum(o.at_s > killed_at + 3 and o.status == 200 for o in traffic.outcomes) >= 40,
            60,
        )
        traffic.stop.set()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a client hung"

        after = [o for o in traffic.outcomes if o.at_s >= killed_at]
        statuses = Counter((o.path, o.status) for o in traffic.outcomes)
        print(
            f"\nfailover: {dict(statuses)}; failures {traffic.failures}; "
            f"sent again after a closed keep-alive connection: {traffic.resent}"
        )
        for path in ("http", "handle"):
            mine = [o for o in after if o.path == path]
            slow = sorted(o.latency_ms for o in mine if o.latency_ms > 100)
            print(
                f"  {path}: {len(mine)} answers in the {after[-1].at_s - killed_at:.1f} s after "
                f"the kill, non-200 {sum(o.status != 200 for o in mine)}, over 100 ms: "
                f"{[round(v) for v in slow]} ms, median "
                f"{statistics.median(o.latency_ms for o in mine):.1f} ms"
            )
        assert not traffic.failures, traffic.failures
        assert all(o.status in (200, 503) for o in traffic.outcomes), statuses
        assert all(o.retry_after for o in traffic.outcomes if o.status == 503)
        assert all(o.correct for o in traffic.outcomes if o.status == 200), "a wrong answer"
        assert {o.path for o in after if o.status == 200} == {"http", "handle"}

        # Ray places the lost replica again once a node has room.
        replaced_from = time.monotonic()
        fresh = cluster.add_node()
        nodes = replicas_by_node(policy, want=2, timeout_s=60)
        joined_s = time.monotonic() - replaced_from
        print(f"  replacement replica serving {joined_s:.1f} s after a node joined")
        assert set(nodes) == {head_id, fresh.node_id}
        check_back_pressure(artifacts_dir)
        started = descendants(os.getpid())
    wait_until(lambda: not any(pid_alive(p) for p in started), 30)
