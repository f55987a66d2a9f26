"""Raw jets and files (/v1/score-jets, /v1/score-file): served scores equal the model on the training feature
code (the train/serve skew test), ROOT and CMS .npy uploads, the real 2011A jets, the demo client."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import awkward as ak
import httpx
import numpy as np
import onnx
import pytest

from onnx_models import (REPO, TOKEN, Server, assert_scores, canonical, check_bad_requests, metric,
                         hl_model, npy_bytes as _npy, offline_scores, physical_hl_model, random_jet_dicts,
                         server_env)
from serving.settings import TOKEN_ENV
from wtag import schema
from wtag.features import complete_jets, model_inputs
from wtag.jets import make_jets, write_jets
from ports import free_port

JSON = {"Content-Type": "application/json"}
_JET = {"pt": [10.0, 20.0], "eta": [0.1, 0.2], "phi": [1.0, 1.1]}


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
    onnx.save(physical_hl_model(), str(tmp_path / "hl.onnx"))
    onnx.save(hl_model(seed=3), str(tmp_path / "other.onnx"))
    port = free_port()
    env = server_env({TOKEN_ENV: None})
    state = tmp_path / "state"
    demo = [sys.executable, str(REPO / "examples" / "score_demo.py"), "--state-dir", str(state)]
    try:
        done = subprocess.run([*demo, "--model", f"champion={tmp_path / 'hl.onnx'}", "--model",
                               f"other={tmp_path / 'other.onnx'}", "--port", str(port), "--data", str(shared_data)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "serving 2 model(s) from one process" in done.stdout and "champion, other" in done.stdout
        for name in ("champion", "other"):
            assert re.search(rf"scored 773 jets through POST /v1/score-jets\?model={name} in .* jets/s",
                             done.stdout), done.stdout
        assert done.stdout.count("W-tag score: mean") == 2 and "[0.9, 1.0)" in done.stdout
        for name, file in (("champion", "hl.onnx"), ("other", "other.onnx")):
            meta = httpx.get(f"http://127.0.0.1:{port}/v1/metadata", params={"model": name}, timeout=10).json()
            assert meta["sha256"] == hashlib.sha256((tmp_path / file).read_bytes()).hexdigest()
    finally:
        stopped = subprocess.run([*demo, "--stop"], env=env, capture_output=True, text=True, timeout=60)
    assert "stopped the demo server" in stopped.stdout
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2)


JETS_BAD_REQUESTS = [
    # (method, path, body, headers, status, message fragment)
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
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "charge": None}]}).encode(), JSON, 422,
     "jets[0].charge must be a list (one value per candidate), got null; leave it out instead"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "jet_pt": None}]}).encode(), JSON, 422,
     "jets[0].jet_pt must be a number, got null"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "mass": 80.0}]}).encode(), JSON, 422,
     "unknown field(s) 'mass'"),
    ("POST", "/v1/score-jets", json.dumps({"jets": [{**_JET, "jet_pt": 300.0}, _JET]}).encode(), JSON, 422,
     "'jet_pt' is given for some jets but not jets[1]"),
    ("POST", "/v1/score-file", b"just some text", {}, 400, "neither a ROOT file nor a .npy file"),
    ("POST", "/v1/score-file", _npy(np.ones((3, 4))), {}, 422, "uploaded npy file: a plain float64 array"),
    ("POST", "/v1/score-file", b"root", {}, 422, "uploaded root file"),
    ("POST", "/v1/score-file?format=csv", b"root", {}, 422, "format"),
]


@pytest.mark.slow
def test_jets_bad_requests_get_4xx_with_a_message_and_the_server_stays_healthy(hl_server: Server) -> None:
    metrics = check_bad_requests(hl_server, JETS_BAD_REQUESTS)
    assert metric(metrics, "wtag_http_requests_total", status="500") == 0

