"""int8 that holds: the guards, eligibility, per-batch selection, held-out sets, and the
loader serving and re-checking what the optimizer recorded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import models
from models.ensemble import EnsembleRule, decision_margin
from optimize.config import OptimizeConfig
from optimize.fidelity import (
    CLEAR_MARGIN,
    MIN_AGREEMENT,
    calibration_set,
    eligibility,
    realistic_sets,
)
from optimize.guards import GuardedRunner, margin_threshold, open_guarded
from optimize.host import cpu_has_vnni
from optimize.loader import (
    load_manifest,
    load_served,
    reproduce_fidelity,
)
from optimize.manifest import (
    Fidelity,
    FidelityMode,
    Guard,
    LatencyUs,
    Precision,
    Runtime,
    Status,
    Tolerance,
    VariantName,
    VariantRecord,
)
from optimize.pipeline import run_optimizer
from optimize.runners import TorchRunner, open_onnx
from optimize.selection import select_batch_variant, select_variant
from optimize.table import markdown_table

INT8_TOL = Tolerance(probs=0.05, value=0.15)
SPEC = models.get_spec("tactical")
SHAPE = SPEC.observation_shape
GUARD = Guard(
    fallback_variant=VariantName.ONNX_FP32,
    input_low=-4.0,
    input_high=4.0,
    calibration_rows=512,
    mean_error_bound=0.01,
    agent_error_bound=0.02,
    margin_threshold=0.025,
    margin_threshold_any_weights=0.05,
)


# --- the guards, with fakes -------------------------------------------------------------


class FakeRunner:
    """Answers every row with ``probs`` (the same for each agent), except rows whose first
    value is below ``near_tie_below``, which get a near-tie; records its calls."""

    def __init__(
        self,
        tag: float,
        near_tie_below: float | None = None,
        probs: tuple[float, float, float] = (0.1, 0.2, 0.7),
    ) -> None:
        self.tag = tag
        self.near_tie_below = near_tie_below
        self.probs = np.array(probs, np.float32)
        self.calls: list[int] = []

    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(observations))
        probs = np.tile(self.probs, (len(observations), 3, 1))
        if self.near_tie_below is not None:
            tie = observations[:, 0, 0] < self.near_tie_below
            probs[tie] = np.array([0.1, 0.44, 0.46], np.float32)
        value = np.full((len(observations), 1), self.tag, np.float32)
        return probs, value


def rows(*first_values: float, fill: float = 0.5) -> np.ndarray:
    x = np.full((len(first_values), *SHAPE), fill, np.float32)
    x[:, 0, 0] = first_values
    return x


def test_range_guard_sends_out_of_range_rows_to_float32_and_counts_them() -> None:
    int8, fp32 = FakeRunner(8.0), FakeRunner(32.0)
    guarded = GuardedRunner(int8, fp32, GUARD, EnsembleRule(SPEC))
    _, value = guarded.run(rows(0.0, 4.5, -1.0, -4.01, 4.0))
    assert value[:, 0].tolist() == [8.0, 32.0, 8.0, 32.0, 8.0]  # 4.0 itself is in range
    assert int8.calls == [3] and fp32.calls == [2]  # each runtime once, on its rows only
    assert guarded.fallbacks() == {"range": 2, "margin": 0}
    _, value = guarded.run(rows(9.0, -9.0))  # nothing in range: int8 not called at all
    assert value[:, 0].tolist() == [32.0, 32.0] and int8.calls == [3]
    assert guarded.fallbacks() == {"range": 4, "margin": 0}


def test_margin_guard_recomputes_near_ties_in_float32_and_counts_them() -> None:
    int8, fp32 = FakeRunner(8.0, near_tie_below=-2.0), FakeRunner(32.0)
    guarded = GuardedRunner(int8, fp32, GUARD, EnsembleRule(SPEC))
    # margin 0.02 < 0.025 for rows starting below -2; the out-of-range row counts as range
    probs, value = guarded.run(rows(-3.0, 0.0, -2.5, 3.0, 7.0))
    assert value[:, 0].tolist() == [32.0, 8.0, 32.0, 8.0, 32.0]
    assert fp32.calls == [3]  # both kinds of fallback in one float32 call
    assert guarded.fallbacks() == {"range": 1, "margin": 2}
    assert np.allclose(probs[1], [0.1, 0.2, 0.7])


def test_margin_guard_uses_the_any_weights_bound_for_unequal_weights() -> None:
    # a 0.04 margin clears the equal-weight threshold (0.025) but not the any-weights one
    close = (0.1, 0.43, 0.47)
    for weights, expected in ((None, 0), ([1, 1, 2], 1)):
        int8, fp32 = FakeRunner(8.0, probs=close), FakeRunner(32.0)
        guarded = GuardedRunner(int8, fp32, GUARD, EnsembleRule(SPEC, weights))
        guarded.run(rows(0.0))
        assert guarded.fallbacks() == {"range": 0, "margin": expected}


def test_margin_threshold_is_twice_the_bound_with_room() -> None:
    assert margin_threshold(0.01) == pytest.approx(0.025)
    assert decision_margin(np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]])).tolist() == [
        pytest.approx(0.2),
        0.0,
    ]


# --- eligibility and selection ----------------------------------------------------------


def figure(case: str, **changes: object) -> Fidelity:
    base = Fidelity(
        case=case,
        mode=FidelityMode.SERVED,
        batch=32,
        rows=10_000,
        max_abs_error_probs=0.02,
        p99_9_abs_error_probs=0.015,
        max_abs_error_value=0.07,
        p99_9_abs_error_value=0.05,
        agreement=1.0,
        disagreements=0,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"max_abs_error_probs": 0.06}, "probs error 0.06 > 0.05 (student_t3, batch 32)"),
        ({"max_abs_error_value": 0.2}, "value error 0.2 > 0.15 (student_t3, batch 32)"),
        ({"agreement": 0.9985, "disagreements": 15}, "agreement 99.85% < 99.9%"),
        (
            {"agreement": 0.9999, "disagreements": 1, "max_disagreeing_margin": 0.06},
            f"float32's margin is 0.060 >= {CLEAR_MARGIN}",
        ),
    ],
)
def test_a_variant_over_tolerance_or_under_the_bars_is_not_eligible(
    changes: dict[str, object], reason: str
) -> None:
    figures = [figure("normal"), figure("student_t3", **changes)]
    eligible, why = eligibility(figures, INT8_TOL, True, None)
    assert not eligible and why.startswith("not eligible: ") and reason in why
    assert eligibility([figure("normal")], INT8_TOL, True, None)[0]
    assert MIN_AGREEMENT == 0.999


def int8_record(
    name: VariantName, p99: float, costs: dict[str, float], *, eligible: bool = True
) -> VariantRecord:
    return VariantRecord(
        name=name,
        runtime=Runtime.ONNXRUNTIME,
        precision=Precision.INT8 if "int8" in name else Precision.FP32,
        status=Status.OK,
        tolerance=INT8_TOL,
        file=f"tactical/{name}.onnx",
        sha256="cd" * 32,
        size_bytes=100,
        within_tolerance=True,
        latency_us=LatencyUs(p50=p99 / 2, p99=p99, p99_9=p99 * 2),
        per_sample_us=costs,
        guard=GUARD if "int8" in name else None,
        eligible=eligible,
        eligibility="eligible: ..." if eligible else "not eligible: agreement 99.40% < 99.9%",
    )


def test_an_ineligible_int8_variant_is_never_selected_even_when_fastest() -> None:
    fp32 = int8_record(VariantName.ONNX_FP32, 10.0, {"8": 3.0, "32": 2.0, "256": 2.0})
    fast = int8_record(VariantName.ONNX_INT8_STATIC, 2.0, {"8": 0.1, "32": 0.1, "256": 0.1})
    bad = dataclasses.replace(fast, eligible=False, eligibility="not eligible: agreement")
    selected, reason = select_variant([fp32, bad])
    assert selected == VariantName.ONNX_FP32
    assert "onnx_int8_static excluded: not eligible: agreement" in reason
    assert select_batch_variant([fp32, bad], selected)[:2] == (None, None)
    over = dataclasses.replace(fast, within_tolerance=False, tolerance_detail="probs 0.9")
    assert select_variant([fp32, over])[0] == VariantName.ONNX_FP32
    assert select_batch_variant([fp32, over], selected)[:2] == (None, None)


def test_int8_is_never_the_batch_1_variant_and_batches_start_where_it_wins() -> None:
    # The batch-1 variant runs unguarded: int8 there would answer rows beyond its range with
    # saturated, finite numbers (a fresh build once picked dynamic int8 on a noisy timing).
    fp32 = int8_record(VariantName.ONNX_FP32, 10.0, {"8": 3.0, "32": 2.2, "256": 2.0})
    int8 = int8_record(VariantName.ONNX_INT8_STATIC, 5.0, {"8": 4.0, "32": 1.9, "256": 1.2})
    dynamic = int8_record(VariantName.ONNX_INT8, 4.0, {"8": 4.0, "32": 2.0, "256": 1.9})
    selected, reason = select_variant([fp32, int8, dynamic])
    assert selected == VariantName.ONNX_FP32
    assert "onnx_int8_static serves batches only, behind its guards" in reason
    assert "onnx_int8 serves batches only, behind its guards" in reason
    variant, min_rows, why = select_batch_variant([fp32, int8], selected)
    assert (variant, min_rows) == (VariantName.ONNX_INT8_STATIC, 32)
    assert "batches of 32+ rows" in why
    close = dataclasses.replace(int8, per_sample_us={"8": 4.0, "32": 2.1, "256": 1.9})
    assert select_batch_variant([fp32, close], selected)[:2] == (None, None)


def test_static_int8_is_preferred_for_batches_within_noise_of_dynamic() -> None:
    fp32 = int8_record(VariantName.ONNX_FP32, 10.0, {"32": 2.2, "256": 2.0})
    dynamic = int8_record(VariantName.ONNX_INT8, 9.0, {"32": 1.0, "256": 1.0})
    static = int8_record(VariantName.ONNX_INT8_STATIC, 9.0, {"32": 1.05, "256": 1.05})
    assert select_batch_variant([fp32, dynamic, static], fp32.name)[0] == static.name


# --- the held-out sets ------------------------------------------------------------------


def row_digests(x: np.ndarray) -> set[bytes]:
    return {hashlib.sha256(row.tobytes()).digest() for row in x}


def test_calibration_and_verification_sets_do_not_overlap() -> None:
    sets = realistic_sets(SHAPE, seed=1234, rows=1000)
    calibration = calibration_set(SHAPE, seed=1234, rows=512)
    assert set(sets) == {"normal", "student_t3", "mixed_1e3"}
    assert len(sets["normal"]) == len(sets["student_t3"]) == 1000 and len(sets["mixed_1e3"]) == 200
    verified = set().union(*(row_digests(x) for x in sets.values()))
    assert len(verified) == 2200  # no row repeated within the sets either
    assert not verified & row_digests(calibration)
    again = realistic_sets(SHAPE, seed=1234, rows=1000)
    assert all(np.array_equal(again[k], sets[k]) for k in sets)


def test_vnni_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags\t\t: fpu sse avx2 avx512bw avx512_vnni\n")
    assert cpu_has_vnni(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags\t\t: fpu sse avx2 avx512bw\n")
    assert not cpu_has_vnni(cpuinfo)


# --- the real artifacts -----------------------------------------------------------------


def test_static_int8_keeps_the_output_head_in_float(artifacts_dir: Path) -> None:
    import onnx
    from onnx import numpy_helper

    record = load_manifest(artifacts_dir).model("tactical").variant("onnx_int8_static")
    graph = onnx.load(str(artifacts_dir / record.file)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    hidden, head = gemms[0], gemms[-1]
    assert initializers[head.input[1]].dtype == np.float32  # float weights, no DequantizeLinear
    producers = {o: n for n in graph.node for o in n.output}
    weight = producers[hidden.input[1]]
    assert weight.op_type == "DequantizeLinear"
    assert initializers[weight.input[0]].dtype == np.int8
    assert initializers[weight.input[1]].shape == (hidden_units(),)  # per output channel
    activation = producers[hidden.input[0]]
    assert activation.op_type == "DequantizeLinear"
    assert initializers[activation.input[2]].dtype == np.uint8  # unsigned activations
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in after(graph, head))
    assert any("reduce_range=" in note for note in record.notes)


def hidden_units() -> int:
    return len(SPEC.agents) * SPEC.hidden + SPEC.critic_hidden


def after(graph: object, node: object) -> list[object]:
    nodes = list(graph.node)  # type: ignore[attr-defined]
    return nodes[nodes.index(node) + 1 :]


def test_composed_onnx_guard_matches_the_numpy_guard(artifacts_dir: Path) -> None:
    manifest = load_manifest(artifacts_dir)
    record = manifest.model("tactical").variant("onnx_int8_static")
    assert record.guard is not None
    rule = EnsembleRule(SPEC)
    int8 = (artifacts_dir / record.file).read_bytes()
    fp32 = (artifacts_dir / manifest.model("tactical").variant("onnx_fp32").file).read_bytes()
    composed = open_guarded(Runtime.ONNXRUNTIME, int8, fp32, record.guard, rule, threads=1)
    numpy_guard = GuardedRunner(
        open_onnx(int8, threads=1), open_onnx(fp32, threads=1), record.guard, rule
    )
    rng = np.random.default_rng(42)
    x = np.ascontiguousarray(rng.standard_normal((600, *SHAPE)), dtype=np.float32)
    x[::7, 3, 2] = 50.0  # out of range
    for batch in (1, 5, 32, 600):
        for start in range(0, 600, batch):
            a, b = composed.run(x[start : start + batch]), numpy_guard.run(x[start : start + batch])
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert composed.fallbacks() == numpy_guard.fallbacks()
    assert composed.fallbacks()["range"] >= 4 * len(range(0, 600, 7))
    assert composed.fallbacks()["margin"] > 0


def forced_batch_plan(artifacts_dir: Path, copy: Path, min_rows: int) -> Path:
    """The artifacts with the manifest saying: static int8 for batches of ``min_rows``+,
    whatever this host measured (timing decides it in real runs; tests must not)."""
    shutil.copytree(artifacts_dir, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    for entry in raw["models"].values():
        entry["batch_variant"] = "onnx_int8_static"
        entry["batch_min_rows"] = min_rows
    (copy / "manifest.json").write_text(json.dumps(raw))
    return copy


def test_served_runner_takes_int8_for_batches_only(artifacts_dir: Path, tmp_path: Path) -> None:
    copy = forced_batch_plan(artifacts_dir, tmp_path / "artifacts", min_rows=8)
    served = load_served(copy, "tactical", warmup_calls=2)
    assert (served.batch_variant, served.batch_min_rows) == ("onnx_int8_static", 8)
    assert served.runner.fallbacks() == {"range": 0, "margin": 0}  # warm-up not counted
    x = np.ascontiguousarray(np.random.default_rng(3).standard_normal((8, *SHAPE)), np.float32)
    x[0, 0, 0] = 100.0
    served.runner.run(x[:7])
    assert served.runner.int8_rows() == 0
    served.runner.run(x)
    assert served.runner.int8_rows() == 8 and served.runner.fallbacks()["range"] == 1
    served.runner.reset_counts()
    assert served.runner.int8_rows() == 0 and served.runner.fallbacks() == {"range": 0, "margin": 0}


def served_decisions_check(runner: object, name: str, batch: int) -> dict[str, float]:
    """2,000 standard-normal and 2,000 Student-t(3) rows never seen by the optimizer."""
    spec = models.get_spec(name)
    rng = np.random.default_rng(20261201)
    reference = TorchRunner(models.build_default(name))
    rule = EnsembleRule(spec)
    results = {}
    for case, x in (
        ("normal", rng.standard_normal((2000, *spec.observation_shape))),
        ("student_t3", rng.standard_t(3, (2000, *spec.observation_shape))),
    ):
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = [runner.run(x[i : i + batch]) for i in range(0, len(x), batch)]  # type: ignore[attr-defined]
        probs = np.concatenate([p for p, _ in parts])
        expected, _ = reference.run(x)
        agree = rule.decide(probs)[0] == rule.decide(expected)[0]
        results[case] = float(agree.mean())
        results[f"{case}_err"] = float(np.abs(probs - expected).max())
    return results


@pytest.mark.parametrize("name", ["tactical", "strategic"])
def test_served_int8_decisions_agree_with_float32_on_fresh_rows(
    artifacts_dir: Path, tmp_path: Path, name: str
) -> None:
    copy = forced_batch_plan(artifacts_dir, tmp_path / "artifacts", min_rows=2)
    served = load_served(copy, name, warmup_calls=0)
    results = served_decisions_check(served.runner, name, batch=32)
    assert results["normal"] >= 0.999 and results["student_t3"] >= 0.999, results
    assert results["normal_err"] <= 0.05 and results["student_t3_err"] <= 0.05, results
    counts = served.runner.fallbacks()
    assert served.runner.int8_rows() == 4000
    assert counts["range"] >= 1900  # nearly every Student-t(3) row has a value beyond ±4.5
    assert counts["margin"] > 0


def test_the_loader_reproduces_the_recorded_fidelity(artifacts_dir: Path) -> None:
    manifest = load_manifest(artifacts_dir)
    for variant in ("onnx_int8_static", "onnx_fp32"):
        recorded = manifest.model("strategic").variant(variant).fidelity
        assert recorded, variant
        assert reproduce_fidelity(artifacts_dir, "strategic", variant) == recorded


def test_recorded_int8_figures_say_why_each_variant_is_eligible(artifacts_dir: Path) -> None:
    manifest = load_manifest(artifacts_dir)
    for name in ("tactical", "strategic"):
        entry = manifest.model(name)
        static = entry.variant("onnx_int8_static")
        assert static.eligible, static.eligibility
        assert static.guard is not None and static.guard.input_high > 3.0
        alone = static.fidelity_for("student_t3", FidelityMode.ALONE, 32)
        served = static.fidelity_for("student_t3", FidelityMode.SERVED, 32)
        assert alone is not None and served is not None
        assert alone.agreement < served.agreement == 1.0  # heavy tails saturate int8 alone
        assert served.fallback_range_rows >= 0.9 * served.rows
        for variant in entry.variants:
            assert variant.eligibility and variant.eligibility.startswith(
                "eligible" if variant.eligible else "not eligible"
            )


def test_the_table_shows_each_variant_and_what_it_serves(artifacts_dir: Path) -> None:
    manifest = load_manifest(artifacts_dir)
    lines = markdown_table(manifest).splitlines()
    assert len(lines) == 2 + sum(len(m.variants) for m in manifest.models.values())
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    for entry in manifest.models.values():
        selected = next(line for line in lines if f"| {entry.name} | {entry.selected} |" in line)
        assert "**" in selected
    agreement = manifest.model("tactical").variant("onnx_int8_static").agreement_summary()
    assert set(agreement) == {"normal", "student_t3", "mixed_1e3"}
    assert all(
        entry["batch_1"] >= 0.999 and entry["batch_32"] >= 0.999 for entry in agreement.values()
    )


def test_int8_for_batches_is_recorded_only_when_enabled(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    default = load_manifest(artifacts_dir)
    assert not default.settings.int8_batches
    for entry in default.models.values():
        assert entry.batch_variant is None and entry.batch_min_rows is None
        served = load_served(artifacts_dir, entry.name, warmup_calls=0)
        assert served.batch_variant is None and served.runner.fallbacks() == {
            "range": 0,
            "margin": 0,
        }
    config = OptimizeConfig(
        out_dir=tmp_path,
        models=("strategic",),
        variants=(VariantName.ONNX_FP32, VariantName.ONNX_INT8_STATIC),
        calls=200,
        warmup_calls=20,
        rounds=2,
        fidelity_rows=1000,
        int8_batches=True,
    )
    entry = run_optimizer(config).model("strategic")
    if entry.batch_variant is None:  # timing decides; then the reason says why not
        assert "not clearly cheaper" in entry.batch_selection_reason
    else:
        assert entry.batch_variant == VariantName.ONNX_INT8_STATIC
        assert entry.batch_min_rows in config.measured_batches
        served = load_served(tmp_path, "strategic", warmup_calls=0)
        assert served.batch_min_rows == entry.batch_min_rows
