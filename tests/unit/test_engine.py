"""The decision folded into the ONNX graph gives what the numpy rule gives, flags a
non-finite row, and follows the configured agent weights."""

from __future__ import annotations

import numpy as np
import pytest

from models.ensemble import EnsembleRule
from models.spec import SPECS
from optimize.loader import load_manifest, load_variant
from server import protocol
from server.engine import FusedModel, NumpyModel, decision_graph, open_fused
from server.outputs import FLOATS


def _models(artifacts_dir, name: str, weights) -> tuple[FusedModel, NumpyModel]:
    # the batch-1 selection alone (load_served may add int8 for large batches)
    selected = load_manifest(artifacts_dir).model(name).selected_variant.name
    served = load_variant(artifacts_dir, name, selected, warmup_calls=0)
    rule = EnsembleRule(SPECS[name], weights)
    return open_fused(served.file.read_bytes(), rule, threads=1), NumpyModel(served.runner, rule)


def _rows(outputs: bytes, rows: int) -> np.ndarray:
    return np.frombuffer(outputs, dtype=np.float32).reshape(rows, FLOATS)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("weights", [None, (1.0, 0.0, 3.0)])
def test_fused_outputs_match_the_numpy_decision(artifacts_dir, name, weights) -> None:
    fused, reference = _models(artifacts_dir, name, weights)
    rng = np.random.default_rng(3)
    for rows in (1, 2, 7, 32, 1, 5):  # sizes again after others: each binding reused
        obs = (rng.standard_normal((rows, *SPECS[name].observation_shape)) * 3).astype(np.float32)
        status, outputs = fused.infer(obs.tobytes(), rows)
        want_status, want = reference.infer(obs.tobytes(), rows)
        assert status == want_status == bytes([protocol.ROW_FINITE]) * rows
        got, expected = _rows(outputs, rows), _rows(want, rows)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert (got[:, 11] == expected[:, 11]).all(), "the action differs"
    one, finite = fused.infer_one(obs[0].tobytes())
    assert finite and one == _rows(outputs, rows)[0].tobytes()


@pytest.mark.parametrize("engine", ["fused", "numpy"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_non_finite_row_is_flagged_in_a_batch_and_alone(artifacts_dir, name, engine) -> None:
    """Both engines (``NumpyModel`` runs TorchScript, eager and the int8 batches)."""
    model = dict(zip(["fused", "numpy"], _models(artifacts_dir, name, None), strict=True))[engine]
    obs = np.zeros((3, *SPECS[name].observation_shape), dtype=np.float32)
    obs[1, 0, 0] = np.nan
    status, _ = model.infer(obs.tobytes(), 3)
    assert list(status) == [protocol.ROW_FINITE, protocol.ROW_NOT_FINITE, protocol.ROW_FINITE]
    assert model.infer_one(obs[1].tobytes())[1] is False
    assert model.infer_one(obs[0].tobytes())[1] is True
    huge = np.full((1, *SPECS[name].observation_shape), 3.0e38, dtype=np.float32)
    assert model.infer_one(huge.tobytes())[1] is False, "the model overflows on these"


def test_weights_are_bound_from_the_configuration(artifacts_dir) -> None:
    """All weight on one agent: the decision is that agent's own arg-max and probability."""
    name = "tactical"
    obs = np.random.default_rng(5).standard_normal((16, *SPECS[name].observation_shape))
    for agent in range(3):
        weights = [0.0, 0.0, 0.0]
        weights[agent] = 2.0
        fused, _ = _models(artifacts_dir, name, weights)
        _, outputs = fused.infer(obs.astype(np.float32).tobytes(), 16)
        rows = _rows(outputs, 16)
        probs = rows[:, agent * 3 : agent * 3 + 3]
        assert (rows[:, 11] == probs.argmax(axis=1)).all()
        np.testing.assert_allclose(rows[:, 10], probs.max(axis=1), atol=1e-7)


def test_the_decision_is_appended_as_valid_onnx(artifacts_dir) -> None:
    """The protobuf bytes appended by hand parse, with onnx (a test dependency, not a
    serving one), into the model plus the decision: the checker passes it."""
    import onnx

    served = load_variant(artifacts_dir, "tactical", "onnx_fp32", warmup_calls=0)
    model = onnx.load_from_string(decision_graph(served.file.read_bytes(), 3))
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    assert [i.name for i in graph.input] == ["observation", "agent_weights"]
    assert [o.name for o in graph.output] == ["probs", "value", "confidence", "action"]
    assert [n.op_type for n in graph.node[-3:]] == ["MatMul", "TopK", "Cast"]
    dims = graph.input[1].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3]
