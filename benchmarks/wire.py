"""Pre-built requests for every protocol the server speaks: native ``POST /infer``, the Open
Inference Protocol over REST (JSON tensors, or the binary tensor data extension) and over
gRPC, each as the exact bytes that go on the wire, every row of every request distinct.

A request is ``chunks[0] + stamp(s0) + chunks[1] + ... + stamp(s_b-1) + chunks[b]``: the
chunks are one of a few pre-rendered random observation batches with each row's first value
cut out, and the stamps put back in that place a sequence number, ``i * batch + r`` for row
``r`` of request ``i``, so building a request is a join, never a serialization. Two ways to
write the number:

- ``decimal``: ``0.NNNNNNN`` in JSON text, as ``benchmarks.bodies`` does for ``/infer``. Two
  rows on the same template and position differ in their number by a multiple of
  ``templates * batch`` >= 2048, i.e. by >= 2e-4, which float32 keeps apart.
- ``float32``: the little-endian float32 ``1 + s * 2**-23`` (``s`` below 2**23), exact, so
  every row differs from every other whatever the template.

The numbers wrap after 10**7 (decimal) or 2**23 (float32) rows, far beyond a run's rows.

The OIP binary body is the JSON header (its length in ``Inference-Header-Content-Length``)
followed by the tensor's bytes, with no Content-Type, as ``tritonclient.http`` sends it; the
gRPC body is a serialized ``ModelInferRequest`` whose ``raw_input_contents`` (its last field)
holds the tensor, so the row starts sit at fixed offsets of the serialized message.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.bodies import format_sequence
from models.spec import get_spec

# Distinct same-position rows differ by at least this many sequence numbers (see above).
MIN_SEQUENCE_SPACING = 2048
FLOAT32_STAMPS = 1 << 23
_ONE_F32 = 0x3F800000


class Protocol(enum.StrEnum):
    NATIVE = "native"  # POST /infer, the contract's JSON
    OIP_JSON = "oip_json"  # POST /v2/models/{m}/infer, JSON tensors in and out
    OIP_BINARY = "oip_binary"  # the same route, binary tensor data in and out
    GRPC = "grpc"  # inference.GRPCInferenceService/ModelInfer, raw tensor contents

    @property
    def is_grpc(self) -> bool:
        return self is Protocol.GRPC


class Stamp(enum.StrEnum):
    DECIMAL = "decimal"
    FLOAT32 = "float32"

    def render(self, seq: int) -> bytes:
        if self is Stamp.DECIMAL:
            return format_sequence(seq).encode()
        return struct.pack("<I", _ONE_F32 | (seq % FLOAT32_STAMPS))


@dataclass(frozen=True, slots=True)
class StampedRequests:
    protocol: Protocol
    model: str
    batch: int
    path: str  # the HTTP path, or the gRPC method
    headers: tuple[tuple[str, str], ...]  # HTTP headers besides Host and Content-Length
    stamp: Stamp
    templates: tuple[tuple[bytes, ...], ...]  # each batch + 1 chunks

    def body(self, i: int) -> bytes:
        """Request ``i`` (counting from 0) of a run."""
        chunks = self.templates[i % len(self.templates)]
        parts = [chunks[0]]
        seq = i * self.batch
        for r in range(self.batch):
            parts.append(self.stamp.render(seq + r))
            parts.append(chunks[r + 1])
        return b"".join(parts)

    def write_wrk_data(self, blob: Path, index: Path) -> None:
        """Every chunk back to back in ``blob`` (binary), and per template one line of chunk
        lengths in ``index``: what the wrk script slices the chunks back out with."""
        blob.write_bytes(b"".join(b"".join(chunks) for chunks in self.templates))
        index.write_text(
            "".join(" ".join(str(len(c)) for c in chunks) + "\n" for chunks in self.templates)
        )


def template_count(batch: int, minimum: int = 4) -> int:
    return max(minimum, math.ceil(MIN_SEQUENCE_SPACING / batch))


def _observations(model: str, count: int, batch: int, seed: int) -> np.ndarray:
    spec = get_spec(model)
    rng = np.random.default_rng(seed)
    # Market-like features: small centred values (as benchmarks.bodies).
    return rng.standard_normal((count, batch, spec.rows, spec.features)).astype(np.float32)


_MARK = "@"  # stands for a row's first value in rendered JSON; no number contains it


def _json_values(observation: np.ndarray) -> list[str]:
    """One observation's values as JSON text, row-major, its first value the mark."""
    values = [f"{v:.4f}" for v in observation.reshape(-1).tolist()]
    values[0] = _MARK
    return values


def _split_marks(text: str, batch: int) -> tuple[bytes, ...]:
    chunks = tuple(part.encode() for part in text.split(_MARK))
    assert len(chunks) == batch + 1, "one mark per observation"
    return chunks


def _native_chunks(model: str, observations: np.ndarray) -> tuple[bytes, ...]:
    features = get_spec(model).features
    nested = []
    for obs in observations:
        values = _json_values(obs)
        rows = (",".join(values[k : k + features]) for k in range(0, len(values), features))
        nested.append("[[" + "],[".join(rows) + "]]")
    if len(observations) == 1:
        text = f'{{"model":"{model}","observation":{nested[0]}}}'
    else:
        text = f'{{"model":"{model}","observations":[{",".join(nested)}]}}'
    return _split_marks(text, len(observations))


def _input_tensor(observations: np.ndarray) -> str:
    """The tensor's JSON fields as tritonclient writes them, less data and parameters."""
    shape = ",".join(str(d) for d in observations.shape)
    return f'"name":"observation","shape":[{shape}],"datatype":"FP32"'


def _oip_json_chunks(observations: np.ndarray) -> tuple[bytes, ...]:
    data = ",".join(",".join(_json_values(obs)) for obs in observations)
    text = f'{{"inputs":[{{{_input_tensor(observations)},"data":[{data}]}}]}}'
    return _split_marks(text, len(observations))


def _raw_chunks(prefix: bytes, observations: np.ndarray) -> tuple[bytes, ...]:
    """``prefix`` then the little-endian tensor, split where each row's first float goes."""
    raw = observations.astype("<f4").tobytes()
    row = len(raw) // len(observations)
    chunks = [prefix]
    for k in range(len(observations)):
        chunks.append(raw[k * row + 4 : (k + 1) * row])
    return tuple(chunks)


def oip_binary_header(observations: np.ndarray) -> bytes:
    size = observations.size * 4
    return (
        f'{{"inputs":[{{{_input_tensor(observations)},'
        f'"parameters":{{"binary_data_size":{size}}}}}],'
        '"parameters":{"binary_data_output":true}}'
    ).encode()


def grpc_prefix(model: str, observations: np.ndarray) -> bytes:
    """A serialized ``ModelInferRequest`` up to its raw tensor bytes."""
    from server.oip_proto import inference_pb2 as pb

    raw = observations.astype("<f4").tobytes()
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="observation", datatype="FP32", shape=list(observations.shape))
    request.raw_input_contents.append(raw)
    message = request.SerializeToString()
    # raw_input_contents is the last field, so the tensor ends the message.
    assert message.endswith(raw), "raw_input_contents is not the message's last field"
    return message[: len(message) - len(raw)]


GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def build_requests(protocol: Protocol, model: str, batch: int, seed: int) -> StampedRequests:
    """Distinct requests of ``batch`` observations for ``protocol``; ``seed`` should differ
    between the runs on one server (warm-up included), so that no run repeats another's rows."""
    count = template_count(batch)
    batches = _observations(model, count, batch, seed)
    headers: tuple[tuple[str, str], ...] = ()
    stamp = Stamp.DECIMAL
    if protocol is Protocol.NATIVE:
        path = "/infer"
        headers = (("Content-Type", "application/json"),)
        templates = tuple(_native_chunks(model, b) for b in batches)
    elif protocol is Protocol.OIP_JSON:
        path = f"/v2/models/{model}/infer"  # no Content-Type, as tritonclient
        templates = tuple(_oip_json_chunks(b) for b in batches)
    elif protocol is Protocol.OIP_BINARY:
        path, stamp = f"/v2/models/{model}/infer", Stamp.FLOAT32
        header = oip_binary_header(batches[0])  # the same for every template
        headers = (("Inference-Header-Content-Length", str(len(header))),)
        templates = tuple(_raw_chunks(header, b) for b in batches)
    else:
        path, stamp = GRPC_METHOD, Stamp.FLOAT32
        prefix = grpc_prefix(model, batches[0])
        templates = tuple(_raw_chunks(prefix, b) for b in batches)
    return StampedRequests(protocol, model, batch, path, headers, stamp, templates)
