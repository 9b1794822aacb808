"""The contract's decision rule: the weighted mean of the agents' probabilities.

Every runtime produces per-agent probabilities; this is the one place that turns them into
``action`` and ``confidence``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.spec import ModelSpec


class EnsembleRule:
    """Weights are normalised once here so that the hot path is one small matmul."""

    __slots__ = ("spec", "weights")

    def __init__(self, spec: ModelSpec, weights: Sequence[float] | None = None) -> None:
        n = len(spec.agents)
        if weights is None:
            weights = [1.0] * n
        w = np.asarray(list(weights), dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(
                f"{spec.name}: expected {n} agent weights (one each for "
                f"{', '.join(spec.agents)}), got {len(w)}"
            )
        if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(
                f"{spec.name}: agent weights must be finite, non-negative and not all zero; "
                f"got {list(weights)}"
            )
        self.spec = spec
        self.weights = (w / w.sum()).astype(np.float32)

    def mean(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` (batch, agents, 3) -> the weighted mean (batch, 3)."""
        return self.weights @ probs  # (agents,) @ (batch, agents, 3) -> (batch, 3)

    @property
    def equal_weights(self) -> bool:
        return bool(np.all(self.weights == self.weights[0]))

    def decide(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``probs`` is (batch, agents, 3); returns (action index, confidence) per row."""
        mean = self.mean(probs)
        action = mean.argmax(axis=1)
        confidence = mean[np.arange(mean.shape[0]), action]
        return action, confidence


def decision_margin(mean: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 of each row of ``mean`` (batch, actions): how far from a tie the
    decision is."""
    top = np.partition(mean, -2, axis=1)
    return top[:, -1] - top[:, -2]
