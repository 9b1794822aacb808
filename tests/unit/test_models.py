"""The reference models: seeded weights reproducible, checkpoints loaded safely."""

from __future__ import annotations

import builtins
import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.policy import CheckpointMismatch

REPO = Path(__file__).resolve().parents[2]

WEIGHTS_DIGEST = """
import sys
import models
from tests.unit.test_models import weights_sha256
print(weights_sha256(models.build_default(sys.argv[1])))
"""


def weights_sha256(model: models.PolicySystem) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def outputs(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        probs, value = model(torch.from_numpy(x))
    return probs.numpy(), value.numpy()


@pytest.mark.parametrize("name", sorted(models.SPECS))
def test_seeded_default_is_bit_identical_across_builds(name: str) -> None:
    assert weights_sha256(models.build_default(name)) == weights_sha256(models.build_default(name))


def test_seeded_default_depends_on_the_seed() -> None:
    a = models.build_default("tactical")
    b = models.build_default("tactical", seed=1)
    assert weights_sha256(a) != weights_sha256(b)


@pytest.mark.slow
def test_seeded_default_is_bit_identical_across_processes() -> None:
    in_process = {name: weights_sha256(models.build_default(name)) for name in models.SPECS}
    for name, expected in in_process.items():
        result = subprocess.run(
            [sys.executable, "-c", WEIGHTS_DIGEST, name],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert result.stdout.strip() == expected, name


@pytest.mark.parametrize("name", sorted(models.SPECS))
def test_reference_shapes_and_probabilities(name: str) -> None:
    spec = models.get_spec(name)
    x = np.random.default_rng(0).standard_normal((5, *spec.observation_shape)).astype(np.float32)
    probs, value = outputs(models.build_default(name), x)
    assert probs.shape == (5, len(spec.agents), 3) and value.shape == (5, 1)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(models.SPECS))
def test_fused_policy_computes_the_reference_function(name: str) -> None:
    spec = models.get_spec(name)
    reference = models.build_default(name)
    x = np.random.default_rng(1).standard_normal((16, *spec.observation_shape)).astype(np.float32)
    ref_probs, ref_value = outputs(reference, x)
    fused_probs, fused_value = outputs(reference.fused(), x)
    np.testing.assert_allclose(fused_probs, ref_probs, atol=1e-6)
    np.testing.assert_allclose(fused_value, ref_value, atol=1e-5)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    model = models.build_default("strategic")
    path = tmp_path / "strategic.safetensors"
    models.save_checkpoint(model, path)
    loaded = models.load_checkpoint("strategic", path)
    assert weights_sha256(loaded) == weights_sha256(model)
    x = np.ones((2, 48, 13), dtype=np.float32)
    for a, b in zip(outputs(loaded, x), outputs(model, x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_tensor_only_torch_state_dict_loads(tmp_path: Path) -> None:
    model = models.build_default("tactical", seed=7)
    path = tmp_path / "tactical.pt"
    torch.save(model.state_dict(), path)
    assert weights_sha256(models.load_checkpoint("tactical", path)) == weights_sha256(model)


def test_checkpoint_of_another_model_is_refused_with_what_was_expected(tmp_path: Path) -> None:
    path = tmp_path / "strategic.safetensors"
    models.save_checkpoint(models.build_default("strategic"), path)
    with pytest.raises(CheckpointMismatch) as info:
        models.load_checkpoint("tactical", path)
    message = str(info.value)
    assert "does not fit model 'tactical'" in message
    assert "60x7" in message and "missing" in message and "actors.fvg" in message


def test_checkpoint_with_wrong_shapes_is_refused(tmp_path: Path) -> None:
    state = models.build_default("tactical").state_dict()
    state["critic.0.weight"] = torch.zeros(64, 100)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatch, match=r"critic\.0\.weight has shape \(64, 100\)"):
        models.load_checkpoint("tactical", path)


class _RunsCodeOnLoad:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickled_checkpoint_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    state = dict(models.build_default("tactical").state_dict())
    state["payload"] = _RunsCodeOnLoad(marker)  # type: ignore[assignment]
    torch.save(state, path)
    with pytest.raises(CheckpointMismatch, match="not a readable checkpoint"):
        models.load_checkpoint("tactical", path)
    assert not marker.exists(), "loading the checkpoint executed code"
    # Control: the payload is real, an unrestricted unpickler does run it.
    pickle.loads(pickle.dumps(_RunsCodeOnLoad(marker)))
    assert marker.exists()


def test_garbage_and_missing_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="not a readable checkpoint"):
        models.load_checkpoint("tactical", garbage)
    with pytest.raises(FileNotFoundError):
        models.load_checkpoint("tactical", tmp_path / "absent.safetensors")


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="known models: strategic, tactical"):
        models.get_spec("tactic")


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path) -> None:
    model = models.build_default("tactical")
    with torch.no_grad():
        model.critic[0].weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    models.save_checkpoint(model, path)
    with pytest.raises(CheckpointMismatch, match="NaN or Infinity"):
        models.load_checkpoint("tactical", path)


def test_checkpoint_with_infinite_weights_is_refused_naming_them(tmp_path: Path) -> None:
    state = models.build_default("tactical").state_dict()
    state["actors.momentum.2.weight"][1, 2] = float("-inf")
    path = tmp_path / "inf.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatch, match="NaN or Infinity") as info:
        models.load_checkpoint("tactical", path)
    assert "['actors.momentum.2.weight']" in str(info.value)


def test_torch_backed_names_resolve_lazily_to_models_policy() -> None:
    from models import policy

    assert models.PolicySystem is policy.PolicySystem
    assert models.CheckpointMismatch is CheckpointMismatch
    assert all(hasattr(models, name) for name in models.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Policy'"):
        _ = models.Policy  # type: ignore[attr-defined]


def test_ensemble_rule_decides_on_the_weighted_mean_of_the_agents() -> None:
    spec = models.get_spec("tactical")
    # Equal weights: mean (0.3, 0.233, 0.467) -> long. Weights 3:1:1 -> (0.42, 0.26, 0.32) -> short
    # for the first row, (0.26, 0.22, 0.52) -> long for the reversed one.
    probs = np.array([[[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.2, 0.6]]], dtype=np.float32)
    batch = np.concatenate([probs, probs[:, ::-1]])  # second row: agents in reverse order
    action, confidence = models.EnsembleRule(spec).decide(batch)
    assert action.tolist() == [2, 2]
    np.testing.assert_allclose(confidence, [1.4 / 3] * 2, rtol=1e-6)
    action, confidence = models.EnsembleRule(spec, [3.0, 1.0, 1.0]).decide(batch)
    assert action.tolist() == [0, 2]
    np.testing.assert_allclose(confidence, [0.42, 0.52], rtol=1e-6)
    assert confidence.dtype == np.float32


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 1.0], "expected 3 agent weights"),
        ([1.0, -1.0, 1.0], "must be finite, non-negative and not all zero"),
        ([0.0, 0.0, 0.0], "must be finite, non-negative and not all zero"),
        ([1.0, float("nan"), 1.0], "must be finite, non-negative and not all zero"),
    ],
)
def test_ensemble_rule_refuses_unusable_weights(weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        models.EnsembleRule(models.get_spec("tactical"), weights)
