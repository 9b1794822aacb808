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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models import EnsembleRule, ModelSpec, PolicySystem, build_default, get_spec, load_checkpoint
from optimize.capture import Captured, captured_output
from optimize.config import REQUIRES, OptimizeConfig
from optimize.fidelity import (
    RowErrors,
    calibration_set,
    eligibility,
    measure_guard,
    realistic_sets,
    verify_fidelity,
)
from optimize.guards import GuardedRunnerType, open_guarded
from optimize.host import host_info, library_versions
from optimize.loader import sha256_bytes, sha256_file
from optimize.manifest import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    CheckpointKind,
    CheckpointSource,
    Fallback,
    Fidelity,
    FidelityMode,
    Guard,
    Manifest,
    MeasurementSettings,
    ModelRecord,
    Precision,
    Status,
    VariantName,
    VariantRecord,
)
from optimize.measure import Measurement, measure
from optimize.quantize import InputRange, calibrated_range
from optimize.runners import Runner, TorchRunner, open_runner
from optimize.selection import select_batch_variant, select_variant
from optimize.variants import PLANS, BuildInputs, VariantPlan
from optimize.verify import Outputs, Verification, reference_outputs, verification_inputs, verify

Progress = Callable[[str], None]
MAX_ERROR_CHARS = 300
# A worker's default thread count (--worker-threads 1). Pinning, opening and the manifest's
# record all read it, so the recorded figure cannot drift from the one measured with.
THREADS = 1
INT8_FAMILIES = {
    VariantName.TORCHSCRIPT_INT8: "torchscript",
    VariantName.ONNX_INT8: "onnx",
    VariantName.ONNX_INT8_STATIC: "onnx_static",
}


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
    inputs: dict[str, np.ndarray]  # the magnitude cases
    expected: dict[str, Outputs]
    realistic: dict[str, np.ndarray]  # held out: never used to calibrate
    realistic_expected: dict[str, Outputs]
    input_range: InputRange  # the calibration set's
    calibration_rows: int
    batches: tuple[int, ...]  # fidelity is judged at these batch sizes


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


def _guarded_fidelity(
    plan: VariantPlan, runner: Runner, data: bytes, inputs: BuildInputs, cases: _VerifyCases
) -> tuple[list[Fidelity], Guard | None, Runner]:
    """Fidelity alone and as served; int8 is served behind guards that fall back to the
    float32 variant of its runtime, which must have been built. The guarded runner is
    opened from the two artifacts' bytes exactly as the loader opens it."""
    model = inputs.reference.spec.name
    fallback = REQUIRES.get(plan.name) if plan.precision == Precision.INT8 else None
    guarded = None
    if fallback is not None:
        fp32_path = inputs.built.get(fallback)
        if fp32_path is None:
            raise RuntimeError(f"{plan.name} is served with {fallback} as its fallback, not built")
        fp32_data = fp32_path.read_bytes()
        rule = EnsembleRule(get_spec(model))

        def guarded(alone: Mapping[tuple[str, int], RowErrors]) -> tuple[Guard, GuardedRunnerType]:
            guard = measure_guard(
                alone,
                cases.realistic,
                fallback_variant=fallback,
                low=cases.input_range.low,
                high=cases.input_range.high,
                calibration_rows=cases.calibration_rows,
            )
            return guard, open_guarded(plan.runtime, data, fp32_data, guard, rule, threads=THREADS)

    return verify_fidelity(
        runner,
        cases.realistic,
        cases.realistic_expected,
        model=model,
        batches=cases.batches,
        guarded=guarded,
    )


def _served_errors(checked: Verification, figures: list[Fidelity]) -> tuple[float, float, str]:
    """The variant's largest errors as served: magnitude cases and realistic sets alike."""
    served = [f for f in figures if f.mode == FidelityMode.SERVED]
    probs = max(
        [(checked.max_abs_error_probs, checked.worst_case)]
        + [(f.max_abs_error_probs, f"{f.case} batch {f.batch}") for f in served]
    )
    value = max([checked.max_abs_error_value] + [f.max_abs_error_value for f in served])
    return probs[0], value, probs[1]


def build_variant(
    plan: VariantPlan,
    inputs: BuildInputs,
    model_dir: Path,
    config: OptimizeConfig,
    cases: _VerifyCases,
) -> tuple[VariantRecord, Runner | None]:
    """Returns the record and the runner as served (int8 behind its guards)."""
    tolerance = config.tolerance_for(plan.precision)
    path = model_dir / f"{plan.name}{plan.suffix}"
    base = VariantRecord(
        name=plan.name,
        runtime=plan.runtime,
        precision=plan.precision,
        status=Status.FAILED,
        tolerance=tolerance,
    )
    model = inputs.reference.spec.name
    start = time.perf_counter()
    try:
        notes, captured = _build_file(plan, inputs, path, config)
        build_s = time.perf_counter() - start
        data = path.read_bytes()
        runner = open_runner(plan.runtime, data, model=model, threads=THREADS)
        figures, guard, served = _guarded_fidelity(plan, runner, data, inputs, cases)
        checked = verify(served, cases.inputs, cases.expected, tolerance)
    except Exception as exc:
        notes = [n for n in getattr(exc, "__notes__", []) if n]
        return dataclasses.replace(base, error=_short_error(exc), notes=notes), None
    inputs.built[plan.name] = path
    err_probs, err_value, worst = _served_errors(checked, figures)
    within = err_probs <= tolerance.probs and err_value <= tolerance.value
    detail = checked.detail or (None if within else f"beyond tolerance as served ({worst})")
    eligible, why = eligibility(figures, tolerance, checked.within_tolerance, checked.detail)
    record = dataclasses.replace(
        base,
        status=Status.OK,
        file=f"{model_dir.name}/{path.name}",
        sha256=sha256_bytes(data),
        size_bytes=len(data),
        max_abs_error_probs=err_probs,
        max_abs_error_value=err_value,
        worst_case=checked.worst_case if err_probs == checked.max_abs_error_probs else worst,
        within_tolerance=within,
        tolerance_detail=detail,
        build_s=round(build_s, 3),
        notes=[*notes, *captured.notes()],
        fidelity=figures,
        guard=guard,
        eligible=eligible,
        eligibility=why,
    )
    return record, served


def _with_measurement(record: VariantRecord, m: Measurement | None) -> VariantRecord:
    if m is None:
        return record
    return dataclasses.replace(
        record,
        latency_us=m.latency_us,
        calls_per_s=m.calls_per_s,
        per_sample_us_batch32=m.per_sample_us_batch32,
        per_sample_us=m.per_sample_us,
    )


def _size_ratios(records: list[VariantRecord]) -> dict[str, float]:
    """int8 bytes / float32 bytes, per int8 variant, keyed by its family."""
    sizes = {r.name: r.size_bytes for r in records if r.size_bytes}
    ratios = {}
    for int8, family in INT8_FAMILIES.items():
        fp32_size, int8_size = sizes.get(REQUIRES[int8]), sizes.get(int8)
        if fp32_size and int8_size:
            ratios[family] = round(int8_size / fp32_size, 4)
    return ratios


def _built_line(model: str, record: VariantRecord) -> str:
    head = f"{model:<10} {record.name:<17}"
    if record.status == Status.FAILED:
        return f"{head} FAILED   {record.error}"
    served = [f for f in record.fidelity if f.mode == FidelityMode.SERVED]
    agreement = min((f.agreement for f in served), default=float("nan"))
    verdict = "eligible" if record.eligible else (record.eligibility or "not eligible")
    return (
        f"{head} built {record.build_s:.2f}s {record.size_bytes / 1024:7.1f} KiB  "
        f"max err probs {record.max_abs_error_probs:.1e} value {record.max_abs_error_value:.1e}"
        f"  agreement {agreement:.2%}  {verdict}"
    )


def _measured_line(model: str, record: VariantRecord) -> str:
    lat = record.latency_us
    assert lat is not None
    costs = "  ".join(f"b{size} {us:5.2f}" for size, us in record.per_sample_us.items())
    return (
        f"{model:<10} {record.name:<17} p50 {lat.p50:7.1f}  p99 {lat.p99:7.1f}  "
        f"p99.9 {lat.p99_9:7.1f} us  {record.calls_per_s:9,.0f} calls/s  "
        f"us/sample {costs}"
    )


def realistic_batches(rows: np.ndarray, size: int, count: int = 64) -> list[np.ndarray]:
    """Up to ``count`` consecutive batches of realistic rows, for timing (slices of a
    C-contiguous float32 array are C-contiguous float32 too)."""
    return [rows[i : i + size] for i in range(0, min(len(rows), size * count) - size + 1, size)]


def _verify_cases(
    reference_runner: Runner, spec: ModelSpec, config: OptimizeConfig
) -> tuple[_VerifyCases, np.ndarray]:
    """The verification cases, and the calibration set (drawn apart from them)."""
    inputs = verification_inputs(spec.observation_shape, config.verification_seed)
    realistic = realistic_sets(
        spec.observation_shape, config.verification_seed, config.fidelity_rows
    )
    calibration = calibration_set(
        spec.observation_shape, config.verification_seed, config.calibration_rows
    )
    return _VerifyCases(
        inputs=inputs,
        expected=reference_outputs(reference_runner.run, inputs),
        realistic=realistic,
        realistic_expected=reference_outputs(reference_runner.run, realistic),
        input_range=calibrated_range(calibration),
        calibration_rows=len(calibration),
        batches=config.fidelity_batches,
    ), calibration


def optimize_model(name: str, config: OptimizeConfig, progress: Progress) -> ModelRecord:
    reference, source = load_reference(name, config.checkpoints.get(name))
    spec = reference.spec
    cases, calibration = _verify_cases(TorchRunner(reference), spec, config)
    example = torch.from_numpy(cases.inputs["normal_batch64"][:2].copy())
    build_inputs = BuildInputs(
        reference, reference.fused(), example, {}, config.onnx_exporter, calibration
    )
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
        realistic_batches(cases.realistic["normal"], 1),
        {
            size: realistic_batches(cases.realistic["normal"], size)
            for size in config.measured_batches
        },
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
    batch_variant, batch_min_rows, batch_reason = select_batch_variant(final, selected)
    if batch_variant is not None and not config.int8_batches:
        batch_variant = batch_min_rows = None
        batch_reason = f"not enabled (--int8-batches), measured: {batch_reason}"
    progress(f"{name:<10} selected {selected}: {reason}")
    progress(f"{name:<10} batches: {batch_reason}")
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
        batch_variant=batch_variant,
        batch_min_rows=batch_min_rows,
        batch_selection_reason=batch_reason,
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
        fidelity_rows=config.fidelity_rows,
        fidelity_batch=config.fidelity_batch,
        calibration_rows=config.calibration_rows,
        calibration_seed=config.verification_seed,
        measured_batches=list(config.measured_batches),
        int8_batches=config.int8_batches,
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
