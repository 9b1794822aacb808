"""The real server on a free port, spoken to over HTTP as clients do (contract: API.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from models import ACTIONS, EnsembleRule, build_default, get_spec
from optimize.loader import load_manifest
from tests.support import start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(artifacts_dir: Path):
    with start_server(
        artifacts_dir, workers=2, args=["--max-body-bytes", "200000", "--max-request-batch", "16"]
    ) as handle:
        yield handle


def reference(model: str, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.inference_mode():
        probs, value = build_default(model)(torch.from_numpy(observations))
    return probs.numpy(), value.numpy()


def tolerance(artifacts_dir: Path, model: str) -> tuple[float, float]:
    entry = load_manifest(artifacts_dir).models[model]
    tol = entry.selected_variant.tolerance
    return tol.probs, tol.value


def check_row(model: str, row: dict, probs: np.ndarray, value: np.ndarray, tol) -> None:
    spec = get_spec(model)
    got = np.array([row["agents"][a] for a in spec.agents], dtype=np.float32)
    assert np.abs(got - probs).max() <= tol[0]
    assert abs(row["value"] - float(value[0])) <= tol[1]
    action, confidence = EnsembleRule(spec).decide(probs[None])
    mean = probs.mean(axis=0)
    assert row["action"] in ACTIONS
    # the arg-max may differ from the reference only on a near tie
    if row["action"] != ACTIONS[int(action[0])]:
        assert abs(mean.max() - mean[ACTIONS.index(row["action"])]) <= 2 * tol[0]
    assert abs(row["confidence"] - float(confidence[0])) <= tol[0]


@pytest.mark.parametrize("model", ["tactical", "strategic"])
def test_single_and_batch_agree_with_float32_reference(server, artifacts_dir, model) -> None:
    spec = get_spec(model)
    rng = np.random.default_rng(11)
    obs = rng.standard_normal((5, spec.rows, spec.features)).astype(np.float32)
    probs, value = reference(model, obs)
    tol = tolerance(artifacts_dir, model)
    versions = httpx.get(f"{server.url}/readyz").json()["models"]

    r = httpx.post(f"{server.url}/infer", json={"model": model, "observation": obs[0].tolist()})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    single = r.json()
    assert single["model"] == model and single["version"] == versions[model]
    assert single["cached"] is False
    check_row(model, single, probs[0], value[0], tol)

    r = httpx.post(f"{server.url}/infer", json={"model": model, "observations": obs.tolist()})
    assert r.status_code == 200
    batch = r.json()
    assert batch["model"] == model and batch["version"] == versions[model]
    assert len(batch["results"]) == 5
    assert batch["results"][0]["cached"] is True  # same observation as the single request
    for i, row in enumerate(batch["results"]):
        assert set(row) == {"action", "confidence", "agents", "value", "cached"}
        check_row(model, row, probs[i], value[i], tol)


def test_repeat_is_served_from_cache_with_same_outputs(server) -> None:
    obs = np.random.default_rng(3).standard_normal((60, 7))
    first = httpx.post(
        f"{server.url}/infer", json={"model": "tactical", "observation": obs.tolist()}
    )
    # 0.1 and 0.10 are the same float32: a textual variant of the body hits the same entry
    text = json.dumps({"observation": obs.astype(np.float32).tolist(), "model": "tactical"})
    second = httpx.post(
        f"{server.url}/infer", content=text, headers={"content-type": "application/json"}
    )
    a, b = first.json(), second.json()
    assert a["cached"] is False and b["cached"] is True
    a.pop("cached"), b.pop("cached")
    assert a == b


def test_400_concurrent_distinct_requests_each_get_their_own_answer(server) -> None:
    rng = np.random.default_rng(5)
    obs = rng.standard_normal((400, 60, 7)).astype(np.float32)
    obs[:, 0, 0] = np.arange(400)  # distinct, and the value tells which is which
    probs, value = reference("tactical", obs)

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/infer", json={"model": "tactical", "observation": o.tolist()})
                    for o in obs
                )
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 400
    for i, r in enumerate(responses):
        row = r.json()
        assert abs(row["value"] - float(value[i, 0])) < 1e-3, f"request {i} got another's answer"
        got = np.array([row["agents"][a] for a in ("fvg", "momentum", "entry")])
        assert np.abs(got - probs[i]).max() < 1e-3


def error_of(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{oops", "application/json", 400, "invalid_json"),
        (b"[1,2,3]", "application/json", 400, "invalid_json"),
        (b'{"model":"nope","observation":[[0]]}', "application/json", 404, "unknown_model"),
        (b'{"model":"tactical","observation":[[0]]}', "text/plain", 415, "unsupported_media_type"),
        (b"model=tactical", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"model":"tactical","observation":[[0]]}', "application/jsonx", 415,
         "unsupported_media_type"),
        (b'{"model":"tactical","observation":[[0]]}', "application/json; charset=latin-1", 422,
         "invalid_observation"),  # RFC 8259 section 11: a charset has no effect
        (b'{"model":"tactical","observation":[[0]]}', 'application/json; Charset="UTF-8"', 422,
         "invalid_observation"),
        (b'{"model":"tactical"}', "application/json", 422, "invalid_observation"),
        (b'{"model":"tactical","observation":[[1,2]]}', "application/json", 422,
         "invalid_observation"),
        (b'{"model":"tactical","observation":' + json.dumps([[float("nan")] * 7] * 60).encode()
         + b"}", "application/json", 422, "invalid_observation"),
        (b'{"model":"tactical","observation":' + json.dumps([["x"] * 7] * 60).encode() + b"}",
         "application/json", 422, "invalid_observation"),
        (b" " * 300_000, "application/json", 413, "body_too_large"),
    ],
)  # fmt: skip
def test_error_rows_of_the_contract(server, content, content_type, status, code) -> None:
    r = httpx.post(f"{server.url}/infer", content=content, headers={"content-type": content_type})
    assert r.status_code == status
    assert error_of(r)["code"] == code


def test_batch_too_large_is_422(server) -> None:
    many = np.zeros((17, 60, 7)).tolist()
    r = httpx.post(f"{server.url}/infer", json={"model": "tactical", "observations": many})
    assert r.status_code == 422
    assert error_of(r)["code"] == "invalid_observation"
    assert "at most 16" in error_of(r)["message"]


def test_unknown_path_and_wrong_method_are_json_errors(server) -> None:
    assert error_of(httpx.get(f"{server.url}/nowhere"))["code"] == "not_found"
    r = httpx.get(f"{server.url}/infer")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    assert r.headers["allow"] == "POST"  # RFC 9110: a 405 says which methods would do
    r = httpx.post(f"{server.url}/healthz")
    assert r.status_code == 405 and error_of(r)["code"] == "method_not_allowed"
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    r = httpx.put(f"{server.url}/v2/models/tactical/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


def test_operations_endpoints(server, artifacts_dir) -> None:
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.head(f"{server.url}/healthz").status_code == 200  # load-balancer checks
    assert httpx.head(f"{server.url}/readyz").status_code == 200
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and set(ready.json()["models"]) == {"tactical", "strategic"}
    models = httpx.get(f"{server.url}/models").json()
    manifest = load_manifest(artifacts_dir)
    for name in ("tactical", "strategic"):
        selected = manifest.models[name].selected_variant
        assert models[name]["variant"] == selected.name
        assert models[name]["size_bytes"] == selected.size_bytes
        assert models[name]["version"] == selected.sha256[:12]
        assert models[name]["runtime"] and models[name]["precision"]
        assert models[name]["latency_us"]["p99"] > 0
    stats = httpx.get(f"{server.url}/stats").json()
    assert len(stats["workers"]) == 2
    for worker in stats["workers"]:
        assert {"pid", "state", "in_flight", "served"} <= set(worker)
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert httpx.get(f"{server.url}/alerts").status_code == 200
