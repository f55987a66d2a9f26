"""The REST server as a real process on a free port: every protocol, batching, bad input, limits and auth."""
from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving import protocols
from serving.protocols import RequestError
from serving.settings import TOKEN_ENV, ServerSettings
from test_inference import _metadata, _model, hl_particles_model
from wtag import schema
from wtag.errors import WtagError
from wtag.features import complete_jets, model_inputs
from wtag.inference import cuda_device_count
from wtag.jets import make_jets, write_jets
from wtag.tracking import free_port

REPO = Path(__file__).resolve().parents[1]
N_HL = len(schema.HL_FEATURES)
N_PART = len(schema.PARTICLE_FEATURES)
TOKEN = "s3cret-token"
MLFLOW_IMPORT_WARNING = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")


# ------------------------------------------------------------------------------------------------ models

def hl_model() -> onnx.ModelProto:
    """Logistic regression on raw hl features (scaled so real jets give scores spread over (0, 1))."""
    weights = (np.array([0.03, 0.01, -2.0, 1.0, 0.5, -3.0, 1.0, 0.02, -0.004, 0.3], np.float32)
               .reshape(N_HL, 1))
    nodes = [helper.make_node("MatMul", ["hl", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["z1"]),
             helper.make_node("Sigmoid", ["z1"], ["p"]), helper.make_node("Reshape", ["p", "flat"], ["score"])]
    graph = helper.make_graph(
        nodes, "hl_logreg", [helper.make_tensor_value_info("hl", TensorProto.FLOAT, ["N", N_HL])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([-0.5], np.float32), "b"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    return _metadata(_model(graph), ["hl"], "dnn")


def random_jet_dicts(n: int, seed: int = 3) -> list[dict[str, list[float]]]:
    """Two-prong jets of PF candidates in the request format of /v1/score-jets."""
    rng = np.random.default_rng(seed)
    jets = []
    for _ in range(n):
        k = int(rng.integers(3, 80))
        prong = rng.integers(0, 2, k)
        ids = rng.choice([211, -211, 22, 130, 11, -13, 2212], k)
        jets.append({"pt": (rng.exponential(15.0, k) + 1.0).tolist(),
                     "eta": (0.3 + np.where(prong, 0.25, -0.1) + rng.normal(0, 0.08, k)).tolist(),
                     "phi": (3.0 + np.where(prong, 0.3, 0.0) + rng.normal(0, 0.08, k)).tolist(),
                     "id": ids.tolist(), "charge": np.where(np.isin(np.abs(ids), [211, 11, 13, 2212]),
                                                           np.sign(ids), 0).tolist()})
    return jets


def canonical(jet_dicts: list[dict[str, list[float]]]) -> ak.Array:
    return make_jets({f"ak7pfcand_{key}": [jet[key] for jet in jet_dicts]
                      for key in ("pt", "eta", "phi", "id", "charge")})


def offline_scores(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["score"], {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()})[0]


# ------------------------------------------------------------------------------------------------ servers

@dataclass
class Server:
    url: str
    port: int
    model: Path
    log: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0)


@contextlib.contextmanager
def serve(model: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``python -m serving`` on a free port; waits for readiness, always terminates the process."""
    port = free_port()
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src"), environ.get("PYTHONPATH", "")])
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving", "--model", str(model), "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=environ)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Server(url, port, model, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def hl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """hl model; a long queue delay and small max batch so batching and chunking are visible."""
    root = tmp_path_factory.mktemp("hl-server")
    onnx.save(hl_model(), str(root / "hl.onnx"))
    with serve(root / "hl.onnx", root / "server.log", "--max-queue-delay-ms", "100", "--max-batch-size", "64",
               env={TOKEN_ENV: ""}) as server:
        yield server


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two-input model behind a bearer token, with a 200 kB body limit and a 2 s request timeout."""
    root = tmp_path_factory.mktemp("guarded-server")
    onnx.save(hl_particles_model(seed=11), str(root / "pfn.onnx"))
    with serve(root / "pfn.onnx", root / "server.log", "--max-body-bytes", "200000", "--request-timeout-s", "2",
               env={TOKEN_ENV: TOKEN}) as server:
        yield server


def hl_batch(n: int, seed: int = 0) -> np.ndarray:
    """Physical-looking hl rows (msd, mass, taus, ratios, ncand, pt, eta) as float32."""
    rng = np.random.default_rng(seed)
    tau1 = rng.uniform(0.1, 0.5, n)
    tau2 = tau1 * rng.uniform(0.2, 0.9, n)
    tau3 = tau2 * rng.uniform(0.3, 0.9, n)
    cols = [rng.uniform(10, 150, n), rng.uniform(20, 200, n), tau1, tau2, tau3, tau2 / tau1, tau3 / tau2,
            rng.integers(10, 80, n), rng.uniform(200, 500, n), rng.uniform(-2, 2, n)]
    return np.stack(cols, axis=1).astype(np.float32)


def assert_scores(got: object, expected: np.ndarray) -> None:
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), expected)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample's values over series whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


# ------------------------------------------------------------------------------------------------ health

@pytest.mark.slow
def test_health_metadata_and_openapi(hl_server: Server) -> None:
    with hl_server.client() as client:
        for path in ("/ping", "/health", "/v2/health/live", "/v2/health/ready", "/v2/models/wtag/ready",
                     "/v2/models/wtag/versions/1/ready"):
            assert client.get(path).status_code == 200, path
        assert client.get("/version").text == __import__("wtag").__version__
        meta = client.get("/v1/metadata").json()
        assert meta["sha256"] == hashlib.sha256(hl_server.model.read_bytes()).hexdigest()
        assert meta["provider"] == "CPUExecutionProvider"
        assert meta["inputs"] == {"hl": [-1, N_HL]} and meta["tagger"] == "dnn"
        assert meta["settings"]["max_batch_size"] == 64 and meta["settings"]["auth"] is False
        v2 = client.get("/v2/models/wtag").json()
        assert v2["inputs"] == [{"name": "hl", "datatype": "FP32", "shape": [-1, N_HL]}]
        assert v2["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
        assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
        spec = client.get("/openapi.json").json()
        for path in ("/invocations", "/v2/models/{model_name}/infer", "/v1/score-npy", "/v1/score-jets",
                     "/v1/score-file", "/metrics", "/v1/metadata"):
            assert path in spec["paths"], path
        assert "requestBody" in spec["paths"]["/v1/score-jets"]["post"]
    assert "sha256 " + meta["sha256"] in hl_server.log.read_text()


# ------------------------------------------------------------------------------------------------ MLflow protocol

@pytest.mark.slow
@pytest.mark.parametrize("style", ["dataframe_split", "dataframe_split_shuffled", "dataframe_split_unnamed",
                                   "dataframe_records", "inputs", "inputs_dict", "instances", "instances_dict"])
def test_mlflow_formats_match_onnxruntime(hl_server: Server, style: str) -> None:
    x = hl_batch(13, seed=1)
    names = list(schema.HL_FEATURES)
    order = list(reversed(range(N_HL)))
    payload = {
        "dataframe_split": {"dataframe_split": {"columns": names, "data": x.tolist()}},
        "dataframe_split_shuffled": {"dataframe_split": {"columns": [names[i] for i in order],
                                                         "data": x[:, order].tolist(), "index": list(range(13))}},
        "dataframe_split_unnamed": {"dataframe_split": {"data": x.tolist()}},
        "dataframe_records": {"dataframe_records": [dict(zip(names, row)) for row in x.tolist()]},
        "inputs": {"inputs": x.tolist()},
        "inputs_dict": {"inputs": {"hl": x.tolist()}},
        "instances": {"instances": x.tolist()},
        "instances_dict": {"instances": [{"hl": row} for row in x.tolist()]},
    }[style]
    with hl_server.client() as client:
        resp = client.post("/invocations", json=payload)
    assert resp.status_code == 200, resp.text
    expected = offline_scores(hl_server.model, {"hl": x})
    predictions = resp.json()["predictions"]
    if style.startswith("dataframe"):
        assert_scores([row["score"] for row in predictions], expected)
    else:
        assert_scores(predictions["score"], expected)


@pytest.mark.slow
def test_mlflow_csv(hl_server: Server) -> None:
    x = hl_batch(5, seed=2)
    csv = ",".join(schema.HL_FEATURES) + "\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in x)
    with hl_server.client() as client:
        resp = client.post("/invocations", content=csv, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.text
    assert_scores([r["score"] for r in resp.json()["predictions"]], offline_scores(hl_server.model, {"hl": x}))


@pytest.mark.slow
@MLFLOW_IMPORT_WARNING
def test_mlflow_scoring_client_talks_to_the_server(hl_server: Server) -> None:
    import pandas as pd
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    x = hl_batch(9, seed=3)
    client = ScoringServerClient("127.0.0.1", hl_server.port)
    client.wait_server_ready(timeout=10)
    frame = client.invoke(pd.DataFrame(x, columns=list(schema.HL_FEATURES))).get_predictions()
    assert list(frame.columns) == ["score"]
    expected = offline_scores(hl_server.model, {"hl": x})
    assert_scores(frame["score"].to_numpy(), expected)
    tensor = client.invoke(x).get_predictions()
    assert_scores(tensor["score"].to_numpy(), expected)


# ------------------------------------------------------------------------------------------------ KServe v2

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


# ------------------------------------------------------------------------------------------------ bulk binary

@pytest.mark.slow
@pytest.mark.parametrize("layout", ["float32", "float64", "fortran", "big-batch"])
def test_npy_route(hl_server: Server, layout: str) -> None:
    x = hl_batch(1000 if layout == "big-batch" else 17, seed=6)
    sent = {"float32": x, "float64": x.astype(np.float64), "fortran": np.asfortranarray(x), "big-batch": x}[layout]
    buffer = io.BytesIO()
    np.save(buffer, sent)
    with hl_server.client() as client:
        resp = client.post("/v1/score-npy", content=buffer.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-npy"
    scores = np.load(io.BytesIO(resp.content), allow_pickle=False)
    assert scores.dtype == np.float32 and scores.shape == (len(x),)
    assert_scores(scores, offline_scores(hl_server.model, {"hl": x}))


@pytest.mark.slow
def test_npz_route_for_two_inputs(guarded_server: Server) -> None:
    rng = np.random.default_rng(7)
    inputs = {"hl": hl_batch(6, seed=7),
              "particles": rng.normal(size=(6, schema.MAX_PARTICLES, N_PART)).astype(np.float32)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **inputs)
    with guarded_server.client(TOKEN) as client:
        resp = client.post("/v1/score-npy", content=buffer.getvalue(), headers={"Content-Type": "application/x-npz"})
        assert resp.status_code == 200, resp.text
        assert_scores(np.load(io.BytesIO(resp.content)), offline_scores(guarded_server.model, inputs))
        single = io.BytesIO()
        np.save(single, inputs["hl"])
        resp = client.post("/v1/score-npy", content=single.getvalue(), headers={"Content-Type": "application/x-npy"})
        assert resp.status_code == 422 and "send an .npz" in resp.json()["error"]


# ------------------------------------------------------------------------------------------------ batching

@pytest.mark.slow
def test_concurrent_requests_are_batched_and_answered_individually(hl_server: Server) -> None:
    with hl_server.client() as client:
        before = client.get("/metrics").text
    batches = [[hl_batch(1 + (i + k) % 5, seed=100 + 8 * i + k) for k in range(8)] for i in range(16)]

    def send(xs: list[np.ndarray]) -> list[list[float]]:
        """One keep-alive client sending its requests back to back, as a busy client would."""
        answers = []
        with hl_server.client() as client:
            for x in xs:
                resp = client.post("/v2/models/wtag/infer", json={"inputs": [
                    {"name": "hl", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})
                assert resp.status_code == 200, resp.text
                answers.append(resp.json()["outputs"][0]["data"])
        return answers

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, batches))
    for xs, got in zip(batches, answers):
        for x, scores in zip(xs, got):
            assert_scores(scores, offline_scores(hl_server.model, {"hl": x}))
    with hl_server.client() as client:
        after = client.get("/metrics").text
    runs = metric(after, "wtag_batch_size_requests_count") - metric(before, "wtag_batch_size_requests_count")
    single = (metric(after, "wtag_batch_size_requests_bucket", le="1.0")
              - metric(before, "wtag_batch_size_requests_bucket", le="1.0"))
    assert runs - single >= 1, f"no run merged several requests ({runs} runs)"
    assert runs < 128
    jets = metric(after, "wtag_jets_scored_total") - metric(before, "wtag_jets_scored_total")
    assert jets == sum(len(x) for xs in batches for x in xs)
    assert (metric(after, "wtag_http_requests_total", route="/v2/models/{model_name}/infer", status="200")
            - metric(before, "wtag_http_requests_total", route="/v2/models/{model_name}/infer", status="200")) == 128
    assert metric(after, "wtag_http_request_duration_seconds_count", route="/v2/models/{model_name}/infer") >= 128
    assert metric(after, "wtag_model_info", provider="CPUExecutionProvider") == 1.0


# ------------------------------------------------------------------------------------------------ raw jets

@pytest.mark.slow
def test_score_jets_equals_offline_training_features(guarded_server: Server, hl_server: Server) -> None:
    """The train/serve skew test: the server's scores equal the model on ``model_inputs`` computed offline."""
    jet_dicts = random_jet_dicts(40)
    jets = complete_jets(canonical(jet_dicts))
    for server, names in ((guarded_server, ["hl", "particles"]), (hl_server, ["hl"])):
        with server.client(TOKEN) as client:
            resp = client.post("/v1/score-jets", json={"jets": jet_dicts})
        assert resp.status_code == 200, resp.text
        expected = offline_scores(server.model, model_inputs(jets, names, max_particles=schema.MAX_PARTICLES))
        assert resp.json()["n_jets"] == 40
        assert_scores(resp.json()["scores"], expected)
        assert np.ptp(expected) > 1e-3


@pytest.mark.slow
def test_score_jets_keeps_given_jet_kinematics(hl_server: Server) -> None:
    jet_dicts = random_jet_dicts(3, seed=9)
    for jet in jet_dicts:
        jet.pop("id"), jet.pop("charge")
        jet.update(jet_pt=321.0, jet_eta=0.5, jet_phi=3.1, jet_E=400.0, run=1, event=7, ijet=0)
    columns = {f"ak7pfcand_{k}": [j[k] for j in jet_dicts] for k in ("pt", "eta", "phi")}
    columns |= {"ak7pfcand_id": [[0] * len(j["pt"]) for j in jet_dicts],
                "ak7pfcand_charge": [[0] * len(j["pt"]) for j in jet_dicts],
                "jet_pt_ak7": np.full(3, 321.0), "jet_eta_ak7": np.full(3, 0.5), "jet_phi_ak7": np.full(3, 3.1),
                "jet_E_ak7": np.full(3, 400.0)}
    expected = offline_scores(hl_server.model, model_inputs(complete_jets(make_jets(columns)), ["hl"]))
    with hl_server.client() as client:
        resp = client.post("/v1/score-jets", json={"jets": jet_dicts})
    assert resp.status_code == 200, resp.text
    assert_scores(resp.json()["scores"], expected)


@pytest.mark.slow
def test_score_file_root_tree(hl_server: Server, tmp_path: Path) -> None:
    jet_dicts = random_jet_dicts(12, seed=12)
    jets = canonical(jet_dicts)
    fields = {name: jets[name] for name in jets.fields}
    fields |= {"run": np.full(12, 5, np.int32), "event": np.arange(12, dtype=np.int32),
               "ijet": np.zeros(12, np.int32)}
    path = tmp_path / "jets.root"
    write_jets(path, complete_jets(ak.Array(fields)))
    expected = offline_scores(hl_server.model, model_inputs(complete_jets(make_jets(fields)), ["hl"]))
    with hl_server.client() as client:
        resp = client.post("/v1/score-file", content=path.read_bytes())
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["n_jets"] == 12 and body["run"] == [5] * 12 and body["event"] == list(range(12))
        assert_scores(body["scores"], expected)
        truncated = client.post("/v1/score-file", content=path.read_bytes()[:400])
        assert truncated.status_code == 422
        assert truncated.json()["error"].startswith("uploaded root file: ")


def c2numpy_rows(jet_dicts: list[dict[str, list[float]]]) -> np.ndarray:
    """A tutorial-format structured array: one row per PF candidate, event and jet columns repeated."""
    names = ["run", "lumi", "event", "jet_pt_ak7", "jet_eta_ak7", "jet_phi_ak7", "jet_E_ak7", "ak7pfcand_pt",
             "ak7pfcand_eta", "ak7pfcand_phi", "ak7pfcand_id", "ak7pfcand_charge", "ak7pfcand_ijet"]
    ints = {"run", "lumi", "event", "ak7pfcand_id", "ak7pfcand_charge", "ak7pfcand_ijet"}
    rows = []
    for i, jet in enumerate(jet_dicts):
        pt, eta, phi = (np.asarray(jet[k]) for k in ("pt", "eta", "phi"))
        px, py, pz = (pt * np.cos(phi)).sum(), (pt * np.sin(phi)).sum(), (pt * np.sinh(eta)).sum()
        jet_pt = float(np.hypot(px, py))
        for k in range(len(pt)):
            rows.append((1, 1, 100 + i // 2, jet_pt, float(np.arcsinh(pz / jet_pt)), float(np.arctan2(py, px)),
                         float((pt * np.cosh(eta)).sum()), pt[k], eta[k], phi[k], jet["id"][k], jet["charge"][k],
                         i % 2))
    return np.array(rows, dtype=[(n, "<i4" if n in ints else "<f8") for n in names])


@pytest.mark.slow
def test_score_file_cms_npy(hl_server: Server, tmp_path: Path) -> None:
    from wtag.sources.cms_ntuple import read_cms_ntuple

    path = tmp_path / "params0.npy"
    np.save(path, c2numpy_rows(random_jet_dicts(8, seed=13)))
    jets = read_cms_ntuple([path])
    expected = offline_scores(hl_server.model, model_inputs(jets, ["hl"]))
    with hl_server.client() as client:
        resp = client.post("/v1/score-file", content=path.read_bytes(), params={"format": "npy"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["n_jets"] == 8 and body["ijet"] == [0, 1] * 4
    assert_scores(body["scores"], expected)


@pytest.mark.slow
def test_score_file_real_2011a_collisions(hl_server: Server, shared_data: Path) -> None:
    from wtag.jets import select
    from wtag.sources.cms_ntuple import read_cms_ntuple

    path = shared_data / "cms2011a_jet_pfcands_params0.npy"
    jets = read_cms_ntuple([path])
    with hl_server.client() as client:
        every = client.post("/v1/score-file", content=path.read_bytes())
        selected = client.post("/v1/score-file", content=path.read_bytes(), params={"select": "true"})
    assert every.status_code == 200, every.text
    body = every.json()
    assert body["n_jets"] == len(jets) > 100
    assert set(body["run"]) == {160578}
    assert_scores(body["scores"], offline_scores(hl_server.model, model_inputs(jets, ["hl"])))
    assert selected.status_code == 200, selected.text
    chosen = select(jets)
    assert selected.json()["n_jets"] == len(chosen) > 0
    assert selected.json()["event"] == ak.to_list(chosen["event"])
    assert_scores(selected.json()["scores"], offline_scores(hl_server.model, model_inputs(chosen, ["hl"])))


@pytest.mark.slow
def test_demo_scores_real_jets_and_leaves_the_server_up(tmp_path: Path, shared_data: Path) -> None:
    onnx.save(hl_model(), str(tmp_path / "hl.onnx"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]), TOKEN_ENV: ""}
    state = tmp_path / "state"
    demo = [sys.executable, "-m", "serving.demo", "--state-dir", str(state)]
    try:
        done = subprocess.run([*demo, "--model", str(tmp_path / "hl.onnx"), "--port", str(port),
                               "--data", str(shared_data)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert re.search(r"scored 773 jets through POST /v1/score-jets in .* jets/s", done.stdout), done.stdout
        assert "W-tag score: mean" in done.stdout and "[0.9, 1.0)" in done.stdout
        meta = httpx.get(f"http://127.0.0.1:{port}/v1/metadata", timeout=10).json()
        assert meta["sha256"] == hashlib.sha256((tmp_path / "hl.onnx").read_bytes()).hexdigest()
    finally:
        stopped = subprocess.run([*demo, "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert "stopped the demo server" in stopped.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2)


# ------------------------------------------------------------------------------------------------ bad input

def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _v2(tensors: list[dict[str, object]], **extra: object) -> bytes:
    return json.dumps({"inputs": tensors, **extra}).encode()


_HL_ROW = [[1.0] * N_HL]
_V2_OK = {"name": "hl", "shape": [1, N_HL], "datatype": "FP32", "data": _HL_ROW[0]}
_JET = {"pt": [10.0, 20.0], "eta": [0.1, 0.2], "phi": [1.0, 1.1]}
JSON = {"Content-Type": "application/json"}
NPY = {"Content-Type": "application/x-npy"}

BAD_REQUESTS = [
    # (method, path, body, headers, status, message fragment)
    ("POST", "/invocations", b"{not json", JSON, 400, "not valid JSON"),
    ("POST", "/invocations", b"", JSON, 400, "empty"),
    ("POST", "/invocations", b"[1, 2]", JSON, 422, "must be a JSON object"),
    ("POST", "/invocations", b'{"data": [[1]]}', JSON, 422, "unknown field(s) 'data'"),
    ("POST", "/invocations", b'{}', JSON, 422, "exactly one of"),
    ("POST", "/invocations", json.dumps({"inputs": _HL_ROW, "instances": _HL_ROW}).encode(), JSON, 422, "exactly one"),
    ("POST", "/invocations", json.dumps({"inputs": [[1.0] * 9]}).encode(), JSON, 422, "shape (1, 9), expected (N, 10)"),
    ("POST", "/invocations", json.dumps({"inputs": [[1.0] * 10, [1.0] * 9]}).encode(), JSON, 422,
     "equal-length lists"),
    ("POST", "/invocations", json.dumps({"inputs": [["a"] * 10]}).encode(), JSON, 422, "must all be numbers"),
    ("POST", "/invocations", json.dumps({"inputs": []}).encode(), JSON, 422, "expected (N, 10)"),
    ("POST", "/invocations", json.dumps({"inputs": [[1e39] * 10]}).encode(), JSON, 422, "NaN or infinite"),
    ("POST", "/invocations", json.dumps({"inputs": {"hl": _HL_ROW, "images": _HL_ROW}}).encode(), JSON, 422,
     "unexpected 'images'"),
    ("POST", "/invocations", json.dumps({"dataframe_split": {"columns": list(schema.HL_FEATURES[:9]) + ["x"],
                                                             "data": _HL_ROW}}).encode(), JSON, 422,
     "missing jet_eta_ak7; unknown x"),
    ("POST", "/invocations", json.dumps({"dataframe_split": {"columns": list(schema.HL_FEATURES),
                                                             "data": [[None] * 10]}}).encode(), JSON, 422,
     "null (missing) values"),
    ("POST", "/invocations", json.dumps({"inputs": [["1.5"] * 10]}).encode(), JSON, 422, "must all be numbers"),
    ("POST", "/invocations", json.dumps({"inputs": [[True] * 10]}).encode(), JSON, 422, "must all be numbers"),
    ("POST", "/invocations", json.dumps({"dataframe_records": []}).encode(), JSON, 422, "no rows"),
    ("POST", "/invocations", json.dumps({"inputs": _HL_ROW, "params": {"k": 1}}).encode(), JSON, 422, "no params"),
    ("POST", "/invocations", b"a,b\n1,2\n", {"Content-Type": "text/csv"}, 422, "missing"),
    ("POST", "/invocations", b"x", {"Content-Type": "text/plain"}, 415, "not supported"),
    ("GET", "/invocations", b"", {}, 405, "Method Not Allowed"),
    ("POST", "/v2/models/other/infer", _v2([_V2_OK]), JSON, 404, "unknown model 'other'"),
    ("POST", "/v2/models/wtag/versions/9/infer", _v2([_V2_OK]), JSON, 404, "no version '9'"),
    ("GET", "/v2/models/other", b"", {}, 404, "unknown model"),
    ("POST", "/v2/models/wtag/infer", b'{"inputs": []}', JSON, 422, "non-empty 'inputs'"),
    ("POST", "/v2/models/wtag/infer", _v2([{**_V2_OK, "datatype": "BYTES"}]), JSON, 422, "datatype 'BYTES'"),
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
    ("POST", "/v1/score-npy", b"not an array", NPY, 400, "not a .npy array"),
    ("POST", "/v1/score-npy", _npy(np.ones((3, N_HL)))[:-8], NPY, 400, "data bytes"),
    ("POST", "/v1/score-npy", _npy(np.ones((3, N_HL)))[:12], NPY, 400, "header"),
    ("POST", "/v1/score-npy", _npy(np.array(["a", "b"])), NPY, 422, "expected numbers"),
    ("POST", "/v1/score-npy", _npy(np.zeros(2, dtype=[("a", "<f4"), ("b", "<f4")])), NPY, 422, "expected numbers"),
    ("POST", "/v1/score-npy", _npy(np.ones((3, 7))), NPY, 422, "shape (3, 7)"),
    ("POST", "/v1/score-npy", _npy(np.ones((0, N_HL))), NPY, 422, "empty batch"),
    ("POST", "/v1/score-npy", _npy(np.full((2, N_HL), np.nan)), NPY, 422, "NaN or infinite"),
    ("POST", "/v1/score-npy", _npy(np.ones((3, N_HL))), {"Content-Type": "image/png"}, 415, "not supported"),
    ("POST", "/v1/score-npy", b"PK\x03\x04garbage", {"Content-Type": "application/x-npz"}, 400, "not a .npz"),
    ("POST", "/v1/score-jets", b"[]", JSON, 422, "must be a JSON object"),
    ("POST", "/v1/score-jets", b'{"jets": []}', JSON, 422, "empty batch"),
    ("POST", "/v1/score-jets", b'{"jets": {}}', JSON, 422, "must be an array"),
    ("POST", "/v1/score-jets", b'{"jets": [1]}', JSON, 422, "jets[0] must be an object"),
    ("POST", "/v1/score-jets", b'{"particles": []}', JSON, 422, "unknown field(s) 'particles'"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [_JET, {"pt": [1.0], "eta": [0.0]}]}).encode(), JSON, 422,
     "jets[1] lacks 'phi'"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "eta": [0.1]}]}).encode(), JSON, 422,
     "jets[0].eta has 1 entries but pt has 2"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [_JET, {**_JET, "pt": [10.0, 0.0]}]}).encode(), JSON, 422,
     "jets[1].pt has a value that is not finite and > 0"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "phi": [1.0, 1e400]}]}).encode(), JSON, 400,
     "not valid JSON"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "pt": [], "eta": [], "phi": []}]}).encode(), JSON,
     422, "has no candidates"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "id": [211, "pion"]}]}).encode(), JSON, 422,
     "candidate 'id' values must all be integers"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "charge": [1.0, 0.5]}]}).encode(), JSON, 422,
     "candidate 'charge' values must all be integers"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "mass": 80.0}]}).encode(), JSON, 422,
     "unknown field(s) 'mass'"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "jet_pt": 300.0}, _JET]}).encode(), JSON, 422,
     "'jet_pt' is given for some jets but not jets[1]"),
    ("POST", "/v1/score-file", b"just some text", {}, 400, "neither a ROOT file nor a .npy file"),
    ("POST", "/v1/score-file", _npy(np.ones((3, 4))), {}, 422, "uploaded npy file: a plain float64 array"),
    ("POST", "/v1/score-file", b"root", {}, 422, "uploaded root file"),
    ("POST", "/v1/score-file?format=csv", b"root", {}, 422, "format"),
    ("GET", "/nowhere", b"", {}, 404, "no route GET /nowhere"),
    ("POST", "/invocations", gzip.compress(b'{"inputs": [[1]]}')[:-4], {**JSON, "Content-Encoding": "gzip"}, 400,
     "not valid gzip data"),
    ("POST", "/invocations", b"{}", {**JSON, "Content-Encoding": "br"}, 415, "Content-Encoding 'br'"),
]


@pytest.mark.slow
def test_bad_requests_get_4xx_with_a_message_and_the_server_stays_healthy(hl_server: Server) -> None:
    with hl_server.client() as client:
        for method, path, body, headers, status, fragment in BAD_REQUESTS:
            resp = client.request(method, path, content=body, headers=headers)
            assert resp.status_code == status, (path, body[:80], resp.text)
            message = resp.json()["error"]
            assert fragment in message, (path, message)
        assert client.get("/v2/health/ready").status_code == 200
        good = client.post("/invocations", json={"inputs": _HL_ROW})
        assert good.status_code == 200
        assert_scores(good.json()["predictions"]["score"], offline_scores(hl_server.model, {"hl": np.array(_HL_ROW)}))
        metrics = client.get("/metrics").text
    assert metric(metrics, "wtag_http_requests_total", status="500") == 0
    assert metric(metrics, "wtag_http_requests_total", route="/invocations", status="422") >= 10


@pytest.mark.slow
def test_pickled_bodies_are_never_unpickled(hl_server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    payload = _npy(np.array([Exploit(), Exploit()], dtype=object), allow_pickle=True)
    with hl_server.client() as client:
        for path in ("/v1/score-npy", "/v1/score-file"):
            resp = client.post(path, content=payload, headers=NPY)
            assert resp.status_code == 422, resp.text
            assert "object" in resp.json()["error"] or "Python objects" in resp.json()["error"]
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ limits, auth

@pytest.mark.slow
def test_body_limit_is_413(guarded_server: Server) -> None:
    with guarded_server.client(TOKEN) as client:
        big = client.post("/v1/score-npy", content=b"\0" * 250_000, headers=NPY)
        assert big.status_code == 413 and "exceeds the limit of 200000 bytes" in big.json()["error"]

        def chunks() -> Iterator[bytes]:
            for _ in range(30):
                yield b"\0" * 10_000

        streamed = client.post("/v1/score-npy", content=chunks(), headers=NPY)
        assert streamed.status_code == 413
        bomb = client.post("/invocations", content=gzip.compress(b" " * 5_000_000),
                           headers={**JSON, "Content-Encoding": "gzip"})
        assert bomb.status_code == 413 and "decompressed" in bomb.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200


@pytest.mark.slow
def test_bearer_token_auth(guarded_server: Server) -> None:
    import tritonclient.http as triton

    x = {"hl": hl_batch(2, seed=20), "particles": np.zeros((2, schema.MAX_PARTICLES, N_PART), np.float32)}
    payload = {"inputs": {k: v.tolist() for k, v in x.items()}}
    with guarded_server.client() as anonymous:
        resp = anonymous.post("/invocations", json=payload)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in resp.json()["error"]
        assert anonymous.get("/metrics").status_code == 401
        assert anonymous.get("/v2/health/live").status_code == 200
        assert anonymous.get("/openapi.json").status_code == 200
    with guarded_server.client("wrong") as wrong:
        assert wrong.post("/invocations", json=payload).status_code == 401
    with guarded_server.client(TOKEN) as client:
        resp = client.post("/invocations", json=payload)
        assert resp.status_code == 200, resp.text
        assert_scores(resp.json()["predictions"]["score"], offline_scores(guarded_server.model, x))
        assert client.get("/v1/metadata").json()["settings"]["auth"] is True
        metrics = client.get("/metrics").text
    assert metric(metrics, "wtag_http_requests_total", route="/invocations", status="401") == 2
    assert metric(metrics, "wtag_http_requests_total", route="/metrics", status="401") == 1
    client = triton.InferenceServerClient(f"127.0.0.1:{guarded_server.port}")
    tensors = []
    for name, value in x.items():
        tensor = triton.InferInput(name, list(value.shape), "FP32")
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    result = client.infer("wtag", tensors, headers={"Authorization": f"Bearer {TOKEN}"})
    assert_scores(result.as_numpy("score"), offline_scores(guarded_server.model, x))
    client.close()


@pytest.mark.slow
def test_slow_bodies_time_out(guarded_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", guarded_server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/score-npy HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                     b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 1000\r\n\r\n" + b"\0" * 10)
        start = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
            if b"}" in reply:
                break
        waited = time.monotonic() - start
    text = reply.decode("latin1")
    assert text.startswith("HTTP/1.1 408"), text
    assert "not received within 2.0 s" in text
    assert 1.5 < waited < 8


# ------------------------------------------------------------------------------------------------ units

def test_settings_from_env() -> None:
    settings = ServerSettings.from_env({TOKEN_ENV: "abc", "WTAG_SERVE_MAX_BATCH_SIZE": "128"},
                                       max_queue_delay_ms=5.0, device=None)
    assert settings.auth_token == "abc" and settings.max_batch_size == 128 and settings.max_queue_delay_ms == 5.0
    assert ServerSettings.from_env({}).auth_token is None
    with pytest.raises(WtagError, match="WTAG_SERVE_MAX_BODY_BYTES='lots' is not a valid int"):
        ServerSettings.from_env({"WTAG_SERVE_MAX_BODY_BYTES": "lots"})
    with pytest.raises(WtagError, match="max_batch_size must be >= 1"):
        ServerSettings(max_batch_size=0)
    with pytest.raises(WtagError, match="device 'gpu' is not one of"):
        ServerSettings(device="gpu")
    with pytest.raises(WtagError, match="auth token .* is empty"):
        ServerSettings(auth_token=" ")


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4),
                                   np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                                   np.arange(5, dtype=">i4"), np.float64(2.5)])
def test_npy_decode_matches_numpy(array: np.ndarray) -> None:
    decoded = protocols.npy_decode(_npy(np.asarray(array)))
    np.testing.assert_array_equal(decoded, np.load(io.BytesIO(_npy(np.asarray(array))), allow_pickle=False))
    assert decoded.dtype == np.asarray(array).dtype


def test_npy_decode_reads_version_2_headers() -> None:
    buffer = io.BytesIO()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.lib.format.write_array(buffer, array, version=(2, 0))
    np.testing.assert_array_equal(protocols.npy_decode(buffer.getvalue()), array)
    with pytest.raises(RequestError, match="unreadable .npy header"):
        protocols.npy_decode(b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}")


@pytest.mark.parametrize("n", [1, 17, 100_000])
def test_npy_encode_is_what_numpy_writes(n: int) -> None:
    scores = np.random.default_rng(n).uniform(size=n).astype(np.float32)
    assert protocols.npy_encode(scores) == _npy(scores)


def test_v2_encode_binary_round_trip() -> None:
    scores = np.array([0.25, 0.5, 0.125], np.float32)
    body, headers = protocols.v2_encode(scores, {"binary": True, "id": "a"}, "3")
    size = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:size])
    assert header["model_version"] == "3" and header["id"] == "a"
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 12
    np.testing.assert_array_equal(np.frombuffer(body[size:], "<f4"), scores)


@pytest.mark.gpu
def test_server_on_gpu(tmp_path: Path) -> None:
    if cuda_device_count() == 0:
        pytest.skip("no CUDA GPU visible")
    onnx.save(hl_model(), str(tmp_path / "hl.onnx"))
    with serve(tmp_path / "hl.onnx", tmp_path / "server.log", "--device", "cuda") as server:
        with server.client() as client:
            assert client.get("/v1/metadata").json()["provider"] == "CUDAExecutionProvider"
            x = hl_batch(100, seed=30)
            resp = client.post("/v1/score-npy", content=_npy(x), headers=NPY)
            np.testing.assert_allclose(np.load(io.BytesIO(resp.content)), offline_scores(server.model, {"hl": x}),
                                       atol=1e-6)


# ------------------------------------------------------------------------------------------------ batcher

def _run_batcher(max_batch_size: int, delay_s: float, sizes: list[int], fail: bool = False
                 ) -> tuple[list[int], list[object]]:
    """Submit requests of ``sizes`` rows concurrently (each announced first); the rows of every model run."""
    import asyncio

    from serving.batcher import DynamicBatcher

    runs: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        if fail:
            raise ValueError("model exploded")
        runs.append(len(inputs["x"]))
        return inputs["x"][:, 0] * 2.0

    async def main() -> list[object]:
        batcher = DynamicBatcher(run, max_batch_size, delay_s)
        batcher.start()

        async def one(i: int, n: int) -> object:
            with batcher.announce():
                await asyncio.sleep(0.001 * (i % 3))
                try:
                    return await batcher.submit({"x": np.full((n, 1), float(i), np.float32)})
                except ValueError as exc:
                    return exc

        try:
            return list(await asyncio.gather(*(one(i, n) for i, n in enumerate(sizes))))
        finally:
            await batcher.stop()

    return runs, asyncio.run(main())


def test_batcher_merges_concurrent_requests_and_splits_answers() -> None:
    sizes = [1, 2, 3, 1, 2, 3, 1, 2]
    runs, answers = _run_batcher(max_batch_size=100, delay_s=0.05, sizes=sizes)
    assert sum(runs) == sum(sizes) and len(runs) < len(sizes)
    for i, (n, answer) in enumerate(zip(sizes, answers)):
        np.testing.assert_array_equal(answer, np.full(n, 2.0 * i, np.float32))


def test_batcher_respects_max_batch_size() -> None:
    runs, answers = _run_batcher(max_batch_size=4, delay_s=0.05, sizes=[3, 3, 3, 10, 1])
    assert sum(runs) == 20 and 10 in runs
    assert all(r <= 4 for r in runs if r != 10)
    np.testing.assert_array_equal(answers[3], np.full(10, 6.0, np.float32))


def test_batcher_hands_model_failures_to_every_request() -> None:
    _, answers = _run_batcher(max_batch_size=100, delay_s=0.01, sizes=[1, 2, 3], fail=True)
    assert all(isinstance(a, ValueError) and str(a) == "model exploded" for a in answers)


def test_lone_request_is_not_delayed() -> None:
    start = time.perf_counter()
    runs, _ = _run_batcher(max_batch_size=100, delay_s=5.0, sizes=[1])
    assert runs == [1]
    assert time.perf_counter() - start < 2.0
