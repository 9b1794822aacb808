"""A gRPC server interceptor: a request that does not decode as its method's protobuf message
is INVALID_ARGUMENT. Apart from the front so that it imports no generated protobuf module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

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
