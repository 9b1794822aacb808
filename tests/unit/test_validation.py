"""Request parsing: every malformed body gets the contract's status and a helpful message."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from models.spec import SPECS
from server.errors import BadRequest, InvalidObservation, NotFound
from server.pool import MODEL_INDEX
from server.validation import RequestParser

PARSER = RequestParser(SPECS, MODEL_INDEX, max_batch=4)


def body(**doc: object) -> bytes:
    return orjson.dumps(doc)


def obs(rows: int = 60, cols: int = 7) -> list:
    return np.random.default_rng(0).standard_normal((rows, cols)).tolist()


def test_single_observation_becomes_float32_row_bytes() -> None:
    matrix = obs()
    parsed = PARSER.parse(body(model="tactical", observation=matrix))
    assert parsed.model == "tactical" and not parsed.batch
    assert parsed.rows == [np.asarray(matrix, dtype=np.float32).tobytes()]


def test_batch_keeps_order() -> None:
    matrices = [obs(48, 13), np.zeros((48, 13)).tolist()]
    parsed = PARSER.parse(body(model="strategic", observations=matrices))
    assert parsed.batch and len(parsed.rows) == 2
    assert parsed.rows[1] == np.zeros((48, 13), dtype=np.float32).tobytes()


def test_integers_are_numbers() -> None:
    parsed = PARSER.parse(body(model="tactical", observation=[[1] * 7] * 60))
    assert parsed.rows[0] == np.ones((60, 7), dtype=np.float32).tobytes()


@pytest.mark.parametrize(
    ("raw", "error", "fragment"),
    [
        (b"{not json", BadRequest, "not valid JSON"),
        (b"[1, 2]", BadRequest, "JSON object"),
        (b'"tactical"', BadRequest, "JSON object"),
        (body(observation=obs()), InvalidObservation, 'missing field "model"'),
        (body(model="nope", observation=obs()), NotFound, "tactical"),
        (body(model=7, observation=obs()), InvalidObservation, "must be a string"),
        (body(model="tactical"), InvalidObservation, 'missing field "observation"'),
        (body(model="tactical", observation=obs(59)), InvalidObservation, "59 x 7"),
        (body(model="tactical", observation=obs(48, 13)), InvalidObservation, "60 x 7"),
        (body(model="tactical", observation=[[1.0] * 7] * 59 + [[1.0] * 6]), InvalidObservation,
         "rectangular"),
        (body(model="tactical", observation=[[1.0] * 7] * 58 + [[1.0] * 6, [1.0] * 8]),
         InvalidObservation, "rectangular"),
        (body(model="tactical", observation=[[[1.0]] * 7] * 60), InvalidObservation, "60 x 7"),
        (body(model="tactical", observation=[{str(i): 1.0 for i in range(7)}] * 60),
         InvalidObservation, "numbers"),
        (body(model="tactical", observation=["1234567"] * 60), InvalidObservation, "numbers"),
        (body(model="tactical", observations=[obs(), obs(59)]), InvalidObservation,
         "rectangular"),
        (body(model="tactical", observation=[["1.0"] * 7] * 60), InvalidObservation, "numbers"),
        (body(model="tactical", observation=[[True] + [1.0] * 6] * 60), InvalidObservation,
         "numbers"),
        (body(model="tactical", observation=[[None] + [1.0] * 6] * 60), InvalidObservation,
         "numbers"),
        (body(model="tactical", observation=[[1e39] * 7] * 60), InvalidObservation, "float32"),
        (json.dumps({"model": "tactical", "observation": [[float("nan")] * 7] * 60}).encode(),
         InvalidObservation, "NaN"),
        (json.dumps({"model": "tactical", "observation": [[float("inf")] * 7] * 60}).encode(),
         InvalidObservation, "NaN, Infinity"),
        (body(model="tactical", observations=[]), InvalidObservation, "non-empty"),
        (body(model="tactical", observations=[obs()] * 5), InvalidObservation, "at most 4"),
        (body(model="tactical", observation=obs(), observations=[obs()]), InvalidObservation,
         "not both"),
        (body(model="tactical", observation=5), InvalidObservation, "60 x 7"),
        (b'{"model": "tactical", "observation": [[-Infinity]]}', InvalidObservation, "NaN"),
        (b'{"model": "tactical", "observation": [[1e400]]}', InvalidObservation, "float64"),
        (b'{"model": "tact\xed\xa0\x80ical", "observation": 1}', BadRequest, "UTF-8"),
        (b'{"model": "\xff", "observation": 1}', BadRequest, "UTF-8"),
        (body(model="tactical", observation=obs()).decode().encode("utf-16"), BadRequest,
         "UTF-8"),
    ],
)  # fmt: skip
def test_bad_bodies_get_clear_errors(raw: bytes, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment) as info:
        PARSER.parse(raw)
    assert "Traceback" not in info.value.message


def test_numbers_beyond_float64_are_non_finite_not_bad_json() -> None:
    raw = body(model="tactical", observation=[[1.5] * 7] * 60).replace(b"1.5", b"1e400", 1)
    with pytest.raises(InvalidObservation, match="NaN, Infinity"):
        PARSER.parse(raw)


def _slow(doc: dict) -> bytes:
    """The same document through the numpy path: a "u" anywhere in the body sends it there."""
    return orjson.dumps({**doc, "route": "numpy"})


@pytest.mark.parametrize("scale", [1e-45, 1e-38, 1e-3, 1.0, 1e6, 1e30, 1e38])
def test_fast_and_numpy_paths_give_the_same_float32_bytes(scale: float) -> None:
    rng = np.random.default_rng(3)
    matrix = (rng.standard_normal((60, 7)) * scale).tolist()
    matrix[0][:3] = [-0.0, 3, -(2**24) - 1]  # negative zero and integers take both paths too
    doc = {"model": "tactical", "observation": matrix}
    fast = PARSER.parse(orjson.dumps(doc)).rows
    assert fast == PARSER.parse(_slow(doc)).rows
    assert fast == [np.asarray(matrix, dtype=np.float64).astype(np.float32).tobytes()]


def test_fast_and_numpy_paths_agree_on_batches() -> None:
    doc = {"model": "strategic", "observations": [obs(48, 13), [[7] * 13] * 48]}
    assert PARSER.parse(orjson.dumps(doc)).rows == PARSER.parse(_slow(doc)).rows


def test_a_value_just_beyond_float32_is_refused_on_the_fast_path_too() -> None:
    matrix = [[1.0] * 7] * 59 + [[1.0] * 6 + [3.5e38]]
    with pytest.raises(InvalidObservation, match="float32"):
        PARSER.parse(body(model="tactical", observation=matrix))
