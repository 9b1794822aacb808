"""Agreement with the float32 reference on a fixed set of observations.

The set covers ordinary inputs, all zeros, extreme magnitudes (which saturate the clamped
hidden units and stress int8's per-tensor activation scale), a full batch, and magnitudes up
to float32's maximum, where the float32 reference itself overflows on some rows. On those
``overflow_`` cases a variant must run and answer float32 of the right shape, and may answer
NaN or infinity: the server refuses such a row (422 ``non_finite_output``, never a decision
without numbers), whatever the runtime. Their values are not compared: near 1e38 the
runtimes' different but equally valid float32 rounding decides which rows overflow (of 16
rows at +-2e38, ONNX Runtime overflowed on 2 that PyTorch computed and computed others
PyTorch overflowed on), and no z-scored input comes near.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from optimize.manifest import Tolerance
from optimize.runners import Runner

Outputs = tuple[np.ndarray, np.ndarray]
OVERFLOW = "overflow_"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class VerificationError(Exception):
    """The variant produced outputs of the wrong shape, dtype, or non-finite values."""


@dataclass(frozen=True)
class Verification:
    max_abs_error_probs: float
    max_abs_error_value: float
    worst_case: str
    within_tolerance: bool
    detail: str  # why it is out of tolerance, empty when within


def verification_inputs(observation_shape: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))

    def normal(batch: int, scale: float = 1.0) -> np.ndarray:
        return rng.standard_normal((batch, *observation_shape)) * scale

    # 64 observations per magnitude: with a handful, int8 variants passed or failed by luck.
    cases = {
        "normal_batch1": normal(1),
        "normal_batch64": normal(64),
        "zeros": np.zeros((1, *observation_shape)),
        "scaled_1e1": normal(64, 1e1),
        "large_1e3": normal(64, 1e3),
        "large_1e6": normal(64, 1e6),
        "positive_uniform": rng.uniform(0.0, 1.0, (32, *observation_shape)),
        "batch32": normal(32),
        f"{OVERFLOW}1e30": normal(16, 1e30),
        f"{OVERFLOW}2e38": rng.choice([-2e38, 2e38], (16, *observation_shape)),
        f"{OVERFLOW}max": rng.choice([-1.0, 1.0], (16, *observation_shape)) * _FLOAT32_MAX,
    }
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in cases.items()}


def reference_outputs(
    reference: Callable[[np.ndarray], Outputs], inputs: Mapping[str, np.ndarray]
) -> dict[str, Outputs]:
    return {case: reference(x) for case, x in inputs.items()}


def _check_outputs(case: str, got: Outputs, expected: Outputs) -> None:
    for label, g, e in zip(("probs", "value"), got, expected, strict=True):
        if not isinstance(g, np.ndarray) or g.shape != e.shape or g.dtype != np.float32:
            shape = getattr(g, "shape", None)
            dtype = getattr(g, "dtype", type(g).__name__)
            raise VerificationError(
                f"{case}: {label} is {dtype} of shape {shape}, expected float32 {e.shape}"
            )
        if not case.startswith(OVERFLOW) and not np.all(np.isfinite(g)):
            raise VerificationError(f"{case}: {label} has non-finite values")


def verify(
    runner: Runner,
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, Outputs],
    tolerance: Tolerance,
) -> Verification:
    worst_probs, worst_value = (0.0, ""), (0.0, "")
    for case, x in inputs.items():
        got = runner.run(x)
        want = expected[case]
        _check_outputs(case, got, want)
        if case.startswith(OVERFLOW):
            continue
        err_probs = float(np.max(np.abs(got[0] - want[0])))
        err_value = float(np.max(np.abs(got[1] - want[1])))
        worst_probs = max(worst_probs, (err_probs, case))
        worst_value = max(worst_value, (err_value, case))
    problems = [
        f"{label} error {error:.3g} > {limit:g} ({case})"
        for label, (error, case), limit in (
            ("probs", worst_probs, tolerance.probs),
            ("value", worst_value, tolerance.value),
        )
        if error > limit
    ]
    # The case named is where the error was furthest beyond (or closest to) its tolerance.
    worst_case = max(
        (worst_probs[0] / tolerance.probs, worst_probs[1]),
        (worst_value[0] / tolerance.value, worst_value[1]),
    )[1]
    return Verification(
        max_abs_error_probs=worst_probs[0],
        max_abs_error_value=worst_value[0],
        worst_case=worst_case,
        within_tolerance=not problems,
        detail="; ".join(problems),
    )
