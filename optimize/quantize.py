"""ONNX Runtime int8: dynamic (for comparison) and calibrated static QDQ quantization.

Static quantization fixes every activation scale from a calibration set of realistic
observations, so it is exact only within the calibrated input range; the serving guards
(``optimize.guards``) send anything outside it to float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimize.host import cpu_has_vnni
from optimize.runners import OBSERVATION_INPUT

MATMUL_OPS = ("Gemm", "MatMul")
CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class InputRange:
    """The smallest and largest observation value seen in calibration: the range in which
    the static int8 input scale represents every value without clipping."""

    low: float
    high: float


def calibrated_range(calibration: np.ndarray) -> InputRange:
    return InputRange(low=float(calibration.min()), high=float(calibration.max()))


def quantize_onnx_dynamic(source: Path, path: Path) -> list[str]:
    """Dynamic quantization: int8 weights, uint8 activations with a per-tensor scale chosen
    per call from the whole batch (so one row's outputs depend on the other rows)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8)
    return ["onnxruntime.quantization.quantize_dynamic, QInt8 weights, per tensor"]


def hidden_layer_nodes(model_path: Path) -> tuple[list[str], str]:
    """The nodes to quantize (everything before the output head, so the hidden matmul's
    clamp folds into its output scale) and the head itself, left in float with everything
    after it: quantized to 8 bits, large logits lose the softmax's ordering. The last
    matmul of the graph is the head (ONNX nodes are topologically sorted)."""
    import onnx

    nodes = list(onnx.load(str(model_path)).graph.node)
    matmuls = [i for i, n in enumerate(nodes) if n.op_type in MATMUL_OPS]
    if len(matmuls) < 2:
        raise ValueError(f"expected a hidden and an output matmul, found {len(matmuls)}")
    head = matmuls[-1]
    return [n.name for n in nodes[:head]], nodes[head].name


class _Batches:
    """onnxruntime's CalibrationDataReader protocol over one array, in fixed batches."""

    def __init__(self, observations: np.ndarray) -> None:
        self._observations = observations
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self._observations), CALIBRATION_BATCH):
            yield {OBSERVATION_INPUT: self._observations[start : start + CALIBRATION_BATCH]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()


def quantize_onnx_static(
    source: Path, path: Path, calibration: np.ndarray, *, reduce_range: bool | None = None
) -> list[str]:
    """QDQ static quantization: uint8 activations (asymmetric: symmetric ones made ORT run
    the first layer in float between Quantize/Dequantize, ~25x slower), int8 per-channel
    weights, MinMax calibration, the output head left in float. Without VNNI the u8*s8
    kernels accumulate pairs in int16 and saturate, so weights then use 7 bits."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    quantized, head = hidden_layer_nodes(source)
    reader = _Batches(np.ascontiguousarray(calibration, dtype=np.float32))
    quantize_static(
        str(source),
        str(path),
        reader,  # type: ignore[arg-type]  # the reader protocol: get_next, rewind
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=reduce_range,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_quantize=quantized,
    )
    return [
        "onnxruntime.quantization.quantize_static, QDQ, QUInt8 activations, QInt8 "
        f"per-channel weights, MinMax on {len(calibration)} observations, "
        f"float output head ({head}), reduce_range={reduce_range}"
    ]
