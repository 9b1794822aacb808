"""The Ray deployment's pure parts: options and their checks, the in-memory ASGI call, and
the Serve config file (parsed by Ray's own schema, no cluster)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from server.app import create_app
from server.config import ConfigError, ServerConfig
from server.ray.asgi_call import call_asgi, request_body
from server.ray.metrics import MetricsEndpoint, file_sd
from server.ray.options import Autoscaling, RayDeployOptions, parse_autoscaling, server_flags
from server.ray.targets import collect_reports
from tests.support import ROOT
from tests.tools import required_module

SERVE_CONFIG = ROOT / "deploy" / "ray" / "serve_config.yaml"


def test_fixed_replicas_become_ray_options() -> None:
    options = RayDeployOptions(replicas=3, max_ongoing_requests=48, max_queued_requests=100)
    got = options.deployment_options()
    assert got["num_replicas"] == 3
    assert got["max_ongoing_requests"] == 48 and got["max_queued_requests"] == 100
    assert "autoscaling_config" not in got


def test_autoscaling_replaces_the_replica_count() -> None:
    options = RayDeployOptions(autoscaling=parse_autoscaling("1:8:32"))
    got = options.deployment_options()
    assert got["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 32.0,
    }
    assert "num_replicas" not in got


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"max_ongoing_requests": 8}, "below the server's max_batch_size (32)"),
        ({"replicas": 0}, "write at least 1"),
        ({"autoscaling": Autoscaling(4, 2, 8)}, "1 <= min <= max"),
        ({"autoscaling": Autoscaling(1, 2, 100)}, "at most max_ongoing_requests"),
        ({"max_queued_requests": 0}, "-1 (no limit)"),
        ({"server_args": ("--workers", "-1")}, "workers=-1"),
    ],
)
def test_bad_options_say_what_to_write(kwargs: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=r".*" + says.replace("(", r"\(").replace(")", r"\)")):
        RayDeployOptions(**kwargs)


def test_workers_follow_the_replicas_cores_unless_given() -> None:
    assert RayDeployOptions(num_cpus=3).server_config().workers == 2
    assert RayDeployOptions(num_cpus=1).server_config().workers == 1
    given = RayDeployOptions(num_cpus=4, server_args=("--workers", "1"))
    assert given.server_config().workers == 1


def test_batch_size_lowered_with_the_server_flag_allows_fewer_ongoing_requests() -> None:
    options = RayDeployOptions(server_args=("--max-batch-size", "8"), max_ongoing_requests=8)
    assert options.server_config().max_batch_size == 8


def test_autoscale_text_and_server_flags_are_checked() -> None:
    with pytest.raises(ConfigError, match="MIN:MAX:TARGET"):
        parse_autoscaling("1:8")
    assert server_flags(["--", "--workers", "2"]) == ("--workers", "2")
    with pytest.raises(ConfigError):
        server_flags(["--cache-size", "-1"])


def test_handle_bodies_are_json_bytes() -> None:
    assert request_body(b"{}") == b"{}"
    assert request_body('{"a": 1}') == b'{"a": 1}'
    assert request_body({"model": "tactical"}) == b'{"model":"tactical"}'


def test_in_memory_call_reaches_the_server_app(tmp_path: Path) -> None:
    """Before start-up the app is alive, not ready, and refuses /infer with Retry-After;
    the in-memory call carries statuses, headers and bodies as HTTP would."""
    app = create_app(ServerConfig(artifacts_dir=tmp_path, workers=1))

    async def calls():
        return (
            await call_asgi(app, "GET", "/healthz"),
            await call_asgi(app, "GET", "/readyz"),
            await call_asgi(app, "POST", "/infer", b'{"model": "tactical"}'),
            await call_asgi(app, "GET", "/nowhere?x=1"),
        )

    alive, ready, infer, missing = asyncio.run(calls())
    assert (alive.status, alive.json()) == (200, {"status": "alive"})
    assert ready.status == 503 and ready.retry_after_s == 1
    assert infer.status == 503 and infer.retry_after_s is not None
    assert infer.headers["content-type"].startswith("application/json")
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"


def test_serve_config_file_is_valid_for_ray() -> None:
    required_module("ray", "pip install -c constraints.txt '.[ray]'")
    from ray.serve.schema import ServeDeploySchema

    from server.ray.app import build_app

    document = yaml.safe_load(SERVE_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(document)
    (app,) = schema.applications
    assert app.import_path == "server.ray.app:build_app"
    application = build_app(app.args)
    deployment = application._bound_deployment
    assert deployment.name == "PolicyServer"
    assert deployment.max_ongoing_requests >= 32


class FakeCall:
    def __init__(self, value: dict) -> None:
        self.value = value

    def result(self, timeout_s: float) -> dict:
        return self.value


class FakeHandle:
    """A DeploymentHandle whose router hands out replicas in turn (``replica_report``)."""

    def __init__(self, reports: list[dict]) -> None:
        self.reports, self.calls = reports, 0
        self.replica_report = self

    def remote(self) -> FakeCall:
        self.calls += 1
        return FakeCall(self.reports[self.calls % len(self.reports)])


def test_reports_are_collected_until_every_replica_answered() -> None:
    reports = [{"replica_id": r, "node_id": "n", "metrics_address": f"10.0.0.1:{r}"} for r in "ab"]
    got = collect_reports(FakeHandle(reports), want=2)
    assert sorted(r["replica_id"] for r in got) == ["a", "b"]
    sd = file_sd(got, "policy")
    assert [t["targets"] for t in sd] == [["10.0.0.1:a"], ["10.0.0.1:b"]]
    assert sd[0]["labels"] == {"ray_app": "policy", "ray_replica": "a", "ray_node": "n"}
    now = iter(range(100))
    with pytest.raises(TimeoutError, match="1 of 3 replicas"):
        collect_reports(FakeHandle(reports[:1]), want=3, timeout_s=5, clock=lambda: next(now))


def test_metrics_endpoint_serves_the_apps_metrics_and_nothing_else() -> None:
    async def app(scope, receive, send):
        assert (scope["method"], scope["path"]) == ("GET", "/metrics")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; version=0.0.4")],
            }
        )
        await send({"type": "http.response.body", "body": b"pis_up 1\n"})  # fmt: skip

    async def fetch(port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        return data

    async def scenario() -> tuple[bytes, bytes]:
        endpoint = MetricsEndpoint(app)
        await endpoint.start("127.0.0.1")
        try:
            port = endpoint.address[1]
            return await fetch(port, "/metrics"), await fetch(port, "/infer")
        finally:
            await endpoint.stop()

    metrics, other = asyncio.run(scenario())
    assert metrics.startswith(b"HTTP/1.1 200 OK\r\n") and metrics.endswith(b"\r\n\r\npis_up 1\n")
    assert b"text/plain; version=0.0.4" in metrics
    assert other.startswith(b"HTTP/1.1 404")


def test_the_command_refuses_bad_options_before_touching_ray(capsys) -> None:
    from server.ray.__main__ import main

    assert main(["--max-ongoing-requests", "4"]) == 2
    assert "write at least 32" in capsys.readouterr().err
    assert main(["--autoscale", "8", "--", "--workers", "1"]) == 2
    assert main(["--", "--cache-ttl-s", "soon"]) == 2
