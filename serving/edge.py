"""The shared outer layer of every HTTP request: bearer-token check, early 413 from Content-Length, and
per-route request metrics (labels bounded: route templates, known methods, status codes). It sits outside the
framework's own middleware and sends the protocols' hot POST routes straight to their endpoints."""
from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import BearerAuth
from serving.settings import ServerSettings
from serving.telemetry import ServerMetrics
from serving.wire import RequestError, error_response


def _flatten(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Routes with FastAPI's included routers opened up (the protocol routers are included without prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _flatten(inner.routes)
        else:
            yield route


class EdgeMiddleware:
    """Outermost layer: bearer-token check (except on ``open_paths``, which the protocols declare), early 413
    from Content-Length, and per-route metrics.

    ``hot`` routes (the protocols' plain POST scoring routes, whose endpoints answer every error themselves) are
    called directly: FastAPI's error, exception, exit-stack and telemetry layers cost about 55 us of the ~0.2 ms
    that a 1,000-jet binary request spends outside ONNX Runtime (this layer itself about 25 us), and do nothing
    for an endpoint that never raises."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: ServerMetrics,
                 routes: Callable[[], list[BaseRoute]], auth: BearerAuth, open_paths: Collection[str],
                 hot: Iterable[Route] = ()) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.routes = routes
        self.auth = auth
        self.open_paths = frozenset(open_paths)
        self._flat: list[BaseRoute] | None = None
        hot = list(hot)
        self._hot_static = {r.path: r for r in hot if not r.param_convertors}
        self._hot_templated = [r for r in hot if r.param_convertors]

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
            elif scope["method"] == "POST" and self._hot(scope):
                response = await scope["endpoint"](Request(scope, receive, send_status))
                await response(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route") or self._match(scope)
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(label, scope["method"], status[0], time.perf_counter() - start)

    def _hot(self, scope: Scope) -> bool:
        """Whether the request is for a hot route; if so its route, endpoint and path parameters go into the
        scope as the router would put them."""
        route = self._hot_static.get(scope["path"])
        if route is None:
            for candidate in self._hot_templated:
                match, child = candidate.matches(scope)
                if match == Match.FULL:
                    scope.update(child)
                    scope["route"] = candidate
                    return True
            return False
        scope.update(endpoint=route.endpoint, path_params={}, route=route)
        return True

    def _match(self, scope: Scope) -> BaseRoute | None:
        """The route of a request the router did not label (plain Starlette routes, rejected requests)."""
        if self._flat is None:
            self._flat = list(_flatten(self.routes()))
        for route in self._flat:
            if route.matches(scope)[0] == Match.FULL:
                return route
        return None

    def _reject(self, scope: Scope) -> Response | None:
        headers = dict(scope["headers"])
        if self.auth.enabled and scope["path"] not in self.open_paths:
            try:
                self.auth.check(headers.get(b"authorization"), "'Authorization: Bearer <token>'")
            except RequestError as exc:
                return error_response(exc.status, exc.message, exc.headers)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return error_response(400, f"Content-Length {length.decode('latin1')!r} is not an integer")
            if size > self.settings.max_body_bytes:
                return error_response(413, f"request body of {size} bytes exceeds the limit of "
                                           f"{self.settings.max_body_bytes} bytes")
        return None
