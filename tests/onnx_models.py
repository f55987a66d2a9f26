"""Test helpers shared by the inference, serving and benchmark tests: small ONNX models that follow the export
contract (``wtag.schema``), inputs for them, their offline scores, and the real server process serving them.

Imported by test modules as ``onnx_models`` (pytest puts ``tests/`` on the path); no test module imports
another test module.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
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
from onnx import TensorProto, helper, numpy_helper

from wtag import schema
from wtag.jets import make_jets
from ports import free_port

REPO = Path(__file__).resolve().parents[1]
N_HL = len(schema.HL_FEATURES)
N_PART = len(schema.PARTICLE_FEATURES)
CPU = "CPUExecutionProvider"


# ------------------------------------------------------------------------------------------------ models

def add_metadata(model: onnx.ModelProto, inputs: list[str], tagger: str) -> onnx.ModelProto:
    """The ``metadata_props`` an exported tagger carries (``schema.Meta``)."""
    for key, value in {schema.Meta.TAGGER: tagger, schema.Meta.INPUTS: json.dumps(inputs),
                       schema.Meta.HL_FEATURES: json.dumps(list(schema.HL_FEATURES)),
                       schema.Meta.PARTICLE_FEATURES: json.dumps(list(schema.PARTICLE_FEATURES)),
                       schema.Meta.MAX_PARTICLES: str(schema.MAX_PARTICLES),
                       schema.Meta.PREPROCESSING: "baked"}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return model


def build_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def hl_model(seed: int = 0, input_type: int = TensorProto.FLOAT, output: str = schema.OUTPUT_SCORE
             ) -> onnx.ModelProto:
    """Logistic regression on the hl table, as exported: raw float32 (N, 10) in, (N,) score out."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.05, (N_HL, 1)).astype(np.float32)
    nodes = [helper.make_node("Cast", [schema.INPUT_HL], ["x"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["z1"]),
             helper.make_node("Sigmoid", ["z1"], ["p"]), helper.make_node("Reshape", ["p", "flat"], [output])]
    graph = helper.make_graph(
        nodes, "hl_logreg", [helper.make_tensor_value_info(schema.INPUT_HL, input_type, ["N", N_HL])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([0.1], np.float32), "b"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    return add_metadata(build_model(graph), [schema.INPUT_HL], "dnn")


def physical_hl_model() -> onnx.ModelProto:
    """Logistic regression on raw hl features (scaled so real jets give scores spread over (0, 1))."""
    weights = (np.array([0.03, 0.01, -2.0, 1.0, 0.5, -3.0, 1.0, 0.02, -0.004, 0.3], np.float32)
               .reshape(N_HL, 1))
    nodes = [helper.make_node("MatMul", [schema.INPUT_HL, "w"], ["z"]), helper.make_node("Add", ["z", "b"], ["z1"]),
             helper.make_node("Sigmoid", ["z1"], ["p"]),
             helper.make_node("Reshape", ["p", "flat"], [schema.OUTPUT_SCORE])]
    graph = helper.make_graph(
        nodes, "hl_logreg", [helper.make_tensor_value_info(schema.INPUT_HL, TensorProto.FLOAT, ["N", N_HL])],
        [helper.make_tensor_value_info(schema.OUTPUT_SCORE, TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([-0.5], np.float32), "b"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    return add_metadata(build_model(graph), [schema.INPUT_HL], "dnn")


def hl_particles_model(seed: int = 1) -> onnx.ModelProto:
    """Two inputs (hl and particles), so multi-input validation and batching are exercised."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (N_HL, 1)).astype(np.float32)
    v = rng.normal(0, 0.05, (N_PART, 1)).astype(np.float32)
    hl, particles = schema.INPUT_HL, schema.INPUT_PARTICLES
    nodes = [helper.make_node("MatMul", [hl, "w"], ["zh"]), helper.make_node("Reshape", ["zh", "flat"], ["h"]),
             helper.make_node("MatMul", [particles, "v"], ["zp"]),
             helper.make_node("ReduceSum", ["zp", "axes"], ["p"], keepdims=0),
             helper.make_node("Add", ["h", "p"], ["z"]), helper.make_node("Sigmoid", ["z"], [schema.OUTPUT_SCORE])]
    graph = helper.make_graph(
        nodes, "hl_particles",
        [helper.make_tensor_value_info(hl, TensorProto.FLOAT, ["N", N_HL]),
         helper.make_tensor_value_info(particles, TensorProto.FLOAT, ["N", schema.MAX_PARTICLES, N_PART])],
        [helper.make_tensor_value_info(schema.OUTPUT_SCORE, TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "axes")])
    return add_metadata(build_model(graph), [hl, particles], "pfn")


# ------------------------------------------------------------------------------------------------ inputs

def random_jets(n: int, seed: int = 3) -> ak.Array:
    """Two-prong jets of random PF candidates around eta 0.3, phi 1 (every field computed from candidates)."""
    rng = np.random.default_rng(seed)
    pts, etas, phis, ids, charges = [], [], [], [], []
    for _ in range(n):
        k = int(rng.integers(3, 40))
        prong = rng.integers(0, 2, k)
        pts.append(rng.exponential(15.0, k) + 1.0)
        etas.append(0.3 + np.where(prong, 0.25, -0.1) + rng.normal(0, 0.08, k))
        phis.append(1.0 + np.where(prong, -0.2, 0.1) + rng.normal(0, 0.08, k))
        ids.append(rng.choice([211, -211, 22, 130, 11, -13], k))
        charges.append(np.where(np.abs(ids[-1]) == 211, np.sign(ids[-1]), 0))
    return make_jets({"ak7pfcand_pt": pts, "ak7pfcand_eta": etas, "ak7pfcand_phi": phis, "ak7pfcand_id": ids,
                      "ak7pfcand_charge": charges})


def random_jet_dicts(n: int, seed: int = 3, max_candidates: int = 80) -> list[dict[str, list[float]]]:
    """Two-prong jets of PF candidates in the request format of /v1/score-jets."""
    rng = np.random.default_rng(seed)
    jets = []
    for _ in range(n):
        k = int(rng.integers(3, max_candidates))
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


def hl_batch(n: int, seed: int = 0) -> np.ndarray:
    """Physical-looking hl rows (msd, mass, taus, ratios, ncand, pt, eta) as float32."""
    rng = np.random.default_rng(seed)
    tau1 = rng.uniform(0.1, 0.5, n)
    tau2 = tau1 * rng.uniform(0.2, 0.9, n)
    tau3 = tau2 * rng.uniform(0.3, 0.9, n)
    cols = [rng.uniform(10, 150, n), rng.uniform(20, 200, n), tau1, tau2, tau3, tau2 / tau1, tau3 / tau2,
            rng.integers(10, 80, n), rng.uniform(200, 500, n), rng.uniform(-2, 2, n)]
    return np.stack(cols, axis=1).astype(np.float32)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ scores

def offline_scores(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The model's scores from a bare ONNX Runtime session on the CPU."""
    session = ort.InferenceSession(str(path), providers=[CPU])
    return session.run([schema.OUTPUT_SCORE], {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()})[0]


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


# ------------------------------------------------------------------------------------------------ servers

@dataclass
class Server:
    url: str
    port: int
    model: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0)


def server_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH; ``None`` values unset a variable."""
    environ = {**os.environ}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src"), environ.get("PYTHONPATH", "")])
    return environ


@contextlib.contextmanager
def serve(model: Path, log: Path, *args: str, env: dict[str, str | None] | None = None,
          ready_path: str = "/v2/health/ready") -> Iterator[Server]:
    """``python -m serving`` on a free port; waits for readiness, always terminates the process. One worker and
    no gRPC endpoint unless ``args`` ask for them."""
    port = free_port()
    if "--workers" not in args:
        args = (*args, "--workers", "1")
    if "--grpc-port" not in args:
        args = (*args, "--grpc-port", "0")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serving", "--model", str(model), "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=server_env(env))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}{ready_path}", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Server(url, port, model, log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


TOKEN = "s3cret-token"


def check_bad_requests(server: Server, cases: list[tuple[str, str, bytes, dict[str, str], int, str]]) -> str:
    """Send each (method, path, body, headers, status, message fragment): the status and an ``error`` message
    containing the fragment; then the server is still ready and scores a good request. Returns /metrics."""
    good_row = [[1.0] * N_HL]
    with server.client() as client:
        for method, path, body, headers, status, fragment in cases:
            resp = client.request(method, path, content=body, headers=headers)
            assert resp.status_code == status, (path, body[:80], resp.text)
            message = resp.json()["error"]
            assert fragment in message, (path, message)
        assert client.get("/v2/health/ready").status_code == 200
        good = client.post("/invocations", json={"inputs": good_row})
        assert good.status_code == 200
        assert_scores(good.json()["predictions"]["score"], offline_scores(server.model, {"hl": np.array(good_row)}))
        return client.get("/metrics").text


def slow_hl_model(width: int = 2048, layers: int = 2) -> onnx.ModelProto:
    """An hl model made slow on purpose (``layers`` dense width x width layers): about 8 MFLOP per jet per layer
    at the default width, so a few thousand jets keep ONNX Runtime busy for a while (limits, timeouts)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (N_HL, width)).astype(np.float32), "w_in"),
             numpy_helper.from_array(rng.normal(0, 0.02, (width, 1)).astype(np.float32), "w_out"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    nodes = [helper.make_node("MatMul", [schema.INPUT_HL, "w_in"], ["h0"])]
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32),
                                             f"w{i}"))
        nodes += [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"z{i}"]),
                  helper.make_node("Tanh", [f"z{i}"], [f"h{i + 1}"])]
    nodes += [helper.make_node("MatMul", [f"h{layers}", "w_out"], ["o"]), helper.make_node("Sigmoid", ["o"], ["p"]),
              helper.make_node("Reshape", ["p", "flat"], [schema.OUTPUT_SCORE])]
    graph = helper.make_graph(
        nodes, "slow_hl", [helper.make_tensor_value_info(schema.INPUT_HL, TensorProto.FLOAT, ["N", N_HL])],
        [helper.make_tensor_value_info(schema.OUTPUT_SCORE, TensorProto.FLOAT, ["N"])], inits)
    return add_metadata(build_model(graph), [schema.INPUT_HL], "dnn")


def one_jet_only_model() -> onnx.ModelProto:
    """Meets the contract but ONNX Runtime fails to run it for more than one jet (a Reshape to [1, 10]): the
    server's 500 path, with a real model failing inside a real session."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Reshape", [schema.INPUT_HL, "one"], ["x"]), helper.make_node("MatMul", ["x", "w"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"]), helper.make_node("Reshape", ["p", "flat"], [schema.OUTPUT_SCORE])]
    graph = helper.make_graph(
        nodes, "one_jet", [helper.make_tensor_value_info(schema.INPUT_HL, TensorProto.FLOAT, ["N", N_HL])],
        [helper.make_tensor_value_info(schema.OUTPUT_SCORE, TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(np.array([1, N_HL], np.int64), "one"),
         numpy_helper.from_array(rng.normal(0, 0.1, (N_HL, 1)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    return add_metadata(build_model(graph), [schema.INPUT_HL], "dnn")
