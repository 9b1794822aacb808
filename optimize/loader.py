"""What the server uses: read the manifest, check an artifact's sha256, open its runner.

Importing this module imports neither torch nor onnxruntime; each is imported when a variant
of its runtime is opened.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.ensemble import EnsembleRule
from models.spec import get_spec
from optimize.guards import GuardedRunnerType, ServedRunner, open_guarded
from optimize.manifest import (
    MANIFEST_NAME,
    ArtifactIntegrityError,
    Fidelity,
    Guard,
    Manifest,
    ManifestError,
    ModelRecord,
    VariantRecord,
)
from optimize.runners import Runner, open_runner

__all__ = [
    "ArtifactIntegrityError",
    "ArtifactLoadError",
    "Manifest",
    "ManifestError",
    "Runner",
    "ServedModel",
    "ServedRunner",
    "load_manifest",
    "load_served",
    "load_variant",
    "open_guarded_variant",
    "read_variant",
    "reproduce_fidelity",
    "sha256_bytes",
    "sha256_file",
    "verify_artifacts",
]

WARMUP_CALLS = 32


class ArtifactLoadError(ManifestError):
    """The artifact's bytes are the recorded ones, but its runtime could not open them."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str  # first 12 hex chars of the artifact's sha256
    variant: str
    runtime: str
    precision: str
    file: Path
    sha256: str
    size_bytes: int
    tolerance_probs: float
    tolerance_value: float
    max_abs_error_probs: float
    max_abs_error_value: float
    latency_us: dict[str, float]  # p50/p99/p99_9 from the manifest
    # ``runner.run`` as any runner; from ``load_served`` a ``ServedRunner`` whose
    # ``fallbacks()`` counts the rows the int8 guards sent to float32.
    runner: Runner | None  # None from read_variant
    batch_variant: str | None = None  # int8 variant serving batches of batch_min_rows+ rows
    batch_min_rows: int | None = None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(artifacts_dir: Path) -> Manifest:
    path = Path(artifacts_dir) / MANIFEST_NAME
    return _parse_manifest(_read_manifest(path, artifacts_dir), path)


def _read_manifest(path: Path, artifacts_dir: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(
            f"{path} does not exist; run `python -m optimize --out {artifacts_dir}` first"
        ) from None
    except OSError as exc:
        raise ManifestError(f"{path} cannot be read: {exc}") from exc


def _parse_manifest(text: bytes, path: Path) -> Manifest:
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(
            f"{path} is not valid JSON ({exc}); re-run `python -m optimize`"
        ) from None
    try:
        return Manifest.from_dict(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None


def _artifact_path(artifacts_dir: Path, record: VariantRecord, model: str) -> Path:
    if record.file is None:
        raise ManifestError(f"{model}/{record.name} has no artifact file (status {record.status})")
    root = Path(artifacts_dir).resolve()
    path = (root / record.file).resolve()
    if not path.is_relative_to(root):
        raise ManifestError(
            f"{model}/{record.name}: file {record.file!r} lies outside {root}; "
            "artifact paths must be relative to the artifacts directory"
        )
    return path


def _unreadable(model: str, record: VariantRecord, path: Path, exc: OSError) -> str:
    return f"{model}/{record.name}: cannot read {path}: {exc}"


def _mismatch(model: str, record: VariantRecord, path: Path, actual: str) -> str:
    return (
        f"{model}/{record.name}: {path} has sha256 {actual}, but the manifest records "
        f"{record.sha256}"
    )


def _read_verified(artifacts_dir: Path, record: VariantRecord, model: str) -> tuple[Path, bytes]:
    """The artifact's bytes, read once: the bytes hashed are the bytes loaded."""
    path = _artifact_path(artifacts_dir, record, model)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactIntegrityError(_unreadable(model, record, path, exc)) from exc
    actual = sha256_bytes(data)
    if actual != record.sha256:
        raise ArtifactIntegrityError(
            f"{_mismatch(model, record, path, actual)}; the file was changed after "
            "`python -m optimize` wrote it, refusing to load it (re-run the optimizer to "
            "rebuild the artifacts)"
        )
    return path, data


def load_variant(
    artifacts_dir: Path,
    model: str,
    variant: str,
    *,
    threads: int = 1,
    manifest: Manifest | None = None,
    warmup_calls: int = WARMUP_CALLS,
) -> ServedModel:
    """Loads one recorded variant (``load_served`` loads the selected one); a few warm-up
    calls run so that the first request does not pay for lazy initialisation."""
    manifest = manifest if manifest is not None else load_manifest(artifacts_dir)
    served, data = read_variant(artifacts_dir, model, variant, manifest=manifest)
    try:
        runner = open_runner(served.runtime, data, model=model, threads=threads)
    except Exception as exc:
        raise ArtifactLoadError(
            f"{model}/{variant}: {served.runtime} could not open {served.file}: {exc}"
        ) from exc
    shape = manifest.model(model).observation_shape
    _warm_up(runner, np.zeros((1, *shape), np.float32), warmup_calls)
    return dataclasses.replace(served, runner=runner)


def read_variant(
    artifacts_dir: Path, model: str, variant: str, *, manifest: Manifest
) -> tuple[ServedModel, bytes]:
    """One recorded variant's description (``runner`` None) and its verified bytes, for a
    caller that opens them its own way (the server's fused ONNX engine)."""
    record = manifest.model(model).variant(variant)
    if record.sha256 is None or record.latency_us is None:
        raise ManifestError(f"{model}/{variant} was not built (status {record.status})")
    path, data = _read_verified(artifacts_dir, record, model)
    return ServedModel(
        name=model,
        version=record.sha256[:12],
        variant=str(record.name),
        runtime=str(record.runtime),
        precision=str(record.precision),
        file=path,
        sha256=record.sha256,
        size_bytes=len(data),
        tolerance_probs=record.tolerance.probs,
        tolerance_value=record.tolerance.value,
        max_abs_error_probs=_or_nan(record.max_abs_error_probs),
        max_abs_error_value=_or_nan(record.max_abs_error_value),
        latency_us=record.latency_us.as_dict(),
        runner=None,
    ), data


def load_served(
    artifacts_dir: Path,
    model: str,
    *,
    threads: int = 1,
    manifest: Manifest | None = None,
    warmup_calls: int = WARMUP_CALLS,
    agent_weights: Sequence[float] | None = None,
) -> ServedModel:
    """Loads what the optimizer selected for ``model``: the batch-1 variant, and, when the
    manifest says so, an int8 variant behind its range and margin guards for batches of
    ``batch_min_rows`` rows or more (its float32 fallback loaded beside it). The runner is a
    ``ServedRunner``: ``run`` picks per call, ``fallbacks()`` counts the guards' rows.
    ``agent_weights`` are the server's ensemble weights, which the margin guard decides by.
    """
    manifest = manifest if manifest is not None else load_manifest(artifacts_dir)
    entry = manifest.model(model)
    served = load_variant(
        artifacts_dir,
        model,
        entry.selected_variant.name,
        threads=threads,
        manifest=manifest,
        warmup_calls=warmup_calls,
    )
    guarded = None
    if entry.batch_variant is not None and entry.batch_min_rows is not None:
        rule = EnsembleRule(get_spec(model), agent_weights)
        guarded = open_guarded_variant(
            artifacts_dir, manifest, model, entry.batch_variant, rule, threads=threads
        )
        batch = np.zeros((entry.batch_min_rows, *entry.observation_shape), dtype=np.float32)
        _warm_up(guarded, batch, warmup_calls)
        guarded.counts.reset()  # warm-up rows are not the server's
    runner = ServedRunner(served.runner, guarded, entry.batch_min_rows)
    return dataclasses.replace(
        served,
        runner=runner,
        batch_variant=None if guarded is None else str(entry.batch_variant),
        batch_min_rows=runner.min_rows,
    )


def open_guarded_variant(
    artifacts_dir: Path,
    manifest: Manifest,
    model: str,
    variant: str,
    rule: EnsembleRule,
    *,
    threads: int = 1,
) -> GuardedRunnerType:
    """An int8 variant behind the guards the manifest records, with its float32 fallback;
    both artifacts' sha256 checked."""
    entry = manifest.model(model)
    record = entry.variant(variant)
    if record.guard is None:
        raise ManifestError(f"{model}/{variant} has no guard recorded; it is not served as int8")
    fallback = entry.variant(record.guard.fallback_variant)
    int8_path, int8_data = _read_verified(artifacts_dir, record, model)
    _, fp32_data = _read_verified(artifacts_dir, fallback, model)
    try:
        return open_guarded(
            record.runtime, int8_data, fp32_data, record.guard, rule, threads=threads
        )
    except Exception as exc:
        raise ArtifactLoadError(
            f"{model}/{variant}: {record.runtime} could not open {int8_path} behind its "
            f"guards: {exc}"
        ) from exc


def reproduce_fidelity(
    artifacts_dir: Path, model: str, variant: str, *, manifest: Manifest | None = None
) -> list[Fidelity]:
    """The loader's own check of a variant's recorded fidelity: the held-out sets are drawn
    again from the recorded seed, the reference is the ``eager_fp32`` artifact, and the
    variant runs alone and as served (behind the recorded guard). Returns the figures in
    the manifest's order; equal to the recorded ones when the artifacts are the ones
    measured, on this host. Imports torch (for the reference)."""
    from optimize.fidelity import realistic_sets, verify_fidelity

    manifest = manifest if manifest is not None else load_manifest(artifacts_dir)
    settings, entry = manifest.settings, manifest.model(model)
    record = entry.variant(variant)
    sets = realistic_sets(
        tuple(entry.observation_shape), settings.verification_seed, settings.fidelity_rows
    )
    reference = load_variant(artifacts_dir, model, "eager_fp32", manifest=manifest, warmup_calls=0)
    expected = {case: reference.runner.run(x) for case, x in sets.items()}
    alone = load_variant(artifacts_dir, model, variant, manifest=manifest, warmup_calls=0)
    guard = record.guard
    guarded = None
    if guard is not None:
        rule = EnsembleRule(get_spec(model))

        def guarded(_alone: object) -> tuple[Guard, GuardedRunnerType]:
            # the recorded guard, not one measured again: that is what the server runs
            return guard, open_guarded_variant(artifacts_dir, manifest, model, variant, rule)

    figures, _, _ = verify_fidelity(
        alone.runner,
        sets,
        expected,
        model=model,
        batches=tuple(sorted({1, settings.fidelity_batch})),
        guarded=guarded,
    )
    return figures


def served_records(entry: ModelRecord) -> list[VariantRecord]:
    """The variants the server loads for one model: the selected one, and an int8 batch
    variant with its float32 fallback."""
    records = [entry.selected_variant]
    if entry.batch_variant is not None:
        batch = entry.variant(entry.batch_variant)
        records.append(batch)
        if batch.guard is not None:
            records.append(entry.variant(batch.guard.fallback_variant))
    return records


def read_served(artifacts_dir: Path) -> tuple[Manifest, dict[str, bytes]]:
    """The manifest and every artifact it serves (each model's selected variant, and an int8
    batch variant with its float32 fallback), each checked against its sha256: their bytes
    by path relative to ``artifacts_dir``, the manifest's own included. A server keeps and
    loads these, so that what later changes under ``artifacts_dir`` (the optimizer writing a
    new set, a corrupted file) does not reach it. Raises as ``verify_artifacts`` does."""
    root = Path(artifacts_dir).resolve()
    path = root / MANIFEST_NAME
    text = _read_manifest(path, artifacts_dir)
    manifest = _parse_manifest(text, path)
    files = {MANIFEST_NAME: text}
    for name, entry in manifest.models.items():
        for record in served_records(entry):
            artifact, data = _read_verified(root, record, name)
            files[str(artifact.relative_to(root))] = data
    return manifest, files


def verify_artifacts(artifacts_dir: Path) -> Manifest:
    """Checks every selected artifact's sha256 without opening any runtime; raises
    ``ArtifactIntegrityError`` naming every file that does not match."""
    manifest = load_manifest(artifacts_dir)
    problems = []
    for name, model_record in manifest.models.items():
        record = model_record.selected_variant
        path = _artifact_path(artifacts_dir, record, name)
        try:
            actual = sha256_file(path)
        except OSError as exc:
            problems.append(_unreadable(name, record, path, exc))
            continue
        if actual != record.sha256:
            problems.append(_mismatch(name, record, path, actual))
    if problems:
        raise ArtifactIntegrityError(
            "artifacts do not match the manifest, refusing them: " + "; ".join(problems)
        )
    return manifest


def _warm_up(runner: Runner, observations: np.ndarray, calls: int) -> None:
    for _ in range(calls):
        runner.run(observations)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
