"""The two multi-agent policy systems served by this project.

Nothing here imports from ``server``; every runtime (eager, TorchScript, ONNX Runtime)
shares the specs, the ensemble rule and the checkpoint format defined in this package.
"""

from models.ensemble import EnsembleRule
from models.policy import (
    CheckpointMismatch,
    FusedPolicy,
    PolicySystem,
    build_default,
    load_checkpoint,
    save_checkpoint,
)
from models.spec import ACTIONS, SPECS, ModelSpec, get_spec

__all__ = [
    "ACTIONS",
    "SPECS",
    "CheckpointMismatch",
    "EnsembleRule",
    "FusedPolicy",
    "ModelSpec",
    "PolicySystem",
    "build_default",
    "get_spec",
    "load_checkpoint",
    "save_checkpoint",
]
