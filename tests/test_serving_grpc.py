"""KServe v2 over gRPC with a stock ``tritonclient.grpc`` client: health, metadata, the model configuration
(also over HTTP), inference equal to HTTP and offline scores, the token, errors as gRPC status codes."""
from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from onnx_models import N_HL, TOKEN, Server, assert_scores, hl_batch, metric, offline_scores
from wtag import schema

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.mark.slow
def test_stock_tritonclient_grpc_scores_as_http(grpc_server: tuple[Server, int]) -> None:
    import tritonclient.grpc as triton

    server, port = grpc_server
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("wtag")
    meta = client.get_server_metadata(headers=AUTH, as_json=True)
    assert meta["name"] == "wtag" and "model_configuration" in meta["extensions"]
    model = client.get_model_metadata("wtag", headers=AUTH, as_json=True)
    assert model["inputs"] == [{"name": "hl", "datatype": "FP32", "shape": ["-1", str(N_HL)]}]
    assert model["outputs"] == [{"name": "score", "datatype": "FP32", "shape": ["-1"]}]
    x = hl_batch(300, seed=60)
    tensor = triton.InferInput(schema.INPUT_HL, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("wtag", [tensor], headers=AUTH, request_id="grpc-1",
                          outputs=[triton.InferRequestedOutput(schema.OUTPUT_SCORE)])
    assert result.get_response().id == "grpc-1"
    assert_scores(result.as_numpy(schema.OUTPUT_SCORE), offline_scores(server.model, {"hl": x}))
    with server.client(TOKEN) as http:
        over_http = http.post("/v2/models/wtag/infer", json={"inputs": [
            {"name": "hl", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
    assert_scores(over_http.json()["outputs"][0]["data"], result.as_numpy(schema.OUTPUT_SCORE))
    doubles = triton.InferInput(schema.INPUT_HL, list(x.shape), "FP64")
    doubles.set_data_from_numpy(x.astype(np.float64))
    assert_scores(client.infer("wtag", [doubles], headers=AUTH, model_version="1").as_numpy("score"),
                  offline_scores(server.model, {"hl": x}))
    client.close()


@pytest.mark.slow
def test_model_config_over_grpc_and_http_carries_the_real_limits(grpc_server: tuple[Server, int]) -> None:
    import tritonclient.grpc as triton

    server, port = grpc_server
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    config = client.get_model_config("wtag", headers=AUTH).config
    client.close()
    assert config.name == "hl" and config.platform == "onnxruntime_onnx"  # one model: "wtag" finds it too
    assert config.max_batch_size == 100_000
    assert list(config.dynamic_batching.preferred_batch_size) == [512]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 256
    assert [(i.name, list(i.dims)) for i in config.input] == [("hl", [N_HL])]
    assert [o.name for o in config.output] == ["score"]
    with server.client(TOKEN) as http:
        over_http = http.get("/v2/models/wtag/config")
        assert over_http.status_code == 200
        assert over_http.json() == json_format.MessageToDict(config, preserving_proto_field_name=True)
        assert http.get("/v2/models/wtag/versions/1/config").status_code == 200
        assert http.get("/v2/models/other/config").status_code == 404


@pytest.mark.slow
def test_grpc_errors_are_status_codes_with_the_http_messages(grpc_server: tuple[Server, int]) -> None:
    import tritonclient.grpc as triton
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    from tritonclient.utils import InferenceServerException

    server, port = grpc_server
    before = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    x = hl_batch(4, seed=61)
    tensor = triton.InferInput(schema.INPUT_HL, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    cases = [(dict(model_name="wtag"), "StatusCode.UNAUTHENTICATED", "bearer token"),
             (dict(model_name="other", headers=AUTH), "StatusCode.NOT_FOUND", "unknown model 'other'"),
             (dict(model_name="wtag", model_version="9", headers=AUTH), "StatusCode.NOT_FOUND", "no version '9'")]
    for kwargs, code, fragment in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(inputs=[tensor], **kwargs)
        assert caught.value.status() == code and fragment in caught.value.message(), caught.value
    wrong = triton.InferInput(schema.INPUT_HL, [4, 9], "FP32")
    wrong.set_data_from_numpy(x[:, :9].copy())
    with pytest.raises(InferenceServerException) as caught:
        client.infer("wtag", [wrong], headers=AUTH)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "input 'hl' has shape (4, 9), expected (N, 10)" in caught.value.message()
    client.close()
    # typed ``contents`` instead of raw bytes, straight through the generated stub
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="wtag", inputs=[
            service_pb2.ModelInferRequest.InferInputTensor(
                name="hl", datatype="FP32", shape=list(x.shape),
                contents=service_pb2.InferTensorContents(fp32_contents=x.ravel().tolist()))])
        reply = stub.ModelInfer(request, metadata=tuple(AUTH.items()))
        assert_scores(np.frombuffer(reply.raw_output_contents[0], "<f4"), offline_scores(server.model, {"hl": x}))
        request.inputs[0].contents.fp32_contents.append(1.0)
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ModelInfer(request, metadata=tuple(AUTH.items()))
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "contents has 41 values" in rpc.value.details()
    metrics = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    for code, count in (("UNAUTHENTICATED", 1), ("NOT_FOUND", 2), ("INTERNAL", 0)):
        assert (metric(metrics, "wtag_grpc_requests_total", method="ModelInfer", code=code)
                - metric(before, "wtag_grpc_requests_total", method="ModelInfer", code=code)) == count, code
