"""The REST server: one ONNX tagger behind the MLflow, KServe v2, bulk binary and raw-jet protocols.

Requests are read as bytes and decoded by ``serving.protocols`` (no per-number pydantic validation), checked
by ``OnnxTagger.validate`` and scored through the dynamic batcher. Every error a client can cause is a 4xx
with a JSON ``{"error": message}``; /metrics exposes Prometheus counters and histograms.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import hmac
import logging
import os
import re
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import wtag
from serving import protocols
from serving.batcher import BatcherStopped, DynamicBatcher
from serving.metrics import ServerMetrics
from serving.protocols import MODEL_NAME, RequestError
from serving.settings import ServerSettings
from wtag.errors import WtagError
from wtag.features import complete_jets
from wtag.inference import OnnxTagger
from wtag.jets import make_jets, read_jets, select

log = logging.getLogger("wtag.serving")

JSON = "application/json"
# Probes and the API document stay reachable without a token (they carry no data).
OPEN_PATHS = frozenset({"/ping", "/health", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs",
                        "/docs/oauth2-redirect", "/redoc"})
_ROOT_MAGIC = b"root"
_NPY_MAGIC = b"\x93NUMPY"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(protocols.dumps({"error": message}), status_code=status, media_type=JSON, headers=headers)


class EdgeMiddleware:
    """Outermost layer: bearer-token check, early 413 from Content-Length, and per-route metrics."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: ServerMetrics,
                 routes: Callable[[], list[BaseRoute]]) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.routes = routes
        self._expected = f"Bearer {settings.auth_token}".encode() if settings.auth_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        early = self._reject(scope)
        try:
            if early is not None:
                await early(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route") or self._match(scope)
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(label, scope["method"], status[0], time.perf_counter() - start)

    def _match(self, scope: Scope) -> BaseRoute | None:
        """The route of a request the router did not label (plain Starlette routes, rejected requests)."""
        for route in self.routes():
            if route.matches(scope)[0] == Match.FULL:
                return route
        return None

    def _reject(self, scope: Scope) -> Response | None:
        headers = dict(scope["headers"])
        if self._expected is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                return _error(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')",
                              {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return _error(400, f"Content-Length {length.decode('latin1')!r} is not an integer")
            if size > self.settings.max_body_bytes:
                return _error(413, f"request body of {size} bytes exceeds the limit of "
                                   f"{self.settings.max_body_bytes} bytes")
        return None


async def read_body(request: Request, settings: ServerSettings) -> bytes:
    """The request body, decompressed if gzip/deflate, within ``max_body_bytes`` (413) and the timeout (408)."""
    limit = settings.max_body_bytes
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"request body not received within {settings.request_timeout_s} s") from None
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(415, f"Content-Encoding '{encoding}' is not supported (use gzip, deflate or none)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(400, f"request body is not valid {encoding} data ({exc})") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise RequestError(413, f"decompressed request body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise RequestError(400, f"request body is not valid {encoding} data (truncated stream)")
    return data


def _body_doc(media: dict[str, Any], description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": media}}


_V2_TENSOR = {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
    "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
    "datatype": {"type": "string", "enum": list(protocols.V2_DTYPES)},
    "data": {"type": "array", "items": {}}, "parameters": {"type": "object"}}}
_JET_SCHEMA = {"type": "object", "required": ["pt", "eta", "phi"], "properties": {
    **{k: {"type": "array", "items": {"type": "number"}} for k in ("pt", "eta", "phi")},
    **{k: {"type": "array", "items": {"type": "integer"}} for k in ("id", "charge")},
    **{k: {"type": "number"} for k in ("jet_pt", "jet_eta", "jet_phi", "jet_E")},
    **{k: {"type": "integer"} for k in ("run", "lumi", "event", "ijet")}}}


def create_app(model: str | os.PathLike[str] | bytes, settings: ServerSettings | None = None) -> FastAPI:
    """Load the model (path, MLflow URI or bytes) and build the app; nothing is shared between apps."""
    settings = settings or ServerSettings()
    tagger = OnnxTagger(model, device=settings.device, max_batch=settings.max_batch_size,
                        intra_op_threads=settings.ort_threads())
    info = tagger.describe()
    log.info("serving model %s (registered model %s, version %s) sha256 %s tagger %s inputs %s on %s",
             info["uri"], info["registered_model"] or "-", info["version"] or "-", tagger.sha256,
             tagger.tagger or "-", ", ".join(tagger.inputs), tagger.provider)
    metrics = ServerMetrics(settings.max_batch_size)
    metrics.model.labels(tagger.source.uri, tagger.version, tagger.sha256, tagger.provider,
                         tagger.tagger or "").set(1)
    tagger.run({name: np.zeros((1, *(d or 1 for d in shape[1:])), dtype=np.float32)
                for name, shape in tagger.input_shapes.items()})
    batcher = DynamicBatcher(tagger.run, settings.max_batch_size, settings.max_queue_delay_ms / 1000.0,
                             observe=metrics.observe_batch)
    features = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wtag-features")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            features.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="wtag scoring server", version=wtag.__version__, lifespan=lifespan,
                  description="Scores AK7 jets with the W-tagger ONNX model "
                              f"`{tagger.source.uri}` (sha256 {tagger.sha256[:12]}…, {tagger.provider}). "
                              "Protocols: MLflow `/invocations`, KServe v2 `/v2/...`, bulk `.npy` "
                              "`/v1/score-npy`, raw PF-candidate jets `/v1/score-jets` and files "
                              "`/v1/score-file`.")
    app.add_middleware(EdgeMiddleware, settings=settings, metrics=metrics, routes=lambda: app.routes)
    app.state.tagger = tagger
    app.state.settings = settings

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> Response:
        if request.url.path == "/invocations":
            code = {400: "BAD_REQUEST", 413: "RESOURCE_LIMIT_EXCEEDED", 415: "BAD_REQUEST"}.get(
                exc.status, "INVALID_PARAMETER_VALUE")
            return Response(protocols.dumps({"error_code": code, "message": exc.message, "error": exc.message}),
                            status_code=exc.status, media_type=JSON)
        return _error(exc.status, exc.message)

    @app.exception_handler(WtagError)
    async def _wtag_error(request: Request, exc: WtagError) -> Response:
        return await _request_error(request, RequestError(422, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        return _error(exc.status_code, str(message), getattr(exc, "headers", None))

    @app.exception_handler(BatcherStopped)
    async def _stopped(request: Request, exc: BatcherStopped) -> Response:
        return _error(503, f"not scored: {exc}")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    async def score(inputs: dict[str, np.ndarray]) -> np.ndarray:
        validated = tagger.validate(inputs)
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                return await batcher.submit(validated)
        except TimeoutError:
            raise RequestError(503, f"scoring took longer than {settings.request_timeout_s} s; "
                                    "the server is overloaded") from None

    async def in_features_thread(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            async with asyncio.timeout(settings.request_timeout_s):
                return await asyncio.get_running_loop().run_in_executor(features, fn, *args)
        except TimeoutError:
            raise RequestError(503, f"computing jet features took longer than {settings.request_timeout_s} s") \
                from None

    def check_model(model_name: str, version: str | None = None) -> None:
        if model_name != MODEL_NAME:
            raise RequestError(404, f"unknown model '{model_name}'; this server serves '{MODEL_NAME}'")
        if version is not None and version != tagger.version:
            raise RequestError(404, f"model '{MODEL_NAME}' has no version '{version}' (serving {tagger.version})")

    # ---- health and metadata -------------------------------------------------------------------------

    @app.get("/ping", tags=["health"], summary="Liveness (as mlflow models serve)")
    @app.get("/health", tags=["health"], summary="Liveness (as mlflow models serve)")
    async def ping() -> Response:
        return Response(protocols.dumps({"status": "ok"}), media_type=JSON)

    @app.get("/version", tags=["health"], summary="Server version (as mlflow models serve)")
    async def version() -> Response:
        return Response(wtag.__version__, media_type="text/plain")

    @app.get("/v2/health/live", tags=["kserve-v2"], summary="KServe v2 liveness")
    @app.get("/v2/health/ready", tags=["kserve-v2"], summary="KServe v2 readiness")
    async def v2_health() -> Response:
        return Response(protocols.dumps({"live": True, "ready": True}), media_type=JSON)

    @app.get("/v1/metadata", tags=["metadata"], summary="The served model: URI, version, sha256, provider, inputs")
    async def metadata() -> Response:
        body = {**info, "settings": {"max_batch_size": settings.max_batch_size,
                                     "max_queue_delay_ms": settings.max_queue_delay_ms,
                                     "max_body_bytes": settings.max_body_bytes,
                                     "request_timeout_s": settings.request_timeout_s,
                                     "auth": settings.auth_token is not None, "device": settings.device,
                                     "intra_op_threads": settings.ort_threads()}}
        return Response(protocols.dumps(body), media_type=JSON)

    @app.get("/metrics", tags=["metadata"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v2", tags=["kserve-v2"], summary="KServe v2 server metadata")
    async def v2_server() -> Response:
        return Response(protocols.dumps({"name": "wtag", "version": wtag.__version__,
                                         "extensions": ["binary_tensor_data"]}), media_type=JSON)

    @app.get("/v2/models/{model_name}", tags=["kserve-v2"], summary="KServe v2 model metadata")
    @app.get("/v2/models/{model_name}/versions/{version}", tags=["kserve-v2"], summary="KServe v2 model metadata")
    async def v2_model(model_name: str, version: str | None = None) -> Response:
        check_model(model_name, version)
        return Response(protocols.dumps(protocols.v2_model_metadata(tagger.input_shapes, tagger.version)),
                        media_type=JSON)

    @app.get("/v2/models/{model_name}/ready", tags=["kserve-v2"], summary="KServe v2 model readiness")
    @app.get("/v2/models/{model_name}/versions/{version}/ready", tags=["kserve-v2"],
             summary="KServe v2 model readiness")
    async def v2_model_ready(model_name: str, version: str | None = None) -> Response:
        check_model(model_name, version)
        return Response(protocols.dumps({"name": MODEL_NAME, "ready": True}), media_type=JSON)

    # ---- scoring -------------------------------------------------------------------------------------

    async def invocations(request: Request) -> Response:
        with batcher.announce():
            body = await read_body(request, settings)
            inputs, style = protocols.mlflow_decode(body, request.headers.get("content-type", ""),
                                                    list(tagger.inputs), tagger.hl_features)
            scores = await score(inputs)
        return Response(protocols.mlflow_encode(scores, style), media_type=JSON)

    async def v2_infer(request: Request) -> Response:
        check_model(request.path_params["model_name"], request.path_params.get("version"))
        with batcher.announce():
            body = await read_body(request, settings)
            inputs, reply = protocols.v2_decode(body, request.headers.get(protocols.HEADER_LENGTH))
            scores = await score(inputs)
        content, headers = protocols.v2_encode(scores, reply, tagger.version)
        return Response(content, media_type="application/octet-stream" if headers else JSON, headers=headers)

    async def score_npy(request: Request) -> Response:
        with batcher.announce():
            body = await read_body(request, settings)
            media = request.headers.get("content-type", protocols.NPY_MEDIA_TYPE).split(";")[0].strip().lower()
            if media == protocols.NPZ_MEDIA_TYPE:
                inputs = protocols.npz_decode(body, settings.max_body_bytes)
            elif media in (protocols.NPY_MEDIA_TYPE, "application/octet-stream"):
                if len(tagger.inputs) != 1:
                    raise RequestError(422, f"this model takes {', '.join(tagger.inputs)}; send an .npz "
                                            f"({protocols.NPZ_MEDIA_TYPE}) with one array per input")
                inputs = {tagger.inputs[0]: protocols.npy_decode(body)}
            else:
                raise RequestError(415, f"content type '{media}' is not supported; send "
                                        f"{protocols.NPY_MEDIA_TYPE} or {protocols.NPZ_MEDIA_TYPE}")
            scores = await score(inputs)
        return Response(protocols.npy_encode(scores), media_type=protocols.NPY_MEDIA_TYPE)

    # The array routes are plain Starlette routes: FastAPI's per-request dependency solving would be a
    # sizeable share of a small request's cost. They are documented in the OpenAPI document by hand.
    raw_routes: dict[str, dict[str, Any]] = {}

    def raw_route(paths: list[str], endpoint: Callable[[Request], Any], tag: str, summary: str,
                  body: dict[str, Any], answer: dict[str, Any]) -> None:
        for path in paths:
            app.router.routes.insert(0, Route(path, endpoint, methods=["POST"]))
            params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"{(\w+)}", path)]
            operation_id = endpoint.__name__ + re.sub(r"\W+", "_", path)
            raw_routes[path] = {"post": {"tags": [tag], "summary": summary, "operationId": operation_id,
                                         "parameters": params, **body, "responses": {
                                             "200": answer, "4XX": {"description": "{\"error\": message}"}}}}

    binary = {"schema": {"type": "string", "format": "binary"}}
    raw_route(["/v1/score-npy"], score_npy, "bulk", "Bulk scoring of .npy / .npz arrays",
              _body_doc({protocols.NPY_MEDIA_TYPE: binary, protocols.NPZ_MEDIA_TYPE: binary},
                        "`.npy` of the single model input (N, ...), or `.npz` with one array per input name."),
              {"description": "float32 scores (N,) as .npy", "content": {protocols.NPY_MEDIA_TYPE: binary}})
    raw_route(["/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{version}/infer"], v2_infer,
              "kserve-v2", "KServe v2 inference",
              _body_doc({JSON: {"schema": {"type": "object", "required": ["inputs"], "properties": {
                  "id": {"type": "string"}, "inputs": {"type": "array", "items": _V2_TENSOR},
                  "outputs": {"type": "array", "items": {"type": "object"}},
                  "parameters": {"type": "object"}}}}, "application/octet-stream": binary},
                  "JSON tensors, or the binary tensor extension (JSON header of Inference-Header-Content-Length "
                  "bytes, then raw little-endian tensors)."),
              {"description": "v2 inference response; binary scores after the JSON header when asked for"})
    raw_route(["/invocations"], invocations, "mlflow", "MLflow scoring protocol",
              _body_doc({JSON: {"schema": {"type": "object", "description": "exactly one of dataframe_split, "
                                           "dataframe_records, inputs, instances", "properties": {
                                               "dataframe_split": {"type": "object"},
                                               "dataframe_records": {"type": "array", "items": {"type": "object"}},
                                               "inputs": {}, "instances": {"type": "array", "items": {}}}}},
                         "text/csv": {"schema": {"type": "string"}}},
                        "As for `mlflow models serve`: a dataframe (hl model: columns named as the hl features) "
                        "or tensors keyed by input name."),
              {"description": "{\"predictions\": [{\"score\": s}, ...]} for dataframes, "
                              "{\"predictions\": {\"score\": [...]}} for tensors"})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            document["paths"].update(raw_routes)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def jets_inputs(columns: dict[str, Any]) -> dict[str, np.ndarray]:
        return tagger.jet_inputs(complete_jets(make_jets(columns)))

    @app.post("/v1/score-jets", tags=["jets"], summary="Score jets given as lists of PF candidates",
              openapi_extra=_body_doc({JSON: {"schema": {"type": "object", "required": ["jets"], "properties": {
                  "jets": {"type": "array", "items": _JET_SCHEMA}}}}},
                  "Each jet: its PF candidates' pt (GeV, > 0), eta, phi and optionally id (PDG code) and "
                  "charge; optional jet_pt/jet_eta/jet_phi/jet_E and run/lumi/event/ijet. The model inputs are "
                  "computed server-side with the training feature code."))
    async def score_jets(request: Request) -> Response:
        with batcher.announce():
            body = await read_body(request, settings)
            columns = protocols.jets_decode(body)
            inputs = await in_features_thread(jets_inputs, columns)
            scores = await score(inputs)
        return Response(protocols.dumps({"n_jets": len(scores), "scores": scores}), media_type=JSON)

    def file_jets(body: bytes, kind: str, tutorial_selection: bool) -> tuple[ak.Array, dict[str, np.ndarray]]:
        suffix = ".root" if kind == "root" else ".npy"
        with tempfile.TemporaryDirectory(prefix="wtag-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(body)
            try:
                if kind == "root":
                    jets = complete_jets(read_jets(path))
                else:
                    from wtag.sources.cms_ntuple import read_cms_ntuple

                    jets = read_cms_ntuple([path])
            except WtagError as exc:  # the temporary name means nothing to the client
                raise WtagError(str(exc).replace(str(path), f"uploaded {kind} file")) from None
        if tutorial_selection:
            jets = select(jets)
        if len(jets) == 0:
            raise WtagError("the file holds no jets" + (" passing the selection" if tutorial_selection else ""))
        return jets, tagger.jet_inputs(jets)

    @app.post("/v1/score-file", tags=["jets"], summary="Score every jet of a ROOT `jets` tree or a CMS .npy",
              openapi_extra=_body_doc({"application/octet-stream": {"schema": {"type": "string",
                                                                               "format": "binary"}}},
                                      "The file itself as the body: a ROOT file with the `jets` TTree, or a "
                                      "tutorial-format (c2numpy) `.npy` of PF candidates."))
    async def score_file(request: Request,
                         file_format: str = Query("auto", alias="format", pattern="^(auto|root|npy)$",
                                             description="file type; auto detects it from the first bytes"),
                         tutorial_selection: bool = Query(False, alias="select",
                                                          description="keep only 200 < pT < 500 GeV, |eta| < 2")
                         ) -> Response:
        with batcher.announce():
            body = await read_body(request, settings)
            kind = file_format
            if kind == "auto":
                if body.startswith(_ROOT_MAGIC):
                    kind = "root"
                elif body.startswith(_NPY_MAGIC):
                    kind = "npy"
                else:
                    raise RequestError(400, "request body is neither a ROOT file nor a .npy file")
            jets, inputs = await in_features_thread(file_jets, body, kind, tutorial_selection)
            scores = await score(inputs)
        result = {"n_jets": len(scores), "scores": scores}
        for field in ("run", "lumi", "event", "ijet", "jet_pt_ak7", "jet_eta_ak7", "jet_msd_ak7"):
            result[field] = ak.to_numpy(jets[field])
        return Response(protocols.dumps(result), media_type=JSON)

    return app


def run(model: str, host: str = "127.0.0.1", port: int = 8080, settings: ServerSettings | None = None) -> None:
    """Serve ``model`` until interrupted (uvloop and httptools are used when installed)."""
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    app = create_app(model, settings or ServerSettings())
    # The ~100k objects of the imported libraries and the model never die; freezing them keeps full garbage
    # collections (tens of ms over that heap) out of request latency.
    gc.freeze()
    log.info("listening on http://%s:%d", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, server_header=False,
                timeout_keep_alive=30, timeout_graceful_shutdown=10)


__all__ = ["OPEN_PATHS", "ServerSettings", "create_app", "run"]
