"""Prometheus metrics of one server instance (its own registry, so two apps in one process do not mix)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
REQUESTS_PER_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


def _powers_of_two(limit: int) -> tuple[float, ...]:
    buckets, b = [], 1
    while b < limit:
        buckets.append(float(b))
        b *= 2
    return (*buckets, float(limit))


class ServerMetrics:
    """Request counts by route and status, latency, and how requests were batched into model runs."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch_size: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("wtag_http_requests", "HTTP requests by route, method and status code",
                                ("route", "method", "status"), registry=self.registry)
        self.latency = Histogram("wtag_http_request_duration_seconds", "Time from request to response",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_jets = Histogram("wtag_batch_size_jets", "Jets per ONNX Runtime run",
                                    buckets=_powers_of_two(max_batch_size), registry=self.registry)
        self.batch_requests = Histogram("wtag_batch_size_requests", "Requests merged into one ONNX Runtime run",
                                        buckets=REQUESTS_PER_BATCH_BUCKETS, registry=self.registry)
        self.run_seconds = Histogram("wtag_inference_duration_seconds", "Time of one ONNX Runtime run",
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.jets = Counter("wtag_jets_scored", "Jets scored", registry=self.registry)
        # Labelled children looked up once: ``labels()`` takes a lock and builds a key on every call.
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self.model = Gauge("wtag_model_info", "The served model (value 1)",
                           ("uri", "version", "sha256", "provider", "tagger"), registry=self.registry)

    def observe_batch(self, jets: int, requests: int, seconds: float) -> None:
        self.batch_jets.observe(jets)
        self.batch_requests.observe(requests)
        self.run_seconds.observe(seconds)
        self.jets.inc(jets)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
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
        return generate_latest(self.registry)
