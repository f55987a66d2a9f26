"""What is served and how it is doing: ``GET /v1/metadata`` (a model's URI, registry version, sha256, provider,
inputs, the served models and the server's settings; never local paths) and ``GET /metrics`` (Prometheus)."""
from __future__ import annotations

from starlette.responses import Response

from serving.routing import Routes
from serving.service import Service
from serving.wire import JSON, dumps


def routes(service: Service) -> Routes:
    out = Routes()

    @out.router.get("/v1/metadata", tags=["metadata"],
                    summary="A served model (?model=NAME, default the first): URI, registry version, sha256, "
                            "provider, inputs, jets per run; the served models and the settings")
    async def metadata(model: str | None = None) -> Response:
        served = service.model(model)
        return Response(dumps({"name": served.name, **served.tagger.describe(), "jets_per_run": served.tagger.max_batch,
                               "models": list(service.models), "settings": service.settings.public()}),
                        media_type=JSON)

    @out.router.get("/metrics", tags=["metadata"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return out
