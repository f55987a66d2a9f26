"""Several models in one server: names, routing over HTTP (v2 JSON and binary, /v1 with ?model=, MLflow) and
gRPC to each model's own session, unknown names as 404 / NOT_FOUND naming the served models, the repository
index, and each model's jets-per-run cap from its own memory cost."""
from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_models import (Server, add_metadata, assert_scores, build_model, hl_batch, hl_model, metric,
                         npy_bytes, offline_scores, physical_hl_model, serve)
from serving.models import jets_per_run, model_name, name_models
from serving.settings import TOKEN_ENV, ServerSettings
from wtag import schema
from wtag.errors import WtagError
from wtag.inference import OnnxTagger, bytes_per_jet
from ports import free_port

NPY = {"Content-Type": "application/x-npy"}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int, dict[str, str]]]:
    """One process serving two hl models, named as ``main``'s aliases: (server, gRPC port, name -> file)."""
    root = tmp_path_factory.mktemp("two-models")
    files = {"champion": root / "champion.onnx", "decorrelated": root / "ddt.onnx"}
    onnx.save(physical_hl_model(), str(files["champion"]))
    onnx.save(hl_model(seed=4), str(files["decorrelated"]))
    port = free_port()
    with serve(files["champion"], root / "server.log", "--model", f"decorrelated={files['decorrelated']}",
               "--grpc-port", str(port), env={TOKEN_ENV: None}) as server:
        yield server, port, {name: str(path) for name, path in files.items()}


def _triton_tensor(module, x: np.ndarray, binary: bool = True):
    tensor = module.InferInput("hl", list(x.shape), "FP32")
    if module.__name__.endswith("http"):
        tensor.set_data_from_numpy(x, binary_data=binary)
    else:
        tensor.set_data_from_numpy(x)
    return tensor


@pytest.mark.slow
def test_two_models_each_score_as_offline_over_every_protocol(two_models: tuple[Server, int, dict[str, str]]) -> None:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    server, port, files = two_models
    x = hl_batch(25, seed=80)
    expected = {name: offline_scores(path, {"hl": x}) for name, path in files.items()}
    assert np.abs(expected["champion"] - expected["decorrelated"]).max() > 1e-3
    http_client = triton_http.InferenceServerClient(f"127.0.0.1:{server.port}")
    grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
    with server.client() as client:
        for name in files:
            for binary in (False, True):
                result = http_client.infer(name, [_triton_tensor(triton_http, x, binary)])
                assert_scores(result.as_numpy("score"), expected[name])
                assert result.get_response()["model_name"] == name
            assert_scores(grpc_client.infer(name, [_triton_tensor(triton_grpc, x)]).as_numpy("score"),
                          expected[name])
            resp = client.post("/v1/score-npy", params={"model": name}, content=npy_bytes(x), headers=NPY)
            assert resp.status_code == 200 and resp.headers["wtag-model"] == name
            assert resp.headers["wtag-model-version"] == "1"
            assert_scores(np.load(io.BytesIO(resp.content)), expected[name])
            assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
            assert client.get(f"/v2/models/{name}/config").json()["name"] == name
            assert client.get("/v1/metadata", params={"model": name}).json()["name"] == name
        # the first model is the default: /invocations, /v1 without ?model=, and the name "wtag"
        default = client.post("/invocations", json={"inputs": x.tolist()})
        assert_scores(default.json()["predictions"]["score"], expected["champion"])
        assert default.headers["wtag-model"] == "champion"
        assert_scores(np.load(io.BytesIO(client.post("/v1/score-npy", content=npy_bytes(x), headers=NPY).content)),
                      expected["champion"])
        assert_scores(http_client.infer("wtag", [_triton_tensor(triton_http, x)]).as_numpy("score"),
                      expected["champion"])
        index = client.get("/v2/models").json()["models"]
        assert [(m["name"], m["version"], m["state"]) for m in index] == [("champion", "1", "READY"),
                                                                          ("decorrelated", "1", "READY")]
        for entry in index:
            with open(files[entry["name"]], "rb") as f:
                assert entry["sha256"] == hashlib.sha256(f.read()).hexdigest()
        assert client.post("/v2/repository/index").json() == index
        metrics = client.get("/metrics").text
    repository = grpc_client.get_model_repository_index(as_json=True)["models"]
    assert [(m["name"], m["state"]) for m in repository] == [("champion", "READY"), ("decorrelated", "READY")]
    http_client.close()
    grpc_client.close()
    for name in files:
        assert metric(metrics, "wtag_jets_scored_total", model=name) >= 3 * len(x)
        assert metric(metrics, "wtag_model_info", model=name, version="1") == 1


@pytest.mark.slow
def test_an_unknown_model_is_404_or_not_found_naming_the_served_models(
        two_models: tuple[Server, int, dict[str, str]]) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    server, port, _ = two_models
    message = "unknown model 'nope'; this server serves 'champion', 'decorrelated'"
    x = hl_batch(2, seed=81)
    with server.client() as client:
        for method, path, params in (("POST", "/v2/models/nope/infer", {}), ("GET", "/v2/models/nope", {}),
                                     ("GET", "/v2/models/nope/config", {}),
                                     ("POST", "/v1/score-npy", {"model": "nope"}),
                                     ("POST", "/v1/score-jets", {"model": "nope"}),
                                     ("GET", "/v1/metadata", {"model": "nope"})):
            resp = client.request(method, path, params=params, content=npy_bytes(x), headers=NPY)
            assert resp.status_code == 404 and resp.json()["error"] == message, (path, resp.text)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and caught.value.details() == message


def test_model_names_come_from_aliases_and_stems() -> None:
    assert model_name("models:/wtag@champion") == "champion"
    assert model_name("models:/wtag/3") == "wtag"
    assert model_name("runs:/abc/model") == "model"
    assert model_name("/data/export/ddt.onnx") == "ddt"
    assert list(name_models(["models:/wtag@champion", "b=/x/a.onnx", ("c", b"\0")])) == ["champion", "b", "c"]
    with pytest.raises(WtagError, match="two models are named 'a'"):
        name_models(["/x/a.onnx", "/y/a.onnx"])
    with pytest.raises(WtagError, match="model name 'a b'"):
        name_models(["a b=/x/a.onnx"])


def _pair_model(particles: int = 60, channels: int = 8) -> onnx.ModelProto:
    """A toy pair-feature tagger: (N, P, 4) particles -> (N, P, P, C) pair features -> one score per jet, the
    memory shape that made ParT need 40 GB at 16,384 jets per run."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Unsqueeze", ["particles", "ax2"], ["a"]),
             helper.make_node("Unsqueeze", ["particles", "ax1"], ["b"]),
             helper.make_node("Sub", ["a", "b"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["pairs"]),
             helper.make_node("ReduceMean", ["pairs"], ["m"], axes=[1, 2, 3], keepdims=0),
             helper.make_node("Sigmoid", ["m"], [schema.OUTPUT_SCORE])]
    graph = helper.make_graph(
        nodes, "pairs", [helper.make_tensor_value_info("particles", TensorProto.FLOAT, ["N", particles, 4])],
        [helper.make_tensor_value_info(schema.OUTPUT_SCORE, TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.array([2], np.int64), "ax2"),
         numpy_helper.from_array(np.array([1], np.int64), "ax1"),
         numpy_helper.from_array(rng.normal(size=(4, channels)).astype(np.float32), "w")])
    return add_metadata(build_model(graph), ["particles"], "part")


def test_jets_per_run_come_from_the_model_s_own_memory_cost() -> None:
    pairs = _pair_model()
    cost = bytes_per_jet(pairs)
    assert cost >= 60 * 60 * 8 * 4  # the (N, 60, 60, 8) float32 pair tensor
    settings = ServerSettings(max_run_bytes=1 << 30)
    tagger = OnnxTagger(pairs.SerializeToString(), device="cpu")
    assert tagger.bytes_per_jet == cost and jets_per_run(tagger, settings) == (1 << 30) // cost < 16384
    light = OnnxTagger(physical_hl_model().SerializeToString(), device="cpu")
    assert light.bytes_per_jet < 200 and jets_per_run(light, settings) == settings.max_batch_size
    pairs.metadata_props.append(onnx.StringStringEntryProto(key=schema.Meta.BYTES_PER_JET, value=str(1 << 20)))
    declared = OnnxTagger(pairs.SerializeToString(), device="cpu")
    assert declared.bytes_per_jet == 1 << 20 and jets_per_run(declared, settings) == 1024
    x = np.random.default_rng(8).normal(size=(3, 60, 4)).astype(np.float32)
    assert np.isfinite(declared.score({"particles": x})).all()
