"""The REST server: ONNX taggers behind the protocol modules of ``serving.protocols``.

``create_app`` loads the models into a :class:`~serving.service.Service` (a session and batcher each), lets every
protocol module add its routes, and wraps them in the shared edge middleware (auth, body limit, metrics).
Every error a client can cause is a 4xx in the protocol's error style; /metrics exposes Prometheus counters.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

import wtag
from serving.edge import EdgeMiddleware
from serving.errors import HANDLED
from serving.models import ModelRef, name_models
from serving.protocols import PROTOCOLS, prepare_decoder
from serving.service import Service
from serving.settings import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_PORT, ServerSettings
from serving.wire import error_response

log = logging.getLogger("wtag.serving")
# Seconds in-flight requests get to finish once shutdown begins (HTTP, then gRPC).
HTTP_GRACE_S = 10
GRPC_GRACE_S = 5
# The API document is the app's own; it stays reachable without a token, as the protocols' probes do.
DOC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


Models = ModelRef | Sequence[ModelRef | tuple[str, ModelRef]] | Mapping[str, ModelRef]


def create_app(models: Models, settings: ServerSettings | None = None,
               grpc_address: tuple[str, int] | None = None) -> ServingApp:
    """Load the models (one reference, a list, or name -> reference; paths, MLflow URIs or bytes) and build the
    app; nothing is shared between apps. With ``grpc_address`` (host, port), the KServe v2 gRPC service runs
    beside it, started and stopped with it."""
    named = models if isinstance(models, Mapping) else \
        name_models([models] if isinstance(models, str | bytes | os.PathLike) else models)
    service = Service.load(named, settings or ServerSettings(), prepare_decoder)
    for model in service.models.values():
        tagger = model.tagger
        log.info("serving model %s: %s (registered model %s, version %s) sha256 %s tagger %s inputs %s on %s, "
                 "%d jets per run (%d bytes per jet)", model.name, tagger.source.public_uri,
                 tagger.source.registered_name or "-", tagger.source.version or "-", tagger.sha256,
                 tagger.tagger or "-", ", ".join(tagger.inputs), tagger.provider, tagger.max_batch,
                 tagger.bytes_per_jet)
    tagger = service.tagger

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        grpc_server = None
        try:
            if grpc_address is not None:
                from serving.protocols.kserve_grpc import start_server

                grpc_server = await start_server(service, *grpc_address)
            yield
        finally:
            if grpc_server is not None:  # HTTP has drained; in-flight gRPC calls get GRPC_GRACE_S to finish
                await grpc_server.stop(GRPC_GRACE_S)
            await service.stop()

    served = ", ".join(f"`{m.name}` ({m.tagger.source.public_uri}, sha256 {m.tagger.sha256[:12]}…)"
                       for m in service.models.values())
    app = ServingApp(title="wtag scoring server", version=wtag.__version__, lifespan=lifespan,
                  description=f"Scores AK7 jets with the W-tagger ONNX models {served} on {tagger.provider}; "
                              "the first is the default. "
                              "Protocols: MLflow `/invocations`, KServe v2 `/v2/...`, bulk `.npy` "
                              "`/v1/score-npy`, raw PF-candidate jets `/v1/score-jets` and files "
                              "`/v1/score-file`.")
    app.state.service = service
    app.state.tagger = tagger
    app.state.settings = service.settings
    add_error_handlers(app, service)
    documented: dict[str, dict[str, Any]] = {}
    plain = []
    open_paths = set(DOC_PATHS)
    for protocol in PROTOCOLS:
        routes = protocol.routes(service)
        app.include_router(routes.router)
        plain += routes.plain
        documented.update(routes.documented)
        open_paths |= routes.open
    app.router.routes[:0] = plain  # the hot scoring routes are matched first
    app.edge = EdgeMiddleware(functools.partial(FastAPI.__call__, app), settings=service.settings,
                              metrics=service.metrics, routes=lambda: app.routes, auth=service.auth,
                              open_paths=open_paths, hot=plain)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
            document["paths"].update(documented)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class ServingApp(FastAPI):
    """FastAPI with the shared edge layer (``serving.edge``) outside all of FastAPI's own middleware, so the
    hot scoring routes skip it."""

    edge: EdgeMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.edge is None:
            await super().__call__(scope, receive, send)
        else:
            await self.edge(scope, receive, send)


def add_error_handlers(app: FastAPI, service: Service) -> None:
    """Errors the protocol modules do not answer themselves (FastAPI routes, unknown routes and methods,
    invalid query parameters, bugs), answered ``{"error": message}`` as the one error policy maps them."""

    async def answer(request: Request, exc: Exception) -> Response:
        failed = service.failure(exc, f"{request.method} {request.url.path}")
        return error_response(failed.status, failed.message, failed.headers)

    for kind in HANDLED:
        app.add_exception_handler(kind, answer)


def run(model: Models, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: ServerSettings | None = None,
        grpc_port: int = DEFAULT_GRPC_PORT, workers: int = 1) -> None:
    """Serve the models until interrupted: one process, or ``workers`` processes sharing the ports (SO_REUSEPORT)
    under a supervising parent (``serving.workers``). ``grpc_port`` 0: no gRPC endpoint."""
    settings = settings or ServerSettings()
    if workers > 1:
        from serving.workers import supervise

        supervise(serve_process, model, host, port, dataclasses.replace(settings, workers=workers), grpc_port, workers)
        return
    serve_process(model, host, port, settings, grpc_port)


def serve_process(model: Models, host: str, port: int, settings: ServerSettings, grpc_port: int,
                  sock: socket.socket | None = None, ready: Callable[[], None] | None = None) -> None:
    """One server process: build the app, then uvicorn (uvloop and httptools when installed) on ``host:port``
    or the given socket; SIGTERM or Ctrl-C drains in-flight requests for up to HTTP_GRACE_S."""
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    app = create_app(model, settings, (host, grpc_port) if grpc_port else None)
    # The ~100k objects of the imported libraries and the model never die; freezing them keeps full garbage
    # collections (tens of ms over that heap) out of request latency.
    gc.freeze()
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False, server_header=False,
                            timeout_keep_alive=30, timeout_graceful_shutdown=HTTP_GRACE_S)
    log.info("listening on http://%s:%d (pid %d)", host, port, os.getpid())
    if ready is not None:
        ready()
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)


__all__ = ["ServerSettings", "create_app", "run"]
