"""Following a registry alias (``--follow-alias``) on a real MLflow tracking server: the alias moves while 8
clients post continuously; no request fails, every answer is one version's offline scores and names that
version, the new version serves within two intervals, and a broken version leaves the old one serving."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from onnx_models import hl_batch, hl_model, metric, npy_bytes, offline_scores, physical_hl_model, serve
from serving.settings import TOKEN_ENV
from wtag import schema

MLFLOW_IMPORT_WARNING = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")
NAME = "wtag-follow"
INTERVAL_S = 1.0
CLIENTS = 8


def _register(model: onnx.ModelProto, example: np.ndarray | None) -> str:
    import mlflow

    with mlflow.start_run():
        info = mlflow.onnx.log_model(model, name="model", registered_model_name=NAME,
                                     input_example=None if example is None else {schema.INPUT_HL: example})
    return str(info.registered_model_version)


@pytest.mark.slow
@MLFLOW_IMPORT_WARNING
def test_alias_moves_under_load_and_a_broken_version_keeps_the_old_one(tracking_uri: str, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment("serving-follow")
    x = hl_batch(20, seed=90)
    versions = [_register(physical_hl_model(), None), _register(hl_model(seed=4), x[:5])]  # v2 checked on x[:5]
    broken = _register(hl_model(seed=6, output="prob"), None)  # loads, but its output is not named 'score'
    files = {}
    for version, proto in zip(versions, (physical_hl_model(), hl_model(seed=4))):
        files[version] = tmp_path / f"v{version}.onnx"
        onnx.save(proto, str(files[version]))
    expected = {v: offline_scores(path, {"hl": x}) for v, path in files.items()}
    registry = MlflowClient()
    registry.set_registered_model_alias(NAME, "champion", versions[0])
    answers: list[tuple[float, float, int, str, np.ndarray | None]] = []  # start, end, status, version, scores
    stop = threading.Event()

    with serve(f"models:/{NAME}@champion", tmp_path / "server.log", "--follow-alias", "--follow-interval-s",
               str(INTERVAL_S), "--decode-processes", "0",
               env={TOKEN_ENV: None, "MLFLOW_TRACKING_URI": tracking_uri}) as server:

        def post() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while not stop.is_set():
                    start = time.monotonic()
                    resp = client.post("/v1/score-npy", content=npy_bytes(x),
                                       headers={"Content-Type": "application/x-npy"})
                    scores = np.load(io.BytesIO(resp.content)) if resp.status_code == 200 else None
                    answers.append((start, time.monotonic(), resp.status_code,
                                    resp.headers.get("wtag-model-version", ""), scores))

        clients = [threading.Thread(target=post) for _ in range(CLIENTS)]
        for thread in clients:
            thread.start()
        try:
            time.sleep(1.0)
            moved = time.monotonic()
            registry.set_registered_model_alias(NAME, "champion", versions[1])
            deadline = moved + 30
            while not any(a[3] == versions[1] for a in answers[-50:]) and time.monotonic() < deadline:
                time.sleep(0.05)
            registry.set_registered_model_alias(NAME, "champion", broken)
            time.sleep(3 * INTERVAL_S)
        finally:
            stop.set()
            for thread in clients:
                thread.join(timeout=60)
        with server.client() as client:
            index = client.get("/v2/models").json()["models"]
            metrics = client.get("/metrics").text
        log = server.log.read_text()

    assert [a[2] for a in answers if a[2] != 200] == [], "requests failed while the alias moved"
    for _, _, _, version, scores in answers:
        assert version in expected, version
        np.testing.assert_array_equal(scores, expected[version])
    first_new = min(end for _, end, _, version, _ in answers if version == versions[1])
    assert first_new - moved <= 2 * INTERVAL_S, f"version {versions[1]} served {first_new - moved:.2f} s after the move"
    later = [version for start, _, _, version, _ in answers if start > first_new]
    assert len(later) > 10 and set(later) == {versions[1]}, "a request sent after the swap met the old version"
    assert max(end for _, end, _, _, _ in answers) > first_new + 3 * INTERVAL_S, "no answers after the broken version"
    assert [(m["name"], m["version"]) for m in index] == [("champion", versions[1])]
    assert metric(metrics, "wtag_model_loads_total", model="champion", outcome="loaded") == 1
    assert metric(metrics, "wtag_model_loads_total", model="champion", outcome="load_failed") == 1
    assert metric(metrics, "wtag_model_info", model="champion", version=versions[1]) == 1
    assert metric(metrics, "wtag_model_info", model="champion", version=versions[0]) == 0
    assert f"version {broken} not loaded (load failed), version {versions[1]} keeps serving" in log
    assert "no output named 'score'" in log
