"""The benchmark tool against real servers on loopback, with tiny durations: the baselines
start and answer the contract, both load generators measure, the CLI writes its document,
every protocol is measured on rows the cache has never seen (and wrk sends, to a capturing
server, exactly the bodies the Python builder makes), two source trees in pairs."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch

import models
from benchmarks import __main__ as cli
from benchmarks import tail
from benchmarks.bodies import Mode, make_bodies
from benchmarks.frontcap import measure_front
from benchmarks.httpbench import HttpSettings, RunPlan, measure, run_interleaved
from benchmarks.loadgen import Generator, run_python, run_wrk_stamped, wrk_path
from benchmarks.procs import ServerProcess, process_tree
from benchmarks.protocols import ProtocolPlan, measure_protocol
from benchmarks.targets import LaunchOptions, Target, server_process
from benchmarks.wire import Protocol, build_requests
from tests.support import ROOT, free_port, pid_alive, start_server

pytestmark = pytest.mark.slow

RUN_KEYS = {"target", "mode", "concurrency", "duration_s", "generator", "requests", "rps",
            "latency_us", "errors", "cpu"}  # fmt: skip


def started(target: Target, launch: LaunchOptions, logs: Path) -> Iterator[ServerProcess]:
    with server_process(target, launch, logs / f"{target}.log") as server:
        server.wait_ready(timeout_s=90)
        tree = process_tree(server.pid)
        yield server
    leftover = [pid for pid in tree if pid_alive(pid)]
    assert not leftover, f"{target} left processes behind: {leftover}"


@pytest.fixture(scope="module")
def raw_floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("bench-logs")
    yield from started(Target.RAW_FLOOR, LaunchOptions(artifacts=logs), logs)


def check_record(record: dict, generator: str) -> None:
    assert set(record) >= RUN_KEYS
    assert record["generator"] == generator
    assert record["requests"] > 0 and record["rps"] > 0
    assert record["errors"] == {}, record["errors"]
    lat = record["latency_us"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert record["cpu"]["server_s"] > 0 and record["cpu"]["loadgen_s"] > 0


def test_python_generator_measures_raw_floor(raw_floor: ServerProcess, tmp_path: Path) -> None:
    settings = HttpSettings(duration_s=0.5, generator=Generator.PYTHON, logs_dir=tmp_path,
                            warmup_s=0.2)  # fmt: skip
    record = measure(raw_floor, Target.RAW_FLOOR, RunPlan(Mode.COLD, 2), settings, seed=1)
    check_record(record, "python")
    assert record["concurrency"] == 2 and record["mode"] == "cold"
    assert 0 < len(record["samples_us"]) <= min(2000, record["requests"])


def test_wrk_generator_measures_raw_floor(raw_floor: ServerProcess, tmp_path: Path) -> None:
    if wrk_path() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but wrk is not on PATH; .ci/ installs it (apt-get install wrk)")
        pytest.skip("wrk is not on PATH (apt-get install wrk); the Python generator is tested")
    settings = HttpSettings(duration_s=1, generator=Generator.WRK, logs_dir=tmp_path,
                            warmup_s=0.2)  # fmt: skip
    record = measure(raw_floor, Target.RAW_FLOOR, RunPlan(Mode.WARM, 2), settings, seed=2)
    check_record(record, "wrk")
    assert "samples_us" not in record  # wrk hands back percentiles only


def test_python_generator_counts_non_2xx_by_status(raw_floor: ServerProcess) -> None:
    bodies = make_bodies("tactical", Mode.COLD, seed=3, templates=4)
    not_json = type(bodies)(bodies.model, bodies.mode, b"not json", bodies.suffixes)
    result = run_python(raw_floor.port, not_json, concurrency=2, duration_s=5, max_requests=20)
    assert result.requests == 20 and result.errors == {"400": 20}


def test_cli_writes_the_result_document(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [sys.executable, "-m", "benchmarks", "http", "--target", "raw_floor",
            "--concurrency", "2", "--duration", "0.5", "--warmup", "0.2",
            "--generator", "python", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(out) in done.stdout and "raw_floor" in done.stdout
    doc = orjson.loads(out.read_bytes())
    assert set(doc) >= {"kind", "machine", "versions", "git_commit", "created", "runs",
                        "inprocess", "ratios"}  # fmt: skip
    assert doc["kind"] == "benchmark" and doc["machine"]["cores"] >= 1
    assert doc["machine"]["cpu_model"] and doc["versions"]["uvicorn"]
    assert doc["pairs"] == []  # only compare interleaves
    [record] = doc["runs"]
    check_record(record, "python")


def reference(observation: np.ndarray) -> tuple[np.ndarray, float]:
    policy = models.build_default("tactical")
    with torch.no_grad():
        probs, value = policy(torch.from_numpy(observation[None]))
    return probs[0].numpy(), float(value[0, 0])


@pytest.mark.parametrize("target", [Target.PLAIN_FASTAPI, Target.TUNED_ORT, Target.RAW_FLOOR])
def test_baselines_answer_the_contract(target: Target, artifacts_dir: Path, tmp_path: Path) -> None:
    observation = np.random.default_rng(4).standard_normal((60, 7)).astype(np.float32)
    body = {"model": "tactical", "observation": observation.tolist()}
    for server in started(target, LaunchOptions(artifacts=artifacts_dir), tmp_path):
        url = f"http://127.0.0.1:{server.port}/infer"
        answer = httpx.post(url, json=body, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(
            "application/json"
        )
        doc = answer.json()
        assert set(doc) == {"model", "version", "action", "confidence", "agents", "value",
                            "cached"}  # fmt: skip
        assert doc["cached"] is False and doc["action"] in models.ACTIONS
        if target is Target.RAW_FLOOR:
            continue  # a constant answer by design
        probs, value = reference(observation)
        got = np.array([doc["agents"][a] for a in ("fvg", "momentum", "entry")])
        np.testing.assert_allclose(got, probs, atol=1e-5)
        assert doc["value"] == pytest.approx(value, abs=1e-4)
        wrong = httpx.post(url, json={"model": "tactical", "observation": [[1.0, 2.0]]})
        assert wrong.status_code == 422


def test_our_server_under_both_generators_modes(artifacts_dir: Path, tmp_path: Path) -> None:
    generators = [Generator.PYTHON] + ([Generator.WRK] if wrk_path() else [])
    with start_server(artifacts_dir, workers=2) as handle:
        server = ServerProcess("ours", [], handle.port, handle.log_path)
        server.proc = handle.process
        for k, generator in enumerate(generators):
            settings = HttpSettings(duration_s=0.5, generator=generator, logs_dir=tmp_path,
                                    warmup_s=0.3)  # fmt: skip
            for mode in Mode:
                record = measure(server, Target.OURS, RunPlan(mode, 4), settings, seed=10 + k)
                check_record(record, str(generator))
        server.proc = None  # start_server stops it and checks its workers


def test_interleaved_pairs_alternate_the_order_and_number_the_rounds(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    settings = HttpSettings(duration_s=0.3, generator=Generator.PYTHON, logs_dir=tmp_path,
                            warmup_s=0.1)  # fmt: skip
    launch = LaunchOptions(artifacts=artifacts_dir, workers=1)
    targets = (Target.OURS, Target.OURS_NO_MONITORING)
    logged: list[str] = []
    records = run_interleaved(targets, RunPlan(Mode.COLD, 2), 3, settings, launch,
                              log=logged.append)  # fmt: skip
    order = [(r["pair"], r["target"]) for r in records]
    assert order == [(0, "ours"), (0, "ours_no_monitoring"), (1, "ours_no_monitoring"),
                     (1, "ours"), (2, "ours"), (2, "ours_no_monitoring")]  # fmt: skip
    for record in records:
        check_record(record, "python")
    announced = [line for line in logged if "pair " in line]  # noisy runs add a retry line
    assert len(announced) == 6 and "pair 3/3" in announced[-1]
    # a server of its own for each target, not one server measured under two names
    assert {p.name for p in tmp_path.glob("*.pairs.log")} == {
        "ours.pairs.log",
        "ours_no_monitoring.pairs.log",
    }


def test_every_protocol_is_measured_on_rows_the_cache_never_saw(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    generators = [Generator.PYTHON] + ([Generator.WRK] if wrk_path() else [])
    grpc_port = free_port()
    with start_server(artifacts_dir, workers=2, args=["--grpc-port", str(grpc_port)]) as handle:
        server = ServerProcess("ours", [], handle.port, handle.log_path)
        server.proc = handle.process
        rows = 0
        for k, generator in enumerate(generators):
            settings = HttpSettings(duration_s=0.5, generator=generator, logs_dir=tmp_path,
                                    warmup_s=0.2)  # fmt: skip
            for j, protocol in enumerate(Protocol):
                if protocol.is_grpc and generator is not Generator.PYTHON:
                    continue  # gRPC has one generator
                for batch in (1, 3):
                    plan = ProtocolPlan(protocol, batch, 2)
                    # a seed per run: one seed gives the same rows in every protocol
                    seed = 100 * k + 10 * j + batch
                    record = measure_protocol(server, grpc_port, plan, settings, seed)
                    check_record(record, "grpc.aio" if protocol.is_grpc else str(generator))
                    assert record["target"] == f"ours:{protocol}:b{batch}"
                    assert (record["protocol"], record["batch"]) == (str(protocol), batch)
                    assert record["rows_per_s"] == pytest.approx(record["rps"] * batch, rel=1e-3)
                    rows += record["requests"] * batch
        cache = httpx.get(f"{handle.url}/stats").json()["cache"]
        assert cache["hits"] == 0, cache  # warm-ups and runs alike sent only new rows
        assert cache["misses"] >= rows
        server.proc = None  # start_server stops it and checks its workers


def test_protocols_cli_writes_the_result_document(artifacts_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "protocols.json"
    argv = [sys.executable, "-m", "benchmarks", "protocols", "--protocols", "oip_json,grpc",
            "--batch", "1,2", "--concurrency", "2", "--duration", "0.5", "--warmup", "0.2",
            "--generator", "python", "--workers", "1", "--artifacts", str(artifacts_dir),
            "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "p50 vs native" in done.stdout and str(out) in done.stdout
    doc = orjson.loads(out.read_bytes())
    assert doc["kind"] == "benchmark" and doc["command"] == "protocols"
    assert [(r["server"], r["protocol"], r["batch"]) for r in doc["runs"]] == [
        ("ours", "oip_json", 1), ("ours", "oip_json", 2), ("ours", "grpc", 1),
        ("ours", "grpc", 2), ("grpc_floor", "grpc", 1), ("grpc_floor", "grpc", 2)]  # fmt: skip
    for record in doc["runs"]:
        check_record(record, "grpc.aio" if record["protocol"] == "grpc" else "python")
    assert [b["bar"] for b in doc["bars"]][1] == "every protocol run answered without errors"
    assert doc["bars"][1]["met"] is True


class CaptureServer:
    """A loopback HTTP/1.1 server that answers every request with an empty 200 and keeps
    the first ``limit`` bodies it was sent, in order (one client connection at a time)."""

    def __init__(self, limit: int) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[bytes] = []
        self.limit = limit
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(1 << 20):
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, rest = buffer.split(b"\r\n\r\n", 1)
                    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
                    length = int(fields[b"Content-Length"])
                    if len(rest) < length:
                        break
                    if len(self.bodies) < self.limit:
                        self.bodies.append(rest[:length])
                        self.headers.append(head)
                    buffer = rest[length:]
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("protocol", [p for p in Protocol if not p.is_grpc])
def test_wrk_sends_the_bytes_the_python_builder_makes(protocol: Protocol) -> None:
    if wrk_path() is None:
        pytest.skip("wrk is not on PATH (apt-get install wrk)")
    requests = build_requests(protocol, "tactical", 2, seed=11)
    capture = CaptureServer(limit=40)
    try:
        result = run_wrk_stamped(capture.port, requests, concurrency=1, duration_s=1)
    finally:
        capture.close()
    assert result.requests >= 40 and len(capture.bodies) == 40
    # wrk calls request() once to check the script before the run: the wire starts at 1
    assert capture.bodies == [requests.body(i) for i in range(1, 41)]
    head = capture.headers[0]
    assert head.startswith(f"POST {requests.path} HTTP/1.1".encode())
    for name, value in requests.headers:
        assert f"\r\n{name}: {value}".encode() in head
    if protocol is not Protocol.NATIVE:
        assert b"Content-Type" not in head  # as tritonclient


def copy_of_the_project(dest: Path, marker: str) -> Path:
    """The packages the server imports, copied, with ``marker`` printed when ``server`` is
    imported: the log then shows which tree a process ran."""
    for package in ("server", "models", "optimize", "monitoring"):
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    init = dest / "server" / "__init__.py"
    init.write_text(init.read_text() + f"\nprint({marker!r}, file=__import__('sys').stderr)\n")
    return dest


def test_ab_runs_two_trees_in_interleaved_pairs(
    artifacts_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline = copy_of_the_project(tmp_path / "before", "tree-marker: the copied tree")
    monkeypatch.setattr(cli, "RESULTS_DIR", tmp_path / "results")  # logs go under it
    out = tmp_path / "ab.json"
    argv = ["ab", "--baseline-tree", str(baseline), "--concurrency", "1,2", "--rounds", "2",
            "--duration", "0.3", "--warmup", "0.1", "--generator", "python", "--workers", "1",
            "--noisy-retries", "0", "--artifacts", str(artifacts_dir),
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    doc = orjson.loads(out.read_bytes())
    assert doc["command"] == "ab" and doc["runs"] == []
    trees = doc["ab"]["trees"]
    assert trees["baseline"] == {"path": str(baseline.resolve()), "commit": "unknown"}
    assert trees["candidate"]["path"] == str(ROOT) and trees["candidate"]["commit"] != "unknown"
    order = [(r["concurrency"], r["pair"], r["target"]) for r in doc["pairs"]]
    assert order == [(1, 0, "baseline"), (1, 0, "candidate"), (1, 1, "candidate"),
                     (1, 1, "baseline"), (2, 0, "baseline"), (2, 0, "candidate"),
                     (2, 1, "candidate"), (2, 1, "baseline")]  # fmt: skip
    for record in doc["pairs"]:
        check_record(record, "python")
    summary = doc["ab"]["summary"]
    assert [(s["concurrency"], s["pairs"], len(s["per_pair"])) for s in summary] == [
        (1, 2, 2), (2, 2, 2)]  # fmt: skip
    assert all(s["ratio"]["rps"] > 0 for s in summary)
    assert [b["bar"].split(":")[0] for b in doc["bars"]] == ["cold@1", "cold@1", "cold@2"]
    # each server ran its own tree's code (the workers too: they print the marker as well)
    logs = tmp_path / "results" / "logs"
    assert "tree-marker" in (logs / "ab-baseline.log").read_text()
    assert "tree-marker" not in (logs / "ab-candidate.log").read_text()


def test_front_cap_measures_the_front_apart_from_its_workers(
    artifacts_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # its server log goes under bench-results/
    (row,) = measure_front(
        artifacts_dir, [1], clients=2, duration_s=0.5, generator=Generator.PYTHON
    )
    assert row["workers"] == 1 and row["rps"] > 0 and row["errors"] == {}
    assert row["front_cores"] > 0 and row["worker_cores"] >= 0
    assert row["front_us_per_request"] == pytest.approx(1e6 * row["front_cores"] / row["rps"], 0.01)


def test_tail_traces_one_connection_and_explains_its_slowest(
    artifacts_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    assert tail.main(["--artifacts", str(artifacts_dir), "--requests", "600"]) == 0
    printed = capsys.readouterr().out
    assert "to_front" in printed and "in_front" in printed, printed
