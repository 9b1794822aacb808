"""One function per transformation of the fused policy, each writing one artifact file.

``FusedPolicy`` (two Linear layers) is what gets compiled, quantized and exported; the
reference ``PolicySystem`` is saved as it is. Every builder returns notes for the manifest
(which exporter ran, which quantized engine); deprecation warnings are captured around it by
the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import FusedPolicy, PolicySystem, save_checkpoint
from optimize.config import OnnxExporter
from optimize.manifest import Precision, Runtime, VariantName
from optimize.quantize import quantize_onnx_dynamic, quantize_onnx_static
from optimize.runners import OBSERVATION_INPUT, OUTPUT_NAMES


def save_reference(reference: PolicySystem, path: Path) -> list[str]:
    """The eager float32 reference, as safetensors, so that it can be served too."""
    save_checkpoint(reference, path)
    return []


def build_torchscript(fused: FusedPolicy, example: torch.Tensor, path: Path) -> list[str]:
    """Trace, freeze (weights become constants), then fold and fuse for inference."""
    with torch.no_grad():
        traced = torch.jit.trace(fused.eval(), example)
        frozen = torch.jit.freeze(traced.eval())
        optimized = torch.jit.optimize_for_inference(frozen)
    torch.jit.save(optimized, str(path))
    return []


def quantize_linear_int8(fused: FusedPolicy) -> torch.nn.Module:
    """Dynamic int8: weights quantized ahead, activations per call with a per-tensor scale."""
    return torch.ao.quantization.quantize_dynamic(
        fused.eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=False
    )


def build_torchscript_int8(fused: FusedPolicy, example: torch.Tensor, path: Path) -> list[str]:
    quantized = quantize_linear_int8(fused)
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(quantized, example).eval())
    torch.jit.save(frozen, str(path))
    return [f"quantized engine {torch.backends.quantized.engine}"]


def _export_dynamo(fused: FusedPolicy, example: torch.Tensor, path: Path) -> None:
    torch.onnx.export(
        fused.eval(),
        (example,),
        str(path),
        dynamo=True,
        input_names=[OBSERVATION_INPUT],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,  # one self-contained file, one sha256
        verbose=False,
    )


def _export_legacy(fused: FusedPolicy, example: torch.Tensor, path: Path) -> None:
    batch = {0: "batch"}
    torch.onnx.export(
        fused.eval(),
        (example,),
        str(path),
        dynamo=False,
        input_names=[OBSERVATION_INPUT],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={name: batch for name in (OBSERVATION_INPUT, *OUTPUT_NAMES)},
        opset_version=17,
    )


def _check_onnx(path: Path, example: torch.Tensor) -> None:
    import onnx

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    inputs = [i.name for i in graph.graph.input]
    outputs = [o.name for o in graph.graph.output]
    if inputs != [OBSERVATION_INPUT] or outputs != list(OUTPUT_NAMES):
        raise ValueError(f"exported graph has inputs {inputs}, outputs {outputs}")
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    if dims[0].dim_value or [d.dim_value for d in dims[1:]] != list(example.shape[1:]):
        raise ValueError(f"exported input shape is not (batch, {tuple(example.shape[1:])})")


def export_onnx(
    fused: FusedPolicy, example: torch.Tensor, path: Path, *, exporter: OnnxExporter = "dynamo"
) -> list[str]:
    """float32 ONNX with a dynamic batch axis. The torch.export-based exporter is the one
    that is not deprecated; should it fail, the legacy TorchScript-based one is tried."""
    notes = []
    if exporter == "dynamo":
        try:
            _export_dynamo(fused, example, path)
            _check_onnx(path, example)
            return ["exported by torch.onnx (dynamo, torch.export-based)"]
        except Exception as exc:
            notes.append(f"dynamo exporter failed ({type(exc).__name__}: {exc}); tried legacy")
    _export_legacy(fused, example, path)
    _check_onnx(path, example)
    return [*notes, "exported by torch.onnx (legacy, TorchScript-based)"]


@dataclass(frozen=True)
class BuildInputs:
    reference: PolicySystem
    fused: FusedPolicy
    example: torch.Tensor  # batch of 2: a batch of 1 would let exporters fix the batch size
    built: dict[VariantName, Path]  # artifacts written so far, for variants built on them
    onnx_exporter: OnnxExporter
    calibration: np.ndarray  # realistic observations for static int8, none of them verified


@dataclass(frozen=True)
class VariantPlan:
    name: VariantName
    runtime: Runtime
    precision: Precision
    suffix: str
    build: Callable[[BuildInputs, Path], list[str]]


def _onnx_source(inputs: BuildInputs, variant: VariantName) -> Path:
    source = inputs.built.get(VariantName.ONNX_FP32)
    if source is None:
        raise RuntimeError(f"{variant} is quantized from onnx_fp32, which was not built")
    return source


PLANS: dict[VariantName, VariantPlan] = {
    plan.name: plan
    for plan in (
        VariantPlan(
            VariantName.EAGER_FP32,
            Runtime.TORCH,
            Precision.FP32,
            ".safetensors",
            lambda i, p: save_reference(i.reference, p),
        ),
        VariantPlan(
            VariantName.TORCHSCRIPT_FP32,
            Runtime.TORCHSCRIPT,
            Precision.FP32,
            ".pt",
            lambda i, p: build_torchscript(i.fused, i.example, p),
        ),
        VariantPlan(
            VariantName.TORCHSCRIPT_INT8,
            Runtime.TORCHSCRIPT,
            Precision.INT8,
            ".pt",
            lambda i, p: build_torchscript_int8(i.fused, i.example, p),
        ),
        VariantPlan(
            VariantName.ONNX_FP32,
            Runtime.ONNXRUNTIME,
            Precision.FP32,
            ".onnx",
            lambda i, p: export_onnx(i.fused, i.example, p, exporter=i.onnx_exporter),
        ),
        VariantPlan(
            VariantName.ONNX_INT8,
            Runtime.ONNXRUNTIME,
            Precision.INT8,
            ".onnx",
            lambda i, p: quantize_onnx_dynamic(_onnx_source(i, VariantName.ONNX_INT8), p),
        ),
        VariantPlan(
            VariantName.ONNX_INT8_STATIC,
            Runtime.ONNXRUNTIME,
            Precision.INT8,
            ".onnx",
            lambda i, p: quantize_onnx_static(
                _onnx_source(i, VariantName.ONNX_INT8_STATIC), p, i.calibration
            ),
        ),
    )
}
