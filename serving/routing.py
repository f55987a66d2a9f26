"""How a protocol module hands its routes to the app: FastAPI routes (documented from their signatures) and
plain Starlette POST routes for the hot scoring paths, documented in OpenAPI by hand."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter
from starlette.routing import Route

from serving.service import Endpoint

BINARY = {"schema": {"type": "string", "format": "binary"}}
# The /v1 routes score the first model unless ``?model=NAME`` names another.
MODEL_QUERY = {"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
               "description": "the served model to score with (default: the first)"}
ERROR_BODY = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def body_doc(media: dict[str, Any], description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": media}}


@dataclasses.dataclass
class Routes:
    """One protocol's routes. The plain routes skip FastAPI's per-request dependency solving, a sizeable share
    of a small request's cost; ``documented`` holds their OpenAPI path items; ``open`` the paths that answer
    without the bearer token (probes that carry no data)."""

    router: APIRouter = dataclasses.field(default_factory=APIRouter)
    plain: list[Route] = dataclasses.field(default_factory=list)
    documented: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    open: set[str] = dataclasses.field(default_factory=set)

    def post(self, paths: Sequence[str], endpoint: Endpoint, tag: str, summary: str, body: dict[str, Any],
             answer: dict[str, Any], query: Sequence[dict[str, Any]] = (),
             errors: dict[str, Any] | None = None) -> None:
        """Add ``endpoint`` as POST on each path, with its request body, answer and query parameters."""
        for path in paths:
            self.plain.append(Route(path, endpoint, methods=["POST"]))
            params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"{(\w+)}", path)] + list(query)
            operation_id = endpoint.__name__ + re.sub(r"\W+", "_", path)
            failure = errors or {"description": "client error: {\"error\": message}",
                                 "content": {"application/json": {"schema": ERROR_BODY}}}
            self.documented[path] = {"post": {"tags": [tag], "summary": summary, "operationId": operation_id,
                                              "parameters": params, **body,
                                              "responses": {"200": answer, "4XX": failure}}}
