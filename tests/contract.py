"""The serving contract's answers (API.md), checked the same way by the fuzz, chaos and
admission tests: which statuses exist, each error's JSON shape per protocol, Retry-After on
every 503, and finite numbers in every 200."""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import unquote

import grpc
import numpy as np
import orjson

# API.md's error table plus 200, and 408 for a request that did not arrive in full within
# the read timeout; 409 only for POST /admin/reload
STATUSES = frozenset({200, 400, 401, 404, 405, 408, 413, 415, 422, 429, 503, 504})
# the status codes for gRPC errors
GRPC_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
_TRACE_MARKERS = (b"Traceback (most recent call last)", b'File "/', b"site-packages")


def is_oip_path(path: str) -> bool:
    """Under ``/v2`` errors are ``{"error": "<message>"}``; elsewhere ``{code, message}``."""
    decoded = unquote(path.split("?", 1)[0])
    return decoded == "/v2" or decoded.startswith("/v2/")


def violations(
    method: str, path: str, status: int, headers: Mapping[str, str], body: bytes
) -> list[str]:
    """Everything in one HTTP answer that the contract does not allow (empty: a contract
    answer). ``headers`` with lower-case names."""
    problems = _status_problems(path, status, headers, body)
    if method == "HEAD":
        return problems
    content_type = headers.get("content-type", "")
    if status != 200:
        return problems + _error_shape(path, content_type, body)
    return problems + _answer_problems(method, path, headers, content_type, body)


def _status_problems(path: str, status: int, headers: Mapping[str, str], body: bytes) -> list[str]:
    problems = []
    allowed = STATUSES | ({409} if path.split("?", 1)[0] == "/admin/reload" else set())
    if status not in allowed:
        problems.append(f"status {status} is not in the contract")
    if status == 503:
        retry = headers.get("retry-after", "")
        if not retry.isdigit() or int(retry) < 1:
            problems.append(f"503 without a Retry-After of whole seconds ({retry!r})")
    if any(marker in body for marker in _TRACE_MARKERS):
        problems.append("stack trace text in the body")
    return problems


def _answer_problems(
    method: str, path: str, headers: Mapping[str, str], content_type: str, body: bytes
) -> list[str]:
    problems: list[str] = []
    if content_type.startswith("application/json"):
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [*problems, "a 200 declared JSON but its body is not JSON"]
        if path.split("?", 1)[0] == "/infer" and method == "POST":
            problems += infer_answer_problems(document)
        elif is_oip_path(path) and path.endswith("/infer") and method == "POST":
            problems += oip_answer_problems(document, b"")
    elif content_type.startswith("application/octet-stream") and method == "POST":
        length = headers.get("inference-header-content-length", "")
        if not length.isdigit() or int(length) > len(body):
            return [*problems, f"binary answer with header length {length!r}"]
        try:
            document = orjson.loads(body[: int(length)])
        except orjson.JSONDecodeError:
            return [*problems, "binary answer whose header is not JSON"]
        problems += oip_answer_problems(document, body[int(length) :])
    return problems


def _error_shape(path: str, content_type: str, body: bytes) -> list[str]:
    if not content_type.startswith("application/json"):
        return [f"error with content type {content_type!r}, not JSON"]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [f"error body is not JSON: {body[:200]!r}"]
    if not isinstance(document, dict) or set(document) != {"error"}:
        return [f"error body is not {{'error': ...}}: {body[:200]!r}"]
    error = document["error"]
    if is_oip_path(path):
        if not isinstance(error, str) or not error:
            return [f"/v2 error is not {{'error': '<message>'}}: {body[:200]!r}"]
        return []
    if (
        not isinstance(error, dict)
        or set(error) != {"code", "message"}
        or not all(isinstance(v, str) and v for v in error.values())
    ):
        return [f"error is not {{'error': {{'code', 'message'}}}}: {body[:200]!r}"]
    return []


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def infer_answer_problems(document: object) -> list[str]:
    """A 200 from ``POST /infer``: every ``confidence``, ``value`` and agent probability a
    finite number, ``action`` one of the three."""
    if not isinstance(document, dict):
        return ["a 200 from /infer is not a JSON object"]
    rows = document.get("results", [document])
    if not isinstance(rows, list) or not rows:
        return ["a 200 batch from /infer has no results"]
    problems = []
    for row in rows:
        numbers = [row.get("confidence"), row.get("value")]
        agents = row.get("agents")
        if not isinstance(agents, dict) or len(agents) != 3:
            problems.append(f"agents missing or wrong: {agents!r}")
            continue
        for probs in agents.values():
            if not isinstance(probs, list) or len(probs) != 3:
                problems.append(f"agent probabilities are not three numbers: {probs!r}")
                continue
            numbers += probs
        if not all(_finite(n) for n in numbers):
            problems.append(f"a 200 carries a non-finite or missing number: {row!r}")
        if row.get("action") not in ("short", "neutral", "long"):
            problems.append(f"action {row.get('action')!r} is not one of the three")
    return problems


def oip_answer_problems(document: object, binary: bytes) -> list[str]:
    """A 200 from ``POST /v2/models/{m}/infer``: every output tensor finite, JSON ``data``
    or binary (in the header's order)."""
    outputs = document.get("outputs") if isinstance(document, dict) else None
    if not isinstance(outputs, list) or not outputs:
        return [f"a 200 from /v2 infer has no outputs: {document!r}"]
    offset = 0
    for tensor in outputs:
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values = np.asarray(tensor.get("data"), dtype=np.float64)
        else:
            dtype = "<i4" if tensor.get("datatype") == "INT32" else "<f4"
            values = np.frombuffer(binary[offset : offset + size], dtype=dtype)
            offset += size
        if not np.isfinite(values).all():
            return [f"a 200 from /v2 infer carries non-finite {tensor.get('name')}"]
    return []


def oip_outputs_finite(arrays: Mapping[str, np.ndarray]) -> bool:
    return all(np.isfinite(np.asarray(a, dtype=np.float64)).all() for a in arrays.values())
