"""KServe v2 / Triton inference protocol over HTTP: server and model metadata, health, and ``infer`` with JSON
tensors or the binary tensor extension. Errors are ``{"error": message}``, as Triton answers them."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

import wtag
from serving.routing import BINARY, Routes, body_doc
from serving.service import Service
from serving.settings import ServerSettings
from serving.wire import JSON, RequestError, dumps, json_object, loads, numbers
from wtag import schema
from wtag.inference import OnnxTagger

# The server metadata's Triton extensions (the configuration is served too, at /v2/models/wtag/config).
EXTENSIONS = ["binary_tensor_data"]

HEADER_LENGTH = "inference-header-content-length"

# KServe v2 datatypes the server accepts (all are cast to float32); BOOL and BYTES are not numbers to score.
V2_DTYPES: dict[str, np.dtype] = {
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BF16": np.dtype("<u2"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
}



def v2_decode(body: bytes, header_length: str | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Input tensors of a v2 request (JSON ``data`` or the binary extension) and what the answer must carry.

    Returns ``(inputs, reply)`` with reply keys ``id`` (echoed when given) and ``binary`` (send the scores as
    raw bytes after the JSON header: asked for per output or with the ``binary_data_output`` parameter).
    """
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise RequestError(400, f"Inference-Header-Content-Length '{header_length}' is not an integer") from None
        if not 0 < json_size <= len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {json_size} is outside the body "
                                    f"({len(body)} bytes)")
        header, binary = loads(body[:json_size], "inference header"), memoryview(body)[json_size:]
    else:
        header, binary = loads(body), memoryview(b"")
    request = json_object(header, "inference request")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError(422, "inference request needs a non-empty 'inputs' array")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, tensor in enumerate(raw_inputs):
        tensor = json_object(tensor, f"inputs[{position}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise RequestError(422, f"inputs[{position}] needs a string 'name'")
        if name in inputs:
            raise RequestError(422, f"input '{name}' is given twice")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or any(not isinstance(d, int) or isinstance(d, bool) or d < 0
                                              for d in shape):
            raise RequestError(422, f"input '{name}' needs 'shape' as a list of non-negative integers")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype not in V2_DTYPES:
            raise RequestError(422, f"input '{name}' has datatype {datatype!r}; expected one of "
                                    f"{', '.join(V2_DTYPES)}")
        dtype = V2_DTYPES[datatype]
        count = math.prod(shape)
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(422, f"input '{name}' parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in tensor:
                raise RequestError(422, f"input '{name}' has both 'data' and binary_data_size")
            if not isinstance(size, int) or size != count * dtype.itemsize:
                raise RequestError(422, f"input '{name}': binary_data_size {size!r} does not match shape {shape} "
                                        f"of {datatype} ({count * dtype.itemsize} bytes)")
            if offset + size > len(binary):
                raise RequestError(400, f"input '{name}': body holds {len(binary) - offset} binary bytes, "
                                        f"expected {size}")
            arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
            offset += size
        else:
            if "data" not in tensor:
                raise RequestError(422, f"input '{name}' has neither 'data' nor binary_data_size")
            if datatype == "BF16":
                raise RequestError(422, f"input '{name}': BF16 data must be sent in binary form")
            arr = numbers(tensor["data"], f"input '{name}' data ({datatype})", dtype)
            if arr.size != count:
                raise RequestError(422, f"input '{name}': data has {arr.size} values, shape {shape} needs {count}")
        if datatype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        inputs[name] = arr.reshape(shape)
    if offset != len(binary):
        raise RequestError(400, f"body has {len(binary) - offset} binary bytes that no input claims")
    binary_out = bool(json_object(request.get("parameters") or {}, "parameters").get("binary_data_output", False))
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise RequestError(422, "'outputs' must be an array")
        for out in outputs:
            out = json_object(out, "outputs[*]")
            if out.get("name") != schema.OUTPUT_SCORE:
                raise RequestError(422, f"unknown output {out.get('name')!r}; this model has "
                                        f"'{schema.OUTPUT_SCORE}'")
            binary_out = bool(json_object(out.get("parameters") or {}, "output parameters").get("binary_data",
                                                                                            binary_out))
    reply: dict[str, Any] = {"binary": binary_out}
    if "id" in request:
        reply["id"] = request["id"]
    return inputs, reply


def v2_encode(scores: np.ndarray, reply: Mapping[str, Any], version: str, name: str = schema.REGISTERED_MODEL
              ) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and extra headers (the JSON header length when scores go as binary)."""
    output: dict[str, Any] = {"name": schema.OUTPUT_SCORE, "datatype": "FP32", "shape": [len(scores)]}
    result: dict[str, Any] = {"model_name": name, "model_version": version}
    if "id" in reply:
        result["id"] = reply["id"]
    result["outputs"] = [output]
    if not reply.get("binary"):
        output["data"] = scores
        return dumps(result), {}
    data = np.ascontiguousarray(scores, dtype="<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = dumps(result)
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def v2_model_metadata(name: str, input_shapes: Mapping[str, Sequence[int | None]], version: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": name, "datatype": "FP32", "shape": [-1 if d is None else d for d in shape]}
                   for name, shape in input_shapes.items()],
        "outputs": [{"name": schema.OUTPUT_SCORE, "datatype": "FP32", "shape": [-1]}],
    }



def model_config(model_name: str, tagger: OnnxTagger, settings: ServerSettings) -> Any:
    """Triton's model configuration (a ``model_config_pb2.ModelConfig``) with the server's real limits:
    ``max_batch_size`` is the most jets one request may hold, dynamic batching merges requests into runs of
    ``preferred_batch_size`` jets (the model's own cap) after at most the queue delay, and the queue policy
    rejects (429 / UNAVAILABLE) past ``max_inflight_requests`` and times out after the request timeout."""
    from tritonclient.grpc import model_config_pb2 as mc

    inputs = [mc.ModelInput(name=name, data_type=mc.TYPE_FP32, dims=[-1 if d is None else d for d in shape[1:]])
              for name, shape in tagger.input_shapes.items()]
    policy = mc.ModelQueuePolicy(timeout_action=mc.ModelQueuePolicy.REJECT,
                                 default_timeout_microseconds=int(settings.request_timeout_s * 1e6),
                                 max_queue_size=settings.max_inflight_requests)
    return mc.ModelConfig(
        name=model_name, platform="onnxruntime_onnx", backend="onnxruntime",
        version_policy=mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=[int(tagger.version)]))
        if tagger.version.isdigit() else None,
        max_batch_size=settings.max_jets_per_request, input=inputs,
        output=[mc.ModelOutput(name=schema.OUTPUT_SCORE, data_type=mc.TYPE_FP32, dims=[1],
                               reshape=mc.ModelTensorReshape(shape=[]))],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=[tagger.max_batch],
            max_queue_delay_microseconds=int(settings.max_queue_delay_ms * 1000), default_queue_policy=policy),
        instance_group=[mc.ModelInstanceGroup(count=1, kind=mc.ModelInstanceGroup.KIND_GPU
                                              if tagger.provider == "CUDAExecutionProvider"
                                              else mc.ModelInstanceGroup.KIND_CPU)])


_V2_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "datatype": {"type": "string", "enum": list(V2_DTYPES)},
    "data": {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "array"}]},
             "description": "the values, flat or nested, row-major; absent when binary_data_size is given"},
    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}}}}
V2_REQUEST = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "inputs": {"type": "array", "minItems": 1, "items": _V2_TENSOR},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "enum": [schema.OUTPUT_SCORE]},
        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
    "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}}}}


def routes(service: Service) -> Routes:
    out = Routes(open={"/v2/health/live", "/v2/health/ready"})

    @out.router.get("/v2/health/live", tags=["kserve-v2"], summary="KServe v2 liveness")
    @out.router.get("/v2/health/ready", tags=["kserve-v2"], summary="KServe v2 readiness")
    async def v2_health() -> Response:
        return Response(dumps({"live": True, "ready": True}), media_type=JSON)

    @out.router.get("/v2", tags=["kserve-v2"], summary="KServe v2 server metadata")
    async def v2_server() -> Response:
        return Response(dumps({"name": "wtag", "version": wtag.__version__, "extensions": EXTENSIONS}),
                        media_type=JSON)

    @out.router.get("/v2/models", tags=["kserve-v2"], summary="The served models: name, version, sha256, state")
    async def v2_models() -> Response:
        return Response(dumps({"models": [m.index() for m in service.models.values()]}), media_type=JSON)

    @out.router.post("/v2/repository/index", tags=["kserve-v2"],
                     summary="Triton repository index: the served models with version, sha256 and state")
    async def v2_repository_index() -> Response:
        return Response(dumps([m.index() for m in service.models.values()]), media_type=JSON)

    @out.router.get("/v2/models/{model_name}", tags=["kserve-v2"], summary="KServe v2 model metadata")
    @out.router.get("/v2/models/{model_name}/versions/{version}", tags=["kserve-v2"],
                    summary="KServe v2 model metadata")
    async def v2_model(model_name: str, version: str | None = None) -> Response:
        model = service.model(model_name, version)
        return Response(dumps(v2_model_metadata(model.name, model.tagger.input_shapes, model.slot.version)),
                        media_type=JSON)

    @out.router.get("/v2/models/{model_name}/ready", tags=["kserve-v2"], summary="KServe v2 model readiness")
    @out.router.get("/v2/models/{model_name}/versions/{version}/ready", tags=["kserve-v2"],
                    summary="KServe v2 model readiness")
    async def v2_model_ready(model_name: str, version: str | None = None) -> Response:
        model = service.model(model_name, version)
        return Response(dumps({"name": model.name, "ready": model.slot.batcher.running}), media_type=JSON)

    @out.router.get("/v2/models/{model_name}/config", tags=["kserve-v2"],
                    summary="Triton model configuration: batch limits, dynamic batching, inputs and outputs")
    @out.router.get("/v2/models/{model_name}/versions/{version}/config", tags=["kserve-v2"],
                    summary="Triton model configuration: batch limits, dynamic batching, inputs and outputs")
    async def v2_model_config(model_name: str, version: str | None = None) -> Response:
        from google.protobuf import json_format

        model = service.model(model_name, version)
        config = model_config(model.name, model.tagger, service.settings)
        return Response(dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)), media_type=JSON)

    async def v2_infer(request: Request) -> Response:
        model = service.model(request.path_params["model_name"], request.path_params.get("version"))
        with service.admitted(model):
            body = await service.read_body(request)
            inputs, reply = await service.decode(v2_decode, body, request.headers.get(HEADER_LENGTH))
            scored = await service.score(model, inputs)
        content, headers = v2_encode(scored.scores, reply, scored.version, model.name)
        return Response(content, media_type="application/octet-stream" if headers else JSON,
                        headers={**headers, **scored.headers()})

    out.post(["/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{version}/infer"],
             service.guard(v2_infer), "kserve-v2", "KServe v2 inference",
             body_doc({JSON: {"schema": V2_REQUEST}, "application/octet-stream": BINARY},
                      "JSON tensors, or the binary tensor extension: a JSON header (the JSON schema above) of "
                      "Inference-Header-Content-Length bytes, then each binary input's raw little-endian values "
                      "in input order."),
             {"description": "v2 inference response; binary scores after the JSON header when asked for",
              "content": {JSON: {"schema": {"type": "object"}}, "application/octet-stream": BINARY}})
    return out
