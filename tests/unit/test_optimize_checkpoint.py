"""Optimizing given weights instead of the seeded default."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import models
from optimize.cli import main
from optimize.config import OptimizeConfig
from optimize.loader import load_served
from optimize.manifest import CheckpointKind, VariantName
from optimize.pipeline import run_optimizer
from optimize.runners import TorchRunner

pytestmark = pytest.mark.slow


def test_checkpoint_is_recorded_with_its_sha256_and_served(tmp_path: Path) -> None:
    weights = models.build_default("tactical", seed=7)
    path = tmp_path / "tactical.safetensors"
    models.save_checkpoint(weights, path)
    config = OptimizeConfig(
        out_dir=tmp_path / "out",
        models=("tactical",),
        variants=(VariantName.EAGER_FP32,),
        checkpoints={"tactical": path},
        calls=50,
        warmup_calls=5,
        rounds=1,
    )
    source = run_optimizer(config).model("tactical").checkpoint
    assert source.kind is CheckpointKind.FILE
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.path == str(path.resolve()) and source.sha256 in source.description

    x = np.random.default_rng(3).standard_normal((4, 60, 7)).astype(np.float32)
    served = load_served(tmp_path / "out", "tactical")
    ref_probs, ref_value = TorchRunner(models.build_default("tactical", seed=7)).run(x)
    probs, value = served.runner.run(x)
    np.testing.assert_array_equal(probs, ref_probs)
    np.testing.assert_array_equal(value, ref_value)


def test_checkpoint_of_the_wrong_model_stops_the_run_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "strategic.safetensors"
    models.save_checkpoint(models.build_default("strategic"), path)
    code = main(
        ["--out", str(tmp_path / "out"), "--models", "tactical", "--checkpoint", f"tactical={path}"]
    )
    assert code == 2
    assert "does not fit model 'tactical'" in capsys.readouterr().err
