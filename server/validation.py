"""Turning a request body into float32 observation rows, or a clear 400/404/422."""

from __future__ import annotations

import json

import numpy as np
import orjson

from models.spec import ModelSpec
from server.errors import BadRequest, InvalidObservation, NotFound


class ParsedRequest:
    __slots__ = ("batch", "model", "model_idx", "rows")

    def __init__(self, model: str, model_idx: int, rows: list[bytes], batch: bool) -> None:
        self.model = model
        self.model_idx = model_idx
        self.rows = rows
        self.batch = batch


def _load_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson refuses NaN/Infinity literals and numbers beyond float64 (1e400), which
        # Python's json reads as non-finite floats: those bodies get the 422 for non-finite
        # values, not a 400.
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(f"body is not valid JSON: {exc}; send a JSON object") from None


def _strictly_numeric(value: object) -> bool:
    """Slow path, taken only when the body holds a ``true``/``false``/``null`` literal,
    which numpy would silently turn into numbers."""
    if isinstance(value, list):
        return all(_strictly_numeric(v) for v in value)
    return type(value) is float or type(value) is int


class RequestParser:
    """Built once per server: knows the models, their shapes and the batch limit."""

    def __init__(self, specs: dict[str, ModelSpec], model_index: dict[str, int], max_batch: int):
        self._specs = specs
        self._index = model_index
        self._max_batch = max_batch
        self._known = ", ".join(sorted(specs))
        # Values beyond float32 become inf on the cast and are refused by the finiteness
        # check; the overflow warning numpy would also print adds nothing.
        np.seterr(over="ignore")

    def parse(self, body: bytes) -> ParsedRequest:
        doc = _load_json(body)
        if type(doc) is not dict:
            raise BadRequest(
                'body must be a JSON object such as {"model": "tactical", "observation": [[...]]}'
            )
        model = doc.get("model")
        if model is None:
            raise InvalidObservation(f'missing field "model"; one of: {self._known}')
        idx = self._index.get(model) if type(model) is str else None
        if idx is None:
            if type(model) is not str:
                raise InvalidObservation(f'"model" must be a string, one of: {self._known}')
            raise NotFound(f"unknown model {model!r}; this server serves: {self._known}")
        spec = self._specs[model]
        single = doc.get("observation")
        many = doc.get("observations")
        if single is not None and many is not None:
            raise InvalidObservation('send either "observation" or "observations", not both')
        suspicious = b"u" in body or b"f" in body
        if single is not None:
            arr = self._to_array(
                single, spec, (spec.rows, spec.features), "observation", suspicious
            )
            return ParsedRequest(model, idx, [arr.tobytes()], False)
        if many is None:
            raise InvalidObservation(
                f'missing field "observation" (one {spec.rows}x{spec.features} matrix) or '
                f'"observations" (a list of them)'
            )
        if type(many) is not list or not many:
            raise InvalidObservation('"observations" must be a non-empty list of observations')
        if len(many) > self._max_batch:
            raise InvalidObservation(
                f"batch of {len(many)} observations is too large; send at most {self._max_batch}"
                " per request"
            )
        arr = self._to_array(
            many, spec, (len(many), spec.rows, spec.features), "observations", suspicious
        )
        return ParsedRequest(model, idx, [row.tobytes() for row in arr], True)

    @staticmethod
    def _to_array(
        value: object, spec: ModelSpec, shape: tuple[int, ...], field: str, suspicious: bool
    ) -> np.ndarray:
        expected = " x ".join(map(str, shape))
        if suspicious and not _strictly_numeric(value):
            raise InvalidObservation(
                f'"{field}" must contain only numbers (found true, false, null or a string); '
                f"{spec.name} expects {expected}"
            )
        try:
            arr = np.array(value)
        except (ValueError, TypeError):
            raise InvalidObservation(
                f'"{field}" must be a rectangular array of numbers, {expected} for {spec.name}'
            ) from None
        if arr.dtype.kind not in "fiu":
            raise InvalidObservation(
                f'"{field}" must contain only numbers; {spec.name} expects {expected}'
            )
        if arr.shape != shape:
            got = " x ".join(map(str, arr.shape)) or "a scalar"
            raise InvalidObservation(
                f'"{field}" has shape {got}; {spec.name} expects {expected} '
                f"({spec.rows} rows of {spec.features} features)"
            )
        arr32 = arr.astype(np.float32)
        if not np.isfinite(arr32).all():
            raise InvalidObservation(
                f'"{field}" contains NaN, Infinity or a value beyond float32 range '
                f"(|x| > {np.finfo(np.float32).max:.3g}); send finite numbers"
            )
        return arr32
