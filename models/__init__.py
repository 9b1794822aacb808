"""The two multi-agent policy systems served by this project.

Nothing here imports from ``server``; every runtime (eager, TorchScript, ONNX Runtime)
shares the specs, the ensemble rule and the checkpoint format defined in this package.
The torch-backed names load torch on first use only, so a process serving ONNX (the
server's front and workers) never pays for importing it.
"""

from typing import Any

from models.ensemble import EnsembleRule
from models.spec import ACTIONS, SPECS, ModelSpec, get_spec

_TORCH_BACKED = {
    "CheckpointMismatch",
    "FusedPolicy",
    "PolicySystem",
    "build_default",
    "load_checkpoint",
    "save_checkpoint",
}

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


def __getattr__(name: str) -> Any:
    if name in _TORCH_BACKED:
        from models import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
