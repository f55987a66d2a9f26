"""What is served and how it is doing: ``GET /v1/metadata`` (model URI, registry version, sha256, provider,
inputs and the server's settings; never local paths) and ``GET /metrics`` (Prometheus)."""
from __future__ import annotations

from starlette.responses import Response

from serving.routing import Routes
from serving.service import Service
from serving.wire import JSON, dumps


def routes(service: Service) -> Routes:
    out = Routes()
    info = service.tagger.describe()

    @out.router.get("/v1/metadata", tags=["metadata"],
                    summary="The served model: URI, registry version, sha256, provider, inputs, settings")
    async def metadata() -> Response:
        return Response(dumps({**info, "settings": service.settings.public()}), media_type=JSON)

    @out.router.get("/metrics", tags=["metadata"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return out
