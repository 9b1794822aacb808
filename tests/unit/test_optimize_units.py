"""The optimizer's parts on their own: schema, selection, verification, timing, capture, CLI."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from optimize.capture import captured_output
from optimize.cli import build_parser, config_from_args
from optimize.config import OptimizeConfig
from optimize.loader import load_manifest
from optimize.manifest import (
    SCHEMA_VERSION,
    CheckpointKind,
    CheckpointSource,
    Fallback,
    HostInfo,
    LatencyUs,
    LibraryVersions,
    Manifest,
    ManifestError,
    MeasurementSettings,
    ModelRecord,
    Precision,
    Runtime,
    Status,
    Tolerance,
    VariantName,
    VariantRecord,
)
from optimize.measure import latency_percentiles, measure, time_interleaved
from optimize.runners import OrtRunner
from optimize.selection import select_variant
from optimize.verify import VerificationError, verification_inputs, verify

FP32 = Tolerance(probs=1e-4, value=1e-3)


def ok_variant(name: VariantName, p99: float, *, within: bool = True) -> VariantRecord:
    return VariantRecord(
        name=name,
        runtime=Runtime.ONNXRUNTIME,
        precision=Precision.FP32,
        status=Status.OK,
        tolerance=FP32,
        file=f"tactical/{name}.onnx",
        sha256="ab" * 32,
        size_bytes=1000,
        max_abs_error_probs=1e-6 if within else 0.5,
        max_abs_error_value=1e-6,
        worst_case="zeros",
        within_tolerance=within,
        tolerance_detail=None if within else "probs error 0.5 > 0.0001 (large_1e6)",
        latency_us=LatencyUs(p50=p99 / 2, p99=p99, p99_9=p99 * 2),
        calls_per_s=1e5,
        per_sample_us_batch32=1.0,
        build_s=0.1,
        notes=["DeprecationWarning: something"],
    )


def failed_variant(name: VariantName) -> VariantRecord:
    return VariantRecord(
        name=name,
        runtime=Runtime.TORCHSCRIPT,
        precision=Precision.INT8,
        status=Status.FAILED,
        tolerance=FP32,
        error="RuntimeError: boom",
    )


def sample_variants() -> list[VariantRecord]:
    """Slow and fast within tolerance, faster still but beyond it, and one that failed."""
    return [
        ok_variant(VariantName.EAGER_FP32, 50.0),
        ok_variant(VariantName.ONNX_FP32, 9.0),
        ok_variant(VariantName.ONNX_INT8, 7.0, within=False),
        failed_variant(VariantName.TORCHSCRIPT_INT8),
    ]


def sample_manifest() -> Manifest:
    variants = sample_variants()
    selected, reason = select_variant(variants)
    model = ModelRecord(
        name="tactical",
        observation_shape=[60, 7],
        agents=["fvg", "momentum", "entry"],
        checkpoint=CheckpointSource(
            kind=CheckpointKind.SEEDED_DEFAULT, description="seeded default seed 1", seed=1
        ),
        variants=variants,
        selected=selected,
        selection_reason=reason,
        fallbacks=[Fallback(variant="torchscript_int8", error="RuntimeError: boom")],
        int8_to_fp32_size_ratio={"onnx": 0.26},
    )
    return Manifest(
        schema_version=SCHEMA_VERSION,
        created="2026-01-01T00:00:00+00:00",
        wall_time_s=1.5,
        versions=LibraryVersions(
            python="3.11", torch="2", onnx="1", onnxruntime="1", numpy="2", onnxscript=None
        ),
        host=HostInfo(cpu_model="cpu", cores=2, usable_cores=2, platform="linux"),
        settings=MeasurementSettings(
            calls_batch1=100,
            calls_batch32=50,
            warmup_calls=10,
            rounds=2,
            threads=1,
            tolerance_fp32=FP32,
            tolerance_int8=Tolerance(probs=0.05, value=0.15),
            verification_seed=1,
            onnx_exporter="dynamo",
        ),
        models={"tactical": model},
    )


# --- manifest schema ---------------------------------------------------------------------


def test_manifest_round_trips_through_json() -> None:
    manifest = sample_manifest()
    text = json.dumps(manifest.to_dict(), allow_nan=False)
    again = Manifest.from_dict(json.loads(text))
    assert again == manifest
    assert isinstance(again.models["tactical"].variants[0].runtime, Runtime)
    assert again.models["tactical"].selected_variant.name == VariantName.ONNX_FP32


def test_wrong_schema_version_is_refused_with_what_to_do() -> None:
    data = sample_manifest().to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ManifestError, match="re-run `python -m optimize`"):
        Manifest.from_dict(data)


def test_a_schema_1_manifest_still_loads_and_serves_float32_only() -> None:
    data = sample_manifest().to_dict()
    data["schema_version"] = 1
    schema_2_only = {
        "variant": ("fidelity", "guard", "eligible", "eligibility", "per_sample_us"),
        "model": ("batch_variant", "batch_min_rows", "batch_selection_reason"),
    }
    entry = data["models"]["tactical"]
    for key in schema_2_only["model"]:
        del entry[key]
    for variant in entry["variants"]:
        for key in schema_2_only["variant"]:
            del variant[key]
    old = Manifest.from_dict(data).models["tactical"]
    assert old.batch_variant is None and old.variants[1].eligible is None
    assert old.selected_variant.servable  # within tolerance was all schema 1 knew


def test_bad_field_is_named_by_its_path() -> None:
    data = sample_manifest().to_dict()
    data["models"]["tactical"]["variants"][1]["size_bytes"] = "big"
    with pytest.raises(ManifestError, match=r"models\.tactical\.variants\[1\]\.size_bytes"):
        Manifest.from_dict(data)
    data = sample_manifest().to_dict()
    data["models"]["tactical"]["variants"][0]["runtime"] = "tensorflow"
    with pytest.raises(ManifestError, match="one of 'torch', 'torchscript', 'onnxruntime'"):
        Manifest.from_dict(data)
    data = sample_manifest().to_dict()
    del data["models"]["tactical"]["selected"]
    with pytest.raises(ManifestError, match="missing field 'selected'"):
        Manifest.from_dict(data)


def test_load_manifest_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist; run `python -m optimize"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(ManifestError, match="schema_version 0"):
        load_manifest(tmp_path)


def test_unknown_model_and_variant_are_named() -> None:
    manifest = sample_manifest()
    with pytest.raises(ManifestError, match="no model 'strategic'; it holds: tactical"):
        manifest.model("strategic")
    with pytest.raises(ManifestError, match="no variant 'torchscript_fp32'"):
        manifest.model("tactical").variant("torchscript_fp32")


# --- selection -------------------------------------------------------------------------


def test_selection_takes_lowest_p99_within_tolerance_and_says_why() -> None:
    selected, reason = select_variant(sample_variants())
    assert selected == VariantName.ONNX_FP32
    assert reason.startswith("lowest batch-1 p99 (9.0 us) among 2 variants eligible")
    assert "onnx_int8 excluded: probs error 0.5 > 0.0001 (large_1e6)" in reason
    assert "torchscript_int8 failed: RuntimeError: boom" in reason


def test_selection_with_nothing_servable_selects_nothing() -> None:
    selected, reason = select_variant([failed_variant(VariantName.EAGER_FP32)])
    assert selected is None
    assert reason.startswith("no variant built and eligible")


# --- verification ----------------------------------------------------------------------


class FakeRunner:
    """Implements the Runner protocol with a fixed function of the input."""

    def __init__(self, probs_offset: float = 0.0, *, shape_bug: bool = False) -> None:
        self.probs_offset = probs_offset
        self.shape_bug = shape_bug
        self.calls = 0

    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        batch = observations.shape[0]
        probs = np.full((batch, 3, 3), 1 / 3 + self.probs_offset, dtype=np.float32)
        value = observations.reshape(batch, -1)[:, :1].astype(np.float32)
        if self.shape_bug:
            value = value.reshape(batch)
        return probs, value


def test_verify_records_largest_error_and_case() -> None:
    inputs = verification_inputs((4, 2), seed=0)
    expected = {case: FakeRunner().run(x) for case, x in inputs.items()}
    within = verify(FakeRunner(1e-5), inputs, expected, FP32)
    assert within.within_tolerance and within.max_abs_error_probs == pytest.approx(1e-5, rel=0.1)
    beyond = verify(FakeRunner(1e-3), inputs, expected, FP32)
    assert not beyond.within_tolerance
    assert beyond.detail.startswith("probs error 0.001 > 0.0001")
    assert beyond.worst_case in inputs and beyond.detail.endswith(f"({beyond.worst_case})")


class CaseErrorRunner(FakeRunner):
    """Off in probs on the 1e6-magnitude inputs only, and in value on all-zero inputs only."""

    def __init__(self, probs_error: float, value_error: float) -> None:
        super().__init__()
        self.probs_error, self.value_error = np.float32(probs_error), np.float32(value_error)

    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, value = super().run(observations)
        if np.abs(observations).max() > 1e5:
            probs = probs + self.probs_error
        if not observations.any():
            value = value + self.value_error
        return probs, value


def test_verify_names_the_case_furthest_beyond_its_tolerance() -> None:
    inputs = verification_inputs((4, 2), seed=0)
    expected = {case: FakeRunner().run(x) for case, x in inputs.items()}
    # probs at 0.2 of its tolerance, value at 0.5 of its: the value's case is the worst
    within = verify(CaseErrorRunner(2e-5, 5e-4), inputs, expected, FP32)
    assert within.within_tolerance and within.detail == ""
    assert within.worst_case == "zeros"
    assert within.max_abs_error_probs == pytest.approx(2e-5, rel=0.05)
    assert within.max_abs_error_value == pytest.approx(5e-4, rel=0.05)
    # probs at twice its tolerance: now the probs' case is the worst, and the detail says so
    beyond = verify(CaseErrorRunner(2e-4, 5e-4), inputs, expected, FP32)
    assert not beyond.within_tolerance and beyond.worst_case == "large_1e6"
    assert beyond.detail == "probs error 0.0002 > 0.0001 (large_1e6)"


def test_verify_rejects_wrong_shapes_and_non_finite_outputs() -> None:
    inputs = verification_inputs((4, 2), seed=0)
    expected = {case: FakeRunner().run(x) for case, x in inputs.items()}
    with pytest.raises(VerificationError, match=r"value is float32 of shape \(1,\)"):
        verify(FakeRunner(shape_bug=True), inputs, expected, FP32)
    with pytest.raises(VerificationError, match="non-finite"):
        verify(FakeRunner(float("nan")), inputs, expected, FP32)


def test_verification_inputs_are_fixed_by_the_seed() -> None:
    a, b = verification_inputs((60, 7), 5), verification_inputs((60, 7), 5)
    assert a.keys() == b.keys() and {"zeros", "large_1e3", "large_1e6", "batch32"} <= a.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(x.dtype == np.float32 and x.flags.c_contiguous for x in a.values())


# --- measurement, with a fake clock ----------------------------------------------------


class FakeClock:
    """Each runner call advances time by the runner's cost; reading the clock is free."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


class TimedRunner:
    def __init__(self, clock: FakeClock, costs_ns: Iterator[int], log: list[str], name: str):
        self.clock, self.costs_ns, self.log, self.name = clock, costs_ns, log, name

    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.clock.now_ns += next(self.costs_ns)
        self.log.append(self.name)
        return np.zeros((1, 3, 3), np.float32), np.zeros((1, 1), np.float32)


def constant(ns: int) -> Iterator[int]:
    while True:
        yield ns


def test_interleaved_timing_counts_every_call_and_rotates_order() -> None:
    clock, log = FakeClock(), []
    runners = {
        "a": TimedRunner(clock, constant(1000), log, "a"),
        "b": TimedRunner(clock, constant(3000), log, "b"),
    }
    x = np.zeros((1, 2, 2), np.float32)
    samples = time_interleaved(runners, x, calls=101, warmup_calls=5, rounds=4, clock=clock)
    assert samples["a"].size == 101 and samples["b"].size == 101
    assert set(samples["a"].tolist()) == {1000} and set(samples["b"].tolist()) == {3000}
    timed_log = log[10:]  # after warm-up: rounds alternate which runner goes first
    firsts = [timed_log[0]]
    pos = 0
    for n in (26, 25, 25):
        pos += 2 * (20 + n)  # re-warm + timed calls of both runners in a round
        firsts.append(timed_log[pos])
    assert firsts == ["a", "b", "a", "b"]


def test_nothing_to_time_when_every_variant_failed() -> None:
    x = np.zeros((1, 2, 2), np.float32)
    assert time_interleaved({}, x, calls=10, warmup_calls=1, rounds=2) == {}
    assert measure({}, x, {1: x}, calls=10, calls_batch32=10, warmup_calls=1, rounds=2) == {}


def test_percentiles_and_throughput_from_known_samples() -> None:
    samples = np.array([1000] * 980 + [5000] * 19 + [100_000], dtype=np.int64)
    latency = latency_percentiles(samples)
    assert latency.p50 == 1.0
    assert latency.p99 == pytest.approx(5.0)
    assert latency.p99_9 > 5.0
    clock, log = FakeClock(), []
    runner = TimedRunner(clock, constant(2000), log, "r")
    result = measure(
        {"r": runner},
        np.zeros((1, 2, 2), np.float32),
        {32: np.zeros((32, 2, 2), np.float32), 256: [np.zeros((256, 2, 2), np.float32)] * 2},
        calls=50,
        calls_batch32=20,
        warmup_calls=0,
        rounds=2,
        clock=clock,
    )["r"]
    assert result.calls_per_s == pytest.approx(500_000)
    assert result.per_sample_us_batch32 == pytest.approx(2.0 / 32, rel=1e-3)
    # rounded to 0.1 ns per sample
    assert result.per_sample_us == {"32": 0.0625, "256": pytest.approx(2.0 / 256, abs=1e-4)}


# --- capture ---------------------------------------------------------------------------


def test_capture_records_warnings_and_descriptor_level_output(capfd: pytest.CaptureFixture) -> None:
    with captured_output() as captured:
        warnings.warn("old api", DeprecationWarning, stacklevel=1)
        os.write(2, b"native noise\n")
        print("python noise")
    assert captured.warnings == ["DeprecationWarning: old api"]
    assert "native noise" in captured.output_lines and "python noise" in captured.output_lines
    out, err = capfd.readouterr()
    assert "noise" not in out + err


# --- command line ----------------------------------------------------------------------


def test_cli_builds_one_config_with_prerequisites() -> None:
    args = build_parser().parse_args(
        [
            "--out",
            "x",
            "--models",
            "strategic",
            "--variants",
            "onnx_int8",
            "--tol-fp32",
            "1e-5,1e-4",
            "--calls",
            "50",
            "--checkpoint",
            "strategic=w.safetensors",
            "--fail-variant",
            "onnx_fp32",
        ]
    )
    config = config_from_args(args)
    assert config.models == ("strategic",)
    assert config.tolerance_fp32 == Tolerance(1e-5, 1e-4)
    assert config.checkpoints == {"strategic": Path("w.safetensors")}
    assert config.fail_variants == {VariantName.ONNX_FP32}
    assert config.out_dir == Path("x") and config.calls == 50
    assert config.warmup_calls == 50  # capped at --calls when fewer than the default 1,000
    assert config.planned_variants() == (
        VariantName.EAGER_FP32,
        VariantName.ONNX_FP32,
        VariantName.ONNX_INT8,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tol-int8", "0.05"], "write PROBS,VALUE"),
        (["--models", "tactical,macro"], "unknown model(s) macro"),
        (["--variants", "tensorrt"], "choose from eager_fp32"),
        (["--checkpoint", "tactical"], "write MODEL=PATH"),
        (["--calls", "3"], "at least 10 calls"),
    ],
)
def test_cli_rejects_bad_arguments_with_what_to_write(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_config_validates_itself() -> None:
    with pytest.raises(ValueError, match="calls must be at least 10"):
        OptimizeConfig(calls=1)
    with pytest.raises(ValueError, match="tolerances must be positive"):
        OptimizeConfig(tolerance_fp32=Tolerance(0.0, 1.0))


# --- ONNX Runtime runner ---------------------------------------------------------------


class FakeSession:
    """The public surface of an InferenceSession, without the private binding."""

    def __init__(self, inputs: list[str], outputs: list[str]) -> None:
        self.inputs, self.outputs, self.calls = inputs, outputs, []

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in self.inputs]

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in self.outputs]

    def run(self, names: list[str], feed: dict[str, np.ndarray], options: object) -> list:
        self.calls.append((names, list(feed)))
        batch = feed["observation"].shape[0]
        return [np.zeros((batch, 3, 3), np.float32), np.zeros((batch, 1), np.float32)]


def test_ort_runner_uses_the_public_run_when_there_is_no_binding() -> None:
    session = FakeSession(["observation"], ["probs", "value"])
    probs, value = OrtRunner(session).run(np.zeros((2, 60, 7), np.float32))
    assert probs.shape == (2, 3, 3) and value.shape == (2, 1)
    assert session.calls == [(["probs", "value"], ["observation"])]


class FakeBinding:
    """The private ``_sess`` of an InferenceSession: a ``run`` without the feed checks."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], object]] = []

    def run(self, names: list[str], feed: dict[str, np.ndarray], options: object) -> list:
        self.calls.append((names, list(feed), options))
        batch = feed["observation"].shape[0]
        return [np.ones((batch, 3, 3), np.float32), np.ones((batch, 1), np.float32)]


def test_ort_runner_calls_the_binding_directly_with_options_prepared_once() -> None:
    session = FakeSession(["observation"], ["probs", "value"])
    session._sess = binding = FakeBinding()  # type: ignore[attr-defined]
    runner = OrtRunner(session)
    for _ in range(2):
        probs, value = runner.run(np.zeros((2, 60, 7), np.float32))
        assert probs.shape == (2, 3, 3) and value.shape == (2, 1) and probs[0, 0, 0] == 1.0
    assert session.calls == []  # the public run, with its per-call checks, is skipped
    assert [call[:2] for call in binding.calls] == [(["probs", "value"], ["observation"])] * 2
    assert binding.calls[0][2] is binding.calls[1][2]


def test_ort_runner_refuses_a_graph_with_other_names() -> None:
    with pytest.raises(ValueError, match=r"inputs \['x'\] and outputs"):
        OrtRunner(FakeSession(["x"], ["probs", "value"]))


def test_capture_strips_log_prefixes_so_notes_are_stable() -> None:
    with captured_output() as captured:
        os.write(2, b"W1124 06:39:35.132000 9820 torch/onnx/_registration.py:107] no vision\n")
    assert captured.output_lines == ["no vision"]
