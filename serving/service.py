"""The served models and what every protocol does with a request: find the model by name, admission, read
the body, decode it off the event loop, score through the model's batcher, answer errors in the protocol's
own style as the one error policy (``serving.errors``) maps them."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import functools
import multiprocessing
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from serving.auth import BearerAuth
from serving.batcher import DynamicBatcher
from serving.errors import Failure, failure
from serving.follow import follow
from serving.models import ModelRef, ServedModel, by_name, load_slot
from serving.settings import ServerSettings
from serving.telemetry import ServerMetrics
from serving.wire import RequestError, error_response
from wtag.inference import OnnxTagger

# Headers of every scoring answer: the model and the version that computed the scores.
MODEL_HEADER = "wtag-model"
VERSION_HEADER = "wtag-model-version"

RETRY_AFTER_S = 1
# How often an idle server checks whether to give freed memory back to the system.
TRIM_INTERVAL_S = 2.0
Endpoint = Callable[[Request], Awaitable[Response]]
ErrorStyle = Callable[[int, str, Mapping[str, str]], Response]


@dataclasses.dataclass
class Scored:
    """A request's scores and the model version that computed them (answers name it)."""

    scores: np.ndarray
    model: str
    version: str

    def headers(self) -> dict[str, str]:
        return {MODEL_HEADER: self.model, VERSION_HEADER: self.version}


@dataclasses.dataclass
class Service:
    """The served models (each with its own session and batcher), admission control, decode processes, auth
    and metrics; built once per app, shared by every protocol module. The first model is the default."""

    models: dict[str, ServedModel]
    settings: ServerSettings
    metrics: ServerMetrics
    pool: concurrent.futures.Executor
    auth: BearerAuth
    in_flight: int = 0
    large_since_trim: bool = False  # a large body was handled since the heap was last trimmed
    _tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    @classmethod
    def load(cls, models: Mapping[str, ModelRef], settings: ServerSettings,
             prepare_decoder: Callable[[], None] | None = None) -> Service:
        """Load every model (name -> reference). ``prepare_decoder`` runs once in each decode process (a
        module-level function: it is pickled by reference), so what the protocols decode with is imported
        before the first request."""
        metrics = ServerMetrics(settings.max_batch_size)
        served = {name: ServedModel(name, ref, load_slot(ref, name, settings, metrics), metrics)
                  for name, ref in models.items()}
        for model in served.values():
            model.announce()
        return cls(served, settings, metrics, decode_pool(settings.decoders(), prepare_decoder),
                   BearerAuth(settings.auth_token))

    @property
    def default(self) -> ServedModel:
        return next(iter(self.models.values()))

    @property
    def tagger(self) -> OnnxTagger:
        """The default model's tagger."""
        return self.default.tagger

    @property
    def batcher(self) -> DynamicBatcher:
        """The default model's batcher."""
        return self.default.slot.batcher

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for model in self.models.values():
            model.slot.batcher.start()
            if self.settings.follow_alias and model.alias is not None:
                self._tasks.append(loop.create_task(follow(model, self.settings, self.metrics),
                                                    name=f"wtag-follow-{model.name}"))
        self._tasks.append(loop.create_task(self._trim_when_idle(), name="wtag-trim"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for model in self.models.values():
            await model.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)

    async def _trim_when_idle(self) -> None:
        """Give the memory of large requests back to the system once the server is idle: the C allocator keeps
        freed arenas, so resident memory would otherwise stay at its peak after a burst of big requests."""
        while True:
            await asyncio.sleep(TRIM_INTERVAL_S)
            if self.large_since_trim and self.in_flight == 0:
                self.large_since_trim = False
                await asyncio.get_running_loop().run_in_executor(None, trim_memory)

    def model(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The model called ``name`` (None: the default), at ``version`` when given (404 naming what is served)."""
        model = by_name(self.models, name)
        if version is not None and version != model.slot.version:
            raise RequestError(404, f"model '{model.name}' has no version '{version}' (serving {model.slot.version})")
        return model

    def model_of(self, request: Request) -> ServedModel:
        """The model a /v1 request names with ``?model=NAME`` (none: the default)."""
        return self.model(request.query_params.get("model"))

    @contextlib.contextmanager
    def admitted(self, model: ServedModel) -> Iterator[None]:
        """Hold one of ``max_inflight_requests`` places for a scoring request (429 when none is free), and
        announce it to the model's batcher."""
        if self.in_flight >= self.settings.max_inflight_requests:
            self.reject("requests_in_flight", 429, f"{self.in_flight} requests in flight, the limit "
                                                   f"(max_inflight_requests) is {self.settings.max_inflight_requests}; "
                                                   f"retry after {RETRY_AFTER_S} s")
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            with model.slot.batcher.announce():
                yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def reject(self, reason: str, status: int, message: str) -> None:
        """Raise a rejection by a limit (429s carry Retry-After); ``guard`` counts it in /metrics."""
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else {}
        raise RequestError(status, message, headers, reason)

    def failure(self, exc: BaseException, where: str) -> Failure:
        """``exc`` as the one error policy (``serving.errors``) says, with rejections by a limit counted."""
        answer = failure(exc, where)
        if answer.reason is not None:
            self.metrics.rejected.labels(answer.reason).inc()
        return answer

    def guard(self, endpoint: Endpoint, style: ErrorStyle = error_response) -> Endpoint:
        """``endpoint`` with every exception answered in a protocol's ``style`` as :meth:`failure` maps it, so
        the connection stays usable whatever went wrong."""

        @functools.wraps(endpoint)
        async def answer(request: Request) -> Response:
            try:
                return await endpoint(request)
            except Exception as exc:  # noqa: BLE001  (the error policy decides; bugs are logged there)
                failed = self.failure(exc, f"{request.method} {request.url.path}")
                return style(failed.status, failed.message, failed.headers)

        return answer

    def check_jets(self, n: int) -> None:
        if n > self.settings.max_jets_per_request:
            self.reject("jets_per_request", 413, f"the request holds {n} jets, more than the limit of "
                                                 f"{self.settings.max_jets_per_request} jets per request "
                                                 "(max_jets_per_request)")

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
        self.large_since_trim |= size >= self.settings.offload_bytes
        encoding = request.headers.get("content-encoding", "identity")
        if encoding.strip().lower() in ("identity", "") or len(body) < self.settings.offload_bytes:
            return inflate(body, encoding, limit)
        return await self.offload(inflate, body, encoding, limit)

    async def decode(self, fn: Callable[..., Any], body: bytes, *args: Any) -> Any:
        """``fn(body, *args)``: in this thread for small bodies, in a decode process for large ones."""
        if len(body) < self.settings.offload_bytes:
            self.metrics.decoded["loop"].inc()
            return fn(body, *args)
        self.metrics.decoded["process"].inc()
        return await self.offload(fn, body, *args)

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the decode pool, so the event loop keeps serving meanwhile (503 past the timeout)."""
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await asyncio.get_running_loop().run_in_executor(self.pool, _call_and_trim, fn, *args)
        except TimeoutError:
            raise RequestError(503, f"decoding the request took longer than {self.settings.request_timeout_s} s; "
                                    "the server is overloaded") from None
        except concurrent.futures.BrokenExecutor:
            raise RequestError(503, "a decode process died; the request was not scored") from None

    async def score(self, model: ServedModel, inputs: Mapping[str, Any]) -> Scored:
        """Validated, then scored in whichever batch the request lands in, by the model's current version (a
        swap meanwhile does not move it); 429 when too many jets are queued, 503 past the request timeout."""
        slot = model.slot
        validated = slot.tagger.validate(inputs)
        rows = len(next(iter(validated.values())))
        self.check_jets(rows)
        pending = sum(m.slot.batcher.pending_rows for m in self.models.values())
        if pending + rows > self.settings.max_queued_jets:
            self.reject("jets_queued", 429, f"{pending} jets are queued and this request adds {rows}, past the "
                                            f"limit (max_queued_jets) of {self.settings.max_queued_jets}; retry "
                                            f"after {RETRY_AFTER_S} s")
        self.metrics.queued_jets.inc(rows)
        slot.users += 1
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                scores = await slot.batcher.submit(validated)
        except TimeoutError:
            raise RequestError(503, f"scoring took longer than {self.settings.request_timeout_s} s; "
                                    "the server is overloaded") from None
        finally:
            slot.users -= 1
            self.metrics.queued_jets.dec(rows)
        return Scored(scores, model.name, slot.version)


def decode_pool(processes: int, prepare: Callable[[], None] | None = None) -> concurrent.futures.Executor:
    """Processes that decode bodies and compute jet features (spawned: never forked from this threaded process;
    each dies with the server, however it ends, and runs ``prepare`` first); with 0, one thread instead.
    Started now, so their start-up is not a request's latency."""
    if processes == 0:
        return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wtag-decode")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_decode_process_init, initargs=(prepare,))
    for started in [pool.submit(_ready) for _ in range(processes)]:
        started.result()
    return pool


def trim_memory() -> None:
    """Return free heap memory to the system (glibc's malloc_trim; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _call_and_trim(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a decode process, then its freed memory back to the system (it handles large bodies)."""
    try:
        return fn(*args)
    finally:
        trim_memory()


def _ready() -> None:
    """Run once per decode process at start-up: the feature code computes every model input for two jets, so
    its one-time costs (compiling, caches) are paid here, not by the first request and not as memory growth
    seen under load."""
    from wtag import schema
    from wtag.features import complete_jets, model_inputs
    from wtag.jets import make_jets

    jets = make_jets({"ak7pfcand_pt": [[50.0, 30.0, 5.0], [80.0, 2.0]], "ak7pfcand_eta": [[0.1, 0.3, 0.2], [1.0, 1.1]],
                      "ak7pfcand_phi": [[1.0, 1.2, 0.9], [2.0, 2.1]], "ak7pfcand_id": [[211, 22, 130], [-11, 22]],
                      "ak7pfcand_charge": [[1, 0, 0], [-1, 0]]})
    model_inputs(complete_jets(jets), tuple(schema.INPUT_SHAPES), max_particles=schema.MAX_PARTICLES)


def _decode_process_init(prepare: Callable[[], None] | None) -> None:
    """Ctrl-C is the server's to handle; and a decode process is killed when its server dies (Linux)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if prepare is not None:
        prepare()


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
