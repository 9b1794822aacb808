"""The Open Inference Protocol's tensors and metadata, shared by its REST and gRPC codecs.

Each model has one input, ``observation`` (FP32, ``[-1, rows, features]``), and four
outputs: ``probs`` (FP32 ``[-1, 3, 3]``, agents in the contract's order, actions ``short,
neutral, long``), ``value`` (FP32 ``[-1, 1]``), ``action`` (INT32 ``[-1]``, an index into the
actions) and ``confidence`` (FP32 ``[-1]``).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from models.spec import SPECS, ModelSpec
from server.errors import ApiError, InvalidObservation, NotFound
from server.outputs import ACTION, CONFIDENCE, FLOATS, PROBS, VALUE
from server.pool import MODEL_INDEX, MODEL_NAMES

SERVER_NAME = "policy-inference-server"
try:
    SERVER_VERSION = metadata.version(SERVER_NAME)
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    SERVER_VERSION = "0+unknown"
EXTENSIONS = ("binary_tensor_data",)

INPUT = "observation"
FP32 = "FP32"
OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "probs": (FP32, (-1, 3, 3)),
    "value": (FP32, (-1, 1)),
    "action": ("INT32", (-1,)),
    "confidence": (FP32, (-1,)),
}
# Triton's platform names for the runtimes the optimizer can select
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class BadTensor(InvalidObservation):
    """An invalid inference request (every one is a 400 in this protocol)."""


def is_oip_path(path: str) -> bool:
    """``/v2`` and the paths under it answer errors in this protocol's shape; ``/v2x`` is
    not one of them."""
    return path == "/v2" or path.startswith("/v2/")


def model_index(name: str, version: str, served: Sequence[str]) -> int:
    """The model's index; ``version`` empty or the served one, else a 404."""
    idx = MODEL_INDEX.get(name)
    if idx is None:
        raise NotFound(f"unknown model {name!r}; this server serves: {', '.join(MODEL_NAMES)}")
    if version and (not served or version != served[idx]):
        now = served[idx] if served else "none yet"
        raise NotFound(f"model {name!r} has no version {version!r}; the served version is {now}")
    return idx


def model_metadata(idx: int, version: str, runtime: str) -> dict[str, Any]:
    spec = SPECS[MODEL_NAMES[idx]]
    return {
        "name": spec.name,
        "versions": [version] if version else [],
        "platform": PLATFORMS.get(runtime, runtime),
        "inputs": [{"name": INPUT, "datatype": FP32, "shape": [-1, spec.rows, spec.features]}],
        "outputs": [
            {"name": name, "datatype": datatype, "shape": list(shape)}
            for name, (datatype, shape) in OUTPUTS.items()
        ],
    }


def check_input(spec: ModelSpec, max_batch: int, name: str, datatype: str, shape: Any) -> int:
    """The batch size the input's metadata declares, or a 400 saying what to send."""
    if name != INPUT:
        raise BadTensor(
            f"unknown input {name!r}; {spec.name} takes one input, {INPUT!r} "
            f"(FP32, [-1, {spec.rows}, {spec.features}])"
        )
    if datatype != FP32:
        raise BadTensor(f"input {INPUT!r} has datatype {datatype!r}; send FP32")
    expected = f"[N, {spec.rows}, {spec.features}] with N the number of observations"
    if (
        type(shape) not in (list, tuple)
        or len(shape) != 3
        or not all(type(d) is int for d in shape)
        or tuple(shape[1:]) != spec.observation_shape
        or shape[0] < 1
    ):
        raise BadTensor(f"input {INPUT!r} has shape {shape}; {spec.name} expects {expected}")
    if shape[0] > max_batch:
        raise BadTensor(
            f"batch of {shape[0]} observations is too large; send at most {max_batch} per request"
        )
    return shape[0]


def rows_from_raw(spec: ModelSpec, batch: int, raw: bytes | memoryview) -> list[bytes]:
    """Little-endian row-major float32 bytes to one ``bytes`` per observation."""
    size = spec.input_size * 4
    if len(raw) != batch * size:
        raise BadTensor(
            f"input {INPUT!r} holds {len(raw)} bytes; shape [{batch}, {spec.rows}, "
            f"{spec.features}] of FP32 needs {batch * size}"
        )
    if not np.isfinite(np.frombuffer(raw, dtype="<f4")).all():
        raise BadTensor(f"input {INPUT!r} contains NaN or Infinity; send finite numbers")
    data = bytes(raw)
    return [data[i : i + size] for i in range(0, len(data), size)]


def rows_from_json(spec: ModelSpec, batch: int, data: Any) -> list[bytes]:
    """A JSON tensor, flat or nested row-major, to one ``bytes`` per observation."""
    count = batch * spec.input_size
    if type(data) is not list:
        raise BadTensor(f'input {INPUT!r} needs "data": a list of {count} numbers')
    flat = data
    try:
        while flat and type(flat[0]) is list:
            flat = list(itertools.chain.from_iterable(flat))
    except TypeError:  # a list beside a number at one level, e.g. [[1, 2], 3]
        raise BadTensor(
            f'input {INPUT!r} has "data" of uneven depth; send a flat list of {count} numbers '
            "or lists nested to the same depth"
        ) from None
    if len(flat) != count:
        raise BadTensor(
            f"input {INPUT!r} holds {len(flat)} values; shape [{batch}, {spec.rows}, "
            f"{spec.features}] needs {count}"
        )
    if not set(map(type, flat)) <= {float, int}:
        raise BadTensor(f"input {INPUT!r} must contain only numbers (FP32)")
    try:
        packed = struct.pack(f"<{count}f", *flat)
    except (OverflowError, struct.error):
        raise BadTensor(
            f"input {INPUT!r} holds a value beyond FP32 range (|x| > {_FLOAT32_MAX:.3g})"
        ) from None
    size = spec.input_size * 4
    return [packed[i : i + size] for i in range(0, len(packed), size)]


def output_arrays(outputs: list[bytes]) -> dict[str, np.ndarray]:
    """Row outputs to the protocol's tensors, each C-contiguous in its declared shape."""
    n = len(outputs)
    block = np.frombuffer(b"".join(outputs), dtype=np.float32).reshape(n, FLOATS)
    return {
        "probs": np.ascontiguousarray(block[:, PROBS]).reshape(n, 3, 3),
        "value": np.ascontiguousarray(block[:, VALUE : VALUE + 1]),
        "action": block[:, ACTION].astype(np.int32),
        "confidence": np.ascontiguousarray(block[:, CONFIDENCE]),
    }


def check_outputs(names: list[str]) -> None:
    """Every name one of the outputs. A name asked for twice is answered once, the first
    time's way, as Triton holds requested outputs in a set."""
    for name in names:
        if type(name) is not str or name not in OUTPUTS:
            raise BadTensor(f"unknown output {name!r}; the outputs are {', '.join(OUTPUTS)}")


def as_protocol_error(error: ApiError) -> tuple[int, str]:
    """The protocol's status for a core error: every invalid request is a 400."""
    status = 400 if error.status == 422 else error.status
    return status, error.message
