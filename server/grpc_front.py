"""The gRPC front: ``grpc.aio``'s server in the front process's event loop, serving the
Open Inference Protocol on ``--grpc-port`` from the same core as HTTP."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from server.codecs.oip_grpc import InferenceServicer
from server.config import ServerConfig
from server.core import InferCore
from server.grpc_decode import RefuseUndecodable
from server.oip_proto import inference_pb2 as pb

log = logging.getLogger("server.grpc")
SERVICE = "inference.GRPCInferenceService"  # the protocol's path, whatever our package
_METHODS = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
}


def service_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """``servicer``'s methods under the protocol's service path, each taking its request
    message and answering any message (``SerializeToString``)."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=_serialize,
        )
        for name, request in _METHODS.items()
    }
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer,
        request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=_serialize,
    )
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


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
                # one of several fronts shares the port the supervisor holds; a lone
                # server must fail to start on a port that is taken, not share it
                ("grpc.so_reuseport", int(config.front_slot is not None)),
            ],
        )
        servicer = InferenceServicer(core, runtime, config.max_request_batch)
        self._server.add_generic_rpc_handlers((service_handler(servicer),))

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
