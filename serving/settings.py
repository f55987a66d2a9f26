"""Server settings: every serving default is declared here once, built at the edge (CLI or environment) into
one frozen object, then passed down explicitly."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from wtag.errors import WtagError
from wtag.inference import DEFAULT_MAX_BATCH, DEVICES

TOKEN_ENV = "WTAG_SERVE_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_GRPC_PORT = DEFAULT_PORT + 1  # 0: no gRPC endpoint; the CLI's default is --port + 1
# Worker processes by default: one per usable core, at most this many (each holds its own model session).
MAX_DEFAULT_WORKERS = 8
# Bodies at least this large are decoded in a decode process (ServerSettings.offload_bytes): about 9 ms of
# JSON decoding on the event loop; below it the hand-off (pickling, pipes, wake-ups) costs more than decoding.
DEFAULT_OFFLOAD_BYTES = 1024 * 1024
# Optional overrides from the environment, so ``make serve`` can be tuned without code changes.
ENV_FIELDS = {
    "max_batch_size": "WTAG_SERVE_MAX_BATCH_SIZE",
    "max_queue_delay_ms": "WTAG_SERVE_MAX_QUEUE_DELAY_MS",
    "max_body_bytes": "WTAG_SERVE_MAX_BODY_BYTES",
    "request_timeout_s": "WTAG_SERVE_REQUEST_TIMEOUT_S",
    "device": "WTAG_SERVE_DEVICE",
    "intra_op_threads": "WTAG_SERVE_INTRA_OP_THREADS",
    "max_inflight_requests": "WTAG_SERVE_MAX_INFLIGHT_REQUESTS",
    "max_queued_jets": "WTAG_SERVE_MAX_QUEUED_JETS",
    "max_jets_per_request": "WTAG_SERVE_MAX_JETS_PER_REQUEST",
    "max_candidates_per_jet": "WTAG_SERVE_MAX_CANDIDATES_PER_JET",
    "max_root_bytes": "WTAG_SERVE_MAX_ROOT_BYTES",
    "decode_processes": "WTAG_SERVE_DECODE_PROCESSES",
    "offload_bytes": "WTAG_SERVE_OFFLOAD_BYTES",
    "max_run_bytes": "WTAG_SERVE_MAX_RUN_BYTES",
    "follow_interval_s": "WTAG_SERVE_FOLLOW_INTERVAL_S",
}


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """How the server batches, limits and guards requests.

    ``max_batch_size``: most jets merged into one ``session.run`` (bigger requests run alone, in chunks).
    ``max_queue_delay_ms``: how long a batch may wait for requests that have arrived but are still being
    parsed; a lone request never waits. ``max_body_bytes``: larger bodies get 413. ``request_timeout_s``:
    bound on reading a body and on scoring it. ``auth_token``: when set, every route but the health probes
    and the API document needs ``Authorization: Bearer <token>``. ``device``: auto, cpu or cuda.
    ``intra_op_threads``: ONNX Runtime threads per run; None leaves one of the usable cores to the event loop
    (``ort_threads()``): on a 2-core machine a second ORT thread competes with request parsing and loses.

    Admission control (past a bound: 429 with Retry-After, counted in /metrics): ``max_inflight_requests``
    scoring requests being read, decoded or scored at once; ``max_queued_jets`` jets submitted and not yet
    scored. Caps per request (413 or 422 naming the cap): ``max_jets_per_request``,
    ``max_candidates_per_jet`` (raw jets and files), ``max_root_bytes`` (a ROOT upload's decompressed size).
    ``decode_processes``: processes that decode large bodies and compute raw-jet features off the event loop
    (None: one per usable core; 0: in a thread of the server process instead). ``offload_bytes``: bodies at
    least this large go to them; smaller ones are decoded on the event loop, where they cost less than the
    hand-off (pickling, pipes, a wake-up per request).

    ``max_run_bytes``: memory one ONNX Runtime run of a model may take; each model's jets per run are capped
    at this over its bytes per jet (model metadata, else estimated from the graph), so a ParT model is not
    run at ``max_batch_size`` jets. ``follow_alias``: models served by registry alias (``models:/m@alias``)
    load the alias's new version when it moves, checked every ``follow_interval_s`` seconds.
    """

    max_batch_size: int = DEFAULT_MAX_BATCH
    max_queue_delay_ms: float = 2.0
    max_body_bytes: int = 256 * 1024 * 1024
    request_timeout_s: float = 60.0
    auth_token: str | None = None
    device: str = "auto"
    intra_op_threads: int | None = None
    max_inflight_requests: int = 256
    max_queued_jets: int = 1_000_000
    max_jets_per_request: int = 250_000
    max_candidates_per_jet: int = 1_000
    max_root_bytes: int = 1024 * 1024 * 1024
    decode_processes: int | None = None
    offload_bytes: int = DEFAULT_OFFLOAD_BYTES
    max_run_bytes: int = 2 * 1024 * 1024 * 1024
    follow_alias: bool = False
    follow_interval_s: float = 30.0
    workers: int = 1  # set by the process that starts the server: ORT threads are shared out among workers

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise WtagError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise WtagError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.max_body_bytes < 1:
            raise WtagError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.request_timeout_s <= 0:
            raise WtagError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.device not in DEVICES:
            raise WtagError(f"device '{self.device}' is not one of {', '.join(DEVICES)}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise WtagError(f"intra_op_threads must be >= 1, got {self.intra_op_threads}")
        if self.follow_interval_s <= 0:
            raise WtagError(f"follow_interval_s must be > 0, got {self.follow_interval_s}")
        for name in ("max_inflight_requests", "max_queued_jets", "max_jets_per_request", "max_candidates_per_jet",
                     "max_root_bytes", "max_run_bytes", "offload_bytes", "workers"):
            if getattr(self, name) < 1:
                raise WtagError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_jets_per_request > self.max_queued_jets:
            raise WtagError(f"max_jets_per_request ({self.max_jets_per_request}) must not exceed max_queued_jets "
                            f"({self.max_queued_jets}): such a request could never be admitted")
        if self.decode_processes is not None and self.decode_processes < 0:
            raise WtagError(f"decode_processes must be >= 0, got {self.decode_processes}")
        if self.auth_token is not None and not self.auth_token.strip():
            raise WtagError(f"auth token ({TOKEN_ENV}) is empty; unset it to turn auth off")

    def ort_threads(self) -> int:
        """The ONNX Runtime intra-op thread count to use."""
        if self.intra_op_threads is not None:
            return self.intra_op_threads
        if self.workers > 1:
            return max(1, usable_cores() // self.workers)
        return max(1, usable_cores() - 1)

    def decoders(self) -> int:
        """Decode processes of this server process (the cores shared out among the workers)."""
        if self.decode_processes is not None:
            return self.decode_processes
        return max(1, min(usable_cores(), MAX_DEFAULT_WORKERS) // self.workers)

    def public(self) -> dict[str, object]:
        """The settings a client may see (the token only as whether auth is on)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "auth_token"}
        return {**values, "auth": self.auth_token is not None, "intra_op_threads": self.ort_threads(),
                "decode_processes": self.decoders()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ServerSettings:
        """Settings from ``WTAG_SERVE_*`` variables (token from WTAG_SERVE_TOKEN); ``overrides`` win.

        A set but empty WTAG_SERVE_TOKEN is an error, not "auth off": unset it to serve without a token.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if TOKEN_ENV in env:
            values["auth_token"] = env[TOKEN_ENV]
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        for name, var in ENV_FIELDS.items():
            raw = env.get(var)
            if not raw:
                continue
            kind = {"int": int, "float": float, "str": str, "int | None": int}[str(kinds[name])]
            try:
                values[name] = kind(raw)
            except ValueError:
                raise WtagError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(kinds)
        if unknown:
            raise WtagError(f"unknown server settings: {', '.join(sorted(unknown))}")
        return cls(**values)


def default_workers() -> int:
    """Worker processes when none are asked for: one per usable core, at most MAX_DEFAULT_WORKERS."""
    return max(1, min(usable_cores(), MAX_DEFAULT_WORKERS))


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
