"""MLflow scoring protocol (/invocations): every format scores as ONNX Runtime does, the MLflow client works,
bad requests get MLflow-style 4xx."""
from __future__ import annotations

import json

import pytest

from onnx_models import (N_HL, Server, assert_scores, check_bad_requests, hl_batch, metric, offline_scores)
from wtag import schema

MLFLOW_IMPORT_WARNING = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")
_HL_ROW = [[1.0] * N_HL]
JSON = {"Content-Type": "application/json"}


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


MLFLOW_BAD_REQUESTS = [
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
]


@pytest.mark.slow
def test_mlflow_bad_requests_get_4xx_with_a_message_and_the_server_stays_healthy(hl_server: Server) -> None:
    metrics = check_bad_requests(hl_server, MLFLOW_BAD_REQUESTS)
    assert metric(metrics, "wtag_http_requests_total", status="500") == 0
    assert metric(metrics, "wtag_http_requests_total", route="/invocations", status="422") >= 10
