"""Following a registry alias (``--follow-alias``): when ``models:/name@alias`` moves to another version, that
version is loaded in the background, warmed up and checked on its own example input, then swapped in at once;
requests already scoring finish on the old version. A version that fails stays out (the old one keeps
serving), and the log and ``wtag_model_loads_total{outcome}`` say why."""
from __future__ import annotations

import asyncio
import logging

from serving.models import ServedModel, check_example, load_tagger, make_slot
from serving.settings import ServerSettings
from serving.telemetry import ServerMetrics
from wtag.errors import WtagError
from wtag.inference import registry_version

log = logging.getLogger("wtag.serving")


async def follow(model: ServedModel, settings: ServerSettings, metrics: ServerMetrics) -> None:
    """Every ``follow_interval_s``: ask the registry where the model's alias points, and load a new version."""
    failed: str | None = None  # a version that failed is not tried again until the alias moves on
    while True:
        await asyncio.sleep(settings.follow_interval_s)
        try:
            _, version = await asyncio.to_thread(registry_version, str(model.ref))
        except Exception as exc:  # noqa: BLE001  (an unreachable registry: keep serving, ask again later)
            log.warning("model %s: cannot ask the registry where %s points (%s)", model.name, model.ref, exc)
            continue
        if version is None or version in (model.slot.version, failed):
            continue
        failed = None if await reload(model, version, settings, metrics) else version


async def reload(model: ServedModel, version: str, settings: ServerSettings, metrics: ServerMetrics) -> bool:
    """Load the version the alias now names and swap it in; False (old version still serving) when it fails."""
    log.info("model %s: %s moved to version %s (serving %s); loading it", model.name, model.ref, version,
             model.slot.version)
    outcome = "load_failed"
    try:
        tagger = await asyncio.to_thread(load_tagger, model.ref, settings)
        outcome = "check_failed"
        await asyncio.to_thread(check_example, tagger, model.ref)
    except WtagError as exc:
        log.error("model %s: version %s not loaded (%s), version %s keeps serving: %s", model.name, version,
                  outcome.replace("_", " "), model.slot.version, exc)
        metrics.loads.labels(model.name, outcome).inc()
        return False
    except Exception:  # noqa: BLE001  (a bug must not stop the server from serving the old version)
        log.exception("model %s: version %s not loaded (%s), version %s keeps serving", model.name, version,
                      outcome.replace("_", " "), model.slot.version)
        metrics.loads.labels(model.name, outcome).inc()
        return False
    slot = make_slot(tagger, model.name, settings, metrics)
    slot.batcher.start()
    old = model.swap(slot)
    metrics.loads.labels(model.name, "loaded").inc()
    log.info("model %s: now serving version %s (sha256 %s), was %s", model.name, slot.version,
             slot.tagger.sha256, old.version)
    return True
