"""The policy networks: per-agent actors and a critic, plus a fused form for export.

``PolicySystem`` is the float32 reference: one small module per agent, as the checkpoint
stores them. ``FusedPolicy`` computes the same function with two matmuls (all hidden layers
stacked, all heads block-diagonal), which is what the optimizer compiles, quantizes and
exports; the optimizer verifies it against the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.spec import ACTIONS, ModelSpec, get_spec

# Saturating the hidden units keeps logits bounded for extreme market inputs.
CLAMP_MAX = 6.0


class ClampedReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, CLAMP_MAX)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden, bias=False),
        ClampedReLU(),
        nn.Linear(hidden, outputs, bias=False),
    )


class PolicySystem(nn.Module):
    """Reference model: ``forward(x)`` with x (batch, rows, features) returns
    (probs (batch, agents, 3), value (batch, 1))."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.actors = nn.ModuleDict(
            {name: _mlp(spec.input_size, spec.hidden, len(ACTIONS)) for name in spec.agents}
        )
        self.critic = _mlp(spec.input_size, spec.critic_hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[0], -1)
        probs = torch.stack(
            [torch.softmax(actor(flat), dim=-1) for actor in self.actors.values()], dim=1
        )
        return probs, self.critic(flat)

    def fused(self) -> FusedPolicy:
        return FusedPolicy.from_reference(self)


class FusedPolicy(nn.Module):
    """Same function as ``PolicySystem`` in two Linear layers (so int8 dynamic quantization
    and ONNX see two matmuls instead of eight)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        n_agents = len(spec.agents)
        hidden_total = n_agents * spec.hidden + spec.critic_hidden
        self.n_logits = n_agents * len(ACTIONS)
        self.n_agents = n_agents
        self.hidden = nn.Linear(spec.input_size, hidden_total, bias=False)
        self.head = nn.Linear(hidden_total, self.n_logits + 1, bias=False)

    @classmethod
    def from_reference(cls, ref: PolicySystem) -> FusedPolicy:
        spec = ref.spec
        fused = cls(spec)
        n_actions = len(ACTIONS)
        with torch.no_grad():
            first = [actor[0].weight for actor in ref.actors.values()] + [ref.critic[0].weight]
            fused.hidden.weight.copy_(torch.cat(first, dim=0))
            head = torch.zeros_like(fused.head.weight)
            for i, actor in enumerate(ref.actors.values()):
                rows = slice(i * n_actions, (i + 1) * n_actions)
                cols = slice(i * spec.hidden, (i + 1) * spec.hidden)
                head[rows, cols] = actor[2].weight
            head[-1, len(ref.actors) * spec.hidden :] = ref.critic[2].weight[0]
            fused.head.weight.copy_(head)
        return fused.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(x.shape[0], -1)
        out = self.head(torch.clamp(self.hidden(flat), 0.0, CLAMP_MAX))
        logits = out[:, : self.n_logits].reshape(-1, self.n_agents, len(ACTIONS))
        return torch.softmax(logits, dim=-1), out[:, self.n_logits :]


def build_default(name: str, seed: int | None = None) -> PolicySystem:
    """Seeded weights, bit-identical on every machine: drawn from numpy's PCG64 (whose
    stream is specified) rather than torch's generator, then cast to float32."""
    spec = get_spec(name)
    model = PolicySystem(spec)
    rng = np.random.Generator(np.random.PCG64(spec.default_seed if seed is None else seed))
    with torch.no_grad():
        for _key, param in sorted(model.named_parameters()):
            fan_in = param.shape[1]
            bound = float(np.sqrt(6.0 / fan_in))
            values = rng.uniform(-bound, bound, size=tuple(param.shape)).astype(np.float32)
            param.copy_(torch.from_numpy(values))
    return model.eval()


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in PolicySystem(spec).state_dict().items()}


def save_checkpoint(model: PolicySystem, path: str | Path) -> None:
    """Writes safetensors: tensors only, nothing that executes on load."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"model": model.spec.name})


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # weights_only refuses arbitrary pickled objects: a checkpoint can never run code.
    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise ValueError(f"{path}: expected a dict of tensors (a state_dict)")
    return loaded


class CheckpointMismatch(ValueError):
    pass


def load_checkpoint(name: str, path: str | Path) -> PolicySystem:
    """Loads weights for model ``name``; refuses a checkpoint of another architecture
    with a message listing what was expected."""
    spec = get_spec(name)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        tensors = _read_tensors(path)
    except Exception as exc:
        raise CheckpointMismatch(
            f"{path}: not a readable checkpoint (safetensors, or a torch state_dict saved "
            f"with tensors only): {exc}"
        ) from exc
    expected = expected_shapes(spec)
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    for key in sorted(set(expected) & set(tensors)):
        got = tuple(tensors[key].shape)
        if got != expected[key]:
            problems.append(f"{key} has shape {got}, expected {expected[key]}")
    if problems:
        raise CheckpointMismatch(
            f"{path} does not fit model {name!r} ({spec.rows}x{spec.features} input, agents "
            f"{', '.join(spec.agents)}, hidden {spec.hidden}): " + "; ".join(problems)
        )
    bad = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    if bad:
        raise CheckpointMismatch(f"{path}: weights {bad} contain NaN or Infinity")
    model = PolicySystem(spec)
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    return model.eval()
