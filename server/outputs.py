"""A row's outputs as the core carries them, whatever the wire format: twelve float32.

``probs`` (agents x actions, agent-major, the contract's order), the critic's ``value``, the
ensemble's ``confidence`` and its ``action`` index. Workers compute them, the cache stores
them, and each protocol's codec renders them at the edge.
"""

from __future__ import annotations

import numpy as np

from models.ensemble import EnsembleRule

FLOATS = 12
ROW_BYTES = FLOATS * 4
PROBS = slice(0, 9)
VALUE = 9
CONFIDENCE = 10
ACTION = 11


def row_outputs(
    probs: np.ndarray, value: np.ndarray, rule: EnsembleRule
) -> tuple[np.ndarray, np.ndarray]:
    """(rows x 12 float32 outputs, rows bools: every output finite). A row with a non-finite
    output is refused by the core, never answered."""
    rows = probs.shape[0]
    out = np.empty((rows, FLOATS), dtype=np.float32)
    out[:, PROBS] = probs.reshape(rows, 9)
    out[:, VALUE] = value[:, 0]
    action, confidence = rule.decide(probs)
    out[:, CONFIDENCE] = confidence
    out[:, ACTION] = action
    return out, np.isfinite(out).all(axis=1)
