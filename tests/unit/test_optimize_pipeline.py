"""``python -m optimize`` run once for real (a subprocess, small --calls); then its artifacts
are loaded through the server's loader and checked against the reference model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models
from optimize.loader import (
    ArtifactIntegrityError,
    ManifestError,
    load_manifest,
    load_served,
    load_variant,
    open_guarded_variant,
    verify_artifacts,
)
from optimize.manifest import FidelityMode, Manifest, Precision, Status, VariantName
from optimize.runners import TorchRunner

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODELS = ("tactical", "strategic")


@dataclass(frozen=True)
class OptimizerRun:
    out: Path
    summary: dict[str, Any]
    progress: str
    manifest: Manifest


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> OptimizerRun:
    out = tmp_path_factory.mktemp("artifacts")
    result = subprocess.run(
        [sys.executable, "-m", "optimize", "--out", str(out), "--json", "--calls", "400"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    return OptimizerRun(out, json.loads(result.stdout), result.stderr, load_manifest(out))


def test_cli_prints_a_json_summary_with_a_selection_per_model(run: OptimizerRun) -> None:
    assert run.summary["ok"] is True
    assert Path(run.summary["manifest"]) == run.out / "manifest.json"
    for name in MODELS:
        entry = run.summary["models"][name]
        assert entry["selected"] in {v.value for v in VariantName}
        assert entry["selection_reason"].startswith("lowest batch-1 p99")
        assert set(entry["variants"]) == {v.value for v in VariantName}


def test_progress_goes_to_stderr_one_line_per_variant(run: OptimizerRun) -> None:
    lines = run.progress.splitlines()
    for name in MODELS:
        for variant in VariantName:
            mine = [line for line in lines if line.split()[:2] == [name, variant.value]]
            assert len(mine) == 2, mine  # built/verified, then measured
        assert any(line.startswith(f"{name:<10} selected ") for line in lines)
    assert "Traceback" not in run.progress and "torchvision" not in run.progress


def test_manifest_records_every_variant_and_round_trips(run: OptimizerRun) -> None:
    raw = json.loads((run.out / "manifest.json").read_text())
    assert Manifest.from_dict(raw).to_dict() == raw
    assert run.manifest.host.cores >= 1 and run.manifest.versions.torch
    for name in MODELS:
        record = run.manifest.model(name)
        assert record.checkpoint.description.startswith("seeded default seed ")
        assert {v.name for v in record.variants} == set(VariantName)
        for variant in record.variants:
            assert variant.status is Status.OK, variant.error
            assert variant.file and (run.out / variant.file).is_file()
            stat = (run.out / variant.file).stat()
            assert variant.size_bytes == stat.st_size
            assert stat.st_mode & 0o044 == 0o044  # readable by a server running as another user
            assert variant.latency_us is not None
            assert 0 < variant.latency_us.p50 <= variant.latency_us.p99 <= variant.latency_us.p99_9
            assert variant.calls_per_s and variant.per_sample_us_batch32
            assert set(variant.per_sample_us) == {"8", "16", "32", "256"}
            assert variant.eligible is not None and variant.eligibility
            cases = {(f.case, f.mode, f.batch) for f in variant.fidelity}
            assert cases == {
                (case, mode, batch)
                for case in ("normal", "student_t3", "mixed_1e3")
                for mode in FidelityMode
                for batch in (1, 32)
            }
            assert (variant.guard is not None) == (variant.precision == Precision.INT8)
        for family in ("onnx", "onnx_static", "torchscript"):
            assert 0 < record.int8_to_fp32_size_ratio[family] < 0.5


def test_selection_is_the_lowest_p99_among_eligible_ties_to_float32(run: OptimizerRun) -> None:
    for name in MODELS:
        record = run.manifest.model(name)
        chosen = record.selected_variant
        assert chosen.servable and chosen.eligible
        same_precision = [
            v for v in record.variants if v.servable and v.precision == chosen.precision
        ]
        assert chosen.latency_us.p99 == min(v.latency_us.p99 for v in same_precision)
        if chosen.precision == Precision.INT8:
            fp32 = [v for v in record.variants if v.servable and v.precision == Precision.FP32]
            best = min(fp32, key=lambda v: v.latency_us.p99)
            assert chosen.latency_us.p99 < 0.9 * best.latency_us.p99
            assert chosen.latency_us.p50 < 0.9 * best.latency_us.p50
        for v in record.variants:
            if not v.servable:
                assert f"{v.name} excluded" in record.selection_reason
        assert record.batch_selection_reason


def fresh_observations(shape: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(987654)
    return [
        np.ascontiguousarray(rng.standard_normal((n, *shape)) * scale, dtype=np.float32)
        for n, scale in ((1, 1.0), (17, 1.0), (32, 3.0), (8, 10.0))
    ]


@pytest.mark.parametrize("name", MODELS)
def test_every_variant_within_tolerance_agrees_with_the_reference(
    run: OptimizerRun, name: str
) -> None:
    reference = TorchRunner(models.build_default(name))
    record = run.manifest.model(name)
    checked = 0
    rule = models.EnsembleRule(models.get_spec(name))
    for variant in record.variants:
        served = load_variant(run.out, name, variant.name, manifest=run.manifest, warmup_calls=1)
        assert served.version == variant.sha256[:12]
        runner = served.runner
        if variant.guard is not None:  # int8 is recorded, and served, behind its guards
            runner = open_guarded_variant(run.out, run.manifest, name, variant.name, rule)
        for x in fresh_observations(models.get_spec(name).observation_shape):
            probs, value = runner.run(x)
            ref_probs, ref_value = reference.run(x)
            assert probs.shape == ref_probs.shape and value.shape == ref_value.shape
            assert probs.dtype == np.float32 and value.dtype == np.float32
            if variant.within_tolerance:
                assert np.max(np.abs(probs - ref_probs)) <= served.tolerance_probs
                assert np.max(np.abs(value - ref_value)) <= served.tolerance_value
                checked += 1
    assert checked >= 4 * 3  # eager, torchscript_fp32 and onnx_fp32 at least


def test_load_served_loads_the_selection(run: OptimizerRun) -> None:
    for name in MODELS:
        served = load_served(run.out, name)
        record = run.manifest.model(name).selected_variant
        assert (served.variant, served.runtime, served.sha256) == (
            record.name,
            record.runtime,
            record.sha256,
        )
        assert served.latency_us == record.latency_us.as_dict()


def test_tampered_artifact_is_refused(run: OptimizerRun, tmp_path: Path) -> None:
    copy = tmp_path / "artifacts"
    shutil.copytree(run.out, copy)
    assert verify_artifacts(copy).models.keys() == set(MODELS)
    record = run.manifest.model("tactical").selected_variant
    target = copy / record.file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"tactical/.*has sha256 .*refusing"):
        load_served(copy, "tactical")
    with pytest.raises(ArtifactIntegrityError, match="do not match the manifest"):
        verify_artifacts(copy)
    load_served(copy, "strategic")  # the other model's artifact is untouched


def test_manifest_pointing_outside_the_directory_is_refused(
    run: OptimizerRun, tmp_path: Path
) -> None:
    copy = tmp_path / "artifacts"
    shutil.copytree(run.out, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    selected = raw["models"]["tactical"]["selected"]
    for variant in raw["models"]["tactical"]["variants"]:
        if variant["name"] == selected:
            variant["file"] = "../../etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match="lies outside"):
        load_served(copy, "tactical")


LAZY_IMPORT_CHECK = """
import sys
from pathlib import Path
import models  # the worker imports models.spec and models.ensemble, so models/__init__ runs
from optimize.loader import load_variant
served = load_variant(Path(sys.argv[1]), "tactical", "onnx_fp32")
probs, value = served.runner.run(__import__("numpy").zeros((1, 60, 7), "float32"))
assert probs.shape == (1, 3, 3), probs.shape
print("torch" in sys.modules)
"""


def test_serving_onnx_does_not_import_torch(run: OptimizerRun) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LAZY_IMPORT_CHECK, str(run.out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False"
