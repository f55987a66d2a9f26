"""KServe v2 over HTTP: tritonclient JSON and binary tensors, other datatypes, the binary encoder, bad requests."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onnx_models import N_HL, Server, assert_scores, check_bad_requests, hl_batch, metric, offline_scores
from serving.protocols import kserve_v2

JSON = {"Content-Type": "application/json"}
_HL_ROW = [[1.0] * N_HL]
_V2_OK = {"name": "hl", "shape": [1, N_HL], "datatype": "FP32", "data": _HL_ROW[0]}


@pytest.mark.slow
@pytest.mark.parametrize("binary_in, binary_out", [(False, False), (True, True), (True, False), (False, True)])
def test_tritonclient_json_and_binary(hl_server: Server, binary_in: bool, binary_out: bool) -> None:
    import tritonclient.http as triton

    x = hl_batch(21, seed=4)
    client = triton.InferenceServerClient(f"127.0.0.1:{hl_server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("wtag")
    assert client.get_model_metadata("wtag")["inputs"][0]["shape"] == [-1, N_HL]
    tensor = triton.InferInput("hl", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    result = client.infer("wtag", [tensor], outputs=[triton.InferRequestedOutput("score", binary_data=binary_out)],
                          request_id="req-7")
    expected = offline_scores(hl_server.model, {"hl": x})
    assert_scores(result.as_numpy("score"), expected)
    assert result.get_response()["id"] == "req-7"
    # no outputs named: the client asks for binary outputs; explicit version; gzip-compressed request body
    plain = client.infer("wtag", [tensor], model_version="1", request_compression_algorithm="gzip")
    assert_scores(plain.as_numpy("score"), expected)
    client.close()


@pytest.mark.slow
def test_v2_accepts_other_numeric_datatypes(hl_server: Server) -> None:
    x = hl_batch(4, seed=5)
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bfloat16
    header = {"inputs": [{"name": "hl", "shape": [4, N_HL], "datatype": "BF16",
                          "parameters": {"binary_data_size": bf16.nbytes}}]}
    head = json.dumps(header).encode()
    with hl_server.client() as client:
        resp = client.post("/v2/models/wtag/infer", content=head + bf16.tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(head))})
        assert resp.status_code == 200, resp.text
        assert_scores(resp.json()["outputs"][0]["data"],
                      offline_scores(hl_server.model, {"hl": (bf16.astype(np.uint32) << 16).view(np.float32)}))
        doubles = {"inputs": [{"name": "hl", "shape": [4, N_HL], "datatype": "FP64",
                               "data": x.astype(np.float64).tolist()}]}
        resp = client.post("/v2/models/wtag/infer", json=doubles)
        assert_scores(resp.json()["outputs"][0]["data"], offline_scores(hl_server.model, {"hl": x}))


def _v2(tensors: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"inputs": tensors, **extra}).encode()


V2_BAD_REQUESTS = [
    # (method, path, body, headers, status, message fragment)
    ("POST", "/v2/models/other/infer", _v2([_V2_OK]), JSON, 404, "unknown model 'other'"),
    ("POST", "/v2/models/wtag/versions/9/infer", _v2([_V2_OK]), JSON, 404, "no version '9'"),
    ("GET", "/v2/models/other", b"", {}, 404, "unknown model"),
    ("POST", "/v2/models/wtag/infer", b'{"inputs": []}', JSON, 422, "non-empty 'inputs'"),
    ("POST", "/v2/models/wtag/infer", _v2([{**_V2_OK, "datatype": "BYTES"}]), JSON, 422, "datatype 'BYTES'"),
    ("POST", "/v2/models/wtag/infer", _v2([{**_V2_OK, "datatype": []}]), JSON, 422, "datatype []"),
    ("POST", "/v2/models/wtag/infer", _v2([{**_V2_OK, "shape": [2, N_HL]}]), JSON, 422, "data has 10 values"),
    ("POST", "/v2/models/wtag/infer", _v2([{**_V2_OK, "shape": [1, -10]}]), JSON, 422, "non-negative integers"),
    ("POST", "/v2/models/wtag/infer", _v2([{**_V2_OK, "name": "images"}]), JSON, 422, "missing 'hl'"),
    ("POST", "/v2/models/wtag/infer", _v2([_V2_OK, _V2_OK]), JSON, 422, "given twice"),
    ("POST", "/v2/models/wtag/infer", _v2([{**_V2_OK, "data": ["x"] * 10}]), JSON, 422,
     "input 'hl' data (FP32) must all be numbers"),
    ("POST", "/v2/models/wtag/infer", _v2([{**_V2_OK, "datatype": "INT32", "data": [1.5] * 10}]), JSON, 422,
     "input 'hl' data (INT32) must all be integers"),
    ("POST", "/v2/models/wtag/infer", _v2([_V2_OK], outputs=[{"name": "prob"}]), JSON, 422, "unknown output 'prob'"),
    ("POST", "/v2/models/wtag/infer", _v2([{k: v for k, v in _V2_OK.items() if k != "data"}]), JSON, 422,
     "neither 'data' nor binary_data_size"),
    ("POST", "/v2/models/wtag/infer", b'{"inputs": 1}' + b"\0" * 40,
     {"Inference-Header-Content-Length": "500"}, 400, "outside the body"),
    ("POST", "/v2/models/wtag/infer", b'{"inputs": 1}', {"Inference-Header-Content-Length": "ten"}, 400,
     "not an integer"),
    ("POST", "/v2/models/wtag/infer",
     _v2([{**{k: v for k, v in _V2_OK.items() if k != "data"}, "parameters": {"binary_data_size": 40}}]) + b"\0" * 20,
     {"Inference-Header-Content-Length": str(len(_v2([{**{k: v for k, v in _V2_OK.items() if k != "data"},
                                                     "parameters": {"binary_data_size": 40}}])))}, 400,
     "body holds 20 binary bytes, expected 40"),
    ("POST", "/v2/models/wtag/infer",
     _v2([{**{k: v for k, v in _V2_OK.items() if k != "data"}, "parameters": {"binary_data_size": 8}}]) + b"\0" * 8,
     {"Inference-Header-Content-Length": str(len(_v2([{**{k: v for k, v in _V2_OK.items() if k != "data"},
                                                     "parameters": {"binary_data_size": 8}}])))}, 422,
     "does not match shape"),
    ("POST", "/v2/models/wtag/infer", _v2([_V2_OK]) + b"\0" * 4, {"Inference-Header-Content-Length":
                                                                  str(len(_v2([_V2_OK])))}, 400, "no input claims"),
]


@pytest.mark.slow
def test_v2_bad_requests_get_4xx_with_a_message_and_the_server_stays_healthy(hl_server: Server) -> None:
    metrics = check_bad_requests(hl_server, V2_BAD_REQUESTS)
    assert metric(metrics, "wtag_http_requests_total", status="500") == 0


def test_v2_encode_binary_round_trip() -> None:
    scores = np.array([0.25, 0.5, 0.125], np.float32)
    body, headers = kserve_v2.v2_encode(scores, {"binary": True, "id": "a"}, "3")
    size = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:size])
    assert header["model_version"] == "3" and header["id"] == "a"
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 12
    np.testing.assert_array_equal(np.frombuffer(body[size:], "<f4"), scores)
