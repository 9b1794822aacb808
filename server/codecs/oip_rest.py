"""The Open Inference Protocol over HTTP: ``POST /v2/models/{model}[/versions/{v}]/infer``
with JSON tensors and the binary tensor data extension, errors as ``{"error": message}``."""

from __future__ import annotations

import time
from typing import Any

import orjson

from models.spec import SPECS
from monitoring import PROTOCOL_INDEX
from server import content_coding
from server.codecs import oip
from server.codecs.base import JSON, NO_HEADERS, Headers, Respond, error_headers
from server.core import InferCore, Job
from server.errors import ApiError, NotFound, UnsupportedMediaType
from server.head import RequestHead
from server.pool import MODEL_NAMES

OCTET_STREAM = b"application/octet-stream"
_ACCEPTED_TYPES = (None, JSON, OCTET_STREAM)
_PREFIX = len(b"/v2/models/")
_SUFFIX = len(b"/infer")
_VERSIONS = "/versions/"
PROTOCOL = PROTOCOL_INDEX["oip_rest"]


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class OipJob(Job):
    """An inference request: what to return, and how."""

    __slots__ = ("binary_default", "codec", "request_id", "requested", "respond")
    protocol = PROTOCOL

    def __init__(self, start_ns: int, codec: OipRestEndpoint, respond: Respond) -> None:
        super().__init__(start_ns)
        self.codec = codec
        self.respond = respond
        self.request_id: str | None = None
        self.requested: list[tuple[str, bool | None]] = []  # (output, binary) in order
        self.binary_default = False

    def answer(self, version: str, outputs: list[bytes], cached: list[bool]) -> None:
        arrays = oip.output_arrays(outputs)
        tensors = []
        binary = []
        for name, as_binary in self.requested or [(name, None) for name in oip.OUTPUTS]:
            array = arrays[name]
            tensor: dict[str, Any] = {
                "name": name,
                "datatype": oip.OUTPUTS[name][0],
                "shape": array.shape,
            }
            if self.binary_default if as_binary is None else as_binary:
                data = array.tobytes()
                tensor["parameters"] = {"binary_data_size": len(data)}
                binary.append(data)
            else:
                tensor["data"] = array.reshape(-1)
            tensors.append(tensor)
        document: dict[str, Any] = {"model_name": MODEL_NAMES[self.model_idx]}
        document["model_version"] = version
        if self.request_id is not None:
            document["id"] = self.request_id
        document["outputs"] = tensors
        header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
        if not binary:
            return self.respond(200, JSON, header, NO_HEADERS)
        headers: Headers = ((b"inference-header-content-length", str(len(header)).encode()),)
        self.respond(200, OCTET_STREAM, b"".join([header, *binary]), headers)

    def refuse(self, error: ApiError) -> int:
        status, message = oip.as_protocol_error(error)
        self.respond(status, JSON, error_body(message), error_headers(error))
        return status


class OipRestEndpoint:
    def __init__(self, core: InferCore, max_batch: int) -> None:
        self.core = core
        self.max_batch = max_batch

    def check_head(self, head: RequestHead) -> None:
        self.core.check_access(head.api_key, head.client)
        if head.media_type() not in _ACCEPTED_TYPES:
            raise UnsupportedMediaType(
                "send the request as JSON (no Content-Type, application/json or "
                "application/octet-stream), with binary tensors after it when "
                "Inference-Header-Content-Length is given"
            )
        if head.header_length == -2:
            raise oip.BadTensor("Inference-Header-Content-Length must be a byte count")
        content_coding.check(head.content_encoding)
        if head.content_length > self.core.max_body:
            raise self.core.too_large(head.content_length)

    def handle(self, head: RequestHead, body: bytes, respond: Respond) -> None:
        start = time.perf_counter_ns()
        core = self.core
        alone = core.arrival(head.peer, start)
        job = OipJob(start, self, respond)
        try:
            core.admit(start)
            job.model_idx = self._model(head.path)
            if head.content_encoding is not None:
                body = content_coding.decode(head.content_encoding, body, core.max_body)
            self._decode(job, head.header_length, body)
        except ApiError as error:
            return core.reject(job, error)
        job.parsed_ns = time.perf_counter_ns()
        core.submit(job, alone)

    def refuse(self, error: ApiError, respond: Respond) -> None:
        self.core.reject(OipJob(time.perf_counter_ns(), self, respond), error)

    def _model(self, path: bytes) -> int:
        """``{model}`` or ``{model}/versions/{version}`` between the route's ends."""
        inner = path[_PREFIX:-_SUFFIX].decode("utf-8", "replace")
        name, versioned, version = inner.partition(_VERSIONS)
        if "/" in name or (versioned and not version):
            raise NotFound(f"no such path {path.decode('utf-8', 'replace')!r}")
        return oip.model_index(name, version, self.core.pool.model_versions)

    def _decode(self, job: OipJob, header_length: int, body: bytes) -> None:
        if header_length > len(body):
            raise oip.BadTensor(
                f"Inference-Header-Content-Length is {header_length} but the body has only "
                f"{len(body)} bytes"
            )
        document = body if header_length < 0 else body[:header_length]
        binary = memoryview(body)[header_length:] if header_length >= 0 else memoryview(b"")
        try:
            request = orjson.loads(document)
        except orjson.JSONDecodeError as exc:
            raise oip.BadTensor(f"the request is not valid JSON: {exc}") from None
        if type(request) is not dict:
            raise oip.BadTensor('the request must be a JSON object with "inputs"')
        request_id = request.get("id")
        if request_id is not None and type(request_id) is not str:
            raise oip.BadTensor('"id" must be a string')
        job.request_id = request_id
        parameters = _parameters(request, "the request")
        job.binary_default = parameters.get("binary_data_output") is True
        job.rows = self._rows(job.model_idx, request.get("inputs"), binary)
        job.requested = _requested(request.get("outputs"))

    def _rows(self, idx: int, inputs: Any, binary: memoryview) -> list[bytes]:
        spec = SPECS[MODEL_NAMES[idx]]
        if type(inputs) is not list or len(inputs) != 1 or type(inputs[0]) is not dict:
            raise oip.BadTensor(
                f'"inputs" must be a list of one tensor, {oip.INPUT!r} (FP32, '
                f"[-1, {spec.rows}, {spec.features}])"
            )
        tensor = inputs[0]
        batch = oip.check_input(
            spec, self.max_batch, tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        )
        size = _parameters(tensor, f"input {oip.INPUT!r}").get("binary_data_size")
        if size is None:
            if len(binary):
                raise oip.BadTensor("binary data follows the JSON but no input declares it")
            return oip.rows_from_json(spec, batch, tensor.get("data"))
        if type(size) is not int or size != len(binary):
            raise oip.BadTensor(
                f"input {oip.INPUT!r} declares binary_data_size {size}; the body holds "
                f"{len(binary)} bytes after the JSON header"
            )
        if "data" in tensor:
            raise oip.BadTensor(f'input {oip.INPUT!r} has both "data" and binary data')
        return oip.rows_from_raw(spec, batch, binary)


def _parameters(holder: dict, what: str) -> dict:
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if type(parameters) is not dict:
        raise oip.BadTensor(f'"parameters" of {what} must be a JSON object')
    return parameters


def _requested(outputs: Any) -> list[tuple[str, bool | None]]:
    if outputs is None:
        return []
    if type(outputs) is not list or not all(type(o) is dict for o in outputs):
        raise oip.BadTensor('"outputs" must be a list of {"name": ...} objects')
    requested = []
    for output in outputs:
        name = output.get("name")
        binary = _parameters(output, f"output {name!r}").get("binary_data")
        requested.append((name, None if binary is None else binary is True))
    oip.check_outputs([name for name, _ in requested])
    once: dict[str, bool | None] = {}
    for name, binary in requested:
        once.setdefault(name, binary)
    return list(once.items())
