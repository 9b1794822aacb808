"""Fuzzing the real server with hypothesis: arbitrary bytes and JSON, near-valid requests
with mutated shapes, types and magnitudes (up to float32's maximum and beyond), deep
nesting, invalid UTF-8 and other encodings, odd content types and headers, at every
endpoint (native, Open Inference Protocol over REST and gRPC, the GET endpoints, raw and
pipelined HTTP). Every answer must be one of the contract's statuses in its JSON shape
(``tests/contract.py``), every 200 finite, and after the fuzzing the same workers still
serve (none crashed)."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import grpc
import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from models.spec import SPECS
from tests.contract import GRPC_CODES, oip_outputs_finite, violations
from tests.support import free_port, start_server, wait_until

pytestmark = pytest.mark.slow

MODELS = sorted(SPECS)
FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,  # no .hypothesis directory in the tree; a failure prints its blob
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
# float32's maximum is 3.4028234663852886e38; 3.5e38 and 1e308 are beyond it
MAGNITUDES = (0.0, -0.0, 5e-324, 1e-45, 1.0, -1.0, 1e6, 1e20, 1e38, -1e38, 2e38, 3e38, 3.4e38,
              3.4028234663852886e38, -3.4028234663852886e38, 3.5e38, 1e308,
              1.7976931348623157e308)  # fmt: skip
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=4),
    st.sampled_from([{}, [], [1.0], [[]], {"a": 1}, ["probs"], "NaN", "1.0", 2**64, -(2**70)]),
    st.sampled_from([{}, [], [1.0], [[]], {"a": 1}, ["probs"]]),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON ; charset=latin-1",
            "application/octet-stream",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "json",
            "",
        ]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
)
SAFE_HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24)
ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


def mostly(valid: st.SearchStrategy, odd: st.SearchStrategy, odds: int = 5) -> st.SearchStrategy:
    """``valid`` about ``odds - 1`` times in ``odds``, else ``odd``: most requests are wrong
    in one place only, so the checks behind the first one get exercised too."""
    return st.integers(0, odds - 1).flatmap(lambda i: odd if i == 0 else valid)


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def dumps(document: object) -> bytes:
    """JSON text; beyond-float64 and non-finite numbers as Python's json writes them
    (``Infinity``, ``NaN``), which a careless client sends."""
    try:
        return orjson.dumps(document)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(document, allow_nan=True).encode()


# ---------------------------------------------------------------- near-valid requests


@st.composite
def matrix(draw: st.DrawFn, rows: int, features: int) -> np.ndarray:
    """A (rows, features) float64 matrix: ordinary, all one magnitude, or scaled."""
    kind = draw(st.sampled_from(["normal", "constant", "scaled", "edge"]))
    if kind == "constant":
        return np.full((rows, features), draw(st.sampled_from(MAGNITUDES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.standard_normal((rows, features))
    if kind == "scaled":
        with np.errstate(over="ignore"):
            values *= draw(st.sampled_from(MAGNITUDES))
    elif kind == "edge":
        values[rng.integers(rows), rng.integers(features)] = draw(
            st.sampled_from(MAGNITUDES) | st.floats(allow_nan=False, allow_infinity=False)
        )
    return values


@st.composite
def observation(draw: st.DrawFn, rows: int, features: int) -> object:
    """A nested-list observation, then mutated: rows or features dropped or added, a cell of
    another type, wrapped, flattened, or replaced by a scalar."""
    obs: list = draw(matrix(rows, features)).tolist()
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        obs = mutation(draw, obs)
    return obs


def _drop_row(draw: st.DrawFn, obs: list) -> object:
    return obs[:-1] if isinstance(obs, list) else obs


def _add_row(draw: st.DrawFn, obs: list) -> object:
    return [*obs, obs[0]] if isinstance(obs, list) and obs else obs


def _ragged(draw: st.DrawFn, obs: list) -> object:
    if isinstance(obs, list) and obs and isinstance(obs[0], list):
        i = draw(st.integers(0, len(obs) - 1))
        obs[i] = obs[i][:-1] if draw(st.booleans()) else [*obs[i], 0.5]
    return obs


def _odd_cell(draw: st.DrawFn, obs: list) -> object:
    if isinstance(obs, list) and obs and isinstance(obs[0], list) and obs[0]:
        obs[draw(st.integers(0, len(obs) - 1))][0] = draw(ODD)
    return obs


def _row_scalar(draw: st.DrawFn, obs: list) -> object:
    if isinstance(obs, list) and obs:
        obs[draw(st.integers(0, len(obs) - 1))] = draw(st.sampled_from(MAGNITUDES) | ODD)
    return obs


def _wrap(draw: st.DrawFn, obs: list) -> object:
    return [obs]


def _flatten(draw: st.DrawFn, obs: list) -> object:
    if isinstance(obs, list) and all(isinstance(r, list) for r in obs):
        return [v for r in obs for v in r]
    return obs


def _scalar(draw: st.DrawFn, obs: list) -> object:
    return draw(st.sampled_from(MAGNITUDES) | ODD)


MUTATIONS = (_drop_row, _add_row, _ragged, _odd_cell, _row_scalar, _wrap, _flatten, _scalar)
BATCH_SIZES = st.integers(0, 3) | st.sampled_from([16, 256, 257, 400])
SMALL_BATCH_SIZES = st.integers(0, 3)


@st.composite
def raw_mutation(draw: st.DrawFn, body: bytes) -> bytes:
    """Byte-level damage: truncation, invalid UTF-8 (a lone surrogate), other encodings,
    a BOM, non-JSON number literals, a flipped byte."""
    kind = draw(
        st.sampled_from(
            ["none"] * 14 + ["truncate", "surrogate", "utf16", "utf32", "bom", "nan", "flip"]
        )
    )
    if kind == "truncate":
        return body[: draw(st.integers(0, max(0, len(body) - 1)))]
    if kind == "surrogate":
        at = body.find(b'"', 1)
        at = draw(st.integers(0, len(body))) if at < 0 else at + 1
        return body[:at] + b"\xed\xa0\x80" + body[at:]
    if kind in ("utf16", "utf32"):
        return body.decode("utf-8", "replace").encode("utf-16" if kind == "utf16" else "utf-32")
    if kind == "bom":
        return b"\xef\xbb\xbf" + body
    if kind == "nan":
        literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"]))
        at = body.find(b"0.")
        return body if at < 0 else body[:at] + literal + b"," + body[at:]
    if kind == "flip" and body:
        at = draw(st.integers(0, len(body) - 1))
        return body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    return body


@st.composite
def native_body(draw: st.DrawFn, batch_sizes: st.SearchStrategy[int] = BATCH_SIZES) -> bytes:
    shape_of = SPECS[draw(st.sampled_from(MODELS))]
    model = draw(mostly(st.sampled_from(MODELS), st.sampled_from(["", "TACTICAL", "nope"]) | ODD))
    document: dict = {} if draw(st.integers(0, 9)) == 0 else {"model": model}
    kind = draw(st.sampled_from(["single", "single", "batch", "batch", "both", "neither"]))
    if kind in ("single", "both"):
        document["observation"] = draw(observation(shape_of.rows, shape_of.features))
    if kind in ("batch", "both"):
        n = draw(batch_sizes)
        first = draw(observation(shape_of.rows, shape_of.features))
        rest = draw(matrix(shape_of.rows, shape_of.features)).tolist()
        document["observations"] = [first] + [rest] * max(0, n - 1) if n else []
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.text(max_size=6))] = draw(ANY_JSON)
    return draw(raw_mutation(dumps(document)))


NATIVE_BODIES = st.one_of(
    native_body(),
    native_body(),
    native_body(),
    st.binary(max_size=2048),
    ANY_JSON.map(dumps),
    st.fixed_dictionaries(
        {"model": st.sampled_from(MODELS)},
        optional={"observation": ANY_JSON, "observations": ANY_JSON},
    ).map(dumps),
    st.integers(1, 10_000).map(lambda d: b'{"model": "tactical", "observation": ' + deep(d) + b"}"),
    st.integers(1, 10_000).map(deep),
)


@st.composite
def oip_request(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A ``/v2`` inference body and its headers: JSON tensors or binary after the header,
    each part possibly wrong (shape, datatype, name, sizes, header length, outputs)."""
    spec = SPECS[draw(st.sampled_from(MODELS))]
    batch = draw(BATCH_SIZES)
    shape: object = [batch, spec.rows, spec.features]
    if draw(st.integers(0, 4)) == 0:
        shape = draw(
            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)
            | st.sampled_from([[batch, spec.features, spec.rows], [batch, spec.rows], [1.0, 60, 7]])
            | ODD
        )
    tensor: dict = {
        "name": draw(mostly(st.just("observation"), ODD)),
        "datatype": draw(
            mostly(st.just("FP32"), st.sampled_from(["FP16", "INT32", "BYTES", "fp32"]))
        ),
        "shape": shape,
    }
    rows = draw(matrix(max(batch, 1) * spec.rows, spec.features))[: batch * spec.rows]
    headers: dict[str, str] = {}
    binary = b""
    if draw(st.booleans()):
        with np.errstate(over="ignore"):  # beyond float32: inf, which the server refuses
            binary = rows.astype(np.float32).tobytes()
        if draw(st.integers(0, 5)) == 0:
            binary = draw(st.binary(max_size=2048))
        size: object = len(binary)
        if draw(st.integers(0, 5)) == 0:
            size = draw(st.integers(-5, 10**6) | ODD)
        tensor["parameters"] = {"binary_data_size": size}
    else:
        data: object = rows.reshape(-1).tolist()
        if draw(st.booleans()):
            data = rows.reshape(batch, spec.rows, spec.features).tolist()
        for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
            data = mutation(draw, data)
        tensor["data"] = data
    request: dict = {"inputs": draw(mostly(st.just([tensor]), st.just([tensor, tensor]) | ODD))}
    if draw(st.booleans()):
        request["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "name": mostly(
                            st.sampled_from(["probs", "value", "action", "confidence"]), ODD
                        )
                    },
                    optional={"parameters": st.fixed_dictionaries({"binary_data": ODD})},
                ),
                max_size=4,
            )
            | ODD
        )
    if draw(st.booleans()):
        request["id"] = draw(mostly(st.text(max_size=8), ODD))
    if draw(st.booleans()):
        request["parameters"] = draw(mostly(st.just({"binary_data_output": True}), ODD))
    header = dumps(request)
    if binary or draw(st.integers(0, 5)) == 0:
        length = str(len(header))
        if draw(st.integers(0, 3)) == 0:
            length = draw(
                st.sampled_from(["0", "-1", "1", str(len(header) + len(binary) + 1), "ten", ""])
                | st.integers(0, 10**30).map(str)
                | SAFE_HEADER_TEXT
            )
        headers["inference-header-content-length"] = length
    return draw(raw_mutation(header)) + binary, headers


def oip_path(model: str) -> st.SearchStrategy[str]:
    valid = st.just(f"/v2/models/{model}/infer")
    return mostly(
        valid,
        st.sampled_from(
            [
                f"/v2/models/{model}/versions/1/infer",
                f"/v2/models/{model}/versions//infer",
                "/v2/models//infer",
                "/v2/models/nope/infer",
                f"/v2/models/{model}/x/infer",
                "/v2/models/%ff%fe/infer",
            ]
        ),
    )


# ---------------------------------------------------------------- the server and checks


@pytest.fixture(scope="module")
def server(artifacts_dir: Path):
    grpc_port = free_port()
    with start_server(artifacts_dir, workers=2, args=["--grpc-port", str(grpc_port)]) as handle:
        handle.grpc_port = grpc_port  # type: ignore[attr-defined]
        handle.first_workers = sorted(handle.worker_pids())  # type: ignore[attr-defined]
        yield handle


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def valid_body(model: str = "tactical", seed: int = 0) -> dict:
    spec = SPECS[model]
    obs = np.random.default_rng(seed).standard_normal((spec.rows, spec.features))
    return {"model": model, "observation": obs.astype(np.float32).tolist()}


def assert_contract(method: str, path: str, response: httpx.Response, sent: object) -> None:
    headers = {k.lower(): v for k, v in response.headers.items()}
    path = response.request.url.raw_path.decode("ascii")  # as sent ("/v2/.." is "/")
    problems = violations(method, path, response.status_code, headers, response.content)
    assert not problems, (
        f"{method} {path} -> {response.status_code}: {problems}; sent {sent!r:.300}"
    )


def assert_still_serving(server, client: httpx.Client) -> None:
    """Nothing the fuzzing sent took a worker down or the server out of service."""
    assert sorted(server.worker_pids()) == server.first_workers, "a worker was replaced"
    assert client.get("/readyz").status_code == 200
    response = client.post("/infer", json=valid_body("strategic", seed=99))
    assert response.status_code == 200, response.text
    assert not violations("POST", "/infer", 200, dict(response.headers), response.content)


# ---------------------------------------------------------------- the fuzz tests


@FUZZ
@given(
    body=NATIVE_BODIES,
    content_type=CONTENT_TYPES | st.none(),
    extra=st.dictionaries(
        st.sampled_from(["x-api-key", "authorization", "expect", "accept", "x-forwarded-for"]),
        SAFE_HEADER_TEXT,
        max_size=2,
    ),
)
def test_native_infer_answers_within_the_contract(
    server, client, body: bytes, content_type: str | None, extra: dict[str, str]
) -> None:
    headers = dict(extra)
    if content_type is not None:
        headers["content-type"] = content_type
    if headers.get("expect") and headers["expect"].lower() != "100-continue":
        headers.pop("expect")
    response = client.post("/infer", content=body, headers=headers)
    assert_contract("POST", "/infer", response, (headers, body))


@settings(FUZZ, max_examples=200)
@given(request=oip_request(), path=st.sampled_from(MODELS).flatmap(oip_path), data=st.data())
def test_oip_rest_infer_answers_within_the_contract(
    server, client, request: tuple[bytes, dict[str, str]], path: str, data: st.DataObject
) -> None:
    body, headers = request
    content_type = data.draw(
        st.sampled_from([None, None, "application/json", "application/octet-stream"])
        | CONTENT_TYPES
    )
    if content_type is not None:
        headers = {**headers, "content-type": content_type}
    if data.draw(st.integers(0, 7)) == 0:  # arbitrary bytes, JSON or nesting instead
        body = data.draw(NATIVE_BODIES)
    response = client.post(path, content=body, headers=headers)
    assert_contract("POST", path, response, (headers, body))


PATH_SEGMENTS = st.sampled_from(
    ["v2", "models", "tactical", "strategic", "versions", "ready", "infer", "health", "live",
     "healthz", "readyz", "stats", "metrics", "alerts", "admin", "reload", "", "..", "%2e%2e",
     "%ff", "%00", "v2x", "x" * 300]
) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?%"),
            max_size=8)  # fmt: skip


@settings(FUZZ, max_examples=300)
@given(
    method=st.sampled_from(
        ["GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
    ),
    segments=st.lists(PATH_SEGMENTS, min_size=1, max_size=5),
    query=st.sampled_from(["", "?a=1", "?format=json&x=%ff"]),
    body=st.binary(max_size=64),
)
def test_every_path_and_method_answers_within_the_contract(
    server, client, method: str, segments: list[str], query: str, body: bytes
) -> None:
    path = "/" + "/".join(segments)
    if path == "/admin/reload":  # a reload restarts the workers: fuzzed apart, not here
        return
    url = httpx.URL(server.url + path + query)
    response = client.request(method, url, content=body or None)
    assert_contract(method, path + query, response, body)


def _read_responses(sock: socket.socket, methods: list[str]) -> list[tuple[int, dict, bytes]]:
    """Each response on the connection (skipping 100 Continue), until it closes."""
    data = b""
    while chunk := sock.recv(1 << 16):
        data += chunk
    answers = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"a response without a complete head: {data[:300]!r}"
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode("latin-1")
        if status == 100:
            data = rest
            continue
        method = methods[len(answers)] if len(answers) < len(methods) else "GET"
        length = 0 if method == "HEAD" else int(headers.get("content-length", len(rest)))
        answers.append((status, headers, rest[:length]))
        data = rest[length:]
    return answers


RAW_REQUEST = st.tuples(
    st.sampled_from(["POST", "POST", "GET", "HEAD", "PUT"]),
    st.sampled_from(["/infer", "/infer", "/v2/models/tactical/infer", "/healthz", "/v2", "/x"]),
    st.lists(
        st.tuples(
            st.sampled_from(
                ["content-type", "x-api-key", "inference-header-content-length", "accept", "x-junk"]
            ),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24).map(
                lambda v: v.strip().encode()
            ),
        ),
        max_size=3,
    ),
    st.one_of(
        native_body(SMALL_BATCH_SIZES),
        st.binary(max_size=512),
        ANY_JSON.map(dumps),
        st.integers(1, 3000).map(deep),
    ),
)


def _wire(requests: list, chunked: bool) -> bytes:
    wire = b""
    for i, (method, path, headers, body) in enumerate(requests):
        head = [f"{method} {path} HTTP/1.1".encode(), b"host: fuzz"]
        head += [name.encode() + b": " + value for name, value in headers]
        if i == len(requests) - 1:
            head.append(b"connection: close")
        if chunked and body:
            head.append(b"transfer-encoding: chunked")
            payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        else:
            head.append(b"content-length: %d" % len(body))
            payload = body
        wire += b"\r\n".join(head) + b"\r\n\r\n" + payload
    return wire


@settings(FUZZ, max_examples=150)
@given(requests=st.lists(RAW_REQUEST, min_size=1, max_size=3), chunked=st.booleans())
def test_raw_pipelined_requests_each_get_one_contract_answer(
    server, requests: list, chunked: bool
) -> None:
    """Well-framed raw requests on one connection, pipelined (the second and later take the
    ASGI route), possibly chunked: exactly one contract answer per request, in order."""
    wire = _wire(requests, chunked)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(wire)
        answers = _read_responses(sock, [method for method, *_ in requests])
    assert len(answers) == len(requests), (answers, wire[:300])
    for (status, headers, body), (method, path, _, _) in zip(answers, requests, strict=True):
        problems = violations(method, path, status, headers, body)
        assert not problems, f"{method} {path} -> {status}: {problems}; sent {wire[:300]!r}"


@settings(FUZZ, max_examples=100)
@given(
    request_line=st.binary(max_size=40)
    | st.sampled_from([b"POST /infer HTTP/1.1", b"GET / HTTP/9"]),
    header=st.binary(max_size=40),
    tail=st.binary(max_size=200),
)
def test_garbage_on_the_wire_gets_a_json_400_or_nothing(
    server, request_line: bytes, header: bytes, tail: bytes
) -> None:
    """Bytes that are not HTTP: the HTTP layer answers 400 ``bad_http_request`` in JSON and
    closes, or waits for the rest of a request that never comes (the client closes)."""
    wire = request_line + b"\r\n" + header + b"\r\n\r\n" + tail
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        try:
            sock.sendall(wire)
            sock.shutdown(socket.SHUT_WR)
            answers = _read_responses(sock, ["POST"])
        except (ConnectionResetError, BrokenPipeError):  # closed with bytes unread
            return
    for status, headers, body in answers:
        problems = violations("POST", "/infer", status, headers, body)
        assert not problems, f"{status}: {problems}; sent {wire[:300]!r}"


# ---------------------------------------------------------------- gRPC


@st.composite
def grpc_request(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    spec = SPECS[draw(st.sampled_from(MODELS))]
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(MODELS) | st.text(max_size=12)),
        model_version=draw(st.sampled_from(["", "", "1"]) | st.text(max_size=12)),
        id=draw(st.text(max_size=8)),
    )
    batch = draw(BATCH_SIZES)
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        tensor = request.inputs.add()
        tensor.name = draw(st.sampled_from(["observation"] * 4 + ["obs", ""]))
        tensor.datatype = draw(st.sampled_from(["FP32"] * 4 + ["FP64", "INT32", "BYTES"]))
        shape = [batch, spec.rows, spec.features]
        if draw(st.integers(0, 4)) == 0:
            shape = draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4))
        tensor.shape.extend(shape)
        values = draw(matrix(max(batch, 1) * spec.rows, spec.features))[: batch * spec.rows]
        with np.errstate(over="ignore"):
            flat = values.astype(np.float32).reshape(-1)
        if draw(st.integers(0, 4)) == 0:
            flat = flat[: draw(st.integers(0, len(flat)))]
        if draw(st.booleans()):
            raw = flat.tobytes()
            if draw(st.integers(0, 5)) == 0:
                raw = draw(st.binary(max_size=4096))
            request.raw_input_contents.append(raw)
            if draw(st.integers(0, 7)) == 0:
                tensor.contents.fp32_contents.extend(flat[:3].tolist())
        else:
            tensor.contents.fp32_contents.extend(flat.tolist())
    for name in draw(st.lists(st.sampled_from(["probs", "value", "action", "confidence", "x"]),
                              max_size=3)):  # fmt: skip
        request.outputs.add().name = name
    return request


@settings(FUZZ, max_examples=300)
@given(request=grpc_request())
def test_grpc_model_infer_fails_only_with_the_issues_codes(server, stub, request) -> None:
    try:
        response = stub.ModelInfer(request, timeout=15)
    except grpc.RpcError as error:
        assert error.code() in GRPC_CODES, (error.code(), error.details(), request)
        assert "Traceback" not in (error.details() or "")
        return
    arrays = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        dtype = "<i4" if tensor.datatype == "INT32" else "<f4"
        arrays[tensor.name] = np.frombuffer(raw, dtype=dtype)
    assert arrays and oip_outputs_finite(arrays), response


NAMES = st.sampled_from([*MODELS, "", "nope"]) | st.text(max_size=12)


@settings(FUZZ, max_examples=150)
@given(name=NAMES, version=st.sampled_from(["", "1", "x"]) | st.text(max_size=8))
def test_grpc_health_and_metadata_fail_only_with_the_issues_codes(
    server, stub, name: str, version: str
) -> None:
    calls = [
        (stub.ModelMetadata, service_pb2.ModelMetadataRequest(name=name, version=version)),
        (stub.ModelReady, service_pb2.ModelReadyRequest(name=name, version=version)),
        (stub.ServerLive, service_pb2.ServerLiveRequest()),
        (stub.ServerReady, service_pb2.ServerReadyRequest()),
        (stub.ServerMetadata, service_pb2.ServerMetadataRequest()),
    ]
    for method, request in calls:
        try:
            method(request, timeout=15)
        except grpc.RpcError as error:
            assert error.code() in GRPC_CODES, (error.code(), error.details(), request)


@settings(FUZZ, max_examples=150)
@given(payload=st.binary(max_size=512))
def test_grpc_undecodable_messages_are_invalid_argument(server, payload: bytes) -> None:
    """Bytes that are no ``ModelInferRequest`` (a client of another version, a broken
    proxy): INVALID_ARGUMENT (or, when they happen to decode, whatever the request is)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    try:
        raw = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            raw(payload, timeout=15)
        except grpc.RpcError as error:
            assert error.code() in GRPC_CODES, (error.code(), error.details(), payload)
    finally:
        channel.close()


# ---------------------------------------------------------------- targeted cases


def test_explicit_extremes_answer_within_the_contract(server, client) -> None:
    """The issue's named cases, sent whatever hypothesis happened to draw."""
    tactical = SPECS["tactical"]
    big_batch = {"model": "tactical", "observations": [[[0.123456789] * 7] * 60] * 1000}  # 5 MB
    cases = [
        (b'{"model": "tactical", "observation": ' + deep(10_000) + b"}", 400),
        (deep(10_000), 400),
        (b'{"model": "tactical\xed\xa0\x80", "observation": []}', 400),
        (dumps(valid_body()).decode().encode("utf-16"), 400),
        (dumps(valid_body()).decode().encode("utf-16-le"), 400),
        (dumps({"model": "tactical", "observation": [[3.5e38] * 7] * 60}), 422),
        (dumps({"model": "tactical", "observation": [[1e308] * 7] * 60}), 422),
        (dumps({"model": "tactical", "observation": [[-0.0] * 7] * 60}), 200),
        (dumps({"model": "tactical", "observations": [[[0.5] * 7] * 60] * 257}), 422),
        (dumps(big_batch), 413),
        (dumps({"model": "tactical", "observation": [[1e38] * 7] * 60}), None),
        (dumps({"model": "tactical", "observation": [[3.4028234663852886e38] * 7] * 60}), 422),
    ]
    for body, expected in cases:
        response = client.post("/infer", content=body, headers={"content-type": "application/json"})
        assert_contract("POST", "/infer", response, body[:200])
        if expected is not None:
            assert response.status_code == expected, (response.text, body[:100])
    header = orjson.dumps({"inputs": [{"name": "observation", "datatype": "FP32",
                                       "shape": [1, 60, 7],
                                       "parameters": {"binary_data_size": 1680}}]})  # fmt: skip
    raw = np.zeros((1, tactical.rows, tactical.features), np.float32).tobytes()
    tensor = {"name": "observation", "datatype": "FP32", "shape": [1, 60, 7]}
    for request in (
        {"inputs": [{**tensor, "data": [[0.5] * 419, 0.5]}]},  # uneven depth
        {"inputs": [{**tensor, "data": [0.5] * 420}], "outputs": [{"name": ["probs"]}]},
        {"inputs": [{**tensor, "data": [0.5] * 420}], "outputs": [{"name": {"a": 1}}]},
    ):
        for path in ("/v2/models/tactical/infer", "/v2/models/strategic/infer"):
            response = client.post(path, content=orjson.dumps(request))
            assert response.status_code == 400, response.text
            assert_contract("POST", path, response, request)
    for length in (str(len(header) + len(raw) + 100), "99999999999999999999", "-1", "x", "0"):
        response = client.post(
            "/v2/models/tactical/infer",
            content=header + raw,
            headers={"inference-header-content-length": length},
        )
        assert response.status_code == 400, (length, response.text)
        assert_contract("POST", "/v2/models/tactical/infer", response, length)


NON_FINITE_CELLS = st.floats(2e38, 3.4028234663852886e38) | st.floats(-3.4028234663852886e38, -2e38)


def _served(client: httpx.Client) -> int:
    return sum(w["served"] for w in client.get("/stats").json()["workers"])


def _check_non_finite_refused(server, client: httpx.Client, stub, inline: bool) -> None:
    """Observations whose every cell is at least 2e38 in magnitude: the model overflows,
    and every path refuses them with 422 ``non_finite_output`` (400 with that message
    over the Open Inference Protocol, INVALID_ARGUMENT over gRPC)."""
    rng = np.random.default_rng(7)
    for model in MODELS:
        spec = SPECS[model]
        shape = (spec.rows, spec.features)
        huge = rng.uniform(2e38, 3.4e38, shape) * rng.choice([-1.0, 1.0], shape)
        ordinary = rng.standard_normal(shape)
        # single, twice (a refusal is never cached as an answer); inline when alone
        for _ in range(2):
            client.post("/infer", json=valid_body(model, seed=int(rng.integers(1 << 30))))
            before = _served(client)
            response = client.post("/infer", json={"model": model, "observation": huge.tolist()})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "non_finite_output"
            assert "overflow" in response.json()["error"]["message"]
            ran_in_a_worker = _served(client) > before
            assert ran_in_a_worker is not inline, "inline lane on: the front runs it"
        batches = ([huge.tolist()], [ordinary.tolist(), huge.tolist()], [huge.tolist()] * 40)
        for observations in batches:
            response = client.post("/infer", json={"model": model, "observations": observations})
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "non_finite_output"
        tensor = huge.astype(np.float32)[None]
        declared = {"name": "observation", "datatype": "FP32", "shape": [1, *shape]}
        declared["parameters"] = {"binary_data_size": tensor.nbytes}
        header = orjson.dumps({"inputs": [declared]})
        as_json = {"inputs": [{"name": "observation", "datatype": "FP32", "shape": [1, *shape],
                               "data": huge.reshape(-1).tolist()}]}  # fmt: skip
        for body, headers in (
            (orjson.dumps(as_json), {}),
            (header + tensor.tobytes(), {"inference-header-content-length": str(len(header))}),
        ):
            response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            assert response.status_code == 400, response.text
            assert "cannot compute finite outputs" in response.json()["error"]
        request = service_pb2.ModelInferRequest(model_name=model)
        grpc_tensor = request.inputs.add(name="observation", datatype="FP32", shape=[1, *shape])
        request.raw_input_contents.append(tensor.tobytes())
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=15)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cannot compute finite outputs" in refused.value.details()
        del grpc_tensor


@given(cell=NON_FINITE_CELLS)
@settings(FUZZ, max_examples=40)
def test_any_observation_of_cells_beyond_2e38_is_refused(server, client, cell: float) -> None:
    for model in MODELS:
        spec = SPECS[model]
        body = {"model": model, "observation": [[cell] * spec.features] * spec.rows}
        response = client.post("/infer", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "non_finite_output"


def test_non_finite_outputs_refused_with_the_inline_lane(server, client, stub) -> None:
    _check_non_finite_refused(server, client, stub, inline=True)


def test_non_finite_outputs_refused_without_the_inline_lane(artifacts_dir: Path) -> None:
    grpc_port = free_port()
    args = ["--grpc-port", str(grpc_port), "--no-inline-when-idle"]
    with start_server(artifacts_dir, workers=1, args=args) as other:
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        try:
            with httpx.Client(base_url=other.url, timeout=15) as c:
                _check_non_finite_refused(
                    other, c, service_pb2_grpc.GRPCInferenceServiceStub(channel), inline=False
                )
                # no worker ready (killed, its replacement warming up): the front answers
                # from its own copy, and refuses these rows the same way
                (worker,) = other.worker_pids()
                os.kill(worker, signal.SIGKILL)
                huge = [[3e38] * 7] * 60
                for body in ({"model": "tactical", "observation": huge},
                             {"model": "tactical", "observations": [huge, huge]}):  # fmt: skip
                    response = c.post("/infer", json=body)
                    assert response.status_code == 422, response.text
                    assert response.json()["error"]["code"] == "non_finite_output"
                wait_until(lambda: c.get("/readyz").status_code == 200)
        finally:
            channel.close()


def test_api_key_and_rate_limit_refusals_within_the_contract(artifacts_dir: Path) -> None:
    """With a key and a rate limit: random credentials at every inference route and the
    admin route give 401, 429 (with Retry-After) or an answer, each in its protocol's shape."""
    args = ["--api-key", "s3cret", "--rate-limit-rps", "20", "--rate-limit-burst", "5"]
    with (
        start_server(artifacts_dir, workers=1, args=args) as keyed,
        httpx.Client(base_url=keyed.url, timeout=15) as c,
    ):

        @settings(FUZZ, max_examples=100)
        @given(
            path=st.sampled_from(["/infer", "/v2/models/tactical/infer", "/admin/reload"]),
            credentials=st.dictionaries(
                st.sampled_from(["x-api-key", "authorization"]),
                st.sampled_from(["s3cret", "Bearer s3cret", "bearer s3cret", "Bearer x", ""])
                | SAFE_HEADER_TEXT,
                max_size=2,
            ),
            body=NATIVE_BODIES,
        )
        def fuzz(path: str, credentials: dict[str, str], body: bytes) -> None:
            if path == "/admin/reload" and "s3cret" in "".join(credentials.values()):
                return  # a granted reload restarts the workers; its refusals are the point
            headers = {"content-type": "application/json", **credentials}
            response = c.post(path, content=body, headers=headers)
            assert_contract("POST", path, response, (credentials, body[:100]))

        fuzz()


def test_server_survived_the_fuzzing(server, client) -> None:
    """Runs last in this module: the same workers, ready, answering."""
    assert_still_serving(server, client)
    stats = client.get("/stats").json()
    assert all(w["restarts"] == 0 for w in stats["workers"]), stats["workers"]
    assert set(stats["circuit_breakers"][m]["state"] for m in MODELS) == {"closed"}
    assert b"Traceback" not in server.log().encode()
