"""The gRPC front: ``grpc.aio``'s server in the front process's event loop, serving the
Open Inference Protocol on ``--grpc-port`` from the same core as HTTP."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server.codecs.oip_grpc import InferenceServicer
from server.config import ServerConfig
from server.core import InferCore
from server.oip_proto import inference_pb2_grpc as pb_grpc

log = logging.getLogger("server.grpc")
_UNDECODABLE = object()


class RefuseUndecodable(grpc.aio.ServerInterceptor):
    """Bytes that are not the method's protobuf message (another protocol version, a broken
    proxy) are INVALID_ARGUMENT; grpc itself would answer UNKNOWN and log a traceback for
    each one. Each method's handler is wrapped once."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(handler_call_details)
            if handler is None or handler.unary_unary is None or not handler.request_deserializer:
                return handler
            wrapped = self._wrapped[method] = _lenient(handler)
        return wrapped


def _lenient(handler: Any) -> Any:
    parse = handler.request_deserializer
    behavior = handler.unary_unary

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return _UNDECODABLE

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request is _UNDECODABLE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request is not a valid protobuf message of this method's type "
                "(inference.GRPCInferenceService, KServe v2); send one",
            )
        return await behavior(request, context)

    return grpc.unary_unary_rpc_method_handler(
        guarded, request_deserializer=deserialize, response_serializer=handler.response_serializer
    )


class GrpcFront:
    def __init__(self, config: ServerConfig, core: InferCore, runtime: Any) -> None:
        self.config = config
        self.port = 0  # the bound port once started (--grpc-port 0 picks a free one)
        # A message over the HTTP body limit is refused by grpc itself (RESOURCE_EXHAUSTED).
        limit = config.max_body_bytes
        self._server = grpc.aio.server(
            interceptors=[RefuseUndecodable()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", max(limit, 4 * 1024 * 1024)),
                ("grpc.so_reuseport", 0),
            ],
        )
        servicer = InferenceServicer(core, runtime, config.max_request_batch)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)

    async def start(self) -> None:
        address = f"{self.config.host}:{self.config.grpc_port}"
        if ":" in self.config.host:
            address = f"[{self.config.host}]:{self.config.grpc_port}"
        self.port = self._server.add_insecure_port(address)
        await self._server.start()
        log.info("gRPC (Open Inference Protocol) on %s:%d", self.config.host, self.port)

    async def stop(self) -> None:
        """Stops taking calls and lets the ones in flight finish within the grace period."""
        await self._server.stop(self.config.shutdown_grace_s)
