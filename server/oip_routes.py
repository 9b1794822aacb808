"""The Open Inference Protocol's health and metadata routes (``GET /v2/...``); inference
itself is the ``oip_rest`` codec on the fast path."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from server.codecs import oip
from server.codecs.oip_rest import error_body
from server.errors import ApiError
from server.runtime import Runtime


def oip_error(status: int, message: str) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(error_body(message), status, headers, media_type="application/json")


def add_oip_routes(api: FastAPI, runtime: Runtime) -> None:  # noqa: C901 - one route each
    def ready() -> bool:
        return runtime.pool is not None and runtime.pool.ready()

    def resolve(model: str, version: str) -> int:
        versions = runtime.pool.model_versions if runtime.pool else ()
        return oip.model_index(model, version, versions)

    @api.api_route("/v2", methods=["GET", "HEAD"])
    async def server_metadata() -> Response:
        return JSONResponse(
            {"name": oip.SERVER_NAME, "version": oip.SERVER_VERSION, "extensions": oip.EXTENSIONS}
        )

    @api.api_route("/v2/health/live", methods=["GET", "HEAD"])
    async def live() -> Response:
        return JSONResponse({"live": True})

    @api.api_route("/v2/health/ready", methods=["GET", "HEAD"])
    async def server_ready() -> Response:
        if not ready():
            return oip_error(503, "no model is loaded on a healthy worker yet")
        return JSONResponse({"ready": True})

    @api.api_route("/v2/models/{model}", methods=["GET", "HEAD"])
    @api.api_route("/v2/models/{model}/versions/{version}", methods=["GET", "HEAD"])
    async def model_metadata(model: str, version: str = "") -> Response:
        try:
            idx = resolve(model, version)
        except ApiError as error:
            return oip_error(*oip.as_protocol_error(error))
        if runtime.pool is None or runtime.manifest is None:
            return oip_error(503, "models are still loading")
        served = runtime.pool.model_versions[idx]
        variant = runtime.manifest.models[model].selected_variant
        return JSONResponse(oip.model_metadata(idx, served, variant.runtime))

    @api.api_route("/v2/models/{model}/ready", methods=["GET", "HEAD"])
    @api.api_route("/v2/models/{model}/versions/{version}/ready", methods=["GET", "HEAD"])
    async def model_ready(model: str, version: str = "") -> Response:
        try:
            resolve(model, version)
        except ApiError as error:
            return oip_error(*oip.as_protocol_error(error))
        if not ready():
            return oip_error(503, f"model {model!r} is not loaded on a healthy worker yet")
        return JSONResponse({"name": model, "ready": True})
