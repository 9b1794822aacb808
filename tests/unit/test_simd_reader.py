"""The simdjson fast path of /infer's parser: the same float32 rows as orjson's path for every
body it takes, and "not sure" (None) for every body whose answer is an error or that it
cannot prove well-formed."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.spec import SPECS
from server.errors import ApiError
from server.pool import MODEL_INDEX
from server.simd_reader import SimdReader
from server.validation import RequestParser

READER = SimdReader(SPECS)
PARSER = RequestParser(SPECS, MODEL_INDEX, max_batch=8)
F32_MAX = float(np.finfo(np.float32).max)


def _orjson_rows(body: bytes) -> list[bytes]:
    return PARSER.parse_orjson(body).rows


def _matrix(rng: np.random.Generator, rows: int, cols: int, scale: float) -> list:
    return (rng.standard_normal((rows, cols)) * scale).tolist()


@pytest.mark.parametrize("decimals", [None, 0, 4, 6, 9, 17])
@pytest.mark.parametrize("model", ["tactical", "strategic"])
def test_rows_equal_orjsons_for_every_text_form(model: str, decimals: int | None) -> None:
    spec = SPECS[model]
    rng = np.random.default_rng(decimals or 1)
    matrix = _matrix(rng, spec.rows, spec.features, 3.0)
    matrix[0][:4] = [-0.0, 3, -(2**24) - 1, 1e-45]
    if decimals is None:
        text = json.dumps({"model": model, "observation": matrix})  # ", " separators
    else:
        rendered = "],[".join(",".join(f"{v:.{decimals}f}" for v in row) for row in matrix)
        text = f'{{"observation":[[{rendered}]],"model":"{model}"}}'
    body = text.encode()
    got = READER.read(body)
    assert got is not None
    assert got == (model, _orjson_rows(body), False)


@settings(max_examples=200, deadline=None)
@given(
    scale=st.sampled_from([1e-40, 1e-6, 1.0, 1e10, 1e17, 1e37]),
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 4),
)
def test_batches_equal_orjsons(scale: float, seed: int, batch: int) -> None:
    rng = np.random.default_rng(seed)
    many = [_matrix(rng, 48, 13, scale) for _ in range(batch)]
    body = orjson.dumps({"model": "strategic", "observations": many})
    got = READER.read(body)
    if got is None:  # huge finite values may take the slow path; it must accept them
        assert scale >= 1e17
        assert len(PARSER.parse(body).rows) == batch
        return
    assert got == ("strategic", _orjson_rows(body), True)


def _tactical(**changes: object) -> dict:
    doc: dict = {"model": "tactical", "observation": [[0.5] * 7 for _ in range(60)]}
    doc.update(changes)
    return doc


def _rows(*rows: list) -> list:
    return [list(r) for r in rows] + [[0.5] * 7 for _ in range(60 - len(rows))]


NOT_SURE = {
    "not json": b'{"model": "tactical", "observation": [[1,2]',
    "nan literal": b'{"model":"tactical","observation":[[NaN]]}',
    "beyond float64": json.dumps(_tactical(observation=_rows([1e308] * 6 + [1])))
    .encode()
    .replace(b"1e+308", b"1e400"),
    "beyond float32": orjson.dumps(_tactical(observation=_rows([1.0] * 6 + [3.5e38]))),
    "invalid utf-8": b'{"model":"tactical","x":"\xed\xa0\x80","observation":[]}',
    "a null": orjson.dumps(_tactical(observation=_rows([1, 2, 3, 4, 5, 6, None]))),
    "a boolean": orjson.dumps(_tactical(observation=_rows([1, 2, 3, 4, 5, 6, True]))),
    "a string": orjson.dumps(_tactical(observation=_rows([1, 2, 3, 4, 5, 6, "7"]))),
    "an object": orjson.dumps(_tactical(observation=_rows([1, 2, 3, 4, 5, 6, {}]))),
    "short row": orjson.dumps(_tactical(observation=_rows([1] * 6))),
    "59 rows": orjson.dumps(_tactical(observation=_rows()[:59])),
    "a number for a row": orjson.dumps(_tactical(observation=[1.0, *_rows()[1:]])),
    # 7 elements per row and 420 numbers in all, but one row holds an empty array and
    # another a nested pair: only the count of "[" tells
    "nested arrays that add up": orjson.dumps(
        _tactical(observation=_rows([1, 2, 3, 4, 5, 6, []], [[1, 2], 3, 4, 5, 6, 7, 8]))
    ),
    "unknown model": orjson.dumps(_tactical(model="tactica")),
    "model not a string": orjson.dumps(_tactical(model=1)),
    "both fields": orjson.dumps(_tactical(observations=[_rows()])),
    "duplicate model": b'{"model":"tactical","model":"strategic","observation":[]}',
    "a third field": orjson.dumps(_tactical(id="[x]")),
    "empty batch": b'{"model":"tactical","observations":[]}',
    "not an object": b"[[1,2,3]]",
    "a bare number": b"5",
    "big integer": orjson.dumps(_tactical()).replace(b"0.5", b"123456789012345678901234", 1),
}


_BASE = orjson.dumps(_tactical())
EDGES = {
    "byte order mark": b"\xef\xbb\xbf" + _BASE,
    "trailing garbage": _BASE + b" x",
    "trailing whitespace": _BASE + b" \n",
    "leading zero": _BASE.replace(b"0.5", b"00.5", 1),
    "no digit after the point": _BASE.replace(b"0.5", b"1.", 1),
    "underflow": _BASE.replace(b"0.5", b"1e-400", 1),
    "escaped key": _BASE.replace(b'"model"', b'"mod\\u0065l"'),
    "NUL in a key": _BASE.replace(b'"model"', b'"model\\u0000"'),
    "tabs": _BASE.replace(b",", b",\t", 3),
    "vertical tab": _BASE.replace(b",", b",\x0b", 1),
    "no-break space": _BASE.replace(b",", b",\xc2\xa0", 1),
    "two documents": _BASE + _BASE,
    "plus sign": _BASE.replace(b"0.5", b"+1", 1),
    "no leading digit": _BASE.replace(b"0.5", b".5", 1),
    "hex": _BASE.replace(b"0.5", b"0x1", 1),
    "800 digits": _BASE.replace(b"0.5", b"0." + b"1" * 800, 1),
    "lone surrogate in the model": _BASE.replace(b'"tactical"', b'"tactical\\ud800"'),
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_the_fast_reader_takes_only_what_orjsons_path_accepts_alike(name: str) -> None:
    body = EDGES[name]
    fast = READER.read(body)
    try:
        slow = PARSER.parse_orjson(body).rows
    except ApiError:
        assert fast is None, "the fast reader accepted a body orjson's path refuses"
        return
    assert fast is None or fast[1] == slow


@pytest.mark.parametrize("name", sorted(NOT_SURE))
def test_not_sure_leaves_the_answer_to_orjsons_path(name: str) -> None:
    assert READER.read(NOT_SURE[name]) is None
    assert READER.read(orjson.dumps(_tactical())) is not None  # the parser is reusable


@pytest.mark.parametrize("name", ["beyond float32", "a null", "nested arrays that add up"])
def test_the_parser_still_names_the_error(name: str) -> None:
    with pytest.raises(ApiError):
        PARSER.parse(NOT_SURE[name])


def test_a_value_of_an_earlier_document_kept_alive_costs_only_the_fast_path() -> None:
    reader = SimdReader(SPECS)
    kept = reader._parser.parse(b"[1]")  # simdjson refuses to parse while this lives
    body = orjson.dumps(_tactical())
    assert reader.read(body) is None
    assert reader.read(body) is not None
    del kept


def test_the_batch_limit_is_still_enforced() -> None:
    body = orjson.dumps({"model": "tactical", "observations": [_rows()] * 9})
    with pytest.raises(ApiError, match="too large"):
        PARSER.parse(body)


def test_values_at_float32s_limits_are_exact() -> None:
    matrix = _rows([F32_MAX, -F32_MAX, 1.4e-45, -1.4e-45, 2.0**-149, 0.1, -0.0])
    body = orjson.dumps(_tactical(observation=matrix))
    assert READER.read(body) is None  # the dot product overflows: the slow path decides
    assert PARSER.parse(body).rows == _orjson_rows(body)
    small = _rows([1.4e-45, -1.4e-45, 2.0**-149, 0.1, -0.0, 1e17, 3.4e-38])
    body = orjson.dumps(_tactical(observation=small))
    assert READER.read(body) == ("tactical", _orjson_rows(body), False)
