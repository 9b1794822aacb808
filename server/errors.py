"""Errors the server answers with: status, machine-readable code, and a message that says
what was wrong and how to fix it. Bodies are JSON ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import orjson


class ApiError(Exception):
    status = 500
    code = "internal_error"
    retry_after_s: int | None = None
    model_idx = -1  # the model the request named, once known: counted under it

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


class BadRequest(ApiError):
    status = 400
    code = "invalid_json"


class BadContentEncoding(BadRequest):
    code = "invalid_content_encoding"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class NotFound(ApiError):
    status = 404
    code = "unknown_model"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(ApiError):
    status = 413
    code = "body_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class InvalidObservation(ApiError):
    status = 422
    code = "invalid_observation"


class NonFiniteOutput(ApiError):
    status = 422
    code = "non_finite_output"


class RateLimited(ApiError):
    status = 429
    code = "rate_limited"
    retry_after_s = 1


class Overloaded(ApiError):
    status = 503
    code = "overloaded"
    retry_after_s = 1


class NoHealthyWorker(ApiError):
    status = 503
    code = "no_healthy_worker"
    retry_after_s = 2


class CircuitOpen(ApiError):
    status = 503
    code = "circuit_open"
    retry_after_s = 1

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WorkerLost(ApiError):
    status = 503
    code = "worker_lost"
    retry_after_s = 1


class ShuttingDown(ApiError):
    status = 503
    code = "shutting_down"
    retry_after_s = 5


class InferenceTimeout(ApiError):
    status = 504
    code = "inference_timeout"


class InternalError(ApiError):
    status = 500
    code = "internal_error"


class WorkerFailed(ApiError):
    """The runtime raised, on another worker too. The contract has no 500: a call that
    failed is a 503 to retry, like any other moment without a worker able to serve."""

    status = 503
    code = "inference_failed"
    retry_after_s = 1
