"""What every protocol shares on the wire: the client-error exception, JSON in and out, and strict number
parsing. Nothing here unpickles or otherwise executes request content."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

JSON = "application/json"


class RequestError(Exception):
    """A bad request: ``status`` (400 malformed, 413 too large, 415 media type, 422 invalid content, 429 busy),
    optional response ``headers`` (e.g. Retry-After) and the ``reason`` of a rejection by a limit."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.reason = reason  # admission control or a cap: counted in /metrics by this reason

    def __reduce__(self) -> tuple[type, tuple[int, str, dict[str, str], str | None]]:  # crosses processes
        return (type(self), (self.status, self.message, self.headers, self.reason))


def loads(body: bytes, what: str = "request body") -> Any:
    if not body:
        raise RequestError(400, f"{what} is empty; expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"{what} is not valid JSON ({exc})") from None


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """The default error style: ``{"error": message}``."""
    return Response(dumps({"error": message}), status_code=status, media_type=JSON, headers=dict(headers or {}))


def json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(422, f"{what} must be a JSON object, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def numbers(value: Any, what: str, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """Nested JSON lists of numbers as an array of ``dtype``; strings, booleans and nulls are refused rather
    than converted, and integer dtypes take integers only (finiteness is the tagger's check)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        arr = None
    target = np.dtype(dtype)
    allowed = "iu" if target.kind in "iu" else "iuf"
    if arr is not None and arr.dtype.kind == "O" and any(x is None for x in arr.flat):
        raise RequestError(422, f"{what} has null (missing) values")
    if arr is None or arr.dtype.kind not in allowed:
        kind = "integers" if target.kind in "iu" else "numbers"
        raise RequestError(422, f"{what} must all be {kind}, in equal-length lists")
    try:
        return arr.astype(target, copy=False)
    except OverflowError:
        raise RequestError(422, f"{what} has values out of range for {target}") from None
