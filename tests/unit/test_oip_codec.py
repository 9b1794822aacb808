"""The Open Inference Protocol codec's checks on what clients send: every invalid request is
a clear ``BadTensor`` (a 400), never another exception (which the HTTP layer would turn into
a refusal in the wrong shape or a 500)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from models.spec import SPECS
from server.codecs import oip

TACTICAL = SPECS["tactical"]


@pytest.mark.parametrize(
    "data",
    [[[1.0, 2.0], 3.0], [[], 1.0], [[[1.0]], 2.0], [[1.0], {"a": 1}], [[1.0], "ab"], [[1.0], None]],
)
def test_json_data_of_uneven_depth_is_a_bad_tensor(data: list) -> None:
    with pytest.raises(oip.BadTensor):
        oip.rows_from_json(TACTICAL, 1, data)


def test_json_data_flat_or_evenly_nested_is_accepted() -> None:
    flat = [0.5] * TACTICAL.input_size
    nested = [[[0.5] * TACTICAL.features] * TACTICAL.rows]
    assert oip.rows_from_json(TACTICAL, 1, flat) == oip.rows_from_json(TACTICAL, 1, nested)


@pytest.mark.parametrize("name", [["probs"], {"a": 1}, None, 3, "nope"])
def test_requested_output_names_other_than_the_four_are_bad_tensors(name: object) -> None:
    with pytest.raises(oip.BadTensor):
        oip.check_outputs([name])  # type: ignore[list-item]
    oip.check_outputs(["probs", "value", "action", "confidence"])


@pytest.mark.parametrize(
    ("path", "oip_shape"),
    [
        ("/v2", True),
        ("/v2/", True),
        ("/v2/models/x", True),
        ("/v2x", False),
        ("/v22", False),
        ("/infer", False),
        ("/", False),
    ],
)
def test_errors_in_the_protocols_shape_only_under_v2(path: str, oip_shape: bool) -> None:
    assert oip.is_oip_path(path) is oip_shape


def test_grpc_bytes_that_are_no_request_message_are_invalid_argument() -> None:
    import asyncio

    import grpc
    from google.protobuf.wrappers_pb2 import StringValue

    from server.grpc_decode import RefuseUndecodable

    # any message type will do (the service's own would clash with tritonclient's copy of
    # the same protobuf package when both are imported in one test process)
    async def model_infer(request: StringValue, context: object) -> str:
        return f"served {request.value}"

    handler = grpc.unary_unary_rpc_method_handler(
        model_infer,
        request_deserializer=StringValue.FromString,
        response_serializer=StringValue.SerializeToString,
    )

    class FakeContext:
        aborted: tuple | None = None

        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            self.aborted = (code, details)
            raise RuntimeError("aborted")  # grpc's abort raises too

    async def scenario() -> None:
        async def continuation(details: object) -> grpc.RpcMethodHandler:
            return handler

        details = SimpleNamespace(method="/inference.GRPCInferenceService/ModelInfer")
        wrapped = await RefuseUndecodable().intercept_service(continuation, details)
        valid = StringValue(value="tactical").SerializeToString()
        assert await wrapped.unary_unary(wrapped.request_deserializer(valid), None) == (
            "served tactical"
        )
        context = FakeContext()
        with pytest.raises(RuntimeError, match="aborted"):
            await wrapped.unary_unary(wrapped.request_deserializer(b"\xff\xff\xff"), context)
        assert context.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT

    asyncio.run(scenario())


def test_operations_api_answers_unknown_paths_in_json_without_redirects() -> None:
    """Routes only, no lifespan (nothing started): a trailing slash is a 404 in the shape of
    the path's protocol, never a 307 with an empty body."""
    from starlette.testclient import TestClient

    from server.app import build_api
    from server.config import ServerConfig
    from server.runtime import Runtime

    client = TestClient(build_api(Runtime(ServerConfig(workers=1))), follow_redirects=False)
    for path in ("/healthz/", "/stats/", "/v2x"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert response.json()["error"]["code"] == "not_found"
    for path in ("/v2/", "/v2/health/live/"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert isinstance(response.json()["error"], str)
    assert client.get("/healthz").status_code == 200
