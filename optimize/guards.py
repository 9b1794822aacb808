"""int8 behind two guards, so that its decisions are float32's where it matters.

- Range guard: static int8 fixes its input scale from the calibration set; a row with any
  value outside that range would be clipped, so it runs on the float32 variant instead.
- Margin guard: a row whose int8 decision margin (top-1 minus top-2 of the ensemble mean)
  is below the threshold (twice the measured error bound of that mean, with room to spare)
  could be a different decision in float32, so it is recomputed in float32.

Ordinary, clear-cut rows cost int8; outliers and near-ties get float32's answer. Both kinds
of fallback are counted per runner (``fallbacks()``) for the server to report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from models.ensemble import EnsembleRule, decision_margin
from models.spec import ACTIONS
from optimize.manifest import Guard, Runtime
from optimize.runners import (
    OBSERVATION_INPUT,
    OUTPUT_NAMES,
    Runner,
    direct_run,
    open_runner,
    open_session,
)

# The threshold is this many times twice the largest error seen on the verification sets:
# rows beyond the sets' worst case must not flip a decision that the guard let through.
MARGIN_SAFETY = 1.25


def margin_threshold(error_bound: float) -> float:
    """A decision can flip only if float32's and int8's means differ by half the margin or
    more in two actions at once, so twice the error bound suffices; with room to spare."""
    return round(2.0 * MARGIN_SAFETY * error_bound, 6)


def threshold_for(guard: Guard, rule: EnsembleRule) -> float:
    """The measured bound of the equal-weight mean holds for equal weights only; any other
    weighted mean is bounded by the largest error of one agent's probabilities."""
    return guard.margin_threshold if rule.equal_weights else guard.margin_threshold_any_weights


@dataclass
class FallbackCounts:
    range: int = 0
    margin: int = 0
    rows: int = 0  # every row the guarded runner answered

    def as_dict(self) -> dict[str, int]:
        return {"range": self.range, "margin": self.margin}

    def reset(self) -> None:
        self.range = self.margin = self.rows = 0


class GuardedRunner:
    """``run`` as any runner; int8 for in-range, clear-cut rows, float32 for the rest.

    ``rule`` is the server's ensemble rule (agent weights): the margin is that of the
    decision the server will take. With unequal weights the threshold that bounds any
    weighted mean is used."""

    __slots__ = ("_fp32", "_high", "_int8", "_low", "_rule", "_threshold", "counts")

    def __init__(self, int8: Runner, fp32: Runner, guard: Guard, rule: EnsembleRule) -> None:
        self._int8 = int8
        self._fp32 = fp32
        self._low = np.float32(guard.input_low)
        self._high = np.float32(guard.input_high)
        self._rule = rule
        self._threshold = threshold_for(guard, rule)
        self.counts = FallbackCounts()

    def fallbacks(self) -> dict[str, int]:
        """Rows sent to float32 since loading: {"range": n, "margin": n}."""
        return self.counts.as_dict()

    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = observations.shape[0]
        flat = observations.reshape(batch, -1)
        out_of_range = (flat.min(axis=1) < self._low) | (flat.max(axis=1) > self._high)
        n_out = int(np.count_nonzero(out_of_range))
        self.counts.rows += batch
        self.counts.range += n_out
        if n_out == batch:
            return self._fp32.run(observations)
        if n_out:
            in_range = np.flatnonzero(~out_of_range)
            probs_q, value_q = self._int8.run(observations[in_range])
        else:
            in_range = None
            probs_q, value_q = self._int8.run(observations)
        near_tie = decision_margin(self._rule.mean(probs_q)) < self._threshold
        n_near = int(np.count_nonzero(near_tie))
        self.counts.margin += n_near
        if not (n_out or n_near):
            return probs_q, value_q
        return self._merge(observations, out_of_range, in_range, near_tie, probs_q, value_q)

    def _merge(
        self,
        observations: np.ndarray,
        out_of_range: np.ndarray,
        in_range: np.ndarray | None,
        near_tie: np.ndarray,
        probs_q: np.ndarray,
        value_q: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """int8's rows where it holds, one float32 call for every other row."""
        rows_q = np.arange(observations.shape[0]) if in_range is None else in_range
        redo = out_of_range.copy()
        redo[rows_q[near_tie]] = True
        redo_rows = np.flatnonzero(redo)
        probs_f, value_f = self._fp32.run(observations[redo_rows])
        probs = np.empty((observations.shape[0], *probs_q.shape[1:]), dtype=np.float32)
        value = np.empty((observations.shape[0], value_q.shape[1]), dtype=np.float32)
        probs[rows_q], value[rows_q] = probs_q, value_q
        probs[redo_rows], value[redo_rows] = probs_f, value_f
        return probs, value


GUARD_OUTPUTS = ("out_of_range", "recomputed")  # per row, bool


def _rename_input(nodes: list[Any], old: str, new: str) -> list[Any]:
    for n in nodes:
        n.input[:] = [new if name == old else name for name in n.input]
    return nodes


def compose_guarded_onnx(
    int8_model: bytes, fp32_model: bytes, guard: Guard, weights: np.ndarray, threshold: float
) -> bytes:
    """One ONNX graph doing what ``GuardedRunner`` does without leaving ONNX Runtime: int8
    for every row; per-row range and margin checks; the rows failing either gathered, run
    through the float32 graph and scattered back over int8's outputs; and both per-row masks
    as outputs for counting. At batch 32 the same guards in numpy, with a second session
    call, cost more than int8 saves; here each extra node costs about a microsecond, so the
    graph is kept to the fewest nodes."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    if len(ACTIONS) != 3:
        raise ValueError("the guard's margin nodes assume three actions")
    q = compose.add_prefix(onnx.load_from_string(int8_model), "q/")
    f = compose.add_prefix(onnx.load_from_string(fp32_model), "f/")
    x = OBSERVATION_INPUT
    column = np.asarray(weights, dtype=np.float32).reshape(-1, 1)
    consts = {
        "g/flat_shape": np.array([0, -1], dtype=np.int64),
        "g/axis1": np.array([1], dtype=np.int64),
        "g/low": np.array(guard.input_low, dtype=np.float32),
        "g/high": np.array(guard.input_high, dtype=np.float32),
        "g/threshold": np.array(threshold, dtype=np.float32),
        # (batch, agents*3) @ this = the weighted mean (batch, 3)
        "g/mean_matrix": np.kron(column, np.eye(len(ACTIONS), dtype=np.float32)),
    }
    node = helper.make_node
    nodes = [
        node("Reshape", [x, "g/flat_shape"], ["g/flat"]),
        node("ReduceMin", ["g/flat", "g/axis1"], ["g/row_min"], keepdims=0),
        node("ReduceMax", ["g/flat", "g/axis1"], ["g/row_max"], keepdims=0),
        node("Less", ["g/row_min", "g/low"], ["g/below"]),
        node("Greater", ["g/row_max", "g/high"], ["g/above"]),
        node("Or", ["g/below", "g/above"], [GUARD_OUTPUTS[0]]),
        *_rename_input(list(q.graph.node), "q/" + x, x),
        node("Reshape", ["q/probs", "g/flat_shape"], ["g/probs_flat"]),
        node("MatMul", ["g/probs_flat", "g/mean_matrix"], ["g/mean"]),
        # With three actions, top-1 minus top-2 is sum(max - mean) - max(max - mean): the
        # sum holds 0 (the top), the margin and the largest gap. Cheaper than TopK here.
        node("ReduceMax", ["g/mean", "g/axis1"], ["g/top"], keepdims=1),
        node("Sub", ["g/top", "g/mean"], ["g/gaps"]),
        node("ReduceSum", ["g/gaps", "g/axis1"], ["g/gap_sum"], keepdims=0),
        node("ReduceMax", ["g/gaps", "g/axis1"], ["g/gap_max"], keepdims=0),
        node("Sub", ["g/gap_sum", "g/gap_max"], ["g/margin"]),
        node("Less", ["g/margin", "g/threshold"], ["g/near_tie"]),
        node("Or", [GUARD_OUTPUTS[0], "g/near_tie"], [GUARD_OUTPUTS[1]]),
        node("NonZero", [GUARD_OUTPUTS[1]], ["g/redo_nz"]),
        node("Transpose", ["g/redo_nz"], ["g/redo_index"], perm=[1, 0]),
        node("GatherND", [x, "g/redo_index"], ["f/" + x]),
        *f.graph.node,
        node("ScatterND", ["q/probs", "g/redo_index", "f/probs"], ["probs"]),
        node("ScatterND", ["q/value", "g/redo_index", "f/value"], ["value"]),
    ]
    initializers = [
        *q.graph.initializer,
        *f.graph.initializer,
        *(numpy_helper.from_array(v, name) for name, v in consts.items()),
    ]
    fp32_graph = onnx.load_from_string(fp32_model).graph
    outputs = [*fp32_graph.output] + [
        helper.make_tensor_value_info(name, TensorProto.BOOL, ["batch"]) for name in GUARD_OUTPUTS
    ]
    graph = helper.make_graph(nodes, "guarded_int8", [*fp32_graph.input], outputs, initializers)
    model = helper.make_model(graph, opset_imports=list(q.opset_import))
    model.ir_version = q.ir_version
    onnx.checker.check_model(model)
    return model.SerializeToString()


class GuardedOrtRunner:
    """Runs the graph of ``compose_guarded_onnx``: ``run`` as any runner, and the guard's
    per-row masks added up for ``fallbacks()``."""

    __slots__ = ("_count", "_feed_name", "_options", "_outputs", "_run", "counts", "session")

    def __init__(self, session: Any) -> None:
        import onnxruntime as ort

        self.session = session
        self._feed_name = OBSERVATION_INPUT
        self._outputs = [*OUTPUT_NAMES, *GUARD_OUTPUTS]
        self._options = ort.RunOptions()
        self._run = direct_run(session)
        self._count = np.count_nonzero
        self.counts = FallbackCounts()

    def fallbacks(self) -> dict[str, int]:
        return self.counts.as_dict()

    def run(self, observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, value, out_of_range, recomputed = self._run(
            self._outputs, {self._feed_name: observations}, self._options
        )
        n_range = int(self._count(out_of_range))
        counts = self.counts
        counts.rows += len(out_of_range)
        counts.range += n_range
        counts.margin += int(self._count(recomputed)) - n_range
        return probs, value


GuardedRunnerType = GuardedRunner | GuardedOrtRunner


def open_guarded(
    runtime: Runtime,
    int8: bytes,
    fp32: bytes,
    guard: Guard,
    rule: EnsembleRule,
    *,
    threads: int,
) -> GuardedRunnerType:
    """int8 behind its guards, from the two artifacts' (checked) bytes: ONNX as one composed
    session, other runtimes as two runners and numpy bookkeeping."""
    if runtime == Runtime.ONNXRUNTIME:
        composed = compose_guarded_onnx(int8, fp32, guard, rule.weights, threshold_for(guard, rule))
        return GuardedOrtRunner(open_session(composed, threads=threads))
    model = rule.spec.name
    return GuardedRunner(
        open_runner(runtime, int8, model=model, threads=threads),
        open_runner(runtime, fp32, model=model, threads=threads),
        guard,
        rule,
    )


class ServedRunner:
    """What ``load_served`` hands the server: batches of at least ``min_rows`` rows go to
    the guarded int8 runner, smaller ones to the float32 selection. ``run`` is bound once
    (no dispatch at all when there is no int8 for batches)."""

    __slots__ = ("_guarded", "min_rows", "run")

    def __init__(
        self,
        single: Runner,
        guarded: GuardedRunnerType | None = None,
        min_rows: int | None = None,
    ) -> None:
        self._guarded = guarded
        self.min_rows = min_rows
        if guarded is None or min_rows is None:
            self.run = single.run
            return
        run_single, run_batch = single.run, guarded.run

        def run(observations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if observations.shape[0] >= min_rows:
                return run_batch(observations)
            return run_single(observations)

        self.run = run

    def fallbacks(self) -> dict[str, int]:
        """Rows the guards sent to float32 since loading or the last reset (zeros without
        int8 for batches)."""
        if self._guarded is None:
            return FallbackCounts().as_dict()
        return self._guarded.fallbacks()

    def reset_counts(self) -> None:
        """Zero the counts, e.g. after the server's own warm-up, which runs batches too."""
        if self._guarded is not None:
            self._guarded.counts.reset()

    def int8_rows(self) -> int:
        """Rows that went to the guarded int8 runner (answered by int8 or its fallbacks)."""
        return 0 if self._guarded is None else self._guarded.counts.rows
