"""Faults and lifecycle against the real server: killed and stuck workers, overload,
SIGTERM with requests in flight, reload under load, API keys and rate limits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import pid_alive, select_another_variant, start_server, wait_until

pytestmark = pytest.mark.slow

OBS = np.random.default_rng(1).standard_normal((2000, 60, 7)).astype(np.float32)


def body(i: int) -> dict:
    return {"model": "tactical", "observation": OBS[i % len(OBS)].tolist()}


async def load(url: str, seconds: float, concurrency: int, start: int = 0) -> list[int]:
    """Closed-loop clients sending distinct observations; returns every status seen."""
    statuses: list[int] = []
    deadline = time.monotonic() + seconds
    counter = iter(range(start, start + 10**6))

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            r = await client.post("/infer", json=body(next(counter)))
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert "retry-after" in r.headers

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return statuses


def ready_workers(url: str) -> list[dict]:
    workers = httpx.get(f"{url}/stats").json()["workers"]
    return [w for w in workers if w["state"] == "ready"]


def test_worker_killed_under_load_recovers(artifacts_dir: Path) -> None:
    with start_server(artifacts_dir, workers=2) as server:
        victim = server.worker_pids()[0]

        async def scenario() -> list[int]:
            task = asyncio.create_task(load(server.url, 3.0, 16))
            await asyncio.sleep(1.0)
            os.kill(victim, signal.SIGKILL)
            return await task

        statuses = asyncio.run(scenario())
        counts = Counter(statuses)
        assert set(counts) <= {200, 503}, counts
        assert counts[200] > 100
        wait_until(lambda: len(ready_workers(server.url)) == 2)
        pids = {w["pid"] for w in ready_workers(server.url)}
        assert victim not in pids
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert httpx.post(f"{server.url}/infer", json=body(1)).status_code == 200


def test_stuck_worker_times_out_with_504_and_is_replaced(artifacts_dir: Path) -> None:
    # no inline lane: every request must reach the stuck worker or be refused
    args = [
        "--request-timeout-s",
        "0.5",
        "--max-inflight-per-worker",
        "32",
        "--max-request-batch",
        "32",
        "--no-inline-when-idle",
    ]
    with start_server(artifacts_dir, workers=1, args=args) as server:
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        try:

            async def burst() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                    return await asyncio.gather(
                        *(client.post("/infer", json=body(i)) for i in range(40))
                    )

            responses = asyncio.run(burst())
        finally:
            # the server may have killed and reaped it already: that is what is under test
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        counts = Counter(r.status_code for r in responses)
        # 200: once the stuck worker is killed and until its replacement is ready, the
        # front answers from its own copy
        assert set(counts) <= {200, 503, 504} and counts[504] >= 1, counts
        for r in responses:
            if r.status_code == 200:
                continue
            assert r.json()["error"]["code"] in {
                "inference_timeout",
                "overloaded",
                "no_healthy_worker",
                "circuit_open",  # the timeouts opened the model's circuit
            }
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
        wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200)
        assert not pid_alive(worker)
        # the timeouts opened the model's circuit: the first call after --breaker-open-s
        # probes it, and answers
        wait_until(lambda: httpx.post(f"{server.url}/infer", json=body(7)).status_code == 200)


def test_sigterm_finishes_in_flight_requests_and_leaves_no_process(artifacts_dir: Path) -> None:
    with start_server(artifacts_dir, workers=2) as server:
        workers = server.worker_pids()

        async def scenario() -> list[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
                batch = {"model": "tactical", "observations": OBS[:64].tolist()}
                tasks = [asyncio.create_task(client.post("/infer", json=batch)) for _ in range(8)]
                await asyncio.sleep(0.02)
                server.process.send_signal(signal.SIGTERM)
                results = await asyncio.gather(*tasks, return_exceptions=True)
            return [r.status_code if isinstance(r, httpx.Response) else -1 for r in results]

        statuses = asyncio.run(scenario())
        # requests already received finish; any the listener no longer took are refused
        # at connect (-1), never half-answered or failed
        assert 200 in statuses and set(statuses) <= {200, -1}, statuses
        # uvicorn re-raises the captured SIGTERM once shutdown is complete
        assert server.process.wait(30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()
        wait_until(lambda: not any(pid_alive(p) for p in workers), 10)


def test_reload_under_load_fails_no_request(artifacts_dir: Path, tmp_path: Path) -> None:
    arts = tmp_path / "arts"
    shutil.copytree(artifacts_dir, arts)
    with start_server(arts, workers=2) as server:
        old_pids = set(server.worker_pids())

        async def scenario() -> tuple[list[int], httpx.Response]:
            task = asyncio.create_task(load(server.url, 3.0, 8))
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(timeout=60) as client:
                reload = await client.post(f"{server.url}/admin/reload")
            return await task, reload

        statuses, reload = asyncio.run(scenario())
        assert reload.status_code == 200, reload.text
        assert Counter(statuses) == Counter({200: len(statuses)})
        wait_until(lambda: not (set(server.worker_pids()) & old_pids))

        # SIGHUP does the same
        before = set(server.worker_pids())
        server.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: len(server.worker_pids()) == 2 and not set(server.worker_pids()) & before
        )
        assert httpx.post(f"{server.url}/infer", json=body(2)).status_code == 200

        # a manifest whose artifact does not verify is refused; the old one keeps serving
        manifest = (arts / "manifest.json").read_text()
        selected = httpx.get(f"{server.url}/models").json()["tactical"]["file"]
        target = arts / selected
        target.write_bytes(target.read_bytes() + b"tampered")
        refused = httpx.post(f"{server.url}/admin/reload", timeout=60)
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "reload_refused"
        assert "sha256" in refused.json()["error"]["message"]
        assert httpx.post(f"{server.url}/infer", json=body(3)).status_code == 200
        assert (arts / "manifest.json").read_text() == manifest

        # and it keeps serving when its workers die: replacements load the serving
        # generation's own copy, not the file that no longer verifies
        replace_every_worker(server.url, server.worker_pids())
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert httpx.post(f"{server.url}/infer", json=body(4)).status_code == 200


def replace_every_worker(url: str, pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (
            len(ready_workers(url)) == len(pids)
            and not {w["pid"] for w in ready_workers(url)} & set(pids)
        )
    )


def test_replacements_serve_what_was_loaded_not_what_the_directory_holds_now(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    """The optimizer (or an operator) selects another variant in the manifest without a
    reload: workers started after that, to replace dead ones, still serve the set that
    ``/models`` names, until a reload switches over."""
    arts = tmp_path / "arts"
    shutil.copytree(artifacts_dir, arts)
    args = ["--cache-size", "0", "--no-inline-when-idle"]
    with start_server(arts, workers=2, args=args) as server:
        served = httpx.get(f"{server.url}/models").json()["tactical"]
        other = select_another_variant(arts, "tactical")
        replace_every_worker(server.url, server.worker_pids())
        for i in range(20):
            answer = httpx.post(f"{server.url}/infer", json=body(i))
            assert answer.status_code == 200 and answer.json()["version"] == served["version"]
        assert httpx.get(f"{server.url}/models").json()["tactical"] == served
        reloaded = httpx.post(f"{server.url}/admin/reload", timeout=60)
        assert reloaded.status_code == 200, reloaded.text
        now = httpx.get(f"{server.url}/models").json()["tactical"]
        assert now["variant"] == other and now["version"] != served["version"]
        answer = httpx.post(f"{server.url}/infer", json=body(99))
        assert answer.json()["version"] == now["version"]


def test_tampered_artifact_refused_at_start(artifacts_dir: Path, tmp_path: Path) -> None:
    arts = tmp_path / "arts"
    shutil.copytree(artifacts_dir, arts)
    from optimize.loader import load_manifest

    selected = load_manifest(arts).models["strategic"].selected_variant.file
    (arts / selected).write_bytes(b"\0" + (arts / selected).read_bytes()[1:])
    with pytest.raises(RuntimeError, match="sha256") as refused, start_server(arts, workers=1):
        pass
    assert "Traceback" not in str(refused.value), "a refusal is one clear line, not a traceback"


def test_api_key_and_rate_limit(artifacts_dir: Path) -> None:
    args = ["--api-key", "s3cret", "--rate-limit-rps", "1", "--rate-limit-burst", "3"]
    with start_server(artifacts_dir, workers=1, args=args) as server:
        url = f"{server.url}/infer"
        missing = httpx.post(url, json=body(0))
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        wrong = httpx.post(url, json=body(0), headers={"x-api-key": "nope"})
        assert wrong.status_code == 401
        statuses = [
            httpx.post(url, json=body(i), headers={"authorization": "Bearer s3cret"}).status_code
            for i in range(6)
        ]
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
        limited = httpx.post(url, json=body(9), headers={"x-api-key": "s3cret"})
        assert limited.status_code == 429 and "retry-after" in limited.headers
        # the admin route asks for the same key (and is not rate limited)
        reload = f"{server.url}/admin/reload"
        refused = httpx.post(reload, headers={"x-api-key": "nope"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        allowed = httpx.post(reload, headers={"authorization": "Bearer s3cret"}, timeout=60)
        assert allowed.status_code == 200 and allowed.json()["status"] == "reloaded"


def test_sigterm_closes_busy_keep_alive_connections_gracefully(artifacts_dir: Path) -> None:
    """Clients that keep sending on keep-alive connections across SIGTERM get every request
    they sent answered (the last with ``connection: close``), never a reset."""
    import socket
    import threading

    import orjson

    payload = orjson.dumps({"model": "tactical", "observation": OBS[0].tolist()})
    request = (
        b"POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(payload)
    ) + payload
    outcomes: list[str] = []

    def client(port: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            while True:
                sock.sendall(request)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        outcomes.append("closed before answering")
                        return
                    data += chunk
                head, rest = data.split(b"\r\n\r\n", 1)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(rest) < length:
                    rest += sock.recv(65536)
                if b"connection: close" in head.lower():
                    outcomes.append("closed gracefully")
                    return
        except ConnectionResetError:
            outcomes.append("reset")
        finally:
            sock.close()

    with start_server(artifacts_dir, workers=2) as server:
        threads = [threading.Thread(target=client, args=(server.port,)) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        server.process.wait(30)
    assert outcomes == ["closed gracefully"] * 8, outcomes


@pytest.mark.parametrize("fronts", [1, 2])
def test_a_taken_grpc_port_stops_start_up_and_leaves_nothing_behind(
    artifacts_dir: Path, tmp_path: Path, fronts: int
) -> None:
    """Refused before anything starts, in one line that names the port, with one front
    (checked before the workers load) or several (the supervisor's own bind)."""
    import subprocess

    from tests.support import ROOT, free_port, server_command

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = ["--fronts", str(fronts), "--grpc-port", str(taken.getsockname()[1])]
        command = server_command(artifacts_dir, free_port(), workers=1, args=args)
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode != 0, done.stdout + done.stderr
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("pis-")]
    assert left == [], "a copy of the artifacts or the fronts' directory was left"
    assert "cannot bind 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr
