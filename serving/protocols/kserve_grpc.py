"""KServe v2 / Triton ``GRPCInferenceService`` over gRPC, with the protobuf stubs ``tritonclient`` ships:
ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, RepositoryIndex and ModelInfer
(tensors as ``raw_input_contents`` or typed ``contents``; scores back as raw little-endian FP32; each model by
its name, ``wtag`` for the first). Same service as HTTP:
the batcher, admission control, caps and bearer token (``authorization`` metadata). Errors are gRPC status
codes with the same messages as over HTTP. Other RPCs (loading, statistics, shared memory) answer
UNIMPLEMENTED."""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from grpc import aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

import wtag
from serving.protocols.kserve_v2 import V2_DTYPES, model_config, v2_model_metadata
from serving.models import ServedModel
from serving.service import Service
from serving.wire import RequestError
from wtag import schema
from wtag.errors import WtagError

log = logging.getLogger("wtag.serving")

# Health probes answer without a token, as their HTTP twins do.
OPEN_METHODS = frozenset({"ServerLive", "ServerReady", "ModelReady"})
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents"}


def decode_infer(request: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    """Input arrays of a ModelInferRequest: all inputs in ``raw_input_contents`` or all in ``contents``."""
    if not request.inputs:
        raise RequestError(422, "inference request needs at least one input")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(400, f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in inputs:
            raise RequestError(422, f"input '{name}' is given twice")
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise RequestError(422, f"input '{name}' needs 'shape' as a list of non-negative integers")
        if tensor.datatype not in V2_DTYPES:
            raise RequestError(422, f"input '{name}' has datatype {tensor.datatype!r}; expected one of "
                                    f"{', '.join(V2_DTYPES)}")
        dtype, count = V2_DTYPES[tensor.datatype], int(np.prod(shape, dtype=np.int64))
        if raw:
            if len(raw[i]) != count * dtype.itemsize:
                raise RequestError(422, f"input '{name}': raw_input_contents holds {len(raw[i])} bytes, shape "
                                        f"{shape} of {tensor.datatype} needs {count * dtype.itemsize}")
            arr = np.frombuffer(raw[i], dtype=dtype, count=count)
        else:
            if tensor.datatype not in _CONTENTS:
                raise RequestError(422, f"input '{name}': {tensor.datatype} data must be sent in raw_input_contents")
            arr = np.asarray(getattr(tensor.contents, _CONTENTS[tensor.datatype]), dtype=dtype)
            if arr.size != count:
                raise RequestError(422, f"input '{name}': contents has {arr.size} values, shape {shape} needs {count}")
        if tensor.datatype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        inputs[name] = arr.reshape(shape)
    for out in request.outputs:
        if out.name != schema.OUTPUT_SCORE:
            raise RequestError(422, f"unknown output {out.name!r}; this model has '{schema.OUTPUT_SCORE}'")
    return inputs


Handler = Callable[[Any, aio.ServicerContext], Awaitable[Any]]


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 gRPC service over one :class:`~serving.service.Service`."""

    def __init__(self, service: Service) -> None:
        self.service = service
        for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
                     "RepositoryIndex", "ModelInfer"):
            setattr(self, name, self._rpc(name, getattr(self, f"_{name}")))

    def _rpc(self, name: str, method: Handler) -> Handler:
        """``method`` with the token check, errors as gRPC status codes, and the call counted in /metrics."""
        metrics = self.service.metrics

        @functools.wraps(method)
        async def call(request: Any, context: aio.ServicerContext) -> Any:
            code = grpc.StatusCode.OK
            try:
                if name not in OPEN_METHODS:
                    self.service.auth.check(dict(context.invocation_metadata() or ()).get("authorization"),
                                            "'authorization: Bearer <token>' metadata")
                return await method(request, context)
            except Exception as exc:  # noqa: BLE001  (the error policy decides; bugs are logged there)
                failed = self.service.failure(exc, f"gRPC {name}")
                code, message = grpc.StatusCode[failed.grpc_code], failed.message
            finally:
                metrics.grpc.labels(name, code.name).inc()
            await context.abort(code, message)

        return call

    def _model(self, name: str, version: str) -> ServedModel:
        return self.service.model(name, version or None)

    async def _ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=True)

    async def _ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=all(m.slot.batcher.running
                                                         for m in self.service.models.values()))

    async def _ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        return service_pb2.ModelReadyResponse(ready=self._model(request.name, request.version).slot.batcher.running)

    async def _ServerMetadata(self, request: Any, context: Any) -> service_pb2.ServerMetadataResponse:
        return service_pb2.ServerMetadataResponse(name="wtag", version=wtag.__version__,
                                                  extensions=["model_configuration", "model_repository"])

    async def _ModelMetadata(self, request: Any, context: Any) -> service_pb2.ModelMetadataResponse:
        model = self._model(request.name, request.version)
        meta = v2_model_metadata(model.name, model.tagger.input_shapes, model.slot.version)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]])

    async def _ModelConfig(self, request: Any, context: Any) -> service_pb2.ModelConfigResponse:
        model = self._model(request.name, request.version)
        return service_pb2.ModelConfigResponse(config=model_config(model.name, model.tagger, self.service.settings))

    async def _RepositoryIndex(self, request: Any, context: Any) -> service_pb2.RepositoryIndexResponse:
        index = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(models=[
            index(name=entry["name"], version=entry["version"], state=entry["state"],
                  reason=f"sha256 {entry['sha256']}")
            for entry in (m.index() for m in self.service.models.values())])

    async def _ModelInfer(self, request: service_pb2.ModelInferRequest, context: Any
                          ) -> service_pb2.ModelInferResponse:
        model = self._model(request.model_name, request.model_version)
        with self.service.admitted(model):
            scored = await self.service.score(model, decode_infer(request))
        output = service_pb2.ModelInferResponse.InferOutputTensor(name=schema.OUTPUT_SCORE, datatype="FP32",
                                                                  shape=[len(scored.scores)])
        await context.send_initial_metadata(tuple(scored.headers().items()))
        return service_pb2.ModelInferResponse(
            model_name=model.name, model_version=scored.version, id=request.id, outputs=[output],
            raw_output_contents=[np.ascontiguousarray(scored.scores, dtype="<f4").tobytes()])


async def start_server(service: Service, host: str, port: int) -> aio.Server:
    """The gRPC server on ``host:port`` (SO_REUSEPORT, so worker processes share it), started."""
    limit = service.settings.max_body_bytes
    server = aio.server(options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
                                 ("grpc.so_reuseport", 1)])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    try:
        server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise WtagError(f"cannot listen for gRPC on {host}:{port} ({exc})") from None
    start = time.perf_counter()
    await server.start()
    log.info("gRPC (KServe v2) listening on %s:%d (started in %.0f ms)", host, port, 1e3 * (time.perf_counter() - start))
    return server
