"""The typed schema of ``manifest.json``: what the optimizer decided, and what the server loads.

Everything here is plain dataclasses and enums so that reading a manifest needs neither torch
nor onnxruntime. ``Manifest.from_dict`` checks every field against its annotation and names
the offending path (``models.tactical.variants[2].sha256``) when something is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Union

# 2: int8 fidelity on realistic sets, eligibility, guards, a variant per batch size. A
# version-1 manifest still loads (every new field has a default): it serves float32 only.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"


class ManifestError(Exception):
    """The artifacts directory cannot be used: missing, unreadable or inconsistent manifest."""


class ArtifactIntegrityError(ManifestError):
    """An artifact's bytes do not match the sha256 recorded in the manifest."""


class VariantName(StrEnum):
    EAGER_FP32 = "eager_fp32"
    TORCHSCRIPT_FP32 = "torchscript_fp32"
    TORCHSCRIPT_INT8 = "torchscript_int8"
    ONNX_FP32 = "onnx_fp32"
    ONNX_INT8 = "onnx_int8"  # dynamic quantization, kept for comparison
    ONNX_INT8_STATIC = "onnx_int8_static"  # calibrated static QDQ, served with guards


class Runtime(StrEnum):
    TORCH = "torch"
    TORCHSCRIPT = "torchscript"
    ONNXRUNTIME = "onnxruntime"


class Precision(StrEnum):
    FP32 = "fp32"
    INT8 = "int8"


class Status(StrEnum):
    OK = "ok"
    FAILED = "failed"


class CheckpointKind(StrEnum):
    SEEDED_DEFAULT = "seeded_default"
    FILE = "file"


@dataclass(frozen=True)
class Tolerance:
    """Largest absolute difference from the float32 reference that a variant may show."""

    probs: float
    value: float


@dataclass(frozen=True)
class LatencyUs:
    """Batch-1 latency percentiles in microseconds."""

    p50: float
    p99: float
    p99_9: float

    def as_dict(self) -> dict[str, float]:
        return {"p50": self.p50, "p99": self.p99, "p99_9": self.p99_9}


class FidelityMode(StrEnum):
    ALONE = "alone"  # the variant's own outputs
    SERVED = "served"  # what the server answers: int8 behind its range and margin guards


@dataclass(frozen=True)
class Fidelity:
    """One variant against float32 on one held-out realistic set, at one batch size.

    ``agreement`` is the share of rows whose decision (arg-max of the equal-weight ensemble
    mean) is float32's; ``max_disagreeing_margin`` is the largest float32 top-1 minus top-2
    margin among the rows that disagree (None when none does)."""

    case: str  # "normal" (z-scored features) or "student_t3" (heavy-tailed)
    mode: FidelityMode
    batch: int
    rows: int
    max_abs_error_probs: float
    p99_9_abs_error_probs: float
    max_abs_error_value: float
    p99_9_abs_error_value: float
    agreement: float
    disagreements: int
    max_disagreeing_margin: float | None = None
    fallback_range_rows: int = 0  # served: rows the range guard sent to float32
    fallback_margin_rows: int = 0  # served: rows the margin guard recomputed in float32


@dataclass(frozen=True)
class Guard:
    """How an int8 variant is served: rows outside [input_low, input_high] (the calibrated
    range) run on ``fallback_variant``; so do rows whose int8 decision margin is below
    ``margin_threshold`` (equal agent weights) or ``margin_threshold_any_weights``."""

    fallback_variant: VariantName
    input_low: float
    input_high: float
    calibration_rows: int
    # Largest |int8 - float32| on in-range verification rows: of the equal-weight ensemble
    # mean, and of any one agent's probabilities (which bounds any weighted mean).
    mean_error_bound: float
    agent_error_bound: float
    margin_threshold: float
    margin_threshold_any_weights: float


@dataclass(frozen=True)
class Fallback:
    variant: str
    error: str


@dataclass(frozen=True)
class VariantRecord:
    name: VariantName
    runtime: Runtime
    precision: Precision
    status: Status
    tolerance: Tolerance
    file: str | None = None  # relative to the artifacts directory
    sha256: str | None = None
    size_bytes: int | None = None
    max_abs_error_probs: float | None = None
    max_abs_error_value: float | None = None
    worst_case: str | None = None  # the verification input on which the error was largest
    within_tolerance: bool = False
    tolerance_detail: str | None = None  # e.g. "probs error 0.29 > 0.05 (large_1e6)"
    latency_us: LatencyUs | None = None
    calls_per_s: float | None = None
    per_sample_us_batch32: float | None = None
    build_s: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)  # deprecation warnings, exporter used
    # Schema 2. Errors above are as served (int8 behind its guards), on the magnitude cases
    # and the realistic sets; ``fidelity`` details the realistic sets alone and as served.
    fidelity: list[Fidelity] = field(default_factory=list)
    guard: Guard | None = None
    eligible: bool | None = None  # None: recorded by schema 1, which knew only tolerance
    eligibility: str | None = None  # why it is or is not eligible
    per_sample_us: dict[str, float] = field(default_factory=dict)  # batch size -> us/sample

    @property
    def servable(self) -> bool:
        return (
            self.status == Status.OK
            and self.within_tolerance
            and self.eligible is not False
            and self.file is not None
        )

    def agreement_summary(self) -> dict[str, dict[str, float | None]]:
        """As served, per realistic set and batch size: decision agreement with float32 and
        the largest float32 margin among disagreements. What ``/models`` and reports show:
        ``{"normal": {"batch_1": 1.0, "batch_32": 1.0, "max_disagreeing_margin": None}}``."""
        out: dict[str, dict[str, float | None]] = {}
        for f in self.fidelity:
            if f.mode != FidelityMode.SERVED:
                continue
            entry = out.setdefault(f.case, {"max_disagreeing_margin": None})
            entry[f"batch_{f.batch}"] = f.agreement
            if f.max_disagreeing_margin is not None:
                entry["max_disagreeing_margin"] = max(
                    f.max_disagreeing_margin, entry["max_disagreeing_margin"] or 0.0
                )
        return out

    def fidelity_for(self, case: str, mode: FidelityMode, batch: int) -> Fidelity | None:
        for f in self.fidelity:
            if (f.case, f.mode, f.batch) == (case, mode, batch):
                return f
        return None


@dataclass(frozen=True)
class CheckpointSource:
    kind: CheckpointKind
    description: str
    seed: int | None = None
    path: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class ModelRecord:
    name: str
    observation_shape: list[int]
    agents: list[str]
    checkpoint: CheckpointSource
    variants: list[VariantRecord]
    selected: VariantName | None
    selection_reason: str
    fallbacks: list[Fallback] = field(default_factory=list)
    # int8 artifact bytes / fp32 artifact bytes, per int8 variant's family ("torchscript",
    # "onnx" for dynamic, "onnx_static").
    int8_to_fp32_size_ratio: dict[str, float] = field(default_factory=dict)
    # Schema 2: batches of at least ``batch_min_rows`` rows run on ``batch_variant`` (an
    # eligible int8 variant, behind its guards); smaller ones on ``selected``.
    batch_variant: VariantName | None = None
    batch_min_rows: int | None = None
    batch_selection_reason: str = ""

    def variant(self, name: str) -> VariantRecord:
        for record in self.variants:
            if record.name == name:
                return record
        built = ", ".join(r.name for r in self.variants)
        raise ManifestError(f"model {self.name!r} has no variant {name!r}; recorded: {built}")

    @property
    def selected_variant(self) -> VariantRecord:
        if self.selected is None:
            raise ManifestError(
                f"model {self.name!r} has no selected variant ({self.selection_reason}); "
                "re-run `python -m optimize` and check its report"
            )
        return self.variant(self.selected)


@dataclass(frozen=True)
class LibraryVersions:
    python: str
    torch: str
    onnx: str
    onnxruntime: str
    numpy: str
    onnxscript: str | None = None


@dataclass(frozen=True)
class HostInfo:
    cpu_model: str
    cores: int
    usable_cores: int
    platform: str


@dataclass(frozen=True)
class MeasurementSettings:
    calls_batch1: int
    calls_batch32: int
    warmup_calls: int
    rounds: int
    threads: int
    tolerance_fp32: Tolerance
    tolerance_int8: Tolerance
    verification_seed: int
    onnx_exporter: str
    # Schema 2: the held-out realistic sets and the calibration set.
    fidelity_rows: int = 0  # per realistic set
    fidelity_batch: int = 32  # the served batch size the sets are also run at
    calibration_rows: int = 0
    calibration_seed: int = 0
    measured_batches: list[int] = field(default_factory=list)
    int8_batches: bool = False  # whether the run was allowed to plan int8 for batches


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    created: str  # ISO 8601, UTC
    wall_time_s: float
    versions: LibraryVersions
    host: HostInfo
    settings: MeasurementSettings
    models: dict[str, ModelRecord]

    def model(self, name: str) -> ModelRecord:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ManifestError(f"manifest has no model {name!r}; it holds: {known}") from None

    def to_dict(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError(f"manifest must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ManifestError(
                f"manifest has schema_version {version!r}, this code reads "
                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; "
                "re-run `python -m optimize` to write a current manifest"
            )
        return _decode(cls, data, "manifest")


def _encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


_hints = functools.cache(typing.get_type_hints)


def _fail(where: str, expected: str, value: Any) -> ManifestError:
    return ManifestError(f"{where}: expected {expected}, got {value!r:.80}")


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _decode_union(typing.get_args(tp), value, where)
    if origin is list:
        return _decode_list(typing.get_args(tp)[0], value, where)
    if origin is dict:
        return _decode_dict(typing.get_args(tp)[1], value, where)
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in tp)
            raise _fail(where, f"one of {allowed}", value) from None
    return _decode_scalar(tp, value, where)


def _decode_scalar(tp: type, value: Any, where: str) -> Any:
    if isinstance(value, bool) and tp is not bool:
        raise _fail(where, tp.__name__, value)
    if tp is float and isinstance(value, int | float):
        return float(value)
    if isinstance(value, tp):
        return value
    raise _fail(where, tp.__name__, value)


def _decode_union(args: tuple[Any, ...], value: Any, where: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _fail(where, "a value", value)
    (inner,) = [a for a in args if a is not type(None)]
    return _decode(inner, value, where)


def _decode_list(item: Any, value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, "a list", value)
    return [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]


def _decode_dict(item: Any, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "an object", value)
    return {str(k): _decode(item, v, f"{where}.{k}") for k, v in value.items()}


def _decode_dataclass(cls: Any, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(where, "an object", value)
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in value:
            kwargs[f.name] = _decode(hints[f.name], value[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ManifestError(f"{where}: missing field {f.name!r}")
    return cls(**kwargs)
