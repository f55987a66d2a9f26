"""One error policy for every protocol: what an exception means as an HTTP status and as a gRPC status code.

REST routes, the app's own handlers and the gRPC servicer all turn exceptions into a :class:`Failure` with
:func:`failure`, so the same problem gets the same status whichever protocol carried it."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from serving.batcher import BatcherStopped
from serving.wire import RequestError
from wtag.errors import WtagError

log = logging.getLogger("wtag.serving")

# HTTP statuses as gRPC status code names: 429 and 503 are retryable (UNAVAILABLE), as Triton's queue policy.
GRPC_CODES: Mapping[int, str] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
    429: "UNAVAILABLE", 500: "INTERNAL", 503: "UNAVAILABLE"}


# What an app registers handlers for: everything, the specific kinds first (the last one catches bugs).
HANDLED: tuple[type[Exception], ...] = (RequestError, WtagError, BatcherStopped, RequestValidationError, HTTPException,
                                        Exception)


@dataclasses.dataclass(frozen=True)
class Failure:
    """A request's failure in protocol-neutral terms: HTTP status, message, headers, and the reason of a
    rejection by a limit (counted in /metrics)."""

    status: int
    message: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    reason: str | None = None

    @property
    def grpc_code(self) -> str:
        """The gRPC status code name (``grpc.StatusCode[...]``) of this failure."""
        return GRPC_CODES.get(self.status, "INTERNAL" if self.status >= 500 else "INVALID_ARGUMENT")


def failure(exc: BaseException, where: str) -> Failure:
    """The failure ``exc`` stands for: a client's mistake as its 4xx, a stopping server as 503, anything else
    (a bug) as 500 with the traceback in the log under ``where`` (e.g. ``POST /v1/score-npy``)."""
    if isinstance(exc, RequestError):
        return Failure(exc.status, exc.message, exc.headers, exc.reason)
    if isinstance(exc, WtagError):
        return Failure(422, str(exc))
    if isinstance(exc, BatcherStopped):
        return Failure(503, f"not scored: {exc}")
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()))
        return Failure(422, f"{field}: {first.get('msg', 'invalid request')}")
    if isinstance(exc, HTTPException):
        message = f"no route {where}" if exc.status_code == 404 else str(exc.detail)
        return Failure(exc.status_code, message, dict(exc.headers or {}))
    log.error("unexpected error on %s", where, exc_info=exc)
    return Failure(500, f"internal error ({type(exc).__name__}); see the server log")
