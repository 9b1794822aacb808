"""One runtime call per batch that returns everything an answer needs.

The optimizer's ONNX graph yields the agents' probabilities and the critic's value. At load
time ``decision_graph`` appends the contract's decision to it (the weighted mean of the
agents' probabilities, its arg-max and that mean probability), so the graph's outputs are
the core's row layout (``server.outputs``: probs 9, value, confidence, action); whether a
row is finite is read after the run (one sum at batch 1, ``np.isfinite`` for a batch). The
weights are a graph input, bound once from the configuration (``--agent-weights``), so the
graph never has to be rebuilt for them.

``FusedModel`` binds its input and output buffers once (ONNX Runtime IOBinding, one binding
per batch size, made on first use) and reads the answer straight from the bound buffers:
no numpy call and no allocation per row. Other runtimes (TorchScript, eager torch) keep the
numpy decision (``NumpyModel``), with the same interface.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Protocol

import numpy as np

from models.ensemble import EnsembleRule
from server import protocol
from server.outputs import FLOATS, row_outputs

WEIGHTS = "agent_weights"
CONFIDENCE = "confidence"
ACTION = "action"
_FINITE = bytes([protocol.ROW_FINITE])
_NOT_FINITE = bytes([protocol.ROW_NOT_FINITE])
_ROW = struct.Struct(f"={FLOATS}f")


class Engine(Protocol):
    def infer_one(self, row: bytes) -> tuple[bytes, bool]:
        """One observation's float32 bytes -> (its outputs, all finite)."""

    def infer(self, payload: memoryview | bytes, rows: int) -> tuple[bytes, bytes]:
        """``rows`` observations -> (a status byte per row, the rows' outputs)."""


def decision_graph(model: bytes, agents: int) -> bytes:
    """``model`` (a serialized ONNX model with outputs ``probs`` (B, agents, 3) and ``value``
    (B, 1)) with the decision appended as two more outputs, ``confidence`` and ``action``
    (B, 1, 1) float32, from a new input ``agent_weights`` (1, agents), normalised to sum 1.

    Three nodes: a MatMul for the weighted mean and one TopK for its maximum and arg-max
    (TopK puts the lower index first among equals, as numpy's argmax does). Each node costs
    about half a microsecond of ONNX Runtime's dispatch here, so the row is not concatenated
    in the graph: the four outputs are bound next to each other in memory instead.

    Written as protobuf bytes appended to the model's: a message field that appears twice
    is merged, its repeated fields concatenated, so a second ``graph`` holding only the new
    nodes, input, outputs and constant extends the first. The serving processes need no
    ``onnx`` package for it (6 MB of each process's memory); ONNX Runtime checks the result
    when it opens it (``open_fused`` checks the outputs' names)."""
    node = _message
    k = node((1, _int(1)), (2, _int(_INT64)), (7, _packed([1])), (8, b"decision_k"))
    nodes = [
        node((1, WEIGHTS.encode()), (1, b"probs"), (2, b"decision_mean"), (4, b"MatMul")),
        node(
            (1, b"decision_mean"),
            (1, b"decision_k"),
            (2, CONFIDENCE.encode()),
            (2, b"decision_i"),
            (4, b"TopK"),
            (5, node((1, b"axis"), (3, _int(2)), (20, _int(2)))),
        ),
        node(
            (1, b"decision_i"),
            (2, ACTION.encode()),
            (4, b"Cast"),
            (5, node((1, b"to"), (3, _int(_FLOAT)), (20, _int(2)))),
        ),
    ]
    graph = [(1, n) for n in nodes] + [(5, k), (11, _tensor_info(WEIGHTS, [1, agents]))]
    graph += [(12, _tensor_info(name, ["batch", 1, 1])) for name in (CONFIDENCE, ACTION)]
    return model + _field(7, _message(*graph))


_FLOAT, _INT64 = 1, 7  # ONNX TensorProto data types


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _int(int):
    """A varint field's value (wire type 0), where bytes are length-delimited (type 2)."""


def _field(number: int, value: bytes | int) -> bytes:
    if isinstance(value, _int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _message(*fields: tuple[int, bytes | int]) -> bytes:
    return b"".join(_field(number, value) for number, value in fields)


def _packed(values: list[int]) -> bytes:
    return b"".join(_varint(v) for v in values)


def _tensor_info(name: str, dims: list) -> bytes:
    """A ValueInfoProto: a float tensor of ``dims`` (ints, or names of free dimensions)."""
    shape = _message(
        *((1, _message((1, _int(d)) if isinstance(d, int) else (2, d.encode()))) for d in dims)
    )
    tensor = _message((1, _int(_FLOAT)), (2, shape))
    return _message((1, name.encode()), (2, _message((1, tensor))))


class _Binding:
    """One batch size's IOBinding, its buffers at fixed addresses. At batch 1 the four
    outputs are bound side by side in one 12-float row, the core's layout; larger batches
    get one array per output, interleaved into rows after the run."""

    __slots__ = ("inputs", "io", "outputs", "parts", "view")

    def __init__(self, session: Any, weights: np.ndarray, shape: tuple[int, ...], rows: int):
        agents = weights.shape[1]
        self.inputs = np.zeros((rows, *shape), dtype=np.float32)
        self.view = memoryview(self.inputs).cast("B")
        self.outputs = np.zeros((rows, FLOATS), dtype=np.float32)
        io = session.io_binding()
        io.bind_input("observation", "cpu", 0, np.float32, self.inputs.shape, _ptr(self.inputs))
        io.bind_input(WEIGHTS, "cpu", 0, np.float32, weights.shape, _ptr(weights))
        shapes = {"probs": (rows, agents, 3), "value": (rows, 1)}
        shapes.update({CONFIDENCE: (rows, 1, 1), ACTION: (rows, 1, 1)})
        if rows == 1:
            self.parts: list[np.ndarray] = []
            address = _ptr(self.outputs)
            for name, dims in shapes.items():
                io.bind_output(name, "cpu", 0, np.float32, dims, address)
                address += 4 * int(np.prod(dims))
        else:
            self.parts = [np.zeros(dims, dtype=np.float32) for dims in shapes.values()]
            for name, part in zip(shapes, self.parts, strict=True):
                io.bind_output(name, "cpu", 0, np.float32, part.shape, _ptr(part))
        self.io = io._iobinding  # the C binding: run_with_iobinding's Python checks skipped

    def rows(self) -> np.ndarray:
        """After a run of a batch: the outputs as rows of the core's layout."""
        if self.parts:
            probs, value, confidence, action = self.parts
            out, n = self.outputs, probs.shape[1] * 3
            out[:, :n] = probs.reshape(len(out), n)
            out[:, n] = value[:, 0]
            out[:, n + 1] = confidence[:, 0, 0]
            out[:, n + 2] = action[:, 0, 0]
        return self.outputs


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


class FusedModel:
    """An ONNX Runtime session of ``decision_graph``; every call is one ``run`` on bound
    buffers. Single-threaded (one per process and model)."""

    __slots__ = ("_bindings", "_one", "_one_in", "_one_out", "_options", "_run", "_shape")
    __slots__ += ("_weights", "session")

    def __init__(self, session: Any, rule: EnsembleRule) -> None:
        import onnxruntime as ort

        self.session = session
        self._shape = tuple(rule.spec.observation_shape)
        # kept alive as long as the bindings point at it
        self._weights = np.ascontiguousarray(rule.weights.reshape(1, -1), dtype=np.float32)
        self._options = ort.RunOptions()
        self._run = session._sess.run_with_iobinding
        self._bindings: dict[int, _Binding] = {}
        one = self._binding(1)
        self._one = one.io
        self._one_in = one.view
        self._one_out = memoryview(one.outputs).cast("B")

    def _binding(self, rows: int) -> _Binding:
        binding = self._bindings.get(rows)
        if binding is None:
            binding = self._bindings[rows] = _Binding(
                self.session, self._weights, self._shape, rows
            )
        return binding

    def infer_one(self, row: bytes) -> tuple[bytes, bool]:
        self._one_in[:] = row
        self._run(self._one, self._options)
        outputs = self._one_out.tobytes()
        # summed as Python floats (float64), so only a NaN or an infinity makes it non-finite
        return outputs, math.isfinite(sum(_ROW.unpack(outputs)))

    def infer(self, payload: memoryview | bytes, rows: int) -> tuple[bytes, bytes]:
        if rows == 1:
            outputs, finite = self.infer_one(payload)
            return (_FINITE if finite else _NOT_FINITE), outputs
        binding = self._binding(rows)
        binding.view[:] = payload
        self._run(binding.io, self._options)
        out = binding.rows()
        return (~np.isfinite(out).all(axis=1)).view(np.uint8).tobytes(), out.tobytes()


class NumpyModel:
    """A runner of another runtime (TorchScript, eager torch): its (probs, value), then the
    decision in numpy (``server.outputs.row_outputs``)."""

    __slots__ = ("_runner", "_shape", "rule")

    def __init__(self, runner: Any, rule: EnsembleRule) -> None:
        self._runner = runner
        self.rule = rule
        self._shape = tuple(rule.spec.observation_shape)

    def infer(self, payload: memoryview | bytes, rows: int) -> tuple[bytes, bytes]:
        obs = np.frombuffer(bytearray(payload), dtype=np.float32).reshape(rows, *self._shape)
        probs, value = self._runner.run(obs)
        out, finite = row_outputs(probs, value, self.rule)
        return (~finite).view(np.uint8).tobytes(), out.tobytes()

    def infer_one(self, row: bytes) -> tuple[bytes, bool]:
        status, outputs = self.infer(row, 1)
        return outputs, status[0] == protocol.ROW_FINITE


def open_fused(data: bytes, rule: EnsembleRule, *, threads: int) -> FusedModel:
    """``data``: the ONNX artifact's verified bytes."""
    import onnxruntime as ort

    from optimize.runners import ort_session_options

    graph = decision_graph(data, len(rule.spec.agents))
    session = ort.InferenceSession(
        graph, ort_session_options(threads), providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]
    if outputs != ["probs", "value", CONFIDENCE, ACTION]:
        raise ValueError(f"graph outputs {outputs[:-2]}; expected ['probs', 'value']")
    return FusedModel(session, rule)
