"""Two front processes on one port (``--fronts 2``): both serve, /stats and /metrics add up
both fronts' counts, and a front killed and started again neither resets nor double-counts
them; the fronts share the gRPC port as they share HTTP's."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port, start_server, wait_until

pytestmark = pytest.mark.slow


def get(url: str) -> httpx.Response:
    # a new connection each time: the kernel spreads connections over the fronts. A
    # connection that was waiting to be accepted by a front as it is killed is reset, as a
    # client of any server that dies would see: ask again.
    for _ in range(20):
        try:
            return httpx.get(url, timeout=10)
        except httpx.TransportError:
            continue
    raise AssertionError(f"no front answered {url} in 20 attempts")


def stats(url: str) -> dict:
    return get(f"{url}/stats").json()


def requests_metric(url: str) -> float:
    text = get(f"{url}/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "pis_requests_total"
    )


def post(url: str, first: int, count: int) -> None:
    rng = np.random.default_rng(first)
    for _ in range(count):
        obs = rng.standard_normal((60, 7)).tolist()
        answer = httpx.post(f"{url}/infer", json={"model": "tactical", "observation": obs})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "tactical"


def fronts(url: str) -> dict[int, dict]:
    return {front["slot"]: front for front in stats(url)["fronts"]}


def agreed(url: str, requests: int, per_front: bool = True) -> bool:
    """Every front (asked several times, over new connections) reports ``requests``."""
    for _ in range(6):
        data = stats(url)
        total = data["models"]["tactical"]["since_start"]["requests"]
        if total != requests or len(data["fronts"]) != 2:
            return False
        if per_front and sum(f["requests"] for f in data["fronts"]) != requests:
            return False
    return requests_metric(url) == requests


def test_two_fronts_serve_and_count_once_across_a_restart(artifacts_dir: Path) -> None:
    with start_server(artifacts_dir, workers=2, args=["--fronts", "2"]) as server:
        url = server.url
        wait_until(lambda: len(fronts(url)) == 2, timeout_s=60)
        post(url, 1, 60)
        wait_until(lambda: agreed(url, 60))
        served = fronts(url)
        assert all(served[slot]["requests"] > 0 for slot in (0, 1)), served
        assert {w["index"] for w in stats(url)["workers"]} == {0, 1}  # one worker each

        killed = served[1]["pid"]
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: fronts(url)[1]["pid"] != killed, timeout_s=60)
        wait_until(lambda: agreed(url, 60, per_front=False))  # not 0, not 120

        post(url, 2, 40)
        wait_until(lambda: agreed(url, 100))
        assert stats(url)["cache"]["misses"] == 100

        # under load, scrapes that land on either front never see a counter go down
        load = threading.Thread(target=post, args=(url, 3, 150))
        load.start()
        seen = []
        while load.is_alive():
            seen.append(requests_metric(url))
        load.join()
        assert len(seen) > 5 and seen == sorted(seen), seen
        circuits = stats(url)["circuit_breakers"]
        assert {c["state"] for c in circuits.values()} == {"closed"}
        assert all(c["opened_total"] == 0 for c in circuits.values())


def test_fronts_without_workers_run_every_row_themselves(artifacts_dir: Path) -> None:
    """``--workers 0``: each front answers from its own copy, is listed as its own worker,
    is ready, and still refuses a row it cannot compute finitely."""
    with start_server(artifacts_dir, workers=0, args=["--fronts", "2"]) as server:
        url = server.url
        wait_until(lambda: len(fronts(url)) == 2, timeout_s=60)
        post(url, 3, 20)
        huge = [[2e38] * 7] * 60
        refused = get_post(url, {"model": "tactical", "observation": huge})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "non_finite_output"
        batch = get_post(url, {"model": "tactical", "observations": [huge] * 3})
        assert batch.status_code == 422, batch.text  # a batch runs in the front too
        wait_until(lambda: sum(f["requests"] for f in stats(url)["fronts"]) == 22)
        workers = stats(url)["workers"]
        front_pids = {f["pid"] for f in stats(url)["fronts"]}
        assert {w["pid"] for w in workers} == front_pids
        assert all(w["state"] == "ready" for w in workers)
        # each front's file is up to a second old: wait until both have written theirs
        wait_until(lambda: sum(w["served"] for w in stats(url)["workers"]) >= 20)


def get_post(url: str, document: dict) -> httpx.Response:
    return httpx.post(f"{url}/infer", json=document, timeout=10)


def test_fronts_share_the_grpc_port(artifacts_dir: Path) -> None:
    """``--fronts 2 --grpc-port P``: both fronts serve gRPC on P (the second one failed to
    bind it and was restarted for ever), and calls over new channels reach both."""
    import tritonclient.grpc as triton_grpc

    grpc_port = free_port()
    args = ["--fronts", "2", "--grpc-port", str(grpc_port)]
    with start_server(artifacts_dir, workers=0, args=args) as server:
        url = server.url
        wait_until(lambda: len(fronts(url)) == 2, timeout_s=60)
        pids = {slot: front["pid"] for slot, front in fronts(url).items()}
        obs = np.random.default_rng(4).standard_normal((1, 60, 7)).astype(np.float32)
        for _ in range(24):  # a channel a call: the kernel spreads connections over fronts
            client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            tensor = triton_grpc.InferInput("observation", [1, 60, 7], "FP32")
            tensor.set_data_from_numpy(obs)
            result = client.infer("tactical", [tensor])
            assert result.as_numpy("action").shape == (1,)
            client.close()
        wait_until(lambda: sum(f["requests"] for f in stats(url)["fronts"]) == 24)
        served = fronts(url)
        assert all(served[slot]["requests"] > 0 for slot in (0, 1)), served
        assert {slot: front["pid"] for slot, front in served.items()} == pids, "a front restarted"
        assert "exited" not in server.log_path.read_text()


def test_an_admin_reload_through_one_front_reloads_every_front(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    """``POST /admin/reload`` lands on one front; the supervisor passes it to the others, so
    no front goes on serving the old set. A second server on the same ports is refused."""
    import shutil
    import subprocess

    from tests.support import ROOT, select_another_variant, server_command

    arts = tmp_path / "arts"
    shutil.copytree(artifacts_dir, arts)
    with start_server(arts, workers=2, args=["--fronts", "2"]) as server:
        url = server.url
        wait_until(lambda: len(fronts(url)) == 2, timeout_s=60)
        before = get(f"{url}/models").json()["tactical"]["version"]
        select_another_variant(arts, "tactical")
        reloaded = httpx.post(f"{url}/admin/reload", timeout=60)
        assert reloaded.status_code == 200, reloaded.text
        after = reloaded.json()["versions"]["tactical"]
        assert after != before

        def every_front_serves_the_new_set() -> bool:
            return all(  # new connections: the kernel spreads them over both fronts
                get(f"{url}/models").json()["tactical"]["version"] == after for _ in range(16)
            )

        wait_until(every_front_serves_the_new_set, timeout_s=60)

        second = subprocess.run(
            server_command(arts, server.port, args=["--fronts", "2"]),
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1 and "cannot bind" in second.stderr, second.stderr
