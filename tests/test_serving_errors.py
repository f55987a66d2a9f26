"""One error policy and one token check for every protocol: the same mistake gets the same status over REST
(MLflow, KServe v2 JSON and binary, .npy) and gRPC, the token is compared in constant time on both, and bodies
generated from the server's own OpenAPI document (valid, then with one value made wrong) never get a 5xx."""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import sys
import zipfile
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from onnx_models import N_HL, TOKEN, Server, hl_batch, npy_bytes, physical_hl_model
from serving.app import create_app
from serving.errors import GRPC_CODES
from serving.settings import ServerSettings
from wtag import schema
from ports import free_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------------------------------ one status table

def _v2_json(x: np.ndarray) -> dict[str, Any]:
    return {"inputs": [{"name": "hl", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def _send_http(server: Server, protocol: str, x: np.ndarray, model: str, headers: dict[str, str]
               ) -> tuple[int, str]:
    """(status, error message) of one scoring request over a REST protocol."""
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        if protocol == "mlflow":
            resp = client.post("/invocations", json={"inputs": x.tolist()})
        elif protocol == "npy":
            resp = client.post("/v1/score-npy", content=npy_bytes(x), headers={"Content-Type": "application/x-npy"})
        elif protocol == "v2-json":
            resp = client.post(f"/v2/models/{model}/infer", json=_v2_json(x))
        else:
            head = json.dumps({"inputs": [{"name": "hl", "shape": list(x.shape), "datatype": "FP32",
                                           "parameters": {"binary_data_size": x.nbytes}}]}).encode()
            resp = client.post(f"/v2/models/{model}/infer", content=head + x.astype("<f4").tobytes(),
                               headers={"Inference-Header-Content-Length": str(len(head))})
    return resp.status_code, resp.json().get("error", "") if resp.status_code >= 400 else ""


def _send_grpc(port: int, x: np.ndarray, model: str, headers: dict[str, str]) -> tuple[str, str]:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(
        model_name=model, inputs=[service_pb2.ModelInferRequest.InferInputTensor(name="hl", datatype="FP32",
                                                                                 shape=list(x.shape))],
        raw_input_contents=[x.astype("<f4").tobytes()])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, metadata=tuple((k.lower(), v) for k, v in headers.items()))
        except grpc.RpcError as exc:
            return exc.code().name, exc.details()
    return "OK", ""


_NAN = hl_batch(3, seed=70)
_NAN[1, 4] = np.nan
_REST = ("mlflow", "npy", "v2-json", "v2-binary")
_BINARY = ("npy", "v2-binary")  # JSON cannot carry NaN, and 100,001 jets of JSON only cost time
# (case, input, model name, headers, REST protocols, HTTP status): each must answer the status, gRPC its code.
ERROR_TABLE = [
    ("no token", hl_batch(2, seed=71), "wtag", {}, _REST, 401),
    ("wrong token", hl_batch(2, seed=71), "wtag", {"Authorization": "Bearer nope"}, _REST, 401),
    ("unknown model", hl_batch(2, seed=72), "other", AUTH, ("v2-json", "v2-binary"), 404),
    ("wrong shape", hl_batch(4, seed=73)[:, :9].copy(), "wtag", AUTH, _REST, 422),
    ("NaN value", _NAN, "wtag", AUTH, _BINARY, 422),
    ("empty batch", np.zeros((0, N_HL), np.float32), "wtag", AUTH, ("npy", "v2-json", "v2-binary"), 422),
    ("too many jets", np.ones((100_001, N_HL), np.float32), "wtag", AUTH, _BINARY, 413),
]


@pytest.mark.slow
def test_every_protocol_maps_the_same_error_to_the_same_status(grpc_server: tuple[Server, int]) -> None:
    server, port = grpc_server
    for case, x, model, headers, protocols, status in ERROR_TABLE:
        answers = {p: _send_http(server, p, x, model, headers) for p in protocols}
        code, details = _send_grpc(port, x, model, headers)
        assert {p: s for p, (s, _) in answers.items()} == dict.fromkeys(protocols, status), (case, answers)
        assert code == GRPC_CODES[status], (case, code, details)
        if status != 401:  # the 401 hint names the header (HTTP) or the metadata (gRPC) to send
            assert details == answers["v2-binary"][1], (case, details, answers)


# ------------------------------------------------------------------------------------------ constant-time token

def test_both_protocols_check_the_token_in_constant_time() -> None:
    """In one process (app and gRPC server on this event loop): every token check over HTTP and gRPC goes
    through ``hmac.compare_digest``; a token of another length or with non-ASCII bytes is just wrong."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    settings_ = ServerSettings(auth_token=TOKEN, decode_processes=0, device="cpu")
    port = free_port()
    app = create_app(physical_hl_model().SerializeToString(), settings_, ("127.0.0.1", port))

    async def scenario() -> dict[str, tuple[Any, int]]:
        seen: dict[str, tuple[Any, int]] = {}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://wtag") as client, \
                    grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                for name, token in (("right", TOKEN), ("wrong", TOKEN[:-1] + "x"), ("short", "x"),
                                    ("non-ascii", "s3crét")):
                    header = {"Authorization": f"Bearer {token}".encode("utf-8")}
                    calls = [0]

                    def profile(frame: Any, event: str, arg: Any) -> None:
                        if event == "c_call" and arg is hmac.compare_digest:
                            calls[0] += 1

                    sys.setprofile(profile)
                    try:
                        http = await client.get("/v1/metadata", headers=header)
                    finally:
                        sys.setprofile(None)
                    seen[f"http {name}"] = (http.status_code, calls[0])
                    if name == "non-ascii":  # gRPC metadata values are ASCII; clients refuse anything else
                        continue
                    calls[0] = 0
                    sys.setprofile(profile)
                    try:
                        await stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="wtag"),
                                                 metadata=(("authorization", f"Bearer {token}"),))
                        code = "OK"
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code().name
                    finally:
                        sys.setprofile(None)
                    seen[f"grpc {name}"] = (code, calls[0])
        return seen

    seen = asyncio.run(scenario())
    assert seen["http right"][0] == 200 and seen["grpc right"][0] == "OK"
    for name in ("wrong", "short"):
        assert seen[f"http {name}"][0] == 401 and seen[f"grpc {name}"][0] == "UNAUTHENTICATED", seen
    assert seen["http non-ascii"][0] == 401
    assert all(calls >= 1 for _, calls in seen.values()), seen


# ------------------------------------------------------------------------------------------ generated bodies

def _from_schema(doc: dict[str, Any], size: int | None = None) -> st.SearchStrategy[Any]:
    """Values a JSON schema (the subset the OpenAPI document uses) describes. The open-ended arrays of one
    object get one length (``size``): parallel lists, as a jet's pt, eta and phi are."""
    if "oneOf" in doc or "anyOf" in doc:
        return st.one_of([_from_schema(s, size) for s in doc.get("oneOf") or doc["anyOf"]])
    if "enum" in doc:
        return st.sampled_from(doc["enum"])
    kind = doc.get("type")
    if kind == "object":
        return st.integers(1, 3).flatmap(lambda n: _fields_of(doc, n))
    if kind == "array":
        items = doc.get("items", {})
        low = doc.get("minItems", 0)
        high = doc.get("maxItems", low + 3)
        if doc.get("uniqueItems") and "enum" in items:
            return st.permutations(items["enum"]).map(lambda names: list(names[:high]))
        if size is not None and "maxItems" not in doc:
            low = high = max(low, size)
        return st.lists(_from_schema(items), min_size=low, max_size=high)
    if kind == "number":
        low = doc.get("exclusiveMinimum")
        return st.floats(min_value=low, exclude_min=low is not None, allow_nan=False, allow_infinity=False,
                         width=64)
    if kind == "integer":
        return st.integers(min_value=doc.get("minimum"))
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return st.text(max_size=6)
    return _json()


def _fields_of(doc: dict[str, Any], size: int, broken: str | None = None) -> st.SearchStrategy[Any]:
    """An object of schema ``doc`` (its arrays ``size`` long), field ``broken`` made null, another JSON type
    or broken inside."""
    props = doc.get("properties", {})
    required = doc.get("required", [])

    def value(name: str) -> st.SearchStrategy[Any]:
        sub = props.get(name, {})
        if name == broken:
            return st.none() | _json() | _broken(sub)
        return _from_schema(sub, size) if sub else _json()

    optional = {k: value(k) for k in props if k not in required and k != broken}
    return st.fixed_dictionaries({k: value(k) for k in {*required, *([broken] if broken else [])}},
                                 optional=optional)


def _broken(doc: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of schema ``doc`` with exactly one field somewhere inside made null or wrong."""
    if "oneOf" in doc or "anyOf" in doc:
        return st.one_of([_broken(s) for s in doc.get("oneOf") or doc["anyOf"]])
    if doc.get("type") == "object" and doc.get("properties"):
        return st.integers(1, 3).flatmap(lambda n: st.sampled_from(list(doc["properties"])).flatmap(
            lambda name: _fields_of(doc, n, name)))
    if doc.get("type") == "array" and doc.get("items"):
        return st.tuples(st.lists(_from_schema(doc["items"]), max_size=2), _broken(doc["items"])).map(
            lambda parts: [*parts[0], parts[1]])
    return st.none() | _json()


def _json() -> st.SearchStrategy[Any]:
    """Any JSON value: null, booleans, numbers of any size, strings, nested arrays and objects."""
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
        | st.text(max_size=6)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)


WRONG = (None, "x", True, {}, [[]], -1, 1e300)


def _full(doc: dict[str, Any]) -> Any:
    """One instance of each schema with every optional field present (the first alternative of a oneOf)."""
    if "oneOf" in doc or "anyOf" in doc:
        return _full((doc.get("oneOf") or doc["anyOf"])[0])
    if "enum" in doc:
        return doc["enum"][0]
    kind = doc.get("type")
    if kind == "object":
        return {name: _full(sub) for name, sub in doc.get("properties", {}).items()}
    if kind == "array":
        return [_full(doc.get("items", {"type": "number"}))] * max(1, doc.get("minItems", 1))
    return {"number": 1.5, "integer": 1, "boolean": False, "string": "x"}.get(kind, 1.5)


def _field_swaps(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """(path, wrong value) for every object field of ``value``, at any depth, and every value in WRONG."""
    out = []
    if isinstance(value, dict):
        for key, inner in value.items():
            out += [((*path, key), wrong) for wrong in WRONG] + _field_swaps(inner, (*path, key))
    elif isinstance(value, list) and value:
        out += _field_swaps(value[0], (*path, 0))
    return out


def _swapped(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _swapped(value[path[0]], path[1:], new)
    return copy


def _bodies(doc: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Documented bodies, and documented bodies with one field (at any depth) made null or any other JSON."""
    return _from_schema(doc) | _broken(doc)


def _overwritten(data: bytes, edits: dict[int, int]) -> bytes:
    out = bytearray(data)
    for at, value in edits.items():
        if at < len(out):
            out[at] = value
    return bytes(out)


def _check(resp: httpx.Response, body: object) -> None:
    assert resp.status_code < 500, (body, resp.status_code, resp.text)
    if resp.status_code >= 400:
        error = resp.json()["error"]
        assert isinstance(error, str) and error and "Traceback" not in error, (body, error)


@pytest.fixture(scope="module")
def documented(hl_server: Server) -> dict[str, Any]:
    with hl_server.client() as client:
        return client.get("/openapi.json").json()["paths"]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/v1/score-jets", "/invocations", "/v2/models/{model_name}/infer"])
def test_generated_json_bodies_never_get_a_server_error(hl_server: Server, documented: dict[str, Any],
                                                        path: str) -> None:
    doc = documented[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    url = path.replace("{model_name}", "wtag")
    answered: dict[int, int] = {}
    with hl_server.client() as client:

        @FUZZ
        @given(body=_bodies(doc))
        def post(body: object) -> None:
            resp = client.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})
            _check(resp, body)
            answered[resp.status_code] = answered.get(resp.status_code, 0) + 1

        post()
        full = _full(doc)
        for path_, wrong in _field_swaps(full):  # every documented field null or of another type, one at a time
            body = _swapped(full, path_, wrong)
            resp = client.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"})
            _check(resp, body)
            assert resp.status_code in (200, 422), (body, resp.text)
        assert client.get("/v2/health/ready").status_code == 200
    assert sum(answered.values()) >= 80 and set(answered) & {400, 422}, answered


@pytest.mark.slow
@pytest.mark.parametrize("path, media", [("/v1/score-npy", "application/x-npy"),
                                         ("/v1/score-npy", "application/x-npz"),
                                         ("/v1/score-file", "application/octet-stream"),
                                         ("/v2/models/wtag/infer", "application/octet-stream"),
                                         ("/invocations", "text/csv")])
def test_generated_binary_bodies_never_get_a_server_error(hl_server: Server, path: str, media: str) -> None:
    """Random bytes, and real .npy / .npz / v2 binary / CSV bodies with some bytes overwritten."""
    x = hl_batch(3, seed=74)
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("hl.npy", npy_bytes(x))
    head = json.dumps({"inputs": [{"name": "hl", "shape": [3, N_HL], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    csv = (",".join(schema.HL_FEATURES) + "\n" + "\n".join(",".join(map(str, row)) for row in x.tolist())).encode()
    seeds = [npy_bytes(x), npz.getvalue(), head + x.tobytes(), b"root" + bytes(60), csv]
    headers = {"Content-Type": media}
    if path.startswith("/v2"):
        headers["Inference-Header-Content-Length"] = str(len(head))
    edits = st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4)
    bodies = st.binary(max_size=300) | st.tuples(st.sampled_from(seeds), edits).map(
        lambda pair: _overwritten(pair[0], dict(pair[1])))
    with hl_server.client() as client:

        @settings(FUZZ, max_examples=25)
        @given(body=bodies)
        def post(body: bytes) -> None:
            _check(client.post(path, content=body, headers=headers), body[:64])

        post()
