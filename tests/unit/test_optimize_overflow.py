"""Verification reaches float32's maximum: a variant must run there and answer float32 of
the right shape; NaN or infinity is allowed (the server refuses such a row with 422)."""

from __future__ import annotations

import numpy as np
import pytest

from optimize.manifest import Tolerance
from optimize.verify import OVERFLOW, VerificationError, verification_inputs, verify

SHAPE = (4, 3)
TOLERANCE = Tolerance(probs=5e-4, value=2e-3)


class Echo:
    """A runner: probs and value from the mean of each observation, so the reference and a
    variant agree wherever the inputs are ordinary."""

    def __init__(self, on_huge: str = "same") -> None:
        self.on_huge = on_huge

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = x.shape[0]
        huge = np.abs(x).max() > 1e29
        probs = np.full((rows, 3, 3), 1 / 3, np.float32)
        value = x.reshape(rows, -1).mean(axis=1, keepdims=True).astype(np.float32)
        if huge and self.on_huge == "nan":
            probs[:] = np.nan
        if huge and self.on_huge == "float64":
            return probs.astype(np.float64), value
        return probs, value


def test_the_cases_reach_float32_maximum() -> None:
    inputs = verification_inputs(SHAPE, seed=1)
    overflow = {k: v for k, v in inputs.items() if k.startswith(OVERFLOW)}
    assert max(float(np.abs(v).max()) for v in overflow.values()) == np.finfo(np.float32).max
    assert all(np.isfinite(v).all() for v in inputs.values()), "inputs stay finite"


def test_non_finite_answers_near_the_maximum_pass_and_other_cases_are_compared() -> None:
    inputs = verification_inputs(SHAPE, seed=1)
    reference = Echo()
    expected = {case: reference.run(x) for case, x in inputs.items()}
    checked = verify(Echo(on_huge="nan"), inputs, expected, TOLERANCE)
    assert checked.within_tolerance and not checked.worst_case.startswith(OVERFLOW)


def test_a_wrong_dtype_near_the_maximum_fails() -> None:
    inputs = verification_inputs(SHAPE, seed=1)
    expected = {case: Echo().run(x) for case, x in inputs.items()}
    with pytest.raises(VerificationError, match=f"{OVERFLOW}.*float64"):
        verify(Echo(on_huge="float64"), inputs, expected, TOLERANCE)
