"""The gRPC floor: ``inference.GRPCInferenceService/ModelInfer`` on ``grpc.aio`` in a uvloop
event loop (as our front runs it), with no serializer either way, answering every call with
one constant, pre-serialized batch-1 ``ModelInferResponse``. Whatever a call costs here is
what Python gRPC on this machine costs before any decoding or inference; the benchmark's
client (``benchmarks.grpcload``) is the same for this and for our server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import uvloop

from benchmarks.baselines._common import HOST, MODEL, parse_args
from server.oip_proto import inference_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
_OUTPUTS = (("probs", "FP32", (1, 3, 3)), ("value", "FP32", (1, 1)), ("action", "INT32", (1,)),
            ("confidence", "FP32", (1,)))  # fmt: skip


def constant_response() -> bytes:
    response = pb.ModelInferResponse(model_name=MODEL, model_version="grpc-floor")
    for name, datatype, shape in _OUTPUTS:
        response.outputs.add(name=name, datatype=datatype, shape=shape)
        count = 1
        for d in shape:
            count *= d
        response.raw_output_contents.append(bytes(4 * count))
    return response.SerializeToString()


async def serve(port: int) -> None:
    answer = constant_response()

    async def model_infer(request: bytes, context: Any) -> bytes:
        return answer

    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)]
    )
    handler = grpc.unary_unary_rpc_method_handler(
        model_infer, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),)
    )
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    await server.wait_for_termination()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("python -m benchmarks.baselines.grpc_floor", argv)  # --artifacts unused
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
