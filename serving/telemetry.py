"""Prometheus metrics of one server (its own registry, so two apps in one process do not mix).

With worker processes (``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client is imported, as the pre-fork
master does), every worker writes its values to files there and ``render`` aggregates them all: counters and
histograms summed, gauges as their ``multiprocess_mode`` says. Every label takes a bounded set of values."""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
REQUESTS_PER_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)
# HTTP methods recorded as themselves; anything else a client sends is "other".
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})
# Why a request was turned away by admission control or a cap.
REJECT_REASONS = ("requests_in_flight", "jets_queued", "jets_per_request", "candidates_per_jet", "root_size")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _powers_of_two(limit: int) -> tuple[float, ...]:
    buckets, b = [], 1
    while b < limit:
        buckets.append(float(b))
        b *= 2
    return (*buckets, float(limit))


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class ServerMetrics:
    """Request counts by route and status, latency, batching, admission control, and gRPC calls."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("wtag_http_requests", "HTTP requests by route, method and status code",
                                ("route", "method", "status"), registry=r)
        self.latency = Histogram("wtag_http_request_duration_seconds", "Time from request to response",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=r)
        self.grpc = Counter("wtag_grpc_requests", "KServe v2 gRPC calls by method and status code",
                            ("method", "code"), registry=r)
        self.batch_jets = Histogram("wtag_batch_size_jets", "Jets per ONNX Runtime run", ("model",),
                                    buckets=_powers_of_two(max_batch_size), registry=r)
        self.batch_requests = Histogram("wtag_batch_size_requests", "Requests merged into one ONNX Runtime run",
                                        ("model",), buckets=REQUESTS_PER_BATCH_BUCKETS, registry=r)
        self.run_seconds = Histogram("wtag_inference_duration_seconds", "Time of one ONNX Runtime run", ("model",),
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.jets = Counter("wtag_jets_scored", "Jets scored", ("model",), registry=r)
        self.rejected = Counter("wtag_rejected_requests", "Requests turned away by admission control (429) or a "
                                "per-request cap (413/422), by reason", ("reason",), registry=r)
        self.decodes = Counter("wtag_decoded_bodies", "Request bodies decoded, by where: on the event loop, or in a "
                               "decode process (bodies of at least offload_bytes)", ("where",), registry=r)
        self.in_flight = Gauge("wtag_requests_in_flight", "Scoring requests being read, decoded or scored",
                               registry=r, multiprocess_mode="livesum")
        self.queued_jets = Gauge("wtag_jets_queued", "Jets submitted to the batcher and not yet scored",
                                 registry=r, multiprocess_mode="livesum")
        self.worker = Gauge("wtag_worker_jets_scored", "Jets scored by each worker process (pid label)",
                            registry=r, multiprocess_mode="all")
        self.model = Gauge("wtag_model_info", "The served models (value 1; 0: a version no longer served)",
                           ("model", "uri", "version", "sha256", "provider", "tagger"), registry=r,
                           multiprocess_mode="max")
        self.loads = Counter("wtag_model_loads", "New versions of followed aliases, by model and outcome "
                             "(loaded, or why not: fetch, contract, check)", ("model", "outcome"), registry=r)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self.decoded = {where: self.decodes.labels(where) for where in ("loop", "process")}
        # Labelled children looked up once: ``labels()`` takes a lock and builds a key on every call.
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._batch_children: dict[str, tuple[Histogram, Histogram, Histogram, Counter]] = {}

    def observe_batch(self, model: str, jets: int, requests: int, seconds: float) -> None:
        children = self._batch_children.get(model)
        if children is None:
            children = self._batch_children[model] = (
                self.batch_jets.labels(model), self.batch_requests.labels(model), self.run_seconds.labels(model),
                self.jets.labels(model))
        batch_jets, batch_requests, run_seconds, scored = children
        batch_jets.observe(jets)
        batch_requests.observe(requests)
        run_seconds.observe(seconds)
        scored.inc(jets)
        self.worker.inc(jets)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        key = (route, method, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(route, method, str(status))
        histogram = self._latency_children.get(route)
        if histogram is None:
            histogram = self._latency_children[route] = self.latency.labels(route)
        counter.inc()
        histogram.observe(seconds)

    def render(self) -> bytes:
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        aggregate = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregate, path=path)
        return generate_latest(aggregate)
