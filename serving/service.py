"""The served model and what every protocol does with a request: read the body, score through the batcher,
check the model name, answer errors in the protocol's own style."""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from serving.batcher import BatcherStopped, DynamicBatcher
from serving.settings import ServerSettings
from serving.telemetry import ServerMetrics
from serving.wire import RequestError, error_response
from wtag import schema
from wtag.errors import WtagError
from wtag.inference import OnnxTagger

log = logging.getLogger("wtag.serving")

# The name clients address the model by (KServe v2 and gRPC); the registry name it is published under.
MODEL_NAME = schema.REGISTERED_MODEL

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorStyle = Callable[[int, str, Mapping[str, str]], Response]


@dataclasses.dataclass
class Service:
    """One model behind one batcher; built once per app, shared by every protocol module."""

    tagger: OnnxTagger
    settings: ServerSettings
    metrics: ServerMetrics
    batcher: DynamicBatcher
    features: concurrent.futures.ThreadPoolExecutor

    @classmethod
    def load(cls, model: Any, settings: ServerSettings) -> Service:
        tagger = OnnxTagger(model, device=settings.device, max_batch=settings.max_batch_size,
                            intra_op_threads=settings.ort_threads())
        metrics = ServerMetrics(settings.max_batch_size)
        metrics.model.labels(tagger.source.public_uri, tagger.version, tagger.sha256, tagger.provider,
                             tagger.tagger or "").set(1)
        tagger.run({name: np.zeros((1, *(d or 1 for d in shape[1:])), dtype=np.float32)
                    for name, shape in tagger.input_shapes.items()})
        batcher = DynamicBatcher(tagger.run, settings.max_batch_size, settings.max_queue_delay_ms / 1000.0,
                                 observe=metrics.observe_batch)
        features = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wtag-features")
        return cls(tagger, settings, metrics, batcher, features)

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.features.shutdown(wait=False, cancel_futures=True)

    def check_model(self, model_name: str, version: str | None = None) -> None:
        if model_name != MODEL_NAME:
            raise RequestError(404, f"unknown model '{model_name}'; this server serves '{MODEL_NAME}'")
        if version is not None and version != self.tagger.version:
            raise RequestError(404, f"model '{MODEL_NAME}' has no version '{version}' "
                                    f"(serving {self.tagger.version})")

    async def read_body(self, request: Request) -> bytes:
        """The body, decompressed if gzip/deflate, within ``max_body_bytes`` (413) and the timeout (408)."""
        limit = self.settings.max_body_bytes
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestError(408, f"request body not received within {self.settings.request_timeout_s} s") \
                from None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return inflate(body, request.headers.get("content-encoding", "identity"), limit)

    async def score(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Validated, then scored in whichever batch the request lands in (503 past the request timeout)."""
        validated = self.tagger.validate(inputs)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await self.batcher.submit(validated)
        except TimeoutError:
            raise RequestError(503, f"scoring took longer than {self.settings.request_timeout_s} s; "
                                    "the server is overloaded") from None

    async def in_features_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the feature thread, so the event loop keeps serving meanwhile."""
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await asyncio.get_running_loop().run_in_executor(self.features, fn, *args)
        except TimeoutError:
            raise RequestError(503, f"computing jet features took longer than {self.settings.request_timeout_s} s") \
                from None


def inflate(body: bytes, content_encoding: str, limit: int) -> bytes:
    """``body`` decoded per its Content-Encoding (identity, gzip, deflate), never beyond ``limit`` bytes."""
    encoding = content_encoding.strip().lower()
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


def guarded(endpoint: Endpoint, style: ErrorStyle = error_response) -> Endpoint:
    """``endpoint`` with the errors a client can cause answered in a protocol's ``style``: RequestError with its
    status, WtagError (invalid model inputs) as 422, a stopping batcher as 503. Anything else is a bug (500)."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except RequestError as exc:
            return style(exc.status, exc.message, exc.headers)
        except WtagError as exc:
            return style(422, str(exc), {})
        except BatcherStopped as exc:
            return style(503, f"not scored: {exc}", {})

    return answer
