"""The native protocol, ``POST /infer`` (the contract's own JSON): decode a body into a
job, render row outputs as the contract's fields, errors as ``{"error": {code, message}}``.
"""

from __future__ import annotations

import time

import numpy as np
import orjson

from models.spec import ACTIONS, SPECS
from server import content_coding
from server.codecs.base import JSON, NO_HEADERS, Respond, error_headers
from server.core import InferCore, Job
from server.errors import ApiError, UnsupportedMediaType
from server.head import RequestHead
from server.outputs import FLOATS
from server.pool import MODEL_NAMES
from server.validation import RequestParser

_CACHED = b',"cached":true}'
_FRESH = b',"cached":false}'
_ACTION_BYTES = {str(i).encode(): name.encode() for i, name in enumerate(ACTIONS)}
_ACTION_BYTES.update({k + b".0": v for k, v in _ACTION_BYTES.items()})


def _row_template(agents: tuple[str, ...]) -> bytes:
    """A row's fields with a ``%s`` for each of its twelve numbers, in the order they are
    written: action, confidence, the probabilities agent by agent, value."""
    pieces = ['"action":"', '","confidence":']
    for i, agent in enumerate(agents):
        pieces.append((',"agents":{' if i == 0 else "],") + f'"{agent}":[')
        pieces += [",", ","]
    pieces.append(']},"value":')
    return "%s".join(p.replace("%", "%%") for p in pieces).encode() + b"%s"


class Renderer:
    """Row outputs to the contract's fields. orjson writes float32 in its shortest form
    (0.41, not 0.4099999964237213). A single row is copied into a float32 array made once
    and rendered by one orjson call: no numpy call per request; a batch is rendered by one
    orjson call over all its rows. The numbers then go into the row's text in one ``%``."""

    __slots__ = ("_one", "_one_view", "_template")

    def __init__(self, agents: tuple[str, ...]) -> None:
        self._template = _row_template(agents)
        self._one = np.zeros(FLOATS, dtype=np.float32)
        self._one_view = memoryview(self._one).cast("B")

    def fragment(self, outputs: bytes) -> bytes:
        """``"action":..,"confidence":..,"agents":{..},"value":..`` of one row."""
        self._one_view[:] = outputs
        text = orjson.dumps(self._one, option=orjson.OPT_SERIALIZE_NUMPY)
        return self._join(text[1:-1].split(b","))

    def fragments(self, outputs: list[bytes]) -> list[bytes]:
        """``fragment`` of every row."""
        if len(outputs) == 1:
            return [self.fragment(outputs[0])]
        flat = np.frombuffer(b"".join(outputs), dtype=np.float32)
        text = orjson.dumps(flat, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
        return [self._join(text[i : i + FLOATS]) for i in range(0, len(text), FLOATS)]

    def _join(self, v: list[bytes]) -> bytes:
        # one C call: a loop of appends and a join cost ~2 us more per row
        return self._template % (_ACTION_BYTES[v[11]], v[10], *v[:10])


class NativeJob(Job):
    __slots__ = ("batch", "codec", "respond")

    def __init__(self, start_ns: int, codec: NativeEndpoint, respond: Respond) -> None:
        super().__init__(start_ns)
        self.codec = codec
        self.respond = respond
        self.batch = False

    def answer(self, version: str, outputs: list[bytes], cached: list[bool]) -> None:
        codec = self.codec
        prefix = codec.prefix(self.model_idx, version)
        renderer = codec.renderers[self.model_idx]
        if self.batch:
            fragments = renderer.fragments(outputs)
            parts = [
                b"{" + f + (_CACHED if c else _FRESH)
                for f, c in zip(fragments, cached, strict=True)
            ]
            body = prefix + b'"results":[' + b",".join(parts) + b"]}"
        else:
            body = prefix + renderer.fragment(outputs[0]) + (_CACHED if cached[0] else _FRESH)
        self.respond(200, JSON, body, NO_HEADERS)

    def refuse(self, error: ApiError) -> int:
        self.respond(error.status, JSON, error.body(), error_headers(error))
        return error.status


class NativeEndpoint:
    """``POST /infer``."""

    def __init__(self, core: InferCore, parser: RequestParser) -> None:
        self.core = core
        self.parser = parser
        self.renderers = [Renderer(SPECS[name].agents) for name in MODEL_NAMES]
        self._prefixes: list[dict[str, bytes]] = [{} for _ in MODEL_NAMES]

    def prefix(self, model_idx: int, version: str) -> bytes:
        """``{"model":..,"version":..,``, rendered once per served version."""
        known = self._prefixes[model_idx]
        prefix = known.get(version)
        if prefix is None:
            model = orjson.dumps(MODEL_NAMES[model_idx])
            prefix = b'{"model":' + model + b',"version":' + orjson.dumps(version) + b","
            known[version] = prefix
        return prefix

    def check_head(self, head: RequestHead) -> None:
        self.core.check_access(head.api_key, head.client)
        if head.media_type() != JSON:
            raise UnsupportedMediaType(
                "send the body as JSON with 'Content-Type: application/json'"
            )
        content_coding.check(head.content_encoding)
        if head.content_length > self.core.max_body:
            raise self.core.too_large(head.content_length)

    def handle(self, head: RequestHead, body: bytes, respond: Respond) -> None:
        start = time.perf_counter_ns()
        core = self.core
        alone = core.arrival(head.peer, start)
        job = NativeJob(start, self, respond)
        try:
            core.admit(start)
            if head.content_encoding is not None:
                body = content_coding.decode(head.content_encoding, body, core.max_body)
            parsed = self.parser.parse(body)
        except ApiError as error:
            job.model_idx = error.model_idx
            return core.reject(job, error)
        job.model_idx = parsed.model_idx
        job.rows = parsed.rows
        job.batch = parsed.batch
        job.parsed_ns = time.perf_counter_ns()
        core.submit(job, alone)

    def refuse(self, error: ApiError, respond: Respond) -> None:
        self.core.reject(NativeJob(time.perf_counter_ns(), self, respond), error)
