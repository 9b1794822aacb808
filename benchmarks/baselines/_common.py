"""What the baselines share: their command line and the contract's response shape."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.procs import LOOPBACK
from models import ACTIONS, SPECS, EnsembleRule
from models.spec import ModelSpec

MODEL = "tactical"
SPEC: ModelSpec = SPECS[MODEL]
HOST = LOOPBACK


def parse_args(prog: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"Benchmark baseline serving {MODEL!r} on {HOST} (POST /infer, GET /readyz).",
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=Path("artifacts"),
        help="optimizer output directory (default: artifacts)",
    )
    return parser.parse_args(argv)


def version_of(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()[:12]


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def decision(probs: np.ndarray, value: float, rule: EnsembleRule) -> dict:
    """The contract's per-observation fields from one observation's (agents, 3)
    probabilities, decided by the project's rule as our server decides them."""
    action, confidence = rule.decide(probs[None])
    return {
        "action": ACTIONS[int(action[0])],
        "confidence": float(confidence[0]),
        "agents": {name: probs[i].tolist() for i, name in enumerate(SPEC.agents)},
        "value": float(value),
        "cached": False,
    }
