"""Routes and lifespan. The inference routes (``routes.py``) are raw ASGI in front of
FastAPI (the hot path skips routing, pydantic and response classes); every other endpoint
is FastAPI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from monitoring import PROMETHEUS_CONTENT_TYPE
from server.asgi_route import asgi_post, send_answer
from server.codecs.base import JSON, error_headers
from server.codecs.oip import is_oip_path
from server.codecs.oip_rest import error_body as oip_error_body
from server.config import ServerConfig
from server.errors import ApiError, NoHealthyWorker, error_body
from server.head import RequestHead
from server.oip_routes import add_oip_routes, oip_error
from server.pool import MODEL_NAMES
from server.runtime import ReloadRefused, Runtime
from server.served_metrics import breaker_alerts, breaker_metrics, int8_metrics, int8_stats

log = logging.getLogger("server")


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return Response(error_body(code, message), status, headers, media_type="application/json")


def _api_error(error: ApiError) -> Response:
    headers = {name.decode(): value.decode() for name, value in error_headers(error)}
    return Response(error.body(), error.status, headers, media_type="application/json")


def _starting() -> Response:
    return _error(503, "not_ready", "the server is starting", 1)


def _model_info(runtime: Runtime) -> dict[str, Any]:
    out = {}
    for name in MODEL_NAMES:
        entry = runtime.manifest.models[name]
        variant = entry.selected_variant
        out[name] = {
            "version": runtime.pool.versions.get(name) if runtime.pool else None,
            "variant": variant.name,
            "runtime": variant.runtime,
            "precision": variant.precision,
            "file": variant.file,
            "sha256": variant.sha256,
            "size_bytes": variant.size_bytes,
            "max_abs_error": {
                "probs": variant.max_abs_error_probs,
                "value": variant.max_abs_error_value,
            },
            "tolerance": {"probs": variant.tolerance.probs, "value": variant.tolerance.value},
            "latency_us": variant.latency_us.as_dict() if variant.latency_us else None,
            "calls_per_s": variant.calls_per_s,
            "selection_reason": entry.selection_reason,
            "fallbacks": [{"variant": f.variant, "error": f.error} for f in entry.fallbacks],
            "observation_shape": entry.observation_shape,
            "agents": entry.agents,
            "agreement": variant.agreement_summary(),
            "batches": _batch_info(entry),
        }
    return out


def _batch_info(entry: Any) -> dict[str, Any] | None:
    """The int8 variant serving batches (behind its guards), if the optimizer planned one."""
    if entry.batch_variant is None:
        return None
    variant = entry.variant(entry.batch_variant)
    return {
        "variant": variant.name,
        "from_rows": entry.batch_min_rows,
        "precision": variant.precision,
        "sha256": variant.sha256,
        "size_bytes": variant.size_bytes,
        "max_abs_error": {
            "probs": variant.max_abs_error_probs,
            "value": variant.max_abs_error_value,
        },
        "agreement": variant.agreement_summary(),
        "selection_reason": entry.batch_selection_reason,
    }


def _lifespan(runtime: Runtime):
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task] = set()

        def on_sighup() -> None:
            task = loop.create_task(_reload_logged(runtime))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await runtime.stop()

    return lifespan


def build_api(runtime: Runtime) -> FastAPI:
    # No redirect of "/healthz/" to "/healthz": a 307 with an empty body is no answer the
    # contract knows; a path that is not a route is a JSON 404.
    api = FastAPI(
        title="policy inference server",
        lifespan=_lifespan(runtime),
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_oip_path(request.url.path):
            response = oip_error(exc.status_code, f"{exc.detail}: {request.url.path}")
        else:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
            response = _error(exc.status_code, code, str(exc.detail))
        if exc.headers:  # a 405's Allow (RFC 9110 15.5.6)
            response.headers.update(exc.headers)
        return response

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if is_oip_path(request.url.path):
            return oip_error(400, str(exc.errors()))
        return _error(422, "invalid_request", str(exc.errors()))

    _add_operations(api, runtime)
    add_oip_routes(api, runtime)
    return api


def _add_operations(api: FastAPI, runtime: Runtime) -> None:  # noqa: C901 - one route each
    @api.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @api.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz() -> Response:
        pool = runtime.pool
        if pool is None or not pool.ready():
            return _error(503, "not_ready", "no model is loaded on a healthy worker yet", 1)
        return JSONResponse({"status": "ready", "models": pool.versions})

    @api.api_route("/models", methods=["GET", "HEAD"])
    async def models() -> Response:
        if runtime.manifest is None:
            return _error(503, "not_ready", "models are still loading", 1)
        return JSONResponse(_model_info(runtime))

    @api.api_route("/stats", methods=["GET", "HEAD"])
    async def stats() -> Response:
        if runtime.monitor is None:
            return _starting()
        peers = runtime.peer_fronts()
        data = runtime.monitor.stats(runtime.workers())
        data["cache"] = _cache_stats(runtime, peers)
        data["fronts"] = [runtime.front_info()] + [doc["front"] for doc in peers]
        if runtime.core is not None:
            circuits, int8 = runtime.served_totals(peers)
            data["circuit_breakers"] = circuits
            data["int8"] = int8_stats(MODEL_NAMES, int8)
        return JSONResponse(data)

    @api.api_route("/alerts", methods=["GET", "HEAD"])
    async def alerts() -> Response:
        if runtime.monitor is None:
            return _starting()
        data = runtime.monitor.alerts()
        if runtime.core is not None:
            data["firing"] += breaker_alerts(runtime.served_totals(runtime.peer_fronts())[0])
        return JSONResponse(data)

    @api.api_route("/metrics", methods=["GET", "HEAD"])
    async def metrics() -> Response:
        if runtime.monitor is None:
            return _starting()
        peers = runtime.peer_fronts()
        body = runtime.monitor.prometheus_text(runtime.workers())
        if runtime.core is not None:
            circuits, int8 = runtime.served_totals(peers)
            body += breaker_metrics(circuits)
            body += int8_metrics(MODEL_NAMES, int8)
        return Response(body, media_type=PROMETHEUS_CONTENT_TYPE)

    @api.post("/admin/reload")
    async def reload(request: Request) -> Response:
        if runtime.core is None:
            return _starting()
        try:
            runtime.core.check_admin_key(RequestHead(request.scope["headers"], None).api_key)
        except ApiError as exc:
            return _api_error(exc)
        try:
            versions = await runtime.reload()
        except ReloadRefused as exc:
            log.warning("reload refused: %s", exc)
            return _error(409, "reload_refused", str(exc))
        if runtime.config.front_slot is not None:
            # one of several fronts: the supervisor passes the reload on to every front, so
            # that none goes on serving the old set (this one reloads once more, to the same)
            os.kill(os.getppid(), signal.SIGHUP)
        return JSONResponse({"status": "reloaded", "versions": versions})


def _cache_stats(runtime: Runtime, peers: list[dict[str, Any]]) -> dict[str, Any]:
    """The caches of every front, added up (each front has its own)."""
    counts = runtime.cache_counts()
    entries = len(runtime.cache)
    for doc in peers:
        entries += doc["cache_entries"]
        for key, n in doc["cache_counts"].items():
            counts[key] += n
    looked_up = counts["hits"] + counts["misses"]
    return {
        "enabled": runtime.cache.enabled,
        "entries": entries,
        **counts,
        "hit_rate": counts["hits"] / looked_up if looked_up else 0.0,
    }


async def _reload_logged(runtime: Runtime) -> None:
    try:
        await runtime.reload()
    except ReloadRefused as exc:
        log.warning("SIGHUP reload refused: %s", exc)


class ServerApp:
    """The ASGI entry: the inference routes straight to their codecs, the rest to FastAPI."""

    def __init__(self, config: ServerConfig) -> None:
        self.runtime = Runtime(config)
        self.api = build_api(self.runtime)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            routes = self.runtime.routes
            path = scope.get("raw_path") or scope["path"].encode()
            endpoint = routes.match(path) if routes is not None else None
            if endpoint is not None:
                await asgi_post(endpoint, scope, receive, send)
                return
            if routes is None and scope["method"] == "POST":
                error = NoHealthyWorker("the server is still starting")
                body = error.body() if path == b"/infer" else oip_error_body(error.message)
                await send_answer(send, error.status, JSON, body, error_headers(error))
                return
        await self.api(scope, receive, send)


def create_app(config: ServerConfig) -> ServerApp:
    return ServerApp(config)
