"""The assembled server as a real process: health, metadata and the OpenAPI document, batching across
requests, errors outside any protocol, body limits, bearer-token auth, slow bodies, settings, the GPU."""
from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import hashlib
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from onnx_models import (N_HL, N_PART, TOKEN, Server, assert_scores, check_bad_requests, hl_batch, metric,
                         npy_bytes as _npy, offline_scores, physical_hl_model as hl_model, serve)
from serving.app import create_app
from serving.settings import TOKEN_ENV, ServerSettings
from wtag import schema
from wtag.errors import WtagError
from wtag.inference import cuda_device_count

JSON = {"Content-Type": "application/json"}
NPY = {"Content-Type": "application/x-npy"}


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
        # the model is named by URI (here its file name), registry version and sha256, never by a local path
        raw = client.get("/v1/metadata").text
        assert meta["uri"] == "hl.onnx" and "path" not in meta and str(hl_server.model.parent) not in raw
        assert str(hl_server.model.parent) not in client.get("/metrics").text
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


def v2_json(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "hl", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def test_bodies_from_offload_bytes_on_are_decoded_in_a_decode_process(hl_server: Server) -> None:
    small, large = hl_batch(10, seed=61), hl_batch(8000, seed=62)  # about 2 kB and 1.5 MB of v2 JSON
    assert len(json.dumps(v2_json(large))) > ServerSettings().offload_bytes > len(json.dumps(v2_json(small)))
    with hl_server.client() as client:
        before = client.get("/metrics").text
        for x in (small, large):
            resp = client.post("/v2/models/wtag/infer", json=v2_json(x))
            assert resp.status_code == 200, resp.text
            assert_scores(resp.json()["outputs"][0]["data"], offline_scores(hl_server.model, {"hl": x}))
        after = client.get("/metrics").text
    for where in ("loop", "process"):
        assert metric(after, "wtag_decoded_bodies_total", where=where) - \
            metric(before, "wtag_decoded_bodies_total", where=where) == 1, where


def test_hot_scoring_routes_skip_the_framework_middleware_and_keep_the_edge(tmp_path: Path) -> None:
    """Scoring POSTs go from the edge layer straight to their endpoints (a middleware added to the FastAPI app
    never sees them; other routes pass through it), with the edge's token check and per-route metrics kept."""
    onnx.save(hl_model(), str(tmp_path / "hl.onnx"))
    app = create_app(tmp_path / "hl.onnx", ServerSettings(decode_processes=0, device="cpu", auth_token=TOKEN))
    seen: list[str] = []

    @app.middleware("http")
    async def record(request, call_next):  # type: ignore[no-untyped-def]
        seen.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    x = hl_batch(5, seed=63)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def scenario() -> tuple[list[httpx.Response], str]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://wtag") as client:
                answers = [await client.post("/v2/models/wtag/infer", json=v2_json(x), headers=auth),
                           await client.post("/v2/models/wtag/versions/1/infer", json=v2_json(x), headers=auth),
                           await client.post("/v1/score-npy", content=_npy(x), headers={**NPY, **auth}),
                           await client.post("/v1/score-npy", content=_npy(x), headers=NPY),
                           await client.get("/v2/models/wtag", headers=auth)]
                return answers, (await client.get("/metrics", headers=auth)).text

    answers, metrics = asyncio.run(scenario())
    assert [r.status_code for r in answers] == [200, 200, 200, 401, 200], [r.text for r in answers]
    for resp in answers[:2]:
        assert_scores(resp.json()["outputs"][0]["data"], offline_scores(tmp_path / "hl.onnx", {"hl": x}))
    assert seen == ["GET /v2/models/wtag", "GET /metrics"]
    assert metric(metrics, "wtag_http_requests_total", route="/v2/models/{model_name}/infer", status="200") == 1
    assert metric(metrics, "wtag_http_requests_total", route="/v2/models/{model_name}/versions/{version}/infer",
                  status="200") == 1
    assert metric(metrics, "wtag_http_requests_total", route="/v1/score-npy", status="401") == 1


def test_a_larger_offload_bytes_decodes_the_same_body_on_the_event_loop(tmp_path: Path) -> None:
    onnx.save(hl_model(), str(tmp_path / "hl.onnx"))
    app = create_app(tmp_path / "hl.onnx", ServerSettings(offload_bytes=10**7, decode_processes=0, device="cpu"))
    x = hl_batch(8000, seed=62)
    assert len(json.dumps(v2_json(x))) > ServerSettings().offload_bytes

    async def scenario() -> tuple[httpx.Response, str]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://wtag") as client:
                return await client.post("/v2/models/wtag/infer", json=v2_json(x)), (await client.get("/metrics")).text

    resp, metrics = asyncio.run(scenario())
    assert resp.status_code == 200, resp.text
    assert_scores(resp.json()["outputs"][0]["data"], offline_scores(tmp_path / "hl.onnx", {"hl": x}))
    assert metric(metrics, "wtag_decoded_bodies_total", where="loop") == 1
    assert metric(metrics, "wtag_decoded_bodies_total", where="process") == 0


APP_BAD_REQUESTS = [
    # (method, path, body, headers, status, message fragment)
    ("GET", "/nowhere", b"", {}, 404, "no route GET /nowhere"),
    ("POST", "/invocations", gzip.compress(b'{"inputs": [[1]]}')[:-4], {**JSON, "Content-Encoding": "gzip"}, 400,
     "not valid gzip data"),
    ("POST", "/invocations", b"{}", {**JSON, "Content-Encoding": "br"}, 415, "Content-Encoding 'br'"),
]


@pytest.mark.slow
def test_app_bad_requests_get_4xx_with_a_message_and_the_server_stays_healthy(hl_server: Server) -> None:
    metrics = check_bad_requests(hl_server, APP_BAD_REQUESTS)
    assert metric(metrics, "wtag_http_requests_total", status="500") == 0



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


def _instances(schema: dict, with_optional: bool) -> list[object]:
    """Minimal instances of a JSON schema, one per ``oneOf`` branch (and per branch of the values inside)."""
    if "oneOf" in schema:
        return [x for sub in schema["oneOf"] for x in _instances(sub, with_optional)]
    if "enum" in schema:
        return [schema["enum"][0]]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        names = list(props) if with_optional else schema.get("required", [])
        choices = {name: _instances(props[name], with_optional) for name in names}
        base = {name: options[0] for name, options in choices.items()}
        return [base] + [{**base, name: option} for name, options in choices.items() for option in options[1:]]
    if kind == "array":
        n = max(schema.get("minItems", 0), 1 if with_optional else 0)
        items = schema.get("items", {})
        if schema.get("uniqueItems") and "enum" in items:
            return [items["enum"][:n]]
        return [[item] * n for item in _instances(items, with_optional)] if n else [[]]
    if kind == "number":
        return [schema.get("exclusiveMinimum", 0) + 1.5]
    if kind == "integer":
        return [1]
    if kind == "boolean":
        return [False]
    return ["x"]


@pytest.mark.slow
def test_openapi_bodies_are_what_the_server_accepts(hl_server: Server) -> None:
    """Every body the OpenAPI document describes (minimal instances of each alternative, with and without the
    optional fields) is accepted; the binary routes list the media types they take."""
    with hl_server.client() as client:
        spec = client.get("/openapi.json").json()
        sent = 0
        for path in ("/invocations", "/v1/score-jets"):
            schema_ = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            for with_optional in (False, True):
                for body in _instances(schema_, with_optional):
                    resp = client.post(path, json=body)
                    assert resp.status_code == 200, (path, body, resp.text)
                    sent += 1
        assert sent >= 10
        npy = spec["paths"]["/v1/score-npy"]["post"]["requestBody"]["content"]
        assert set(npy) == {"application/x-npy", "application/x-npz", "application/octet-stream"}
        params = {p["name"]: p for p in spec["paths"]["/v1/score-file"]["post"]["parameters"]}
        assert params["format"]["schema"]["enum"] == ["auto", "root", "npy"]
        for value in ("auto", "npy"):
            assert client.post("/v1/score-file", params={"format": value, "select": "false"},
                               content=_npy(np.ones((2, 3)))).status_code == 422  # a plain array, not c2numpy
        assert client.post("/v1/score-file", params={"verbose": "1"}, content=b"root").status_code == 422
