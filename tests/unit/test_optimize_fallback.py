"""A variant that fails to build is recorded, skipped and never selected; the run goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimize import variants
from optimize.config import OptimizeConfig
from optimize.loader import load_manifest, load_served
from optimize.manifest import Status, VariantName
from optimize.pipeline import run_optimizer

pytestmark = pytest.mark.slow


def small_config(out: Path, **overrides: object) -> OptimizeConfig:
    settings: dict[str, object] = {
        "out_dir": out,
        "models": ("tactical",),
        "calls": 100,
        "warmup_calls": 20,
        "rounds": 2,
        "fidelity_rows": 1000,  # the smallest allowed: these tests are about failures
    }
    settings.update(overrides)
    return OptimizeConfig(**settings)  # type: ignore[arg-type]


def test_forced_failure_is_a_fallback_and_not_selected(tmp_path: Path) -> None:
    lines: list[str] = []
    config = small_config(
        tmp_path,
        variants=(VariantName.TORCHSCRIPT_FP32, VariantName.ONNX_FP32),
        fail_variants=frozenset({VariantName.ONNX_FP32}),
    )
    manifest = run_optimizer(config, progress=lines.append)
    record = manifest.model("tactical")
    failed = record.variant("onnx_fp32")
    assert failed.status is Status.FAILED and failed.file is None
    assert "forced failure of onnx_fp32" in (failed.error or "")
    assert [(f.variant, f.error) for f in record.fallbacks] == [("onnx_fp32", failed.error)]
    assert record.selected in {VariantName.EAGER_FP32, VariantName.TORCHSCRIPT_FP32}
    assert "onnx_fp32 failed: InjectedFailure" in record.selection_reason
    assert not (tmp_path / "tactical" / "onnx_fp32.onnx").exists()
    assert any("onnx_fp32" in line and "FAILED" in line for line in lines)
    assert load_manifest(tmp_path) == manifest
    assert load_served(tmp_path, "tactical").variant == record.selected


def test_a_builder_that_raises_is_recorded_with_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def removed_api(*_args: object) -> list[str]:
        raise RuntimeError("torch.jit.trace has been removed in this release")

    monkeypatch.setattr(variants, "build_torchscript", removed_api)
    config = small_config(tmp_path, variants=(VariantName.TORCHSCRIPT_FP32,))
    record = run_optimizer(config).model("tactical")
    failed = record.variant("torchscript_fp32")
    assert failed.status is Status.FAILED
    assert failed.error == "RuntimeError: torch.jit.trace has been removed in this release"
    assert record.selected == VariantName.EAGER_FP32  # the reference can always be served


def test_onnx_int8_fails_cleanly_when_its_source_failed(tmp_path: Path) -> None:
    config = small_config(
        tmp_path,
        variants=(VariantName.ONNX_INT8,),
        fail_variants=frozenset({VariantName.ONNX_FP32}),
    )
    record = run_optimizer(config).model("tactical")
    assert record.variant("onnx_int8").status is Status.FAILED
    assert "quantized from onnx_fp32, which was not built" in (
        record.variant("onnx_int8").error or ""
    )
    assert {f.variant for f in record.fallbacks} == {"onnx_fp32", "onnx_int8"}
    assert record.selected == VariantName.EAGER_FP32


def test_no_variant_built_means_no_selection(tmp_path: Path) -> None:
    config = small_config(
        tmp_path,
        variants=(VariantName.EAGER_FP32,),
        fail_variants=frozenset({VariantName.EAGER_FP32}),
    )
    record = run_optimizer(config).model("tactical")
    assert record.selected is None
    assert record.selection_reason.startswith("no variant built and eligible")
    assert [f.variant for f in record.fallbacks] == ["eager_fp32"]


def test_dynamo_export_failure_falls_back_to_the_legacy_exporter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(variants, "_export_dynamo", broken)
    config = small_config(tmp_path, variants=(VariantName.ONNX_FP32,))
    onnx = run_optimizer(config).model("tactical").variant("onnx_fp32")
    assert onnx.status is Status.OK and onnx.within_tolerance
    assert any("dynamo exporter failed" in note for note in onnx.notes)
    assert any("legacy" in note for note in onnx.notes)
    # "tried legacy" in the failure note alone would satisfy the line above
    assert "exported by torch.onnx (legacy, TorchScript-based)" in onnx.notes
