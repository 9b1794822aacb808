"""The Open Inference Protocol as a Triton user meets it: the real server on free ports,
driven by ``tritonclient.http`` and ``tritonclient.grpc`` from PyPI, plus raw requests for
what the client library never sends (contract: API.md, Open Inference Protocol)."""

from __future__ import annotations

import gzip
import queue
import zlib
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from models import ACTIONS, get_spec
from tests.support import free_port, start_server

pytestmark = pytest.mark.slow
MODELS = ["tactical", "strategic"]
OUTPUTS = ["probs", "value", "action", "confidence"]


@pytest.fixture(scope="module")
def server(artifacts_dir: Path):
    grpc_port = free_port()
    with start_server(
        artifacts_dir, workers=2, args=["--grpc-port", str(grpc_port), "--max-request-batch", "64"]
    ) as handle:
        handle.grpc_port = grpc_port  # type: ignore[attr-defined]
        yield handle


@pytest.fixture(scope="module")
def http_client(server):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield client
    client.close()


def observations(model: str, n: int, seed: int) -> np.ndarray:
    spec = get_spec(model)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, spec.rows, spec.features)).astype(np.float32)


def native(server, model: str, obs: np.ndarray) -> list[dict]:
    body = orjson.dumps({"model": model, "observations": obs.tolist()})
    response = httpx.post(
        f"{server.url}/infer", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


def assert_same_as_native(results: dict[str, np.ndarray], rows: list[dict], model: str) -> None:
    agents = get_spec(model).agents
    expected_probs = np.array([[r["agents"][a] for a in agents] for r in rows], np.float32)
    np.testing.assert_array_equal(results["probs"], expected_probs)
    np.testing.assert_array_equal(
        results["value"], np.array([[r["value"]] for r in rows], np.float32)
    )
    assert [ACTIONS[a] for a in results["action"]] == [r["action"] for r in rows]
    np.testing.assert_array_equal(
        results["confidence"], np.array([r["confidence"] for r in rows], np.float32)
    )
    assert results["action"].dtype == np.int32 and results["probs"].dtype == np.float32


def test_health_and_metadata_over_both_transports(server, http_client, grpc_client) -> None:
    versions = httpx.get(f"{server.url}/readyz").json()["models"]
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    meta = http_client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"] and meta["name"]
    assert "binary_tensor_data" in grpc_client.get_server_metadata(as_json=True)["extensions"]
    for model in MODELS:
        spec = get_spec(model)
        version = versions[model]
        for client in (http_client, grpc_client):
            assert client.is_model_ready(model) and client.is_model_ready(model, version)
        assert not http_client.is_model_ready(model, "not-" + version)  # a 404
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            grpc_client.is_model_ready(model, "not-" + version)
        for md in (
            http_client.get_model_metadata(model, version),
            grpc_client.get_model_metadata(model, as_json=True),
        ):
            assert md["name"] == model and md["versions"] == [version]
            assert md["platform"] in {"onnxruntime_onnx", "pytorch_libtorch", "torch"}
            (tensor,) = md["inputs"]
            assert (tensor["name"], tensor["datatype"]) == ("observation", "FP32")
            assert [int(d) for d in tensor["shape"]] == [-1, spec.rows, spec.features]
            shapes = {
                o["name"]: ([int(d) for d in o["shape"]], o["datatype"]) for o in md["outputs"]
            }
            assert shapes == {
                "probs": ([-1, 3, 3], "FP32"),
                "value": ([-1, 1], "FP32"),
                "action": ([-1], "INT32"),
                "confidence": ([-1], "FP32"),
            }
    assert httpx.get(f"{server.url}/v2/models/tactical/versions/nope/ready").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/nope/ready").status_code == 404
    assert httpx.get(f"{server.url}/v2/models/nope").json() == {
        "error": "unknown model 'nope'; this server serves: strategic, tactical"
    }


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_infer_matches_native(server, http_client, model, batch, binary) -> None:
    obs = observations(model, batch, seed=batch + binary)
    inp = triton_http.InferInput("observation", list(obs.shape), "FP32")
    inp.set_data_from_numpy(obs, binary_data=binary)
    outputs = [triton_http.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    result = http_client.infer(model, [inp], outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == model
    got = {name: result.as_numpy(name) for name in OUTPUTS}
    assert got["probs"].shape == (batch, 3, 3) and got["value"].shape == (batch, 1)
    assert np.isfinite(got["probs"]).all()
    assert_same_as_native(got, native(server, model, obs), model)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_infer_with_a_compressed_request(server, http_client, algorithm) -> None:
    """tritonclient's request_compression_algorithm, as Triton takes it."""
    obs = observations("tactical", 4, seed=77)
    inp = triton_http.InferInput("observation", list(obs.shape), "FP32")
    inp.set_data_from_numpy(obs, binary_data=True)
    outputs = [triton_http.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
    result = http_client.infer(
        "tactical", [inp], outputs=outputs, request_compression_algorithm=algorithm
    )
    got = {name: result.as_numpy(name) for name in OUTPUTS}
    assert_same_as_native(got, native(server, "tactical", obs), "tactical")


def test_compressed_bodies_on_the_native_route(server) -> None:
    obs = observations("tactical", 1, seed=78)[0]
    body = orjson.dumps({"model": "tactical", "observation": obs.tolist()})
    url = f"{server.url}/infer"

    def post(content: bytes, coding: str) -> httpx.Response:
        headers = {"content-type": "application/json", "content-encoding": coding}
        return httpx.post(url, content=content, headers=headers)

    plain = httpx.post(url, content=body, headers={"content-type": "application/json"}).json()
    for coding, content in (
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("deflate", zlib.compress(body, wbits=-15)),  # raw deflate, as some clients send it
        ("identity", body),
    ):
        answer = post(content, coding)
        assert answer.status_code == 200, (coding, answer.text)
        assert answer.json()["agents"] == plain["agents"]
    unsupported = post(body, "br")
    assert unsupported.status_code == 415 and "gzip" in unsupported.json()["error"]["message"]
    broken = post(gzip.compress(body)[:-9], "gzip")
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_content_encoding"
    not_gzip = post(body, "gzip")
    assert not_gzip.status_code == 400
    bomb = post(gzip.compress(b" " * (5 << 20)), "gzip")  # 5 MB of spaces in ~5 KB
    assert bomb.status_code == 413 and bomb.json()["error"]["code"] == "body_too_large"
    oip = f"{server.url}/v2/models/tactical/infer"
    refused = httpx.post(oip, content=b"{}", headers={"content-encoding": "compress"})
    assert refused.status_code == 415 and "error" in refused.json()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("batch", [1, 64])
def test_grpc_infer_matches_native(server, grpc_client, model, batch) -> None:
    obs = observations(model, batch, seed=100 + batch)
    inp = triton_grpc.InferInput("observation", list(obs.shape), "FP32")
    inp.set_data_from_numpy(obs)
    result = grpc_client.infer(model, [inp], request_id="g-1")
    assert result.get_response().id == "g-1"
    got = {name: result.as_numpy(name) for name in OUTPUTS}
    assert_same_as_native(got, native(server, model, obs), model)


def _stream(port: int, requests: list[dict], headers: dict | None = None) -> list[tuple]:
    """``requests`` (keyword arguments of ``async_stream_infer``) on one tritonclient
    stream, all sent before any answer is read: (result, error) for each, in arrival order."""
    answers: queue.Queue = queue.Queue()
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    client.start_stream(lambda result, error: answers.put((result, error)), headers=headers)
    try:
        for request in requests:
            try:
                client.async_stream_infer(**request)
            except InferenceServerException:
                # the server ended the stream before this was sent (a wrong key ends it as
                # it opens); the reason came through the callback
                return [answers.get(timeout=30)]
        return [answers.get(timeout=30) for _ in requests]
    finally:
        client.stop_stream()
        client.close()


def test_grpc_stream_answers_each_request_in_order(server) -> None:
    """Triton's streaming extension (tritonclient's start_stream): every request is
    answered on the stream in the order sent, the same outputs as unary calls and /infer;
    a bad request gets its error on the stream and the stream goes on."""
    batches = [observations("tactical", 1 + i % 3, seed=300 + i) for i in range(12)]
    requests = []
    for i, obs in enumerate(batches):
        inp = triton_grpc.InferInput("observation", list(obs.shape), "FP32")
        inp.set_data_from_numpy(obs)
        requests.append({"model_name": "tactical", "inputs": [inp], "request_id": f"s-{i}"})
    wrong = triton_grpc.InferInput("observation", [1, 60, 6], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 60, 6), np.float32))
    requests.insert(5, {"model_name": "tactical", "inputs": [wrong], "request_id": "bad"})
    requests.insert(8, {"model_name": "nope", "inputs": [wrong], "request_id": "unknown"})
    strategic = observations("strategic", 2, seed=9)
    inp = triton_grpc.InferInput("observation", [2, 48, 13], "FP32")
    inp.set_data_from_numpy(strategic)
    only = [triton_grpc.InferRequestedOutput("action")]
    requests.append({"model_name": "strategic", "inputs": [inp], "outputs": only})

    answers = _stream(server.grpc_port, requests)

    ok = [result for result, error in answers if error is None]
    errors = [str(error) for result, error in answers if error is not None]
    assert [r.get_response().id for r in ok[:-1]] == [f"s-{i}" for i in range(12)]
    assert answers[5][1] is not None and "expects [N, 60, 7]" in str(answers[5][1])
    assert answers[8][1] is not None and "unknown model 'nope'" in str(answers[8][1])
    assert len(errors) == 2, errors
    for obs, result in zip(batches, ok[:-1], strict=True):
        got = {name: result.as_numpy(name) for name in OUTPUTS}
        assert_same_as_native(got, native(server, "tactical", obs), "tactical")
    last = ok[-1].get_response()
    assert [o.name for o in last.outputs] == ["action"]
    rows = native(server, "strategic", strategic)
    assert [ACTIONS[a] for a in ok[-1].as_numpy("action")] == [r["action"] for r in rows]


def test_grpc_stream_needs_the_api_key(artifacts_dir: Path) -> None:
    grpc_port = free_port()
    env = {"PIS_API_KEY": "s3cret-key"}
    with start_server(artifacts_dir, workers=1, args=["--grpc-port", str(grpc_port)], env=env):
        obs = observations("tactical", 1, seed=10)
        inp = triton_grpc.InferInput("observation", [1, 60, 7], "FP32")
        inp.set_data_from_numpy(obs)
        request = {"model_name": "tactical", "inputs": [inp], "request_id": "k"}
        [(result, error)] = _stream(grpc_port, [request])
        assert result is None and error.status() == "StatusCode.UNAUTHENTICATED", error
        [(result, error)] = _stream(grpc_port, [request], headers={"x-api-key": "s3cret-key"})
        assert error is None and result.get_response().id == "k"


def test_requested_outputs_limit_what_is_returned(http_client, grpc_client) -> None:
    obs = observations("tactical", 3, seed=5)
    inp = triton_http.InferInput("observation", list(obs.shape), "FP32")
    inp.set_data_from_numpy(obs)
    result = http_client.infer(
        "tactical", [inp], outputs=[triton_http.InferRequestedOutput("action")]
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["action"]
    assert result.as_numpy("probs") is None
    ginp = triton_grpc.InferInput("observation", list(obs.shape), "FP32")
    ginp.set_data_from_numpy(obs)
    result = grpc_client.infer(
        "tactical",
        [ginp],
        outputs=[
            triton_grpc.InferRequestedOutput("confidence"),
            triton_grpc.InferRequestedOutput("value"),
        ],
    )
    assert [o.name for o in result.get_response().outputs] == ["confidence", "value"]
    assert result.as_numpy("confidence").shape == (3,)


def test_an_output_asked_for_twice_is_answered_once(http_client, grpc_client) -> None:
    obs = observations("tactical", 2, seed=6)
    inp = triton_http.InferInput("observation", list(obs.shape), "FP32")
    inp.set_data_from_numpy(obs)
    twice = [triton_http.InferRequestedOutput("value", binary_data=b) for b in (True, False)]
    twice.append(triton_http.InferRequestedOutput("action"))
    response = http_client.infer("tactical", [inp], outputs=twice).get_response()
    assert [o["name"] for o in response["outputs"]] == ["value", "action"]
    assert "binary_data_size" in response["outputs"][0]["parameters"]  # the first one's way
    ginp = triton_grpc.InferInput("observation", list(obs.shape), "FP32")
    ginp.set_data_from_numpy(obs)
    names = ["action", "value", "action"]
    outputs = [triton_grpc.InferRequestedOutput(name) for name in names]
    result = grpc_client.infer("tactical", [ginp], outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["action", "value"]
    assert len(result.get_response().raw_output_contents) == 2


def test_default_outputs_are_binary_only_when_asked(server) -> None:
    obs = observations("strategic", 2, seed=9)
    request = {"inputs": [{"name": "observation", "datatype": "FP32", "shape": [2, 48, 13],
                           "data": obs.tolist()}]}  # fmt: skip
    url = f"{server.url}/v2/models/strategic/infer"
    response = httpx.post(url, content=orjson.dumps(request))  # no Content-Type, as tritonclient
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert [o["name"] for o in response.json()["outputs"]] == OUTPUTS
    request["parameters"] = {"binary_data_output": True}
    response = httpx.post(url, content=orjson.dumps(request))
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [2 * 9 * 4, 2 * 4, 2 * 4, 2 * 4]
    assert len(response.content) == length + sum(sizes)
    assert int(response.headers["content-length"]) == len(response.content)


def _http_error(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        call()
    return str(info.value.status()), info.value.message()


def test_http_error_paths(server, http_client) -> None:
    obs = observations("tactical", 1, seed=1)
    good = triton_http.InferInput("observation", [1, 60, 7], "FP32")
    good.set_data_from_numpy(obs)
    assert _http_error(lambda: http_client.infer("nope", [good]))[0] == "404"
    assert _http_error(lambda: http_client.infer("tactical", [good], model_version="0"))[0] == "404"
    fp64 = triton_http.InferInput("observation", [1, 60, 7], "FP64")
    fp64.set_data_from_numpy(obs.astype(np.float64))
    assert _http_error(lambda: http_client.infer("tactical", [fp64])) == (
        "400",
        "input 'observation' has datatype 'FP64'; send FP32",
    )
    narrow = triton_http.InferInput("observation", [1, 60, 6], "FP32")
    narrow.set_data_from_numpy(np.ascontiguousarray(obs[:, :, :6]))
    status, message = _http_error(lambda: http_client.infer("tactical", [narrow]))
    assert status == "400" and "expects [N, 60, 7]" in message
    wrong_name = triton_http.InferInput("obs", [1, 60, 7], "FP32")
    wrong_name.set_data_from_numpy(obs)
    assert (
        "unknown input 'obs'" in _http_error(lambda: http_client.infer("tactical", [wrong_name]))[1]
    )
    too_many = triton_http.InferInput("observation", [65, 60, 7], "FP32")
    too_many.set_data_from_numpy(np.zeros((65, 60, 7), np.float32))
    assert _http_error(lambda: http_client.infer("tactical", [too_many]))[0] == "400"


def _post(server, path: str, body: bytes, headers: dict[str, str] | None = None):
    return httpx.post(f"{server.url}{path}", content=body, headers=headers or {})


def test_raw_http_requests_the_client_library_never_sends(server) -> None:
    path = "/v2/models/tactical/infer"
    obs = observations("tactical", 1, seed=2)
    header = orjson.dumps({"inputs": [{"name": "observation", "datatype": "FP32",
        "shape": [1, 60, 7], "parameters": {"binary_data_size": obs.nbytes}}]})  # fmt: skip
    ok = _post(server, path, header + obs.tobytes(),
               {"inference-header-content-length": str(len(header)),
                "content-type": "application/octet-stream"})  # fmt: skip
    assert ok.status_code == 200 and ok.json()["model_name"] == "tactical"
    cases = {
        "truncated binary": (header + obs.tobytes()[:-4], str(len(header)), None),
        "header past the body": (header, str(len(header) + 10), None),
        "non-numeric header length": (header + obs.tobytes(), "ten", None),
        "not JSON": (b"{nope", None, None),
        "NaN in binary": (header + np.full((1, 60, 7), np.nan, np.float32).tobytes(),
                          str(len(header)), None),
        "not an object": (b"[1, 2]", None, None),
        "value count off": (orjson.dumps({"inputs": [{"name": "observation", "datatype": "FP32",
                            "shape": [1, 60, 7], "data": [1.0] * 419}]}), None, None),
        "string in data": (orjson.dumps({"inputs": [{"name": "observation", "datatype": "FP32",
                           "shape": [1, 60, 7], "data": ["a"] * 420}]}), None, None),
        "beyond float32": (orjson.dumps({"inputs": [{"name": "observation", "datatype": "FP32",
                           "shape": [1, 60, 7], "data": [1e39] * 420}]}), None, None),
        "bool in data": (orjson.dumps({"inputs": [{"name": "observation", "datatype": "FP32",
                         "shape": [1, 60, 7], "data": [True] * 420}]}), None, None),
        "unknown output": (orjson.dumps({"inputs": [{"name": "observation", "datatype": "FP32",
                           "shape": [1, 60, 7], "data": [0.5] * 420}],
                           "outputs": [{"name": "nope"}]}), None, None),
    }  # fmt: skip
    for case, (body, length, _) in cases.items():
        headers = {"inference-header-content-length": length} if length else {}
        response = _post(server, path, body, headers)
        assert response.status_code == 400, (case, response.text)
        assert set(response.json()) == {"error"} and response.json()["error"], case
    unsupported = _post(server, path, header, {"content-type": "text/plain"})
    assert unsupported.status_code == 415 and "error" in unsupported.json()
    nested = _post(server, path, orjson.dumps({"id": "n", "inputs": [{"name": "observation",
        "datatype": "FP32", "shape": [1, 60, 7], "data": obs.tolist()}]}))  # fmt: skip
    assert nested.status_code == 200 and nested.json()["id"] == "n"
    assert _post(server, "/v2/models/tactical/versions//infer", header).status_code == 404
    assert _post(server, "/v2/models/nope/infer", header).status_code == 404


def test_grpc_error_paths(server, grpc_client) -> None:
    obs = observations("strategic", 1, seed=3)

    def code_of(call) -> str:
        with pytest.raises(InferenceServerException) as info:
            call()
        return info.value.status()

    good = triton_grpc.InferInput("observation", [1, 48, 13], "FP32")
    good.set_data_from_numpy(obs)
    assert code_of(lambda: grpc_client.infer("nope", [good])) == "StatusCode.NOT_FOUND"
    assert code_of(lambda: grpc_client.infer("strategic", [good], model_version="x")) == (
        "StatusCode.NOT_FOUND"
    )
    fp64 = triton_grpc.InferInput("observation", [1, 48, 13], "FP64")
    fp64.set_data_from_numpy(obs.astype(np.float64))
    assert code_of(lambda: grpc_client.infer("strategic", [fp64])) == "StatusCode.INVALID_ARGUMENT"
    # a truncated raw tensor, sent with the protocol's own messages (tritonclient checks sizes)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name="strategic", id="t")
    tensor = request.inputs.add(name="observation", datatype="FP32", shape=[1, 48, 13])
    assert tensor.name == "observation"
    request.raw_input_contents.append(obs.tobytes()[:-4])
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 2496" in info.value.details()
    request.raw_input_contents[0] = obs.tobytes()
    assert stub.ModelInfer(request, timeout=10).id == "t"
    channel.close()


def test_a_row_cached_through_native_is_a_hit_through_oip(server, http_client) -> None:
    obs = observations("tactical", 1, seed=4242)
    native(server, "tactical", obs)  # a miss, computed and cached

    def hits() -> int:
        return httpx.get(f"{server.url}/stats").json()["cache"]["hits"]

    before = hits()
    inp = triton_http.InferInput("observation", [1, 60, 7], "FP32")
    inp.set_data_from_numpy(obs)
    http_client.infer("tactical", [inp])
    assert hits() == before + 1


def test_stats_and_metrics_count_each_protocol(server, http_client, grpc_client) -> None:
    def counts() -> dict[str, int]:
        stats = httpx.get(f"{server.url}/stats").json()["protocols"]
        return {p: stats[p]["since_start"]["requests"] for p in ("native", "oip_rest", "oip_grpc")}

    before = counts()
    obs = observations("strategic", 2, seed=77)
    native(server, "strategic", obs)
    inp = triton_http.InferInput("observation", [2, 48, 13], "FP32")
    inp.set_data_from_numpy(obs)
    http_client.infer("strategic", [inp])
    ginp = triton_grpc.InferInput("observation", [2, 48, 13], "FP32")
    ginp.set_data_from_numpy(obs)
    grpc_client.infer("strategic", [ginp])
    with pytest.raises(InferenceServerException):
        grpc_client.infer("nope", [ginp])
    after = counts()
    assert {p: after[p] - before[p] for p in after} == {"native": 1, "oip_rest": 1, "oip_grpc": 2}
    metrics = httpx.get(f"{server.url}/metrics").text
    for protocol in ("native", "oip_rest", "oip_grpc"):
        assert f'protocol="{protocol}"' in metrics
    assert 'model="unknown",protocol="oip_grpc",status="404"' in metrics


def test_a_client_error_for_a_named_model_counts_under_it_in_every_protocol(
    server, http_client
) -> None:
    """A wrong shape for a model the request names counts under that model, natively
    (422) as through OIP (400); only a request whose model is not known is "unknown"."""

    def client_errors(model: str, status: str) -> int:
        models = httpx.get(f"{server.url}/stats").json()["models"]
        return models.get(model, {}).get("since_start", {}).get("status", {}).get(status, 0)

    native_before = client_errors("strategic", "422")
    unknown_before = client_errors("unknown", "422")
    wrong = httpx.post(f"{server.url}/infer", json={"model": "strategic", "observation": [[1.0]]})
    assert wrong.status_code == 422
    assert client_errors("strategic", "422") == native_before + 1
    assert client_errors("unknown", "422") == unknown_before
    nameless = httpx.post(f"{server.url}/infer", json={"observation": [[1.0]]})
    assert nameless.status_code == 422
    assert client_errors("unknown", "422") == unknown_before + 1


def test_grpc_api_key_and_rate_limit(artifacts_dir: Path) -> None:
    grpc_port = free_port()
    args = ["--grpc-port", str(grpc_port), "--rate-limit-rps", "1", "--rate-limit-burst", "2"]
    env = {"PIS_API_KEY": "s3cret-key"}
    with start_server(artifacts_dir, workers=1, args=args, env=env):
        obs = observations("tactical", 1, seed=8)
        inp = triton_grpc.InferInput("observation", [1, 60, 7], "FP32")
        inp.set_data_from_numpy(obs)
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        with pytest.raises(InferenceServerException) as info:
            client.infer("tactical", [inp])
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        assert client.is_server_live(), "health stays open without a key"
        statuses = []
        for header in ({"x-api-key": "s3cret-key"}, {"authorization": "Bearer s3cret-key"}) * 3:
            try:
                client.infer("tactical", [inp], headers=header)
                statuses.append("OK")
            except InferenceServerException as exc:
                statuses.append(exc.status())
        assert statuses[:2] == ["OK", "OK"], statuses
        assert "StatusCode.RESOURCE_EXHAUSTED" in statuses[2:], statuses
        client.close()
