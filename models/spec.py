"""Shapes and agent names of the policy systems (the contract's model table)."""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS: tuple[str, ...] = ("short", "neutral", "long")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    rows: int
    features: int
    agents: tuple[str, ...]
    hidden: int
    critic_hidden: int
    default_seed: int

    @property
    def input_size(self) -> int:
        return self.rows * self.features

    @property
    def observation_shape(self) -> tuple[int, int]:
        return (self.rows, self.features)


SPECS: dict[str, ModelSpec] = {
    "tactical": ModelSpec(
        name="tactical",
        rows=60,
        features=7,
        agents=("fvg", "momentum", "entry"),
        hidden=64,
        critic_hidden=64,
        default_seed=20260601,
    ),
    "strategic": ModelSpec(
        name="strategic",
        rows=48,
        features=13,
        agents=("mlmi", "nwrqk", "regime"),
        hidden=32,
        critic_hidden=32,
        default_seed=20260602,
    ),
}


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        known = ", ".join(sorted(SPECS))
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None
