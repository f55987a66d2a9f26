"""The models one server scores: each by name (its registry alias, or the file/URI stem), each with its own ONNX
Runtime session, batcher, jets-per-run cap and metrics labels. A model's session and batcher form a
:class:`Slot`; following a registry alias swaps in a new slot while requests already holding the old one
finish on it."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from serving.batcher import DynamicBatcher
from serving.settings import ServerSettings
from serving.telemetry import ServerMetrics
from serving.wire import RequestError
from wtag import schema
from wtag.errors import WtagError
from wtag.inference import CPU_PROVIDER, OnnxTagger

log = logging.getLogger("wtag.serving")

ModelRef = str | os.PathLike[str] | bytes
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Scores of a new version on its example input may differ from a CPU session's by this much (CUDA kernels).
PARITY_ATOL = 1e-4
# How often a retired slot is checked for requests still holding it before its batcher stops.
DRAIN_POLL_S = 0.05


def alias_of(ref: ModelRef) -> tuple[str, str] | None:
    """(registered model, alias) of a ``models:/name@alias`` reference, else None."""
    match = _ALIAS_URI.match(os.fspath(ref)) if not isinstance(ref, bytes) else None
    return (match.group("name"), match.group("alias")) if match else None


def model_name(ref: ModelRef) -> str:
    """The name clients address a model by: its alias, else the stem of its file or URI path."""
    if isinstance(ref, bytes):
        return schema.REGISTERED_MODEL
    alias = alias_of(ref)
    if alias is not None:
        return alias[1]
    text = os.fspath(ref).rstrip("/")
    if text.startswith("models:/"):
        return text.removeprefix("models:/").split("/")[0]
    return Path(text.split("://", 1)[-1]).stem or "model"


def name_models(refs: Iterable[ModelRef | tuple[str, ModelRef]]) -> dict[str, ModelRef]:
    """Model references keyed by name, in the order given (the first is the default model). A reference may
    be ``NAME=REF`` or (name, ref) to choose the name; two models with one name are an error."""
    named: dict[str, ModelRef] = {}
    for item in refs:
        if isinstance(item, tuple):
            name, ref = item
        elif isinstance(item, str) and "=" in item.split(":", 1)[0]:
            name, ref = item.split("=", 1)
        else:
            name, ref = model_name(item), item
        if not _NAME.match(name):
            raise WtagError(f"model name '{name}' must be letters, digits, '.', '_' or '-' (give NAME=MODEL)")
        if name in named:
            raise WtagError(f"two models are named '{name}'; name them apart with NAME=MODEL")
        named[name] = ref
    if not named:
        raise WtagError("no model to serve")
    return named


@dataclasses.dataclass
class Slot:
    """One loaded version of a model: its session and batcher, and the requests holding it."""

    tagger: OnnxTagger
    batcher: DynamicBatcher
    users: int = 0

    @property
    def version(self) -> str:
        return self.tagger.version


def jets_per_run(tagger: OnnxTagger, settings: ServerSettings) -> int:
    """Most jets one run of ``tagger`` may take: ``max_batch_size``, lowered so that the run's memory (bytes per
    jet x jets) stays within ``max_run_bytes``."""
    return max(1, min(settings.max_batch_size, settings.max_run_bytes // max(1, tagger.bytes_per_jet)))


def example_inputs(tagger: OnnxTagger) -> dict[str, np.ndarray]:
    """The model's own input example when its MLflow model has one, else one zero jet of each input."""
    example = tagger.source.example
    if example is not None and set(example) == set(tagger.inputs):
        return dict(example)
    return {name: np.zeros((1, *(d or 1 for d in shape[1:])), dtype=np.float32)
            for name, shape in tagger.input_shapes.items()}


def check_example(tagger: OnnxTagger, ref: ModelRef) -> None:
    """Warm the session up on the model's example input and check the scores: one per jet, finite, and (on
    another provider than the CPU) equal to a CPU session's of ``ref`` within PARITY_ATOL."""
    inputs = tagger.validate(example_inputs(tagger))
    scores = tagger.run(inputs)
    rows = len(next(iter(inputs.values())))
    where = f"model {tagger.source.public_uri} version {tagger.version}"
    if scores.shape != (rows,) or not np.isfinite(scores).all():
        raise WtagError(f"{where}: its example input of {rows} jets scores {scores[:5].tolist()}..., not one "
                        "finite score per jet")
    if tagger.provider != CPU_PROVIDER:
        cpu = OnnxTagger(ref, device="cpu", intra_op_threads=1).run(inputs)
        diff = float(np.max(np.abs(cpu - scores)))
        if not diff <= PARITY_ATOL:
            raise WtagError(f"{where}: {tagger.provider} scores differ from the CPU's by {diff:.3g} on its example "
                            f"input (allowed {PARITY_ATOL:g})")


def load_tagger(ref: ModelRef, settings: ServerSettings) -> OnnxTagger:
    """The model's session on the configured device, its jets per run capped by its memory (WtagError when it
    cannot be fetched or breaks the contract)."""
    tagger = OnnxTagger(ref, device=settings.device, max_batch=settings.max_batch_size,
                        intra_op_threads=settings.ort_threads())
    tagger.max_batch = jets_per_run(tagger, settings)
    return tagger


def make_slot(tagger: OnnxTagger, name: str, settings: ServerSettings, metrics: ServerMetrics) -> Slot:
    """A slot for a loaded and checked tagger; its batcher (runs of at most the model's cap) is not started."""
    batcher = DynamicBatcher(tagger.run, tagger.max_batch, settings.max_queue_delay_ms / 1000.0,
                             observe=functools.partial(metrics.observe_batch, name),
                             split_rows=max(1, tagger.max_batch // 4))
    return Slot(tagger, batcher)


def load_slot(ref: ModelRef, name: str, settings: ServerSettings, metrics: ServerMetrics) -> Slot:
    """Load, cap, warm up and check one model version (a WtagError says what is wrong)."""
    tagger = load_tagger(ref, settings)
    check_example(tagger, ref)
    return make_slot(tagger, name, settings, metrics)


@dataclasses.dataclass
class ServedModel:
    """A model by name: the reference it was loaded from and the slot that scores new requests."""

    name: str
    ref: ModelRef
    slot: Slot
    metrics: ServerMetrics
    retiring: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    @property
    def tagger(self) -> OnnxTagger:
        return self.slot.tagger

    @property
    def alias(self) -> tuple[str, str] | None:
        return alias_of(self.ref)

    def announce(self, serving: OnnxTagger | None = None, value: int = 1) -> None:
        """Publish in /metrics which version serves (``wtag_model_info`` 1) and which no longer does (0)."""
        tagger = serving or self.tagger
        self.metrics.model.labels(self.name, tagger.source.public_uri, tagger.version, tagger.sha256,
                                  tagger.provider, tagger.tagger or "").set(value)

    def swap(self, slot: Slot) -> Slot:
        """Serve new requests from ``slot`` (its batcher running); the old slot's batcher stops once no request
        holds it any more. Returns the old slot."""
        old, self.slot = self.slot, slot
        self.announce(old.tagger, 0)
        self.announce()
        task = asyncio.get_running_loop().create_task(retire(old), name=f"wtag-retire-{self.name}")
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)
        return old

    def index(self) -> dict[str, Any]:
        """This model's entry in the repository index (``GET /v2/models``, ``POST /v2/repository/index``)."""
        tagger = self.tagger
        return {"name": self.name, "version": tagger.version, "state": "READY" if self.slot.batcher.running
                else "UNAVAILABLE", "sha256": tagger.sha256, "uri": tagger.source.public_uri,
                "tagger": tagger.tagger, "jets_per_run": tagger.max_batch, "bytes_per_jet": tagger.bytes_per_jet}

    async def stop(self) -> None:
        """Stop the current batcher and, without waiting for their requests, the retiring ones."""
        retiring = list(self.retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        await self.slot.batcher.stop()


async def retire(slot: Slot) -> None:
    """Stop a swapped-out slot's batcher once the requests holding it have their scores."""
    try:
        while slot.users > 0:
            await asyncio.sleep(DRAIN_POLL_S)
    finally:
        await slot.batcher.stop()


def by_name(models: Mapping[str, ServedModel], name: str | None) -> ServedModel:
    """The model called ``name`` (None, or the registered model's name ``wtag``: the first model)."""
    if name is None or (name == schema.REGISTERED_MODEL and name not in models):
        return next(iter(models.values()))
    model = models.get(name)
    if model is None:
        raise RequestError(404, f"unknown model '{name}'; this server serves {', '.join(repr(n) for n in models)}")
    return model
