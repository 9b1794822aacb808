"""Build, verify, measure and select, per model; then write the manifest.

Each variant is built into a partial file and renamed into place, then reopened from its
bytes by the same runner code the server uses, so what is verified and timed is exactly the
artifact that will be served. Any exception while building, opening or verifying a variant
marks it failed and the run goes on without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models import PolicySystem, build_default, get_spec, load_checkpoint
from optimize.capture import Captured, captured_output
from optimize.config import OptimizeConfig
from optimize.host import host_info, library_versions
from optimize.loader import sha256_bytes, sha256_file
from optimize.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    CheckpointKind,
    CheckpointSource,
    Fallback,
    Manifest,
    MeasurementSettings,
    ModelRecord,
    Precision,
    Status,
    VariantName,
    VariantRecord,
)
from optimize.measure import Measurement, measure
from optimize.runners import Runner, TorchRunner, open_runner
from optimize.selection import select_variant
from optimize.variants import PLANS, BuildInputs, VariantPlan
from optimize.verify import Outputs, reference_outputs, verification_inputs, verify

Progress = Callable[[str], None]
MAX_ERROR_CHARS = 300
# A worker's default thread count (--worker-threads 1). Pinning, opening and the manifest's
# record all read it, so the recorded figure cannot drift from the one measured with.
THREADS = 1


class InjectedFailure(RuntimeError):
    """Raised in place of a build when the config asks for it (``--fail-variant``)."""


def _silent(_line: str) -> None:
    pass


def load_reference(name: str, checkpoint: Path | None) -> tuple[PolicySystem, CheckpointSource]:
    if checkpoint is None:
        seed = get_spec(name).default_seed
        source = CheckpointSource(
            kind=CheckpointKind.SEEDED_DEFAULT, description=f"seeded default seed {seed}", seed=seed
        )
        return build_default(name), source
    reference = load_checkpoint(name, checkpoint)
    digest = sha256_file(checkpoint)
    source = CheckpointSource(
        kind=CheckpointKind.FILE,
        description=f"{checkpoint} (sha256 {digest})",
        path=str(checkpoint.resolve()),
        sha256=digest,
    )
    return reference, source


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:MAX_ERROR_CHARS]


@dataclasses.dataclass(frozen=True)
class _VerifyCases:
    inputs: dict[str, np.ndarray]
    expected: dict[str, Outputs]


def _build_file(
    plan: VariantPlan, inputs: BuildInputs, path: Path, config: OptimizeConfig
) -> tuple[list[str], Captured]:
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    captured = Captured()
    try:
        with captured_output() as captured:
            if plan.name in config.fail_variants:
                raise InjectedFailure(f"forced failure of {plan.name} (--fail-variant)")
            notes = plan.build(inputs, partial)
        # safetensors writes 0600; the server may run as another user (the image does).
        partial.chmod(0o644)
        os.replace(partial, path)
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        for note in captured.notes():
            exc.add_note(note)
        raise
    return notes, captured


def build_variant(
    plan: VariantPlan,
    inputs: BuildInputs,
    model_dir: Path,
    config: OptimizeConfig,
    cases: _VerifyCases,
) -> tuple[VariantRecord, Runner | None]:
    tolerance = config.tolerance_for(plan.precision)
    path = model_dir / f"{plan.name}{plan.suffix}"
    base = VariantRecord(
        name=plan.name,
        runtime=plan.runtime,
        precision=plan.precision,
        status=Status.FAILED,
        tolerance=tolerance,
    )
    start = time.perf_counter()
    try:
        notes, captured = _build_file(plan, inputs, path, config)
        build_s = time.perf_counter() - start
        data = path.read_bytes()
        runner = open_runner(plan.runtime, data, model=inputs.reference.spec.name, threads=THREADS)
        checked = verify(runner, cases.inputs, cases.expected, tolerance)
    except Exception as exc:
        notes = [n for n in getattr(exc, "__notes__", []) if n]
        return dataclasses.replace(base, error=_short_error(exc), notes=notes), None
    inputs.built[plan.name] = path
    record = dataclasses.replace(
        base,
        status=Status.OK,
        file=f"{model_dir.name}/{path.name}",
        sha256=sha256_bytes(data),
        size_bytes=len(data),
        max_abs_error_probs=checked.max_abs_error_probs,
        max_abs_error_value=checked.max_abs_error_value,
        worst_case=checked.worst_case,
        within_tolerance=checked.within_tolerance,
        tolerance_detail=checked.detail or None,
        build_s=round(build_s, 3),
        notes=[*notes, *captured.notes()],
    )
    return record, runner


def _with_measurement(record: VariantRecord, m: Measurement | None) -> VariantRecord:
    if m is None:
        return record
    return dataclasses.replace(
        record,
        latency_us=m.latency_us,
        calls_per_s=m.calls_per_s,
        per_sample_us_batch32=m.per_sample_us_batch32,
    )


def _size_ratios(records: list[VariantRecord]) -> dict[str, float]:
    sizes = {(r.runtime, r.precision): r.size_bytes for r in records if r.size_bytes}
    ratios = {}
    for family, runtime in (("torchscript", "torchscript"), ("onnx", "onnxruntime")):
        fp32, int8 = sizes.get((runtime, Precision.FP32)), sizes.get((runtime, Precision.INT8))
        if fp32 and int8:
            ratios[family] = round(int8 / fp32, 4)
    return ratios


def _built_line(model: str, record: VariantRecord) -> str:
    head = f"{model:<10} {record.name:<17}"
    if record.status == Status.FAILED:
        return f"{head} FAILED   {record.error}"
    verdict = "ok" if record.within_tolerance else f"OUT OF TOLERANCE: {record.tolerance_detail}"
    return (
        f"{head} built {record.build_s:.2f}s {record.size_bytes / 1024:7.1f} KiB  "
        f"max err probs {record.max_abs_error_probs:.1e} value {record.max_abs_error_value:.1e}"
        f"  {verdict}"
    )


def _measured_line(model: str, record: VariantRecord) -> str:
    lat = record.latency_us
    assert lat is not None
    return (
        f"{model:<10} {record.name:<17} p50 {lat.p50:7.1f}  p99 {lat.p99:7.1f}  "
        f"p99.9 {lat.p99_9:7.1f} us  {record.calls_per_s:9,.0f} calls/s  "
        f"batch32 {record.per_sample_us_batch32:6.2f} us/sample"
    )


def optimize_model(name: str, config: OptimizeConfig, progress: Progress) -> ModelRecord:
    reference, source = load_reference(name, config.checkpoints.get(name))
    spec = reference.spec
    reference_runner = TorchRunner(reference)
    inputs = verification_inputs(spec.observation_shape, config.verification_seed)
    cases = _VerifyCases(inputs, reference_outputs(reference_runner.run, inputs))
    example = torch.from_numpy(inputs["normal_batch64"][:2].copy())
    build_inputs = BuildInputs(reference, reference.fused(), example, {}, config.onnx_exporter)
    model_dir = config.out_dir / name
    model_dir.mkdir(parents=True, exist_ok=True)

    records: dict[VariantName, VariantRecord] = {}
    runners: dict[str, Runner] = {}
    for variant in config.planned_variants():
        record, runner = build_variant(PLANS[variant], build_inputs, model_dir, config, cases)
        records[variant] = record
        if runner is not None:
            runners[variant] = runner
        progress(_built_line(name, record))

    measured = measure(
        runners,
        inputs["normal_batch1"],  # verification_inputs are float32 and C-contiguous already
        inputs["batch32"],
        calls=config.calls,
        calls_batch32=config.calls_batch32,
        warmup_calls=config.warmup_calls,
        rounds=config.rounds,
    )
    final = [_with_measurement(r, measured.get(v)) for v, r in records.items()]
    for record in final:
        if record.latency_us is not None:
            progress(_measured_line(name, record))
    selected, reason = select_variant(final)
    progress(f"{name:<10} selected {selected}: {reason}")
    return ModelRecord(
        name=name,
        observation_shape=list(spec.observation_shape),
        agents=list(spec.agents),
        checkpoint=source,
        variants=final,
        selected=selected,
        selection_reason=reason,
        fallbacks=[
            Fallback(variant=r.name, error=r.error or "")
            for r in final
            if r.status == Status.FAILED
        ],
        int8_to_fp32_size_ratio=_size_ratios(final),
    )


def _settings(config: OptimizeConfig) -> MeasurementSettings:
    return MeasurementSettings(
        calls_batch1=config.calls,
        calls_batch32=config.calls_batch32,
        warmup_calls=config.warmup_calls,
        rounds=config.rounds,
        threads=THREADS,
        tolerance_fp32=config.tolerance_fp32,
        tolerance_int8=config.tolerance_int8,
        verification_seed=config.verification_seed,
        onnx_exporter=config.onnx_exporter,
    )


def write_manifest(out_dir: Path, manifest: Manifest) -> Path:
    """Written last and atomically: a reader sees the old manifest or the new, never half."""
    path = out_dir / MANIFEST_NAME
    partial = out_dir / f".{MANIFEST_NAME}.partial"
    text = json.dumps(manifest.to_dict(), indent=2, allow_nan=False)
    partial.write_text(text + "\n", encoding="utf-8")
    os.replace(partial, path)
    return path


def pin_threads(threads: int = THREADS) -> None:
    """How the server's workers run: one intra-op thread, one inter-op thread."""
    torch.set_num_threads(threads)
    # It can be set only once per process, before first use: a second run keeps the first.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def run_optimizer(config: OptimizeConfig, *, progress: Progress = _silent) -> Manifest:
    start = time.perf_counter()
    pin_threads()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    models = {name: optimize_model(name, config, progress) for name in config.models}
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        wall_time_s=round(time.perf_counter() - start, 2),
        versions=library_versions(),
        host=host_info(),
        settings=_settings(config),
        models=models,
    )
    write_manifest(config.out_dir, manifest)
    return manifest
