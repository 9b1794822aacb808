"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``): decode a
``ModelInferRequest`` into a job, encode outputs as ``raw_output_contents``, errors as
status codes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from models.spec import SPECS
from monitoring import PROTOCOL_INDEX
from server.codecs import oip
from server.core import InferCore, Job
from server.errors import ApiError, InternalError
from server.oip_proto import inference_pb2 as pb
from server.pool import MODEL_NAMES

log = logging.getLogger("server")
PROTOCOL = PROTOCOL_INDEX["oip_grpc"]
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    500: grpc.StatusCode.INTERNAL,
}
_UNDECODABLE_STREAM = (
    "a message of the stream is not a valid ModelInferRequest (inference.GRPCInferenceService, "
    "KServe v2); the stream ends here, after the answers to the requests before it"
)
_TENSORS = {
    name: pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype)
    for name, (datatype, _shape) in oip.OUTPUTS.items()
}


def status_code(error: ApiError) -> tuple[grpc.StatusCode, str]:
    status, message = oip.as_protocol_error(error)
    return _CODES.get(status, grpc.StatusCode.INTERNAL), message


class GrpcJob(Job):
    __slots__ = ("future", "request_id", "requested")
    protocol = PROTOCOL

    def __init__(self, start_ns: int, future: asyncio.Future) -> None:
        super().__init__(start_ns)
        self.future = future
        self.request_id = ""
        self.requested: list[str] = []

    def answer(self, version: str, outputs: list[bytes], cached: list[bool]) -> None:
        arrays = oip.output_arrays(outputs)
        response = pb.ModelInferResponse(
            model_name=MODEL_NAMES[self.model_idx], model_version=version, id=self.request_id
        )
        for name in self.requested or oip.OUTPUTS:
            array = arrays[name]
            tensor = response.outputs.add()
            tensor.CopyFrom(_TENSORS[name])
            tensor.shape.extend(array.shape)
            response.raw_output_contents.append(array.tobytes())
        if not self.future.done():
            self.future.set_result(response)

    def refuse(self, error: ApiError) -> int:
        """Counted under the HTTP status that the gRPC code stands for."""
        if not self.future.done():
            self.future.set_exception(error)
        return oip.as_protocol_error(error)[0]


def _consume(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so that asyncio does not log it as lost


def _metadata(context: grpc.aio.ServicerContext) -> tuple[bytes | None, str]:
    """The API key (``x-api-key`` or ``authorization: Bearer``) and the client's address."""
    key = None
    for name, value in context.invocation_metadata() or ():
        if name == "x-api-key":
            key = value
        elif name == "authorization" and value[:7].lower() == "bearer ":
            key = value[7:]
    peer = context.peer() or "?"
    client = peer.rpartition(":")[0] or peer
    return (key.encode() if isinstance(key, str) else key), client


class InferenceServicer:
    """The protocol's six methods and Triton's stream (registered by ``server.grpc_front``)."""

    def __init__(self, core: InferCore, runtime: Any, max_batch: int) -> None:
        """``runtime``: what serves (its ``pool`` and ``manifest``), for health and metadata."""
        self.core = core
        self.runtime = runtime
        self.max_batch = max_batch

    def _ready(self) -> bool:
        pool = self.runtime.pool
        return pool is not None and pool.ready()

    async def _resolve(self, name: str, version: str, context: grpc.aio.ServicerContext) -> int:
        try:
            return oip.model_index(name, version, self.core.pool.model_versions)
        except ApiError as error:
            await context.abort(*status_code(error))
            raise  # abort raises; this keeps type checkers honest

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._ready())

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        await self._resolve(request.name, request.version, context)
        return pb.ModelReadyResponse(ready=self._ready())

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=oip.SERVER_NAME, version=oip.SERVER_VERSION, extensions=oip.EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        idx = await self._resolve(request.name, request.version, context)
        variant = self.runtime.manifest.models[MODEL_NAMES[idx]].selected_variant
        meta = oip.model_metadata(idx, self.core.pool.model_versions[idx], variant.runtime)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        api_key, client = _metadata(context)
        try:
            return await self._submit(request, context, api_key, client)
        except ApiError as error:
            await context.abort(*status_code(error))
            raise

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Triton's streaming extension: each request of the stream is answered on it, in
        the order sent, by its response or by ``error_message`` (the stream goes on). A
        request is submitted as soon as it is read, so a client may keep several in flight
        on one stream. A wrong API key ends the stream with UNAUTHENTICATED."""
        api_key, client = _metadata(context)
        try:
            self.core.check_api_key(api_key)
        except ApiError as error:
            await context.abort(*status_code(error))
        answers: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    answers.put_nowait(self._submit(request, context, api_key, client))
            finally:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (answer := await answers.get()) is not None:
                try:
                    yield pb.ModelStreamInferResponse(infer_response=await answer)
                except ApiError as error:
                    yield pb.ModelStreamInferResponse(error_message=status_code(error)[1])
            await asyncio.wait((reader,))
            if not reader.cancelled() and reader.exception() is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _UNDECODABLE_STREAM)
        finally:
            reader.cancel()
            while not answers.empty():  # the client left: nobody reads these answers
                if (answer := answers.get_nowait()) is not None:
                    answer.add_done_callback(_consume)

    def _submit(
        self, request: Any, context: Any, api_key: bytes | None, client: str
    ) -> asyncio.Future:
        """Decodes ``request`` and hands it to the core: a future of its response, or of
        the ApiError that refuses it."""
        start = time.perf_counter_ns()
        core = self.core
        future = asyncio.get_running_loop().create_future()
        job = GrpcJob(start, future)
        job.request_id = request.id
        try:
            core.check_access(api_key, client)
            alone = core.arrival(context.peer(), start)
            core.admit(start)
            job.model_idx = oip.model_index(
                request.model_name, request.model_version, core.pool.model_versions
            )
            job.rows = self._rows(job.model_idx, request)
            job.requested = list(dict.fromkeys(output.name for output in request.outputs))
            oip.check_outputs(job.requested)
        except ApiError as error:
            core.reject(job, error)
        except Exception:  # a bug, never the client's doing: answer, do not drop it
            log.exception("decoding a gRPC ModelInfer request failed")
            core.reject(job, InternalError("the server failed on this request"))
        else:
            job.parsed_ns = time.perf_counter_ns()
            core.submit(job, alone)
        return future

    def _rows(self, idx: int, request: Any) -> list[bytes]:
        spec = SPECS[MODEL_NAMES[idx]]
        if len(request.inputs) != 1:
            raise oip.BadTensor(
                f"send one input, {oip.INPUT!r} (FP32, [-1, {spec.rows}, {spec.features}]); "
                f"got {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        batch = oip.check_input(
            spec, self.max_batch, tensor.name, tensor.datatype, list(tensor.shape)
        )
        raw = request.raw_input_contents
        if raw:
            if len(raw) != 1 or tensor.HasField("contents"):
                raise oip.BadTensor(
                    "send the observation either in raw_input_contents (one entry) or in "
                    "contents.fp32_contents, not both"
                )
            return oip.rows_from_raw(spec, batch, raw[0])
        values = tensor.contents.fp32_contents
        expected = batch * spec.input_size
        if len(values) != expected:
            raise oip.BadTensor(
                f"input {oip.INPUT!r} holds {len(values)} FP32 values; shape [{batch}, "
                f"{spec.rows}, {spec.features}] needs {expected}"
            )
        return oip.rows_from_raw(spec, batch, np.asarray(values, dtype="<f4").tobytes())
