"""What the server uses: read the manifest, check an artifact's sha256, open its runner.

Importing this module imports neither torch nor onnxruntime; each is imported when a variant
of its runtime is opened.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimize.manifest import (
    MANIFEST_NAME,
    ArtifactIntegrityError,
    Manifest,
    ManifestError,
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
    "load_manifest",
    "load_served",
    "load_variant",
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
    runner: Runner


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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{path} does not exist; run `python -m optimize --out {artifacts_dir}` first"
        ) from None
    except OSError as exc:
        raise ManifestError(f"{path} cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
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
    model_record = manifest.model(model)
    record = model_record.variant(variant)
    if record.sha256 is None or record.latency_us is None:
        raise ManifestError(f"{model}/{variant} was not built (status {record.status})")
    path, data = _read_verified(artifacts_dir, record, model)
    try:
        runner = open_runner(record.runtime, data, model=model, threads=threads)
    except Exception as exc:
        raise ArtifactLoadError(
            f"{model}/{variant}: {record.runtime} could not open {path}: {exc}"
        ) from exc
    _warm_up(runner, model_record.observation_shape, warmup_calls)
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
        runner=runner,
    )


def load_served(
    artifacts_dir: Path,
    model: str,
    *,
    threads: int = 1,
    manifest: Manifest | None = None,
    warmup_calls: int = WARMUP_CALLS,
) -> ServedModel:
    """Loads the variant the optimizer selected for ``model``."""
    manifest = manifest if manifest is not None else load_manifest(artifacts_dir)
    selected = manifest.model(model).selected_variant
    return load_variant(
        artifacts_dir,
        model,
        selected.name,
        threads=threads,
        manifest=manifest,
        warmup_calls=warmup_calls,
    )


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


def _warm_up(runner: Runner, observation_shape: list[int], calls: int) -> None:
    if calls <= 0:
        return
    observation = np.zeros((1, *observation_shape), dtype=np.float32)
    for _ in range(calls):
        runner.run(observation)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value
